"""What the actions of one cycle share: the ``CycleState`` book-keeping, ``try_place`` (one
job's placement through a statement, committed only when its gang closes and the ``Permit``
plugins agree) and the queries about what a job needs (its tier, its unit, its reserve)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Iterable, Sequence

from ..fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from ..framework import CycleContext, Framework, JobOrder, QueueOrder
from ..framework.status import Code
from ..model import Binding, Eviction, Job, JobKind, ReasonCode, Resize
from ..placer import Placer
from ..snapshot import Snapshot, Statement


class PlacedTasks:
    """job id -> tasks running when the cycle began (or as the cycle set it), without copying
    every running job per cycle: reads fall through to the snapshot's running jobs, whose
    changes during the cycle report the value from before (``RunningJobs.watch``)."""

    def __init__(self, running) -> None:
        self._running = running
        self._set: dict[str, int] = {}
        self._before: dict[str, int] = {}
        running.watch = self

    def before_change(self, job_id: str, old) -> None:
        if job_id not in self._before:
            self._before[job_id] = len(old.bindings) if old is not None else 0

    def initial(self, job_id: str) -> int:
        """Tasks the job ran when the cycle began (0: it was not running)."""
        if job_id in self._before:
            return self._before[job_id]
        rj = self._running.get(job_id)
        return len(rj.bindings) if rj is not None else 0

    def close(self) -> None:
        """Stop following the running jobs (the cycle's actions are done)."""
        if self._running.watch is self:
            self._running.watch = None

    def get(self, job_id: str, default=None):
        if job_id in self._set:
            return self._set[job_id]
        if job_id in self._before:
            return self._before[job_id] or default
        rj = self._running.get(job_id)
        return len(rj.bindings) if rj is not None else default

    def __getitem__(self, job_id: str) -> int:
        n = self.get(job_id)
        if n is None:
            raise KeyError(job_id)
        return n

    def __setitem__(self, job_id: str, n: int) -> None:
        self._set[job_id] = n

    def __contains__(self, job_id: str) -> bool:
        return self.get(job_id) is not None


@dataclasses.dataclass
class CycleState:
    """Book-keeping shared by the actions of one cycle."""

    ctx: CycleContext
    placer: Placer
    pending: dict[str, Job]  # job id -> job still wanting tasks
    placed_tasks: "PlacedTasks | dict[str, int]"  # job id -> tasks running before this cycle
    enqueued: list[str] = dataclasses.field(default_factory=list)
    bindings: list[Binding] = dataclasses.field(default_factory=list)
    evictions: list[Eviction] = dataclasses.field(default_factory=list)
    failed: dict[str, ReasonCode] = dataclasses.field(default_factory=dict)
    heads: dict[str, str] = dataclasses.field(default_factory=dict)  # queue -> blocked head job id
    done: set = dataclasses.field(default_factory=set)
    decisions: int = 0
    queue_max_hit: set = dataclasses.field(default_factory=set)
    # job id -> evicted by this cycle's preempt or reclaim: back in the queue after the cycle, and
    # placed by no action before (its tasks are still being stopped)
    requeued: dict[str, Job] = dataclasses.field(default_factory=dict)
    preemption_attempts: int = 0  # preemptions tried with eligible victims (metrics)
    behind_why: dict[str, str] = dataclasses.field(default_factory=dict)  # job id -> why backfill held it
    # job id -> why it has no reservation (``reservation.reservation`` returned None)
    unreserved: dict[str, str] = dataclasses.field(default_factory=dict)
    estimate_depth: int = 256  # queue positions per queue that get an estimated start (profile)
    backfill_ran: bool = False  # the backfill action ran: jobs on other devices may pass a head
    # job id -> tasks it wants now when fewer than its ``tasks`` (an autoscaled serving job's
    # replicas x tasks per replica; a shrunk gang held at its size until its regrow is due)
    wanted: dict[str, int] = dataclasses.field(default_factory=dict)
    resizes: list[Resize] = dataclasses.field(default_factory=list)  # running jobs shrunk this cycle
    # the scheduler's caller applies resizes (stops released tasks): only then may actions
    # release tasks of running jobs (``Scheduler(resizes=True)``)
    allow_resizes: bool = False
    # running job id -> the jobs of its queue it was backfilled ahead of (the blocked head, whose
    # start was unknown, and the jobs waiting behind it then; the scheduler keeps it across
    # cycles): each of them may evict it (``preempt``) when that lets it start. ``lend``: the profile's ``lend`` (which needs ``preempt``, so a
    # lent job can be taken back); False: backfill lends nothing
    lent: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    lend: bool = False
    _keys: dict = dataclasses.field(default_factory=dict)
    # job id -> (job, its order key) kept across cycles by the scheduler when the JobOrder
    # plugin's keys do not change with time (``JobOrder.fixed_keys``); None: computed per cycle
    fixed_keys: dict | None = None

    @property
    def fw(self) -> Framework:
        return self.placer.fw

    @property
    def job_order(self) -> JobOrder | None:
        return self.placer.fw.job_order

    @property
    def queue_order(self) -> QueueOrder | None:
        return self.placer.fw.queue_order

    def ordered_by_queue(self, ids: Iterable[str]) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = defaultdict(list)
        for jid in ids:
            job = self.pending[jid]
            out[job.queue].append(job)
        for jobs in out.values():
            jobs.sort(key=self.job_key)
        return out

    def effective(self, job: Job) -> float:
        """The job's priority as the queue order sees it now (the ``Priority`` plugin's, with
        aging; else the priority class value); preemption compares these."""
        rule = self.placer.fw.priority
        if rule is not None:
            return rule.effective(job, self.ctx.now)
        return float(job.priority)

    def job_key(self, job: Job) -> tuple:
        """The job's order key, computed once per cycle (the clock does not move in a cycle)."""
        k = self._keys.get(job.id)
        if k is None:
            fixed = self.fixed_keys
            hit = fixed.get(job.id) if fixed is not None else None
            if hit is not None and hit[0] is job:
                k = hit[1]
            else:
                order = self.placer.fw.job_order
                k = order.job_key(job, self.ctx.now) if order else (job.submit_time, job.id)
                if fixed is not None:
                    fixed[job.id] = (job, k)
            self._keys[job.id] = k
        return k


def shape_key(cs: CycleState, job: Job) -> tuple | None:
    """What decides whether ``job`` fits now, besides the cluster's state: a job of the same
    shape does not fit either once one did not (until a placement changes the state). None for
    a partly running job (its missing tasks depend on where the others run)."""
    if cs.placed_tasks.get(job.id):
        return None
    return (
        wanted(cs, job),
        job.devices,
        job.cpu_milli,
        job.memory_bytes,
        job.kind,
        job.tasks,
        job.min_tasks,
        job.within,
        job.replica_tasks,
        job.domain_block,
        job.node_selector,
    )


def wanted(cs: CycleState, job: Job) -> int:
    """Tasks ``job`` wants running now: its ``tasks``, or fewer while autoscaling or a regrow
    hold says so (``CycleState.wanted``)."""
    return cs.wanted.get(job.id, job.tasks)


def regrowing(cs: CycleState, job: Job) -> bool:
    """A running training gang that wants more tasks (an elastic gang below its ``tasks``):
    it grows by as many tasks as fit at once (its tasks restart once with the new world size)."""
    return job.kind is JobKind.TRAINING and cs.placed_tasks.get(job.id, 0) > 0


def devices_of(job: Job, tasks: int) -> float:
    return tasks * job.devices_per_task


def permitted(cs: CycleState, job: Job, bindings: Sequence[Binding]) -> bool:
    """Whether every active ``Permit`` plugin lets this placement commit; a refusal is noted
    for the job's pending reason."""
    for p in cs.placer.active(job).permits:
        status = p.permit(job, bindings, cs.ctx)
        if status.code is not Code.SUCCESS:
            name = getattr(p, "name", type(p).__name__)
            cs.placer.notes[job.id] = f"{name}: {status.message}" if status.message else f"not permitted by {name}"
            return False
    return True


def queue_room(cs: CycleState, job: Job, want: int, need: int) -> int | None:
    """How many of ``want`` tasks the job's queue max leaves room for, in whole replicas; None
    (the job is ``QueueOverMax``) when that is fewer than ``need``. Every action that places
    (allocate, backfill, preempt, reclaim) asks it before placing."""
    q = cs.ctx.queues.get(job.queue)
    per = job.devices_per_task
    if q is None or q.max is None or per <= 0:
        return want
    fit = int((q.max - cs.ctx.queue_usage.get(job.queue, 0.0)) / per + 1e-9)
    fit -= fit % job.replica_size  # a replica is placed whole or not at all
    if fit < need:
        cs.failed[job.id] = ReasonCode.QUEUE_OVER_MAX
        cs.queue_max_hit.add(job.id)
        return None
    return min(want, fit)


def try_place(cs: CycleState, job: Job, accept: Callable[[list[Binding]], bool] | None = None) -> bool:
    """Place as many of the job's remaining tasks as the plugins allow; commit if the gang
    closes, the ``Permit`` plugins agree and ``accept(bindings)`` (when given) agrees (otherwise
    the job is ``WaitingBehind``)."""
    snap = cs.ctx.snap
    if job.id in cs.requeued:  # evicted by this cycle (an action after preempt): a later cycle places it
        cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
        return False
    already = cs.placed_tasks.get(job.id, 0)
    want = wanted(cs, job) - already
    if want <= 0:
        cs.done.add(job.id)
        return True
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    capped = queue_room(cs, job, want, need)
    if capped is None:
        return False
    want = capped
    stmt = Statement(snap, cs.ctx.now)
    got = cs.placer.place(job, stmt, want, need, first_task=already)
    if got < need or not permitted(cs, job, stmt.bindings_of(job.id)):
        stmt.discard()
        cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
        return False
    if accept is not None and not accept(stmt.bindings_of(job.id)):
        stmt.discard()
        cs.failed[job.id] = ReasonCode.WAITING_BEHIND
        return False
    commit_placement(cs, job, stmt, already, got)
    return True


def place_ahead(cs: CycleState, job: Job) -> list[Binding]:
    """Place the job's remaining tasks as ``try_place`` would (as many as it wants, at least its
    gang's minimum) on the snapshot as it stands, which the caller has turned into a look-ahead
    (jobs assumed ended, nodes closed, devices masked), and take the placement back: its
    bindings, or [] when it does not place. Permit plugins are not asked: the answer is where
    the job's own placement rules put it, not a placement to commit."""
    already = cs.placed_tasks.get(job.id, 0)
    want = wanted(cs, job) - already
    if want <= 0:
        return []
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    stmt = Statement(cs.ctx.snap, cs.ctx.now)
    try:
        got = cs.placer.place(job, stmt, want, need, first_task=already)
        return stmt.bindings_of(job.id) if got >= need else []
    finally:
        stmt.discard()


def commit_placement(cs: CycleState, job: Job, stmt: Statement, already: int, got: int) -> None:
    """Commit a placement of ``got`` more tasks of ``job`` (``already`` ran) and book it: the
    cycle's bindings, the job's tasks, its queue's use; done when it has what it wants."""
    cs.bindings.extend(stmt.commit({job.id: job}))
    cs.placed_tasks[job.id] = already + got
    if already + got >= wanted(cs, job):
        cs.done.add(job.id)
    cs.failed.pop(job.id, None)
    cs.ctx.queue_usage[job.queue] = cs.ctx.queue_usage.get(job.queue, 0.0) + devices_of(job, got)


def placed_alone(cs: CycleState, job: Job) -> bool:
    """Whether ``job`` is placed on its own: a job without roles, or a role of a job that runs
    already (its first placement, across its roles, was all or nothing: ``try_place_group``;
    after it a role with replicas scales on its own, taking devices as any serving job does)."""
    return job.group is None or cs.placed_tasks.get(job.id, 0) > 0


def try_place_group(cs: CycleState, members: Sequence[Job]) -> bool:
    """Place every role of a job with roles (``Job.group``) through one statement, each at least
    its gang's minimum (a role with replicas: its min replicas, and as many more as it wants and
    fit), or none of them: a gang across roles. Roles already running are left as they are."""
    snap = cs.ctx.snap
    stmt = Statement(snap, cs.ctx.now)
    got: dict[str, int] = {}
    # the roles with the largest tasks first: they have the fewest places to go
    for job in sorted(members, key=lambda j: (-j.devices_per_task, -j.tasks, j.id)):
        already = cs.placed_tasks.get(job.id, 0)
        want = wanted(cs, job) - already
        if want <= 0:
            continue
        need = min(want, max(1, cs.placer.min_tasks(job) - already))
        n = cs.placer.place(job, stmt, want, need, first_task=already)
        if n < need or not permitted(cs, job, stmt.bindings_of(job.id)):
            stmt.discard()
            for m in members:
                if m.id not in cs.done:
                    cs.failed[m.id] = ReasonCode.UNSCHEDULABLE
                    cs.placer.notes.setdefault(m.id, f"role {job.id} of {job.group} does not fit with the others")
            return False
        got[job.id] = n
    bound = stmt.commit({j.id: j for j in members})
    cs.bindings.extend(bound)
    for job in members:
        n = got.get(job.id, 0)
        cs.ctx.queue_usage[job.queue] = cs.ctx.queue_usage.get(job.queue, 0.0) + devices_of(job, n)
        cs.placed_tasks[job.id] = cs.placed_tasks.get(job.id, 0) + n
        cs.done.add(job.id)
        cs.failed.pop(job.id, None)
    return True


# --------------------------------------------------------------- what a job needs, where


def unit_of(job: Job) -> int:
    """Devices one task takes whole on one node: a node's free devices count only in these
    units towards a block (a 16-die task cannot use 8 free dies on each of two nodes)."""
    req = job.devices
    return req.count if req is not None and not req.fractional else 1


def tier_of(cs: CycleState, job: Job) -> str:
    """The level of the domain the job's (remaining) tasks must fit in together, for reasons
    and estimates: a block's domain, one replica's, the gang's; ``node`` for one task."""
    blocks = cs.placer.blocks(job)
    if blocks is not None:
        return blocks.level
    if job.kind is JobKind.SERVING and job.replica_tasks > 1:
        return cs.placer.tiers(job)[-1]  # one replica's tasks together
    if job.kind is not JobKind.TRAINING or cs.placer.min_tasks(job) - cs.placed_tasks.get(job.id, 0) <= 1:
        return NODE  # one task (a replica, a batch task) always sits on one node
    return cs.placer.tiers(job)[-1]


def reserve_devices(cs: CycleState, job: Job) -> int:
    """Devices a domain keeps free beside the job's block (a block rule's reserve nodes, each
    a whole node of the job's tasks); 0 for jobs placed without blocks."""
    blocks = cs.placer.blocks(job)
    return blocks.reserve_nodes * unit_of(job) if blocks is not None else 0


def block_size(snap: Snapshot, per_node: dict[str, int], level: str, unit: int = 1) -> int:
    """The largest domain of ``level`` by these per-node device counts (counted per node in
    whole tasks of ``unit``): a node's count for ``node`` and the levels inside it, the sum
    for ``cluster``, else the sum per domain (a node outside any domain of the level is one)."""
    if not per_node:
        return 0
    if level == NODE or level in NODE_LOCAL_LEVELS:
        return max(per_node.values())
    if level != CLUSTER:
        sums: dict[str, int] = defaultdict(int)
        for name, c in per_node.items():
            sums[snap.nodes[name].node.domains.get(level) or name] += c if unit == 1 else c // unit * unit
        return max(sums.values())
    return sum(per_node.values()) if unit == 1 else sum(c // unit * unit for c in per_node.values())


def empty_per_node(cs: CycleState, job: Job, models: Sequence[str]) -> dict[str, int]:
    """Node -> healthy devices of these models on the nodes no active filter rules out for good
    (ready or not: what the empty cluster offers the job)."""
    snap = cs.ctx.snap
    filters = cs.placer.active(job).filters
    return {
        name: sum(1 for d, h in zip(st.node.devices, st.healthy) if h and d.model in models)
        for name, st in snap.nodes.items()
        if not filters or not cs.placer.never_on(job, st)
    }


def largest_block(cs: CycleState, job: Job, level: str, empty: bool = False) -> int:
    """Free (``empty``: healthy, cached until the inventory changes) matching devices in the
    largest domain of ``level``."""
    snap = cs.ctx.snap
    models = cs.placer.models_for(job)
    unit = unit_of(job)
    if empty:
        return empty_block(cs, job, tuple(models), unit, level)
    filters = cs.placer.active(job).filters
    per_node: dict[str, int]
    if not filters and len(models) == 1:
        per_node = snap.free_whole.get(models[0], {})  # nodes without the model add nothing
    else:
        per_node = {
            st.node.name: sum(snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models)
            for st in snap.nodes.values()
            if not filters or not cs.placer.never_on(job, st)
        }
    return block_size(snap, per_node, level, unit)


def job_shape(job: Job, filtered: bool) -> object:
    """What the empty-cluster answers for a job depend on (never its id or queue): the fields
    the placement rules read, or the whole job when filters may read any of it."""
    if filtered:
        return dataclasses.replace(
            job, id="", submit_time=0.0, queue="", priority_class="", priority=0, expected_duration_seconds=None
        )
    return (job.devices, job.kind, job.tasks, job.min_tasks, job.within, job.domain_block, job.replica_tasks)


def empty_block(cs: CycleState, job: Job, models: tuple, unit: int, level: str) -> int:
    """Healthy devices of these models in the largest domain of ``level`` in the empty cluster,
    counted per node in whole tasks of ``unit`` devices, on the nodes no filter rules out for
    the job (cached until the inventory changes)."""
    snap = cs.ctx.snap
    filtered = bool(cs.placer.active(job).filters)
    key = ("block", models, unit, level, job_shape(job, True) if filtered else None)
    hit = snap.empty_cache.get(key)
    if hit is None:
        hit = snap.empty_cache[key] = block_size(snap, empty_per_node(cs, job, models), level, unit)
    return hit
