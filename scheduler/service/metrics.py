"""Prometheus metrics of the scheduler service (names per research/ecosystem.md 1.4, prefix xpod_).

Counters are updated by hooks the service calls (API, scheduling loop, liveness); gauges are
computed at scrape time from the owners' state (``JobBook``, ``NodeRegistry``: a custom
collector), so they are never stale and cost nothing between scrapes. Each server gets its own
``CollectorRegistry`` (tests run several in one process).

Job ``kind`` labels are the core's words (training, serving, batch), as on the exporter's
allocation series. ``grpc_server_*`` (go-grpc-prometheus names) live in the same registry:
``scheduler.grpc.server`` adds them when the API has these metrics attached.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from xpod.scheduler.contract import kind_label

# go-grpc-prometheus's default buckets (prometheus.DefBuckets), for grpc_server_handling_seconds
_GRPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# go-grpc-prometheus-like spread from a second to a day: submit -> placed spans both.
QUEUE_WAIT_BUCKETS_S = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)
#: closed set of eviction reasons (``evicted_jobs_total{reason}``)
EVICTION_REASONS = tuple(
    "preempted reclaimed node_not_ready node_removed device_unhealthy lost_after_restart other".split()
)


class GrpcCounters:
    """The gRPC server metrics (``scheduler.grpc.metrics`` counts the calls in them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "Total number of RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels + ["grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            labels,
            buckets=_GRPC_BUCKETS,
            registry=registry,
        )


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._api: Any = None

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        by_result = ("result",)
        self.schedule_attempts = counter(
            "xpod_scheduler_schedule_attempts",
            "Jobs a scheduling cycle tried to place, by result (scheduled, unschedulable).",
            by_result,
        )
        self.cycle_seconds = histogram(
            "xpod_scheduler_scheduling_cycle_duration_seconds",
            "Wall time of one scheduling cycle of the core.",
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.attempt_seconds = histogram(
            "xpod_scheduler_scheduling_attempt_duration_seconds",
            "Seconds the core spent searching a placement for one job in one cycle, by result (scheduled, unschedulable).",
            (1e-05, 2.5e-05, 5e-05, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            by_result,
        )
        self.submitted_jobs = counter(
            "xpod_scheduler_submitted_jobs", "Jobs accepted (durably) by SubmitJob.", ("queue",)
        )
        self._submitted_by_queue: dict[str, Any] = {}
        self.finished_jobs = counter(
            "xpod_scheduler_finished_jobs", "Jobs that ended, by outcome.", ("queue", "kind", "outcome")
        )
        self.shed_requests = counter(
            "xpod_scheduler_shed_requests", "Requests refused with RESOURCE_EXHAUSTED to shed load."
        )
        self.queue_wait_seconds = histogram(
            "xpod_scheduler_queue_wait_seconds",
            "Seconds from submission to a job's first placement, observed when a cycle binds it.",
            QUEUE_WAIT_BUCKETS_S,
            ("queue", "kind"),
        )
        self.preemption_attempts = counter(
            "xpod_scheduler_preemption_attempts",
            "Times a cycle tried to preempt or reclaim for a pending job that had eligible victims.",
        )
        self.evicted_jobs = counter(
            "xpod_scheduler_evicted_jobs",
            "Bound jobs that lost their devices (requeued or failed), by reason.",
            ("queue", "reason"),
        )
        self.leader = Gauge(
            "xpod_scheduler_leader",
            "1 on the replica that leads (runs the scheduling loop and takes writes), 0 on the others.",
            registry=self.registry,
        )
        self.leader_changes = counter(
            "xpod_scheduler_leader_changes", "Times this replica became leader or stopped being it."
        )
        self.grpc = GrpcCounters(self.registry)
        self.registry.register(_StateCollector(self))

    def attach(self, api: Any) -> None:
        """Count ``api``'s events here (an ``ApiHandle`` of replicas: each API it turns to)."""
        self._api = api
        attach = getattr(api, "attach_metrics", None)
        if attach is not None and not hasattr(api, "replica"):
            attach(self)
        else:
            api.metrics = self

    # hooks the service calls

    def submitted(self, queue: str) -> None:
        # once per submission: the labelled child is looked up once per queue
        child = self._submitted_by_queue.get(queue)
        if child is None:
            child = self._submitted_by_queue[queue] = self.submitted_jobs.labels(queue=queue)
        child.inc()

    def shed(self) -> None:
        self.shed_requests.inc()

    def finished(self, queue: str, kind: str, outcome: str) -> None:
        self.finished_jobs.labels(queue=queue, kind=kind_label(kind), outcome=outcome.lower()).inc()

    def placed(self, queue: str, kind: str, wait_s: float) -> None:
        """A job was placed for the first time ``wait_s`` after its submission."""
        self.queue_wait_seconds.labels(queue=queue, kind=kind_label(kind)).observe(max(0.0, wait_s))

    def evicted(self, queue: str, reason: str) -> None:
        self.evicted_jobs.labels(queue=queue, reason=reason if reason in EVICTION_REASONS else "other").inc()

    def cycle(self, outcome: Any, elapsed_s: float, jobs: Any) -> None:
        """One cycle's ``CycleOutcome``; ``jobs`` (the ``JobBook``) names the evicted jobs' queues."""
        self.cycle_seconds.observe(elapsed_s)
        if outcome.preemption_attempts:
            self.preemption_attempts.inc(outcome.preemption_attempts)
        for jid in outcome.evictions:
            job = jobs.get(jid)
            if job is not None:
                self.evicted(job.queue, outcome.eviction_reasons.get(jid, "other"))
        for jid, seconds in outcome.attempt_seconds.items():
            result = "scheduled" if jid in outcome.bindings else "unschedulable"
            self.attempt_seconds.labels(result=result).observe(seconds)
        if outcome.bindings:
            self.schedule_attempts.labels(result="scheduled").inc(len(outcome.bindings))
        if outcome.pending:
            self.schedule_attempts.labels(result="unschedulable").inc(len(outcome.pending))


# the gauges computed at scrape time (``_StateCollector``), in the order they are yielded
_STATE_GAUGES = (
    ("xpod_scheduler_pending_jobs", "Queued jobs by queue and pending reason.", ["queue", "reason"]),
    (
        "xpod_scheduler_devices",
        "Schedulable devices by vendor and state (free, allocated, unhealthy).",
        ["vendor", "state"],
    ),
    (
        "xpod_scheduler_running_jobs",
        "Jobs holding devices (SCHEDULED or RUNNING) by queue and kind.",
        ["queue", "kind"],
    ),
    (
        "xpod_scheduler_nodes",
        "Nodes by state: ready, or not_ready (heartbeats stopped, or no agent has registered it yet).",
        ["state"],
    ),
    (
        "xpod_scheduler_largest_free_block_devices",
        "Most free healthy devices of one model (pool) on one node / in one super-node: the biggest gang that fits now.",
        ["pool", "level"],
    ),
    (
        "xpod_scheduler_degraded_jobs",
        "Serving jobs running below their min replicas while lost replicas are being replaced, by queue.",
        ["queue"],
    ),
    # autoscaled serving jobs (one series each while the core holds them: at most one per device)
    (
        "xpod_scheduler_serving_demand",
        "An autoscaled serving job's (or role's) demand: its replicas' last reported loads summed, in its metric's "
        "units.",
        ["queue", "job", "role", "metric"],
    ),
    (
        "xpod_scheduler_serving_target_per_replica",
        "The load one replica of an autoscaled serving job (or role) serves at its target, in its metric's units.",
        ["queue", "job", "role", "metric"],
    ),
    (
        "xpod_scheduler_serving_replicas",
        "Replicas of an autoscaled serving job (or role): desired (what its autoscaling wants) and placed.",
        ["queue", "job", "role", "state"],
    ),
)


class _StateCollector:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        api = self._metrics._api
        pending, devices, running, node_gauge, blocks, degraded, demand, target, replicas = families = [
            GaugeMetricFamily(name, doc, labels=labels) for name, doc, labels in _STATE_GAUGES
        ]
        # (a replica without a store serves no state: ``jobs`` is None there)
        if api is not None and api.jobs is not None:
            for (queue, reason), n in sorted(api.jobs.pending_counts().items()):
                pending.add_metric([queue, reason], n)
            nodes = api.nodes.list()
            usage = api.jobs.usage()
            for (vendor, state), n in sorted(device_counts(nodes, usage).items()):
                devices.add_metric([vendor, state], n)
            for (queue, kind), n in sorted(api.jobs.running_counts().items()):
                running.add_metric([queue, kind_label(kind)], n)
            ready = sum(1 for n in nodes if n.ready)
            for state, n in (("not_ready", len(nodes) - ready), ("ready", ready)):
                node_gauge.add_metric([state], n)
            for (pool, level), n in sorted(largest_free_blocks(nodes, usage).items()):
                blocks.add_metric([pool, level], n)
            for queue, n in sorted(api.jobs.degraded_counts().items()):
                degraded.add_metric([queue], n)
            for core_id, st in sorted(getattr(getattr(api, "loop", None), "autoscale", {}).items()):
                jid, _, role = core_id.partition("/")  # a role of a job with roles: JOB/ROLE ('' for none)
                job = api.jobs.get(jid)
                if job is None or job.state.terminal:
                    continue
                if st.demand is not None:
                    demand.add_metric([job.queue, jid, role, st.metric], st.demand)
                target.add_metric([job.queue, jid, role, st.metric], st.target_per_replica)
                replicas.add_metric([job.queue, jid, role, "desired"], st.desired_replicas)
                replicas.add_metric([job.queue, jid, role, "placed"], st.running_replicas)
        yield from families


def device_counts(nodes: list, usage: dict) -> dict[tuple[str, str], int]:
    """(vendor, state) -> devices, state in free, allocated, unhealthy."""
    counts: dict[tuple[str, str], int] = {}
    for n in nodes:
        for d in n.record.devices:
            if not d.health.schedulable:
                state = "unhealthy"
            elif usage.get(f"{n.record.name}/{d.index}", (0, []))[0] > 0:
                state = "allocated"
            else:
                state = "free"
            counts[(d.vendor, state)] = counts.get((d.vendor, state), 0) + 1
    return counts


def largest_free_blocks(nodes: list, usage: dict) -> dict[tuple[str, str], int]:
    """(model, level) -> the most free devices of that model on one node ("node") and in one
    super-node ("supernode"; a node without a ``supernode`` label is its own), i.e. the biggest
    single-model gang that fits now. Free = on a ready node, schedulable health, no share
    allocated. Read from the owners' state, so it also works when the core runs in a child
    process; O(devices + allocations)."""
    per_node: dict[tuple[str, str], int] = {}  # (model, node) -> free
    per_super: dict[tuple[str, str], int] = {}  # (model, supernode) -> free
    models: set[str] = set()
    for n in nodes:
        name = n.record.name
        supernode = dict(n.record.labels).get("supernode") or name
        for d in n.record.devices:
            models.add(d.model)
            if not n.ready or not d.health.schedulable or usage.get(f"{name}/{d.index}", (0, []))[0] > 0:
                continue
            per_node[(d.model, name)] = per_node.get((d.model, name), 0) + 1
            per_super[(d.model, supernode)] = per_super.get((d.model, supernode), 0) + 1
    out = {(m, level): 0 for m in models for level in ("node", "supernode")}
    for (m, _), c in per_node.items():
        out[(m, "node")] = max(out[(m, "node")], c)
    for (m, _), c in per_super.items():
        out[(m, "supernode")] = max(out[(m, "supernode")], c)
    return out
