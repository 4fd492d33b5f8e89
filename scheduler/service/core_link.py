"""The service's one link to the scheduler core: ``CoreLink``, in this process
(``InProcessCore``) or in a child process (``ChildProcessCore``, the default of ``xpod server``:
the core's cycles then do not hold the API's GIL). There is exactly one core ``Scheduler``;
admission asks it too (``admit``, once per job shape). Values crossing the link are core values
or store records. Any thread may call; ``atomic()`` holds the link for calls that must not
interleave with a cycle.

Jobs with roles reach the core as one job per role (id ``JOB/ROLE``, ``group`` JOB); this link
numbers each role's tasks after the earlier roles' and speaks of the stored job alone (bindings,
evictions, reasons; ``remove_job(JOB)`` removes every role). A node that is not ready stays in
the core, closed to placement: it counts for what the cluster could ever hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
from typing import Any, Protocol

from xpod.hal.device import Health
from xpod.hal.errors import XpodError
from xpod.scheduler.core.fabric import Fabric
from xpod.scheduler.core.model import Binding, Job, Node, Queue
from xpod.scheduler.core.scheduler import Scheduler, UnknownLoadSource
from xpod.scheduler.core.snapshot import Statement
from xpod.scheduler.store import AllocationRecord, PendingReasonRecord


@dataclasses.dataclass(frozen=True)
class Resized:
    """A running job the cycle resized in place (the core's ``Resize``es of one job, merged):
    ``released`` tasks stop (a shrunk gang's, a serving job's scaled-down replicas); a gang
    with ``restart`` starts again with its new world size (one restart counted)."""

    released: tuple[int, ...]
    restart: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class CycleOutcome:
    """What one scheduling cycle decided, in store words."""

    bindings: dict[str, tuple[AllocationRecord, ...]]  # job id -> tasks bound in this cycle
    evictions: dict[str, str]  # job id -> why its allocation was taken back
    pending: dict[str, PendingReasonRecord]  # job id -> why it still waits (the core's reason codes)
    seconds: float = 0.0  # the core's own time for the cycle
    eviction_reasons: dict[str, str] = dataclasses.field(default_factory=dict)  # job id -> metrics word
    preemption_attempts: int = 0  # pending jobs the core tried to preempt or reclaim for
    attempt_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # job id -> search time
    resizes: dict[str, Resized] = dataclasses.field(default_factory=dict)  # job id -> resized in place
    # autoscaled serving job id -> what its autoscaling saw and decided (``core.scheduler.AutoscaleStatus``)
    autoscale: dict[str, Any] = dataclasses.field(default_factory=dict)


class CoreLink(Protocol):
    """The calls the service makes on its core (see the module docstring)."""

    def atomic(self) -> contextlib.AbstractContextManager: ...

    def admit(self, job: Job) -> tuple[XpodError | None, PendingReasonRecord | None]:
        """The core's checks (an error) and its "can never fit" (a reason) for a new job."""

    def set_node(self, node: Node, ready: bool, reason: str = "") -> None:
        """Add or replace a node (a replaced one evicts what ran there); ``ready`` False keeps it
        out of placement, ``reason`` saying why ("waiting for agents")."""

    def set_ready(self, name: str, ready: bool, reason: str = "") -> None: ...

    def set_device_health(self, node: str, index: int, health: Health) -> None: ...

    def add_job(self, job: Job) -> None:
        """A QUEUED job enters the core's queue."""

    def restore_job(self, job: Job, allocations: tuple[AllocationRecord, ...], since_s: float) -> None:
        """A job that holds ``allocations`` (after a restart) is bound again in the core."""

    def remove_job(self, job_id: str) -> None:
        """Forget a job (cancelled, finished, failed) and free what it held. Idempotent."""

    def release_tasks(self, job_id: str, tasks: list[int], why: str) -> list[int]:
        """Release these replicas of a running serving job alone; the tasks released."""

    def report_load(self, job_id: str, replica: int, value: float) -> tuple[str, str, int]:
        """Record a serving replica's load (``Scheduler.report_load``): ("", "", replicas the job
        wants) or, refused with nothing recorded, ("not_found", why, 0) for a job that is no
        autoscaled serving job in the core or a replica it does not run, ("invalid", why, 0)
        for a value that is no finite number >= 0."""

    def cycle(self, now_s: float) -> CycleOutcome: ...

    def close(self) -> None: ...


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def pending_record(r: Any) -> PendingReasonRecord:
    """The core's ``PendingReason`` in store words (numbers as lowerCamelCase metadata)."""
    metadata = {_camel(k): f"{v:g}" if isinstance(v, float) else str(v) for k, v in dict(r.numbers).items()}
    metadata["queuePosition"] = str(r.queue_position)
    metadata["jobsAhead"] = str(r.jobs_ahead)
    if r.estimated_start is not None:
        metadata["estimatedStartTime"] = f"{r.estimated_start:.0f}"
    return PendingReasonRecord(r.code.name, r.message, tuple(sorted(metadata.items())))


def _eviction_reason(e: Any) -> str:
    """The core's ``Eviction`` as a ``service.metrics.EVICTION_REASONS`` word (metric label)."""
    if e.preemptor is not None:
        return "reclaimed" if e.reason.startswith("reclaimed") else "preempted"
    if e.reason.startswith("node "):  # core.remove_node: "node NAME removed" (re-registered)
        return "node_removed"
    if e.reason.startswith("device "):  # core.set_device_health: "device N/I unhealthy"
        return "device_unhealthy"
    return "other"


def _fabric(cluster: Any) -> Fabric | None:
    """A cluster descriptor's tiers for the core; None (no descriptor): the core derives them
    from the nodes as agents register them."""
    if cluster is None:
        return None
    from xpod.scheduler.core.from_cluster import fabric_from_cluster

    return fabric_from_cluster(cluster)


class InProcessCore:
    """``CoreLink`` over a ``Scheduler`` in this process; ``cluster``: the loaded cluster
    descriptor whose tiers the core knows jobs by (``within``), if any; ``scheduler``: a core
    built by the caller (a profile, nodes of its own: the replay's agreement test)."""

    def __init__(
        self, cluster: Any = None, *, fabric: Fabric | None = None, scheduler: Scheduler | None = None
    ) -> None:
        # the service applies resizes (``SchedulingLoop``: released tasks leave the job's
        # allocations, a resized gang restarts in place), so the core may shrink and scale down
        self.scheduler = scheduler or Scheduler(
            queues=(Queue("default"),), fabric=fabric or _fabric(cluster), resizes=True
        )
        self._lock = threading.RLock()
        self._lost: dict[str, str] = {}  # restored jobs whose devices are gone: evicted at the next cycle
        self._roles: dict[str, tuple[str, int]] = {}  # a role's core job id -> (the job's id, its first task)
        self._members: dict[str, list[str]] = {}  # a job with roles -> its roles' core job ids, in order
        self._tasks: dict[str, int] = {}  # a role's core job id -> its tasks

    def atomic(self) -> contextlib.AbstractContextManager:
        return self._lock

    def _queue(self, job: Job) -> None:
        if job.queue not in self.scheduler.queues:
            self.scheduler.queues[job.queue] = Queue(job.queue)

    def admit(self, job: Job) -> tuple[XpodError | None, PendingReasonRecord | None]:
        with self._lock:
            self._queue(job)
            try:  # the core's own checks are its submit's: submitted under the placeholder id, taken back
                self.scheduler.submit(job)
            except XpodError as err:
                return err, None
            finally:
                self.scheduler.cancel(job.id)
            never = self.scheduler.never_fits(job)
        if never is None:
            return None, None
        numbers = {
            "needDevices": never.need_devices + never.reserve_devices,
            "reserveDevices": never.reserve_devices,
            "largestDomainDevices": never.cluster_devices,
        }
        return None, PendingReasonRecord(
            "EXCEEDS_CLUSTER_CAPACITY", never.message, tuple(sorted((k, str(v)) for k, v in numbers.items()))
        )

    def set_node(self, node: Node, ready: bool, reason: str = "") -> None:
        with self._lock:
            if node.name in self.scheduler.snapshot.nodes:
                # what still ran there was requeued by the service first; a job that slipped in is evicted whole
                self.scheduler.remove_node(node.name, replace_replicas=False)
            self.scheduler.add_node(node, ready, reason)

    def set_ready(self, name: str, ready: bool, reason: str = "") -> None:
        with self._lock:
            self.scheduler.set_node_ready(name, ready, reason)

    def set_device_health(self, node: str, index: int, health: Health) -> None:
        with self._lock:
            # evicts what ran there whole (the service persists evictions, not replica replacements)
            self.scheduler.set_device_health(node, index, health, replace_replicas=False)

    def add_job(self, job: Job) -> None:
        with self._lock:
            self._queue(job)
            if job.group is not None and job.id not in self._roles:
                members = self._members.setdefault(job.group, [])
                self._roles[job.id] = (job.group, sum(self._tasks[m] for m in members))
                self._tasks[job.id] = job.tasks
                members.append(job.id)
            self.scheduler.submit(job)

    def _outer(self, job_id: str, task: int = 0) -> tuple[str, int]:
        """(the service's job id, its task number) of a core job's task (a role's: offset)."""
        parent, first = self._roles.get(job_id, (job_id, 0))
        return parent, first + task

    def restore_job(self, job: Job, allocations: tuple[AllocationRecord, ...], since_s: float) -> None:
        """Bind a job again exactly where the store says it runs (after a restart)."""
        with self._lock:
            self.add_job(job)
            core = self.scheduler.pending[job.id]
            snap = self.scheduler.snapshot
            _, first = self._outer(job.id)
            if job.group is not None:  # a role: its share of the job's tasks, numbered from 0
                mine = [a for a in allocations if first <= a.task < first + job.tasks]
                allocations = tuple(dataclasses.replace(a, task=a.task - first) for a in mine)
            bindings = []
            for a in allocations:
                try:
                    indices = tuple(int(d.rsplit("/", 1)[1]) for d in a.devices)
                except (IndexError, ValueError):
                    indices = ()
                bindings.append(
                    Binding(
                        job.id, a.task, a.node, indices, a.milli_per_device, a.cpu_milli, a.memory_bytes,
                        a.device_memory_bytes,
                    )
                )  # fmt: skip
            if not snap.can_apply(bindings):
                # its node left the cluster or lost devices: back to the queue, reported as an eviction
                self._lost[job.id] = "its devices are no longer in the cluster after a restart"
                return
            stmt = Statement(snap, since_s)
            for b in bindings:
                stmt.bind(core, b)
            stmt.commit({job.id: core})

    def remove_job(self, job_id: str) -> None:
        with self._lock:
            for jid in [job_id, *self._members.pop(job_id, ())]:
                self.scheduler.cancel(jid)
                self._lost.pop(jid, None)
                self._roles.pop(jid, None)
                self._tasks.pop(jid, None)

    def release_tasks(self, job_id: str, tasks: list[int], why: str) -> list[int]:
        with self._lock:
            members = self._members.get(job_id)
            if not members:
                return [r.task for r in self.scheduler.replace_tasks(job_id, tasks, why)]
            out = []  # a job with roles: each role's replicas released in the role's own task numbers
            for core_id in members:
                _, first = self._roles[core_id]
                mine = [t - first for t in tasks if first <= t < first + self._tasks[core_id]]
                if mine:
                    out += [first + r.task for r in self.scheduler.replace_tasks(core_id, mine, why)]
            return sorted(out)

    def report_load(self, job_id: str, replica: int, value: float) -> tuple[str, str, int]:
        with self._lock:
            try:
                self.scheduler.report_load(job_id, replica, value)
            except UnknownLoadSource as err:
                return "not_found", str(err), 0
            except XpodError as err:
                return "invalid", str(err), 0
            status = self.scheduler.autoscale_status(job_id)
        return "", "", status.desired_replicas if status is not None else 0

    def cycle(self, now_s: float) -> CycleOutcome:
        with self._lock:
            result = self.scheduler.cycle(now_s)
            lost, self._lost = self._lost, {}
            attempt_seconds = dict(self.scheduler.last_attempt_seconds)
            snap = self.scheduler.snapshot
            scaled = {j.id for j in self.scheduler.pending.values() if j.autoscale is not None}
            scaled |= {jid for jid, rj in snap.running.items() if rj.job.autoscale is not None}
            autoscale = {jid: st for jid in scaled if (st := self.scheduler.autoscale_status(jid)) is not None}
        resizes: dict[str, Resized] = {}
        for r in result.resizes:
            # a role's resize (one role of a job with roles scaled down) in the job's task numbers
            jid, first = self._outer(r.job_id)
            released = tuple(first + t for t in r.released)
            old = resizes.get(jid)
            resizes[jid] = (
                Resized(released, r.restart, r.reason)
                if old is None
                else Resized(
                    tuple(sorted({*old.released, *released})), old.restart or r.restart, f"{old.reason}; {r.reason}"
                )
            )
        bindings: dict[str, list[AllocationRecord]] = {}
        for b in result.bindings:
            jid, task = self._outer(b.job_id, b.task)
            bindings.setdefault(jid, []).append(
                AllocationRecord(
                    b.node, tuple(f"{b.node}/{i}" for i in b.device_indices), b.milli, task, b.cpu_milli,
                    b.memory_bytes, b.device_memory_bytes,
                )
            )  # fmt: skip
        outer = self._outer
        lost = {outer(jid)[0]: why for jid, why in lost.items()}
        pending = {outer(jid)[0]: pending_record(r) for jid, r in result.pending.items()}
        seconds: dict[str, float] = {}
        for jid, s in attempt_seconds.items():
            seconds[outer(jid)[0]] = seconds.get(outer(jid)[0], 0.0) + s
        return CycleOutcome(
            bindings={jid: tuple(sorted(v, key=lambda a: a.task)) for jid, v in bindings.items()},
            evictions={**{outer(e.job_id)[0]: e.reason for e in result.evictions}, **lost},
            pending={jid: r for jid, r in pending.items() if jid not in bindings},
            seconds=result.seconds,
            eviction_reasons={
                **{outer(e.job_id)[0]: _eviction_reason(e) for e in result.evictions},
                **{jid: "lost_after_restart" for jid in lost},
            },
            preemption_attempts=result.preemption_attempts,
            attempt_seconds=seconds,
            resizes=resizes,
            autoscale=autoscale,
        )

    def close(self) -> None:
        pass


# --- the core in a child process ---------------------------------------------------------------

#: calls that wait for the child's answer; every other call is one-way and buffered
_WAITING = frozenset({"admit", "release_tasks", "report_load", "cycle"})
_BATCH_OPS = 64


def _child(conn: Any, fabric: Fabric | None) -> None:
    core = InProcessCore(fabric=fabric)
    failure: BaseException | None = None
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            return
        if op == "stop":
            return
        calls = args if op == "batch" else [(op, args)]
        for one_op, one_args in calls:
            try:
                result = getattr(core, one_op)(*one_args)
            except BaseException as err:  # reported to the parent by the next call that waits
                failure = failure or err
                result = None
            if one_op in _WAITING:
                conn.send(("error", failure) if failure is not None else ("ok", result))
                failure = None


def _forward(op: str) -> Any:
    def call(self: "ChildProcessCore", *args: Any) -> Any:
        return self._call(op, *args) if op in _WAITING else self._send(op, *args)

    call.__name__ = op
    return call


class ChildProcessCore:
    """``CoreLink`` with the core in a child process. One-way calls are buffered and go over as
    one batch (one pickle, one write) just before the next call that waits for an answer
    (``admit``, ``release_tasks``, ``cycle``): the child only needs them by then. Waiting on the
    pipe releases the GIL, so the parent's threads run while the child cycles. An error the child
    meets on a one-way call is raised by the next call that waits."""

    def __init__(self, cluster: Any = None) -> None:
        ctx = multiprocessing.get_context("spawn")  # the server has threads: never fork it
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child_conn, _fabric(cluster)), name="xpod-core", daemon=True)
        self._proc.start()
        child_conn.close()
        self._lock = threading.RLock()
        self._outbox: list[tuple[str, tuple]] = []  # one-way calls not sent yet (under _lock)

    def atomic(self) -> contextlib.AbstractContextManager:
        return self._lock

    def _send(self, op: str, *args: Any) -> None:
        with self._lock:
            self._outbox.append((op, args))

    def _call(self, op: str, *args: Any) -> Any:
        """A call that waits for the child's answer, after everything buffered before it. The
        buffer goes in messages of at most ``_BATCH_OPS`` calls: pickling runs in C without
        letting go of the GIL, so one message for a whole burst would stall the other threads."""
        with self._lock:
            batch, self._outbox = self._outbox, []
            for i in range(0, len(batch), _BATCH_OPS):
                self._conn.send(("batch", batch[i : i + _BATCH_OPS]))
            self._conn.send((op, args))
            status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"scheduler core process failed: {value!r}") from value
        return value

    # ``CoreLink``: the calls in ``_WAITING`` wait for the child's answer; the others are buffered
    admit = _forward("admit")
    set_node = _forward("set_node")
    set_ready = _forward("set_ready")
    set_device_health = _forward("set_device_health")
    add_job = _forward("add_job")
    restore_job = _forward("restore_job")
    remove_job = _forward("remove_job")
    release_tasks = _forward("release_tasks")
    report_load = _forward("report_load")
    cycle = _forward("cycle")

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            with self._lock:
                self._outbox.clear()  # the child's state dies with it
                self._conn.send(("stop", ()))
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
