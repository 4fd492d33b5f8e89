"""Prometheus metrics of the scheduler service (names per research/ecosystem.md 1.4, prefix xpod_).

Counters are updated by ``SchedulerApi`` hooks; gauges are computed at scrape time from the
API's state (a custom collector), so they are never stale and cost nothing between scrapes.
Each server gets its own ``CollectorRegistry`` (tests run several in one process).

Job ``kind`` labels are the core's words (training, serving, batch), as on the exporter's
allocation series. ``grpc_server_*`` (go-grpc-prometheus names) live in the same registry:
``build_server`` installs ``grpc_interceptor()`` when the API has these metrics attached.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from .grpc_metrics import GrpcServerMetrics

# go-grpc-prometheus-like spread from a second to a day: submit -> placed spans both.
QUEUE_WAIT_BUCKETS_S = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)
#: closed set of eviction reasons (``evicted_jobs_total{reason}``)
EVICTION_REASONS = (
    "preempted",
    "reclaimed",
    "node_not_ready",
    "node_removed",
    "device_unhealthy",
    "lost_after_restart",
    "other",
)


def kind_label(kind: str) -> str:
    """``TrainingJob`` -> ``training`` (the stored kind as the core names it)."""
    return kind[: -len("Job")].lower() if kind.endswith("Job") else kind.lower()


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._api: Any = None
        self.schedule_attempts = Counter(
            "xpod_scheduler_schedule_attempts",
            "Jobs a scheduling cycle tried to place, by result (scheduled, unschedulable).",
            ["result"],
            registry=self.registry,
        )
        self.cycle_seconds = Histogram(
            "xpod_scheduler_scheduling_cycle_duration_seconds",
            "Wall time of one scheduling cycle of the core.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "xpod_scheduler_scheduling_attempt_duration_seconds",
            "Seconds the core spent searching a placement for one job in one cycle, by result (scheduled, unschedulable).",
            ["result"],
            buckets=(
                1e-05,
                2.5e-05,
                5e-05,
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                1,
            ),
            registry=self.registry,
        )
        self.submitted_jobs = Counter(
            "xpod_scheduler_submitted_jobs", "Jobs accepted (durably) by SubmitJob.", ["queue"], registry=self.registry
        )
        self._submitted_by_queue: dict[str, Any] = {}
        self.finished_jobs = Counter(
            "xpod_scheduler_finished_jobs",
            "Jobs that ended, by outcome.",
            ["queue", "kind", "outcome"],
            registry=self.registry,
        )
        self.shed_requests = Counter(
            "xpod_scheduler_shed_requests",
            "Requests refused with RESOURCE_EXHAUSTED to shed load.",
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "xpod_scheduler_queue_wait_seconds",
            "Seconds from submission to a job's first placement, observed when a cycle binds it.",
            ["queue", "kind"],
            buckets=QUEUE_WAIT_BUCKETS_S,
            registry=self.registry,
        )
        self.preemption_attempts = Counter(
            "xpod_scheduler_preemption_attempts",
            "Times a cycle tried to preempt or reclaim for a pending job that had eligible victims.",
            registry=self.registry,
        )
        self.evicted_jobs = Counter(
            "xpod_scheduler_evicted_jobs",
            "Bound jobs that lost their devices (requeued or failed), by reason.",
            ["queue", "reason"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "xpod_scheduler_leader",
            "1 on the replica that leads (runs the scheduling loop and takes writes), 0 on the others.",
            registry=self.registry,
        )
        self.leader_changes = Counter(
            "xpod_scheduler_leader_changes",
            "Times this replica became leader or stopped being it.",
            registry=self.registry,
        )
        self.grpc = GrpcServerMetrics(self.registry)
        self.registry.register(_StateCollector(self))

    def grpc_interceptor(self):
        """A ``grpc.ServerInterceptor`` keeping ``grpc_server_*`` in this registry."""
        return self.grpc.interceptor()

    def grpc_aio_wrapper(self):
        """For a ``grpc.aio`` server (``scheduler.service``): ``wrap(full_method, handler)``
        returning the handler counted in ``grpc_server_*``, applied once at registration."""
        return self.grpc.wrap_aio_handler

    def attach(self, api: Any) -> None:
        self._api = api
        api.metrics = self

    # hooks called by SchedulerApi

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

    def cycle(self, outcome: Any, elapsed_s: float, api: Any) -> None:
        self.cycle_seconds.observe(elapsed_s)
        attempts = getattr(outcome, "preemption_attempts", 0)
        if attempts:
            self.preemption_attempts.inc(attempts)
        reasons = getattr(outcome, "eviction_reasons", {})
        for jid in outcome.evictions:
            queue = api.job_queue(jid) if api is not None else None
            if queue is not None:
                self.evicted(queue, reasons.get(jid, "other"))
        for jid, seconds in getattr(outcome, "attempt_seconds", {}).items():
            result = "scheduled" if jid in outcome.bindings else "unschedulable"
            self.attempt_seconds.labels(result=result).observe(seconds)
        if outcome.bindings:
            self.schedule_attempts.labels(result="scheduled").inc(len(outcome.bindings))
        if outcome.pending:
            self.schedule_attempts.labels(result="unschedulable").inc(len(outcome.pending))


class _StateCollector:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        api = self._metrics._api
        pending = GaugeMetricFamily(
            "xpod_scheduler_pending_jobs", "Queued jobs by queue and pending reason.", labels=["queue", "reason"]
        )
        devices = GaugeMetricFamily(
            "xpod_scheduler_devices",
            "Schedulable devices by vendor and state (free, allocated, unhealthy).",
            labels=["vendor", "state"],
        )
        running = GaugeMetricFamily(
            "xpod_scheduler_running_jobs",
            "Jobs holding devices (SCHEDULED or RUNNING) by queue and kind.",
            labels=["queue", "kind"],
        )
        nodes = GaugeMetricFamily(
            "xpod_scheduler_nodes", "Nodes by state: ready, or not_ready (heartbeats stopped).", labels=["state"]
        )
        degraded = GaugeMetricFamily(
            "xpod_scheduler_degraded_jobs",
            "Serving jobs running below their min replicas while lost replicas are being replaced, by queue.",
            labels=["queue"],
        )
        blocks = GaugeMetricFamily(
            "xpod_scheduler_largest_free_block_devices",
            "Most free healthy devices of one model (pool) on one node / in one super-node: the biggest gang that fits now.",
            labels=["pool", "level"],
        )
        if api is not None:
            for (queue, reason), n in sorted(api.pending_counts().items()):
                pending.add_metric([queue, reason], n)
            for (vendor, state), n in sorted(api.device_counts().items()):
                devices.add_metric([vendor, state], n)
            for (queue, kind), n in sorted(api.running_counts().items()):
                running.add_metric([queue, kind_label(kind)], n)
            for state, n in sorted(api.node_counts().items()):
                nodes.add_metric([state], n)
            for (pool, level), n in sorted(api.largest_free_blocks().items()):
                blocks.add_metric([pool, level], n)
            liveness = getattr(api, "liveness", None)
            if liveness is not None:
                for queue, n in sorted(liveness.degraded_counts().items()):
                    degraded.add_metric([queue], n)
        yield pending
        yield devices
        yield running
        yield nodes
        yield blocks
        yield degraded
