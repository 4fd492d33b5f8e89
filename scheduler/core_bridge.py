"""The service's seam to the scheduler core: ``CorePlacer`` implements ``api.Placer`` over the
core's ``Scheduler`` facade (``scheduler.core``), its job-spec parser (``scheduler.spec``) and
its cluster adapter (``scheduler.from_cluster``).

Job documents (``examples/jobs/*.yaml``) are a Kubernetes-style envelope around the core's
flat job spec::

    apiVersion: xpod/v1          # optional; only xpod/v1
    kind: TrainingJob            # TrainingJob | ServingJob | BatchJob
    metadata:
      name: llama-70b-pretrain   # 1..63 of [a-z0-9-.], starting and ending alphanumeric
      labels: {team: nlp}        # optional, string values
    spec:                        # scheduler.spec.parse_job's document, without kind/id/name
      tasks: 4
      devices: {count: 16, model: ascend-910c}
      queue: research

Every refusal is ``SpecInvalid(field, message)`` with the dotted path from the document's root
(``spec.devices.count``), which the CLI maps back to a line of the file.

Queues: the core knows queues by name; a queue named in a job that the core does not know yet is
created with default shares (weight 1, no cap), so submitters need no queue administration.
Who may use which queue is the token file's business (``scheduler.auth``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any

from xpod.hal.device import Health
from xpod.hal.errors import XpodError

from .api import CycleOutcome, NodeView, DeviceView, ParsedJob, SpecInvalid
from .core.scheduler import Scheduler
from .core.model import Binding, Job, JobKind, Node, Queue
from .core.snapshot import Statement
from .core.spec import parse_job
from .store import AllocationRecord, JobRecord, PendingReasonRecord

KINDS = {"TrainingJob": JobKind.TRAINING, "ServingJob": JobKind.SERVING, "BatchJob": JobKind.BATCH}
_ENVELOPE = ("apiVersion", "kind", "metadata", "spec")
_METADATA = ("name", "labels")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_CORE_ERROR = re.compile(r"^[^:]*: ([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$")
_VALIDATION_ID = "__xpod_validate__"


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _field_error(err: XpodError, prefix: str = "spec") -> SpecInvalid:
    """The core's ``WHERE: field: message`` as SpecInvalid("spec.field", message)."""
    m = _CORE_ERROR.match(str(err))
    if m:
        return SpecInvalid(f"{prefix}.{m.group(1)}", m.group(2))
    return SpecInvalid(prefix, str(err).split(": ", 1)[-1])


def parse_document(document: Any) -> tuple[str, str, dict[str, Any], Job]:
    """Validate a job document; returns (kind, name, labels, core Job with a placeholder id)."""
    if not isinstance(document, dict):
        raise SpecInvalid("job", "a job document is a mapping with kind, metadata and spec")
    for key in document:
        if key not in _ENVELOPE:
            raise SpecInvalid(str(key), f"unknown key (allowed: {', '.join(_ENVELOPE)})")
    api_version = document.get("apiVersion", "xpod/v1")
    if api_version != "xpod/v1":
        raise SpecInvalid("apiVersion", f"{api_version!r} is not supported (use xpod/v1)")
    kind = document.get("kind")
    if kind not in KINDS:
        raise SpecInvalid("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise SpecInvalid("metadata", "a mapping with at least name")
    for key in metadata:
        if key not in _METADATA:
            raise SpecInvalid(f"metadata.{key}", f"unknown key (allowed: {', '.join(_METADATA)})")
    name = metadata.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecInvalid(
            "metadata.name", f"{name!r} must be 1..63 of a-z, 0-9, '-', '.', starting and ending alphanumeric"
        )
    labels = metadata.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise SpecInvalid("metadata.labels", "a mapping of strings to strings")
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise SpecInvalid("spec", "a mapping (tasks, devices, queue, ...)")
    for key in ("kind", "id", "name"):
        if key in spec:
            raise SpecInvalid(
                f"spec.{key}", f"set {'kind' if key == 'kind' else 'metadata.name'} at the top, not in spec"
            )
    return kind, name, labels, _parse_spec(kind, spec)


# (kind, canonical JSON of spec) -> the core Job it parses to. The core Job depends on nothing
# else (not the name, not the labels), and a stream of submissions repeats a few shapes, so a
# submission's validation is mostly one dict lookup. Successes only; cleared when it grows big.
_SPEC_CACHE: dict[tuple[str, str], Job] = {}
_SPEC_CACHE_MAX = 10_000
_SPEC_KEY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _parse_spec(kind: str, spec: dict[str, Any]) -> Job:
    try:
        key: tuple[str, str] | None = (kind, _SPEC_KEY.encode(spec))
    except (TypeError, ValueError):  # not plain JSON (a YAML date, say): parse without the cache
        key = None
    if key is not None:
        job = _SPEC_CACHE.get(key)
        if job is not None:
            return job
    from .taskspec import TaskFieldError, parse_task_fields, split_spec  # what the agent runs (command, restart, ...)

    try:
        parse_task_fields(kind, spec)
    except TaskFieldError as err:
        raise SpecInvalid(err.field, err.message) from None
    try:
        job = parse_job({**split_spec(spec), "kind": KINDS[kind].value}, source="spec", job_id=_VALIDATION_ID)
    except XpodError as err:
        raise _field_error(err) from None
    if key is not None:
        if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = job
    return job


def node_from_view(view: NodeView) -> Node:
    """A core Node for a node an agent registered (CPU and memory 0 = not a constraint), its
    devices enriched from the catalog as the cluster file's are (``from_cluster.enrich_device``)."""
    from .core.from_cluster import node_from_devices

    labels = dict(view.labels)
    supernode = labels.get("supernode")
    return node_from_devices(
        view.name,
        ((d.index, d.model, d.vendor, d.memory_total_bytes) for d in view.devices),
        cpu_milli=view.cpu_milli,
        memory_bytes=view.memory_bytes,
        labels=labels,
        domains={"supernode": supernode} if supernode else {},
        failure_domain=labels.get("failure_domain") or supernode,
    )


def view_from_node(node: Node) -> NodeView:
    labels = {str(k): str(v) for k, v in dict(node.labels).items()}
    if node.domains.get("supernode"):
        labels["supernode"] = node.domains["supernode"]
    if node.failure_domain:
        labels["failure_domain"] = node.failure_domain
    return NodeView(
        name=node.name,
        devices=tuple(DeviceView(node.name, d.index, d.vendor, d.model, d.memory_bytes, "ok") for d in node.devices),
        labels=tuple(sorted(labels.items())),
        cpu_milli=node.cpu_milli,
        memory_bytes=node.memory_bytes,
    )


def cluster_inventory(cluster) -> list[NodeView]:
    """NodeViews of a loaded ``hal.cluster.Cluster`` (through the core's own adapter)."""
    from .core.from_cluster import nodes_from_cluster

    return [view_from_node(n) for n in nodes_from_cluster(cluster)]


def _eviction_reason(e) -> str:
    """The core's ``Eviction`` as a ``service_metrics.EVICTION_REASONS`` word (metric label)."""
    if e.preemptor is not None:
        return "reclaimed" if e.reason.startswith("reclaimed") else "preempted"
    if e.reason.startswith("node "):  # core.remove_node: "node NAME removed" (re-registered)
        return "node_removed"
    if e.reason.startswith("device "):  # core.set_device_health: "device N/I unhealthy"
        return "device_unhealthy"
    return "other"


class CorePlacer:
    """``api.Placer`` over ``core.Scheduler``. The API serialises every call but ``parse`` and
    ``never_fits``, which may run at the same time as the others (they use a shadow facade)."""

    def __init__(self, cluster=None, scheduler: Scheduler | None = None) -> None:
        fabric = None
        if cluster is not None and scheduler is None:
            from .core.from_cluster import fabric_from_cluster

            fabric = fabric_from_cluster(cluster)
        self.scheduler = scheduler or Scheduler(queues=(Queue("default"),), fabric=fabric)
        # Admission (parse, never_fits) runs on a shadow facade that has the same inventory but
        # no jobs, under its own lock: submissions are checked while a cycle runs on the live one.
        self._shadow = Scheduler(
            queues=tuple(self.scheduler.queues.values()),
            priority_classes=tuple(self.scheduler.priority_classes.values()),
            profile=self.scheduler.profile,
            fabric=self.scheduler.descriptor_fabric,
        )
        self._admission = threading.Lock()
        self._cluster_nodes: dict[str, Node] = {}
        if cluster is not None:
            from .core.from_cluster import nodes_from_cluster

            self._cluster_nodes = {n.name: n for n in nodes_from_cluster(cluster)}
        # Answers that depend only on the job's shape, not its name: validation by the facade
        # (static queues, classes and policies) and can-never-fit (reset on inventory changes).
        # Bounded, because every distinct shape is one entry.
        self._validated: dict[Job, None] = {}
        self._never_fits: dict[Job, PendingReasonRecord | None] = {}
        self._lost: dict[str, str] = {}  # restored jobs whose nodes are gone: evicted at the next cycle

    # parsing and admission

    def parse(self, document: dict[str, Any]) -> ParsedJob:
        """Thread-safe with respect to the other methods (uses the shadow facade)."""
        kind, name, _, job = parse_document(document)
        with self._admission:
            sched = self._shadow
            if job.queue not in sched.queues:
                sched.queues[job.queue] = Queue(job.queue)
            # The facade's own checks (priority class, the policies' validators such as the
            # Ascend rules): submit under a throw-away id and take it back at once.
            if job not in self._validated:
                try:
                    sched.submit(dataclasses.replace(job, submit_time=1.0))
                except XpodError as err:
                    raise _field_error(err) from None
                finally:
                    sched.pending.pop(_VALIDATION_ID, None)
                if len(self._validated) > 10_000:
                    self._validated.clear()
                self._validated[job] = None
        return ParsedJob(kind=kind, name=name, queue=job.queue, core=job)

    def never_fits(self, parsed: ParsedJob) -> PendingReasonRecord | None:
        """The core's own verdict (``Scheduler.never_fits``, the check the enqueue action
        makes too) on the shadow facade's inventory."""
        job: Job = parsed.core
        if job.devices is None:
            return None
        with self._admission:
            if job not in self._never_fits:
                if len(self._never_fits) > 10_000:
                    self._never_fits.clear()
                verdict = self._shadow.never_fits(job)
                self._never_fits[job] = (
                    None
                    if verdict is None
                    else PendingReasonRecord(
                        "EXCEEDS_CLUSTER_CAPACITY",
                        verdict.message,
                        tuple(
                            sorted(
                                {
                                    "needDevices": str(verdict.need_devices + verdict.reserve_devices),
                                    "reserveDevices": str(verdict.reserve_devices),
                                    "largestDomainDevices": str(verdict.cluster_devices),
                                    "where": verdict.where,
                                }.items()
                            )
                        ),
                    )
                )
            return self._never_fits[job]

    # inventory

    def add_node(self, node: NodeView) -> None:
        core = self._cluster_nodes.get(node.name)
        if core is None or [(d.vendor, d.model) for d in core.devices] != [(d.vendor, d.model) for d in node.devices]:
            # an agent that found other devices than the cluster file declares: its own count
            core = node_from_view(node)
        unhealthy = [(d.index, h) for d in node.devices if not (h := Health.parse(d.health)).schedulable]
        self.scheduler.add_node(core)
        for i, h in unhealthy:
            self.scheduler.set_device_health(node.name, i, h)
        with self._admission:
            self._shadow.add_node(core)
            for i, h in unhealthy:
                self._shadow.set_device_health(node.name, i, h)
            self._inventory_changed()

    def remove_node(self, name: str) -> None:
        if name not in self.scheduler.snapshot.nodes:
            return  # already out of placement (a NotReady node, see scheduler.liveness)
        # jobs still bound there were requeued, failed or had replicas replaced by the API
        # (scheduler.liveness) before this; one that slipped in meanwhile is evicted whole
        self.scheduler.remove_node(name, replace_replicas=False)
        with self._admission:
            self._shadow.remove_node(name)
            self._inventory_changed()

    def set_device_health(self, node: str, index: int, health: str) -> None:
        state = Health.parse(health)
        if node not in self.scheduler.snapshot.nodes:
            return  # NotReady (scheduler.liveness): its health applies when it is added back
        # evicts what ran there whole (the API persists evictions, not replica replacements)
        self.scheduler.set_device_health(node, index, state, replace_replicas=False)
        with self._admission:
            self._shadow.set_device_health(node, index, state)
            self._inventory_changed()

    def _inventory_changed(self) -> None:
        self._never_fits.clear()

    # jobs

    def _core_job(self, job: JobRecord, parsed: ParsedJob) -> Job:
        return dataclasses.replace(parsed.core, id=job.id, submit_time=job.create_time_s or 1.0)

    def add_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        core = self._core_job(job, parsed)
        if core.queue not in self.scheduler.queues:
            self.scheduler.queues[core.queue] = Queue(core.queue)
        self.scheduler.submit(core)

    def restore_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        """Bind a job again exactly where the store says it runs (after a restart)."""
        self.add_job(job, parsed)
        core = self.scheduler.pending[job.id]
        snap = self.scheduler.snapshot
        bindings = []
        for a in job.allocations:
            try:
                indices = tuple(int(d.rsplit("/", 1)[1]) for d in a.devices)
            except (IndexError, ValueError):
                indices = ()
            bindings.append(
                Binding(
                    job.id,
                    a.task,
                    a.node,
                    indices,
                    a.milli_per_device,
                    a.cpu_milli,
                    a.memory_bytes,
                    a.device_memory_bytes,
                )
            )
        if not snap.can_apply(bindings):
            # its node left the cluster file or lost devices: back to the queue, reported as an eviction
            self._lost[job.id] = "its devices are no longer in the cluster after a restart"
            return
        stmt = Statement(snap, job.update_time_s)
        for b in bindings:
            stmt.bind(core, b)
        stmt.commit({job.id: core})

    def release_tasks(self, job_id: str, tasks: list[int], why: str) -> list[int]:
        """Release these replicas of a running serving job alone; the next cycle places them
        again. Returns the tasks released ([] = nothing changed: not serving, or none left)."""
        return [r.task for r in self.scheduler.replace_tasks(job_id, tasks, why)]

    def remove_job(self, job_id: str) -> None:
        self.scheduler.cancel(job_id)
        self._lost.pop(job_id, None)

    def cycle(self, now_s: float) -> CycleOutcome:
        result = self.scheduler.cycle(now_s)
        bindings: dict[str, list[AllocationRecord]] = {}
        for b in result.bindings:
            bindings.setdefault(b.job_id, []).append(
                AllocationRecord(
                    node=b.node,
                    devices=tuple(f"{b.node}/{i}" for i in b.device_indices),
                    milli_per_device=b.milli,
                    task=b.task,
                    cpu_milli=b.cpu_milli,
                    memory_bytes=b.memory_bytes,
                    device_memory_bytes=b.device_memory_bytes,
                )
            )
        evictions = {e.job_id: e.reason for e in result.evictions}
        reasons = {e.job_id: _eviction_reason(e) for e in result.evictions}
        evictions.update(self._lost)
        reasons.update({jid: "lost_after_restart" for jid in self._lost})
        self._lost.clear()
        pending = {}
        for jid, r in result.pending.items():
            metadata = {_camel(k): f"{v:g}" if isinstance(v, float) else str(v) for k, v in dict(r.numbers).items()}
            metadata["queuePosition"] = str(r.queue_position)
            metadata["jobsAhead"] = str(r.jobs_ahead)
            if r.estimated_start is not None:
                metadata["estimatedStartTime"] = f"{r.estimated_start:.0f}"
            pending[jid] = PendingReasonRecord(r.code.name, r.message, tuple(sorted(metadata.items())))
        return CycleOutcome(
            bindings={jid: tuple(sorted(v, key=lambda a: a.task)) for jid, v in bindings.items()},
            evictions=evictions,
            pending=pending,
            seconds=result.seconds,
            eviction_reasons=reasons,
            preemption_attempts=result.preemption_attempts,
            attempt_seconds=dict(self.scheduler.last_attempt_seconds),
        )
