"""The scheduler core's one seam: the ``Scheduler`` facade (``scheduler.api`` adapts it).

``Scheduler`` owns the snapshot, the pending jobs, the queues and the profile. Every method is
synchronous and deterministic for the same inputs and clock; the clock is injected (a callable
returning seconds) so tests and replays control time. A later gRPC servicer is a thin adapter
over these methods, one to one.

* ``submit(job)`` validates (queue, priority class, ``within`` against the cluster's fabric,
  the enabled plugins' ``pre_filter``, job fields no enabled plugin acts on) and queues the
  job; a user error raises ``XpodError`` with one line. Idempotent for an identical job.
* ``cancel(job_id)`` drops a pending job or releases a running one; False if unknown.
* ``finish(job_id)`` a running job completed: its devices are free again.
* ``never_fits(job)`` why a job can never fit this cluster, even empty (None: it can, once
  enough is free): the one "can never fit" check, shared with the enqueue action; the
  service's admission asks it before accepting a job.
* ``add_node / remove_node / set_device_health`` change the inventory; ``add_node(node,
  ready=False, not_ready_reason=...)`` adds a node that counts for what the cluster could ever
  offer but takes no work until ``set_node_ready`` (a node of the cluster file whose agent has
  not registered: pending reasons then say "waiting for agents: 0 of 48 nodes ready"); jobs that lose a task
  are evicted whole and go back to the queue (reported by the next cycle), except serving jobs:
  only their lost replicas are released (``Replacement`` in the next cycle's result) while at
  least one other replica keeps running, even below ``min_tasks`` (min replicas): the job stays
  running, degraded, and the next cycle places the lost replicas again (elsewhere when the node
  is gone, spread across failure domains). A serving job that loses every replica is evicted whole.
* ``replace_tasks(job_id, tasks, why)`` the same for replicas whose task failed.
* ``report_load(job_id, replica, value)`` a serving replica's load in its job's
  ``autoscale.metric`` units (``UnknownLoadSource`` for a job that is not an autoscaled serving
  job, or a replica it does not run; nothing changes then). Each cycle sums the replicas' last
  reports into the job's demand and the profile's ``Scale`` rule (``core.autoscale``) says how
  many replicas it wants: fewer than run are released at once (highest first, a ``Resize`` in
  the result), more are placed like missing replicas (the ``shrink`` and ``preempt`` actions
  take devices from less important work when none are free). ``autoscale_status(job_id)``
  says what the rule saw and decided.
* A training gang shrunk for serving (``Resize`` with ``restart``) is held at its size for the
  serving job's ``scale_down_after_s``, then regrows towards ``tasks`` by as many tasks as are
  free at once (one more ``Resize``, a restart); a partial regrow waits as long again before
  the next.
* ``cycle(now=None) -> CycleResult`` runs the profile's actions once over the snapshot.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable

from xpod.hal.device import Health
from xpod.hal.errors import XpodError

from . import actions as act
from . import reasons
from .autoscale import ScaleRule, ScaleWindow
from .fabric import Fabric, derive, placement_document
from .framework import CycleContext, Framework
from .placer import Placer
from .model import (
    MILLI,
    CycleResult,
    Eviction,
    Job,
    JobKind,
    NeverFits,
    Node,
    PriorityClass,
    Queue,
    Replacement,
    Resize,
)
from .profile import Profile, default_profile
from .snapshot import RunningJob, Snapshot

DEFAULT_PRIORITY_CLASSES = (
    PriorityClass("low", 0),
    PriorityClass("normal", 100),
    PriorityClass("high", 1000),
    PriorityClass("system", 10000, preemptible=False),
)


class UnknownLoadSource(XpodError):
    """A load report names a job that is no autoscaled serving job, or a replica it does not
    run (the gRPC layer answers NOT_FOUND); nothing was recorded."""


@dataclasses.dataclass(frozen=True)
class AutoscaleStatus:
    """What the autoscaling of one serving job saw and decided (``xpod job describe``, metrics)."""

    job_id: str
    metric: str  # the load's unit (``LoadMetric`` value)
    target_per_replica: float
    demand: float | None  # the replicas' summed load as the rule sees it (None: nothing reported)
    desired_replicas: int  # what the rule wants now
    running_replicas: int  # replicas placed (each may still be starting)
    min_replicas: int
    max_replicas: int
    headroom: float = 1.0  # the factor over the load the rule provisions for (forecast: learned from rises)
    short_intervals: int = 0  # intervals its replicas ran short in the error budget's window
    allowed_short: int | None = None  # the error budget: short intervals allowed there (None: no SLO set)


#: priority 0, submitted at time 0: what ``Scheduler._priority_key`` measures from
_REFERENCE_JOB = Job("", JobKind.BATCH, 1, None)


class Scheduler:
    def __init__(
        self,
        nodes: Iterable[Node] = (),
        queues: Iterable[Queue] = (Queue("default"),),
        priority_classes: Iterable[PriorityClass] = DEFAULT_PRIORITY_CLASSES,
        profile: Profile | None = None,
        clock: Callable[[], float] = time.time,
        fabric: Fabric | None = None,
        resizes: bool = False,
    ) -> None:
        """``fabric``: the cluster's tiers (``from_cluster.fabric_from_cluster``); without one it
        is derived from the nodes as they come (``fabric.derive``) and ``within`` words the
        nodes do not name yet are kept as levels (an agent may bring them).

        ``resizes``: the caller applies ``CycleResult.resizes`` (stops the released tasks, restarts
        a resized gang with its new world size). Only then does a cycle release tasks of running
        jobs: the ``shrink`` action, and autoscaled serving jobs scaling down. Without it those
        wait (a scale-down keeps its replicas, ``shrink`` does nothing) and the ``preempt``
        action alone takes devices for serving."""
        self.snapshot = Snapshot(nodes)
        self.resizes = resizes
        self.queues = {q.name: q for q in queues}
        self.priority_classes = {p.name: p for p in priority_classes}
        self.profile = profile or default_profile()
        self.plugins = self.profile.build_plugins()
        self.framework = Framework(self.plugins)
        self.snapshot.running.order_key = self._priority_key
        self._fabric = fabric
        self._derived: tuple[int, Fabric] | None = None
        self.clock = clock
        self.pending: dict[str, Job] = {}
        self._evictions: list[Eviction] = []
        self._replacements: list[Replacement] = []
        self.last_reasons: dict = {}
        # job id -> seconds the last cycle spent searching a placement for it (every try of
        # every action summed): the per-attempt duration beside the whole cycle's
        self.last_attempt_seconds: dict[str, float] = {}
        # (inventory version, cycle state) for ``never_fits`` outside a cycle
        self._fit_state: tuple[int, act.CycleState] | None = None
        # autoscaling: job id -> replica -> last reported load; job id -> its window of loads;
        # job id -> replicas wanted (the rule's last answer)
        self._load: dict[str, dict[int, float]] = {}
        self._windows: dict[str, ScaleWindow] = {}
        self._desired: dict[str, int] = {}
        # shrunk training gang -> clock time before which it does not regrow
        self._regrow_at: dict[str, float] = {}
        self._regrow_hold_s: dict[str, float] = {}  # shrunk gang -> how long each regrow waits
        self._scaled: set[str] = set()  # ids of the queued or running autoscaled serving jobs
        # running job -> the waiting jobs backfill lent it ahead of (``CycleState.lent``)
        self._lent: dict[str, frozenset[str]] = {}
        # job id -> (job, order key), across cycles, when the JobOrder's keys are fixed
        self._fixed_keys: dict[str, tuple[Job, tuple]] = {}

    def _priority_key(self, job: Job) -> float:
        """A job's place in the queue order's priority, as a number whose order between two
        jobs never changes with time (the ``Priority`` point's contract): its effective
        priority less a reference job's, both at its submit time."""
        rule = self.framework.priority
        if rule is None:
            return float(job.priority)
        t = job.submit_time
        return rule.effective(job, t) - rule.effective(_REFERENCE_JOB, t)

    @property
    def descriptor_fabric(self) -> Fabric | None:
        """The fabric given at construction (a cluster descriptor's), or None when derived."""
        return self._fabric

    @property
    def fabric(self) -> Fabric:
        """The cluster's tiers: the descriptor's, else derived from the nodes (kept until the
        inventory changes)."""
        if self._fabric is not None:
            return self._fabric
        version = self.snapshot.inventory_version
        if self._derived is None or self._derived[0] != version:
            self._derived = (version, derive(st.node for st in self.snapshot.nodes.values()))
        return self._derived[1]

    def _level(self, job: Job) -> str:
        """The level ``job.within`` names here (``XpodError`` for a word a descriptor's fabric
        does not know; kept as it is on a derived fabric)."""
        if self._fabric is not None:
            return self._fabric.check(job.within, f"job {job.id}")
        return self.fabric.resolve(job.within) or job.within

    # --------------------------------------------------------------------------- jobs
    def submit(self, job: Job) -> Job:
        """Queue a job; returns it with its priority resolved and submit time set if 0."""
        if job.queue not in self.queues:
            raise XpodError(
                f"job {job.id}: queue: unknown queue {job.queue!r} (known: {', '.join(sorted(self.queues))})"
            )
        pc = self.priority_classes.get(job.priority_class)
        if pc is None:
            raise XpodError(
                f"job {job.id}: priority_class: unknown class {job.priority_class!r} (known: {', '.join(sorted(self.priority_classes))})"
            )
        size = job.replica_tasks
        if size != 1 and (
            job.kind is not JobKind.SERVING or size < 1 or job.tasks % size or (job.min_tasks or job.tasks) % size
        ):
            raise XpodError(
                f"job {job.id}: tasks_per_replica: {size} needs a serving job whose task counts ({job.tasks}, min "
                f"{job.min_tasks or job.tasks}) are whole replicas (replicas x tasks_per_replica)"
            )
        job = dataclasses.replace(
            job, within=self._level(job), priority=pc.value, submit_time=job.submit_time or self.clock()
        )
        why = self.framework.refusal(job)
        if why:
            raise XpodError(f"job {job.id}: {why}")
        old = self.pending.get(job.id) or (
            self.snapshot.running[job.id].job if job.id in self.snapshot.running else None
        )
        if old is not None:
            if dataclasses.replace(old, submit_time=job.submit_time) == job:
                return old
            raise XpodError(f"job {job.id}: id already used by a different job (pick a new id)")
        self.pending[job.id] = job
        if job.autoscale is not None and job.kind is JobKind.SERVING:
            self._scaled.add(job.id)
        self.framework.observe((job,), False)
        return job

    def learn_history(self, jobs: Iterable[Job]) -> None:
        """Show the plugins that learn the workload (``Observe``) jobs seen before this
        scheduler started (a replay's trace, a store's history); nothing is queued."""
        self.framework.observe(jobs, True)

    def _forget(self, job_id: str) -> None:
        self.framework.forget(job_id)
        for table in (self._load, self._windows, self._desired, self._regrow_at, self._regrow_hold_s):
            table.pop(job_id, None)
        self._scaled.discard(job_id)

    def cancel(self, job_id: str) -> bool:
        self._forget(job_id)
        if self.pending.pop(job_id, None) is not None:
            if job_id in self.snapshot.running:
                self.snapshot.release(job_id)
            return True
        if job_id in self.snapshot.running:
            self.snapshot.release(job_id)
            return True
        return False

    def finish(self, job_id: str) -> bool:
        """A running job completed (the agent reported it)."""
        if job_id not in self.snapshot.running:
            return False
        self.snapshot.release(job_id)
        self.pending.pop(job_id, None)
        self._forget(job_id)
        return True

    @property
    def running(self) -> dict[str, RunningJob]:
        return self.snapshot.running

    # -------------------------------------------------------------------- autoscaling
    def _autoscaled(self, job_id: str) -> Job | None:
        rj = self.snapshot.running.get(job_id)
        job = rj.job if rj is not None else self.pending.get(job_id)
        if job is None or job.kind is not JobKind.SERVING or job.autoscale is None:
            return None
        return job

    def report_load(self, job_id: str, replica: int, value: float) -> None:
        """Replica ``replica`` of serving job ``job_id`` serves ``value`` (its job's
        ``autoscale.metric`` units, >= 0) now; the next cycle's demand sums the replicas' last
        reports. ``UnknownLoadSource`` (nothing recorded) when the job is no autoscaled serving
        job here or the replica is not running; ``XpodError`` for a value that is no finite
        number >= 0."""
        job = self._autoscaled(job_id)
        if job is None:
            raise UnknownLoadSource(f"job {job_id}: no autoscaled serving job of that id is queued or running")
        rj = self.snapshot.running.get(job_id)
        size = job.replica_tasks
        if rj is None or not any(b.task // size == replica for b in rj.bindings):
            raise UnknownLoadSource(f"job {job_id}: replica {replica} is not running")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < float("inf")):
            raise XpodError(f"job {job_id}: load {value!r} must be a finite number >= 0")
        self._load.setdefault(job_id, {})[replica] = float(value)

    def autoscale_status(self, job_id: str) -> AutoscaleStatus | None:
        """What the autoscaling of ``job_id`` saw and decided at the last cycle (None: no
        autoscaled serving job of that id)."""
        job = self._autoscaled(job_id)
        if job is None or job.autoscale is None:
            return None
        size = job.replica_tasks
        rj = self.snapshot.running.get(job_id)
        running = len({b.task // size for b in rj.bindings}) if rj is not None else 0
        window = self._windows.get(job_id)
        lo, hi = job.min_required // size, job.tasks // size
        return AutoscaleStatus(
            job_id,
            job.autoscale.metric.value,
            job.autoscale.target_per_replica,
            window.demand(self.snapshot_time) if window is not None else None,
            self._desired.get(job_id, max(lo, min(hi, running))),
            running,
            lo,
            hi,
            window.headroom(self.snapshot_time) if window is not None else 1.0,
            window.short_intervals(self.snapshot_time) if window is not None else 0,
            None if job.autoscale.slo_attainment is None else ScaleWindow(job.autoscale, ScaleRule()).allowed_short(),
        )

    snapshot_time = 0.0  # the clock time of the last cycle (what ``autoscale_status`` reads at)

    def _scale(self, now: float, wanted: dict[str, int]) -> list[Resize]:
        """Autoscaling before a cycle: each autoscaled serving job's wanted replicas from its
        load (``wanted``: its tasks cap), replicas above it released at once (highest first)."""
        rule_of = self.framework.scale
        out: list[Resize] = []
        for jid in list(self._scaled):
            job = self._autoscaled(jid)
            if job is None:
                continue
            rule = rule_of.scale_rule(job) if rule_of is not None else None
            if rule is None or job.autoscale is None:
                continue
            size = job.replica_tasks
            lo, hi = job.min_required // size, job.tasks // size
            window = self._windows.get(jid)
            if window is None:
                window = self._windows[jid] = ScaleWindow(job.autoscale, rule)
            rj = self.snapshot.running.get(jid)
            replicas = sorted({b.task // size for b in rj.bindings}) if rj is not None else []
            loads = self._load.get(jid, {})
            for r in [r for r in loads if r not in replicas]:
                del loads[r]  # a replica that stopped reports nothing any more
            if loads:  # the replicas reporting serve len(loads) x target: a load above it is a short interval
                window.observe(now, sum(loads.values()), len(loads) * job.autoscale.target_per_replica)
            current = self._desired.get(jid, max(lo, min(hi, len(replicas))))
            desired = window.desired(now, current, lo, hi)
            self._desired[jid] = desired
            wanted[jid] = desired * size
            if rj is not None and len(replicas) > desired and not self.resizes:
                wanted[jid] = len(rj.bindings)  # the caller cannot stop replicas: they stay
            elif rj is not None and len(replicas) > desired:
                drop = replicas[desired:]
                tasks = [b.task for b in rj.bindings if b.task // size in drop]
                before = len(rj.bindings)
                self.snapshot.release_tasks(jid, tasks)
                for r in drop:
                    loads.pop(r, None)
                demand = window.demand(now)
                out.append(
                    Resize(
                        jid,
                        before,
                        before - len(tasks),
                        f"scaled down to {desired} replicas: demand {demand or 0:g} {job.autoscale.metric.value} "
                        f"at {job.autoscale.target_per_replica:g} per replica",
                        released=tuple(sorted(tasks)),
                    )
                )
            elif desired * size > (len(rj.bindings) if rj is not None else 0):
                self.pending[jid] = job
        return out

    # ---------------------------------------------------------------------- inventory
    def never_fits(self, job: Job) -> NeverFits | None:
        """Why ``job`` can never fit this cluster even empty (healthy devices of present nodes,
        ready or not, that its node selector admits; its tier's largest domain; the enabled
        plugins' rules such as reserve nodes), or None. Reads the inventory only, never the
        allocations, so it answers the same between cycles whatever runs. Idempotent."""
        version = self.snapshot.inventory_version
        if self._fit_state is None or self._fit_state[0] != version:
            ctx = CycleContext(
                snap=self.snapshot,
                now=0.0,
                queues=self.queues,
                total_devices=float(sum(self.snapshot.model_total.values())),
                queue_usage={},
                priority_preemptible={p.name: p.preemptible for p in self.priority_classes.values()},
                fabric=self.fabric,
            )
            cs = act.CycleState(ctx=ctx, placer=Placer(self.framework, ctx), pending={}, placed_tasks={})
            self._fit_state = (version, cs)
        job = dataclasses.replace(job, within=self.fabric.resolve(job.within) or job.within)
        return act.never_fits_reason(self._fit_state[1], job)

    def add_node(self, node: Node, ready: bool = True, not_ready_reason: str = "") -> None:
        """Add a node. ``ready=False``: it is present (the cluster file declares it) and counts
        for what the cluster could ever offer, but takes no work until ``set_node_ready``;
        ``not_ready_reason`` is what pending reasons say ("waiting for agents")."""
        if node.name in self.snapshot.nodes:
            raise XpodError(f"node {node.name}: already registered")
        self.snapshot.add_node(node, ready, not_ready_reason)

    def set_node_ready(self, name: str, ready: bool, reason: str = "") -> None:
        """Open a present node to placement (its agent registered) or close it (``reason``).
        Jobs running there keep running; the service decides what a lost node costs them."""
        if name not in self.snapshot.nodes:
            raise XpodError(f"node {name}: not registered")
        self.snapshot.set_node_ready(name, ready, reason)

    def remove_node(self, name: str, replace_replicas: bool = True) -> list[str]:
        """Drop a node. Returns the jobs evicted whole; serving replicas on it are replaced
        alone (see the module docstring) unless ``replace_replicas`` is False."""
        if name not in self.snapshot.nodes:
            raise XpodError(f"node {name}: not registered")
        why = f"node {name} removed"
        if replace_replicas:
            self._replace_replicas(lambda b: b.node == name, why)
        return self._requeue(self.snapshot_jobs(self.snapshot.remove_node, name), why)

    def set_device_health(self, node: str, index: int, health: Health, replace_replicas: bool = True) -> list[str]:
        """A device's health changed (``xpod.hal.Health``): one not ``schedulable`` (alarm,
        critical) takes no new work, and the jobs on it lose it (see the module docstring)."""
        st = self.snapshot.nodes.get(node)
        if st is None:
            raise XpodError(f"node {node}: not registered")
        if not 0 <= index < len(st.node.devices):
            raise XpodError(f"node {node}: no device {index} (it has {len(st.node.devices)})")
        why = f"device {node}/{index} {health.value}"
        if replace_replicas and not health.schedulable:
            self._replace_replicas(lambda b: b.node == node and index in b.device_indices, why)
        return self._requeue(self.snapshot_jobs(self.snapshot.set_device_health, node, index, health), why)

    def replace_tasks(self, job_id: str, tasks: Iterable[int], why: str) -> list[Replacement]:
        """Release these replicas of a running serving job alone and queue them to be placed
        again; the others keep running untouched, even when fewer than its min replicas are left
        (the allocate action then places the missing ones first). Returns the replacements ([]
        when the job is not a running serving job, or when no replica would be left: then the
        caller requeues or fails the job whole)."""
        rj = self.snapshot.running.get(job_id)
        drop = set(tasks)
        if rj is None or rj.job.kind is not JobKind.SERVING:
            return []
        if rj.job.replica_tasks > 1:  # a multi-task replica is released whole: a part cannot serve
            replicas = {t // rj.job.replica_tasks for t in drop}
            drop = {b.task for b in rj.bindings if b.task // rj.job.replica_tasks in replicas}
        lost = [b for b in rj.bindings if b.task in drop]
        if not lost or len(rj.bindings) == len(lost):  # none would keep serving: whole
            return []
        self.snapshot.release_tasks(job_id, drop)
        # still wanting tasks: the next cycle's allocate places the missing replicas
        self.pending[job_id] = rj.job
        out = [Replacement(job_id, b.task, b.node, why) for b in sorted(lost, key=lambda b: b.task)]
        self._replacements.extend(out)
        return out

    def _replace_replicas(self, hit, why: str) -> None:
        """Serving jobs with bindings matching ``hit``: release those replicas alone while at
        least min replicas others keep running (they are not evicted whole afterwards)."""
        for jid, rj in list(self.snapshot.running.items()):
            if rj.job.kind is JobKind.SERVING:
                self.replace_tasks(jid, [b.task for b in rj.bindings if hit(b)], why)

    def _evict_groups(self, evictions: list[Eviction]) -> None:
        """The roles of a job with roles run together: when one is evicted (preempted, its node
        lost), its running sibling roles stop too and wait in the queue with it."""
        seen = {e.job_id for e in evictions}
        for e in list(evictions):
            job = self.pending.get(e.job_id)
            if job is None or job.group is None:
                continue
            for jid, rj in list(self.snapshot.running.items()):
                if rj.job.group == job.group and jid not in seen:
                    self.snapshot.release(jid)
                    self.pending[jid] = rj.job
                    seen.add(jid)
                    evictions.append(Eviction(jid, f"role {e.job_id} of {job.group} stopped: {e.reason}", e.preemptor))

    def snapshot_jobs(self, fn, *args) -> list[Job]:
        jobs = {jid: rj.job for jid, rj in self.snapshot.running.items()}
        return [jobs[j] for j in fn(*args)]

    def _requeue(self, jobs: list[Job], why: str) -> list[str]:
        for job in jobs:
            self.pending[job.id] = job
            self._evictions.append(Eviction(job.id, why))
        before = len(self._evictions)
        self._evict_groups(self._evictions)
        return [j.id for j in jobs] + [e.job_id for e in self._evictions[before:]]

    # -------------------------------------------------------------------------- cycle
    def cycle(self, now: float | None = None, explain: bool = True) -> CycleResult:
        """Run the profile's actions once. Bindings are committed to the snapshot on return.

        ``explain=False`` skips the pending reasons (``CycleResult.pending`` is empty): the
        decisions are the same, only the report for users is not written (a replay that reads
        no reasons saves their cost, which grows with the running jobs)."""
        t0 = time.perf_counter()
        now = self.clock() if now is None else now
        self.snapshot_time = now
        wanted: dict[str, int] = {}
        resizes = self._scale(now, wanted)
        for jid, at in list(self._regrow_at.items()):
            rj = self.snapshot.running.get(jid)
            if rj is None or at <= now:
                del self._regrow_at[jid]
                if rj is not None and len(rj.bindings) < rj.job.tasks:
                    self.pending[jid] = rj.job  # its regrow is due: it wants its tasks back
            else:
                wanted[jid] = len(rj.bindings)  # held at its size until its regrow is due
        snap = self.snapshot
        total = float(sum(snap.model_total.values()))
        usage = dict(snap.used_devices_by_queue())
        ctx = CycleContext(
            snap=snap,
            now=now,
            queues=self.queues,
            total_devices=total,
            queue_usage=usage,
            priority_preemptible={p.name: p.preemptible for p in self.priority_classes.values()},
            fabric=self.fabric,
        )
        for p in self.framework.sessions:
            p.open_session(ctx)
        placer = Placer(self.framework, ctx)
        attempt_s: dict[str, float] = {}
        place = placer.place

        def timed_place(job, *args, **kwargs):
            started = time.perf_counter()
            try:
                return place(job, *args, **kwargs)
            finally:
                attempt_s[job.id] = attempt_s.get(job.id, 0.0) + time.perf_counter() - started

        placer.place = timed_place  # type: ignore[method-assign]
        placed = act.PlacedTasks(snap.running)
        # a running job stays pending while it wants more tasks (elastic, serving, batch)
        for jid in list(self.pending):
            if placed.get(jid, 0) >= wanted.get(jid, self.pending[jid].tasks):
                del self.pending[jid]
        order = self.framework.job_order
        fixed = None
        if order is not None and getattr(order, "fixed_keys", False):
            fixed = self._fixed_keys
            if len(fixed) > 2 * len(self.pending) + 1024:  # jobs that left: amortised O(1) a job
                self._fixed_keys = fixed = {j: v for j, v in fixed.items() if j in self.pending}
        for jid, ahead in list(self._lent.items()):
            if jid not in snap.running or not any(h in self.pending for h in ahead):
                del self._lent[jid]  # it ended or was evicted, or all it passed started or left: an ordinary job
        cs = act.CycleState(
            ctx=ctx,
            placer=placer,
            pending=self.pending,
            placed_tasks=placed,
            estimate_depth=self.profile.estimate_depth,
            wanted=wanted,
            allow_resizes=self.resizes,
            fixed_keys=fixed,
            lent=self._lent,
            lend=self.profile.lend,
        )
        try:
            for name in self.profile.actions:
                act.ACTIONS[name](cs)
        finally:
            placed.close()
        for jid in cs.done:
            self.pending.pop(jid, None)
        for job in cs.requeued.values():
            self.pending[job.id] = job
        for r in cs.resizes:
            if r.restart and r.by is not None:
                taker = self.pending.get(r.by) or (snap.running[r.by].job if r.by in snap.running else None)
                hold = taker.autoscale.scale_down_after_s if taker is not None and taker.autoscale else 0.0
                self._regrow_at[r.job_id] = max(self._regrow_at.get(r.job_id, 0.0), now + hold)
                self._regrow_hold_s[r.job_id] = hold
        resizes.extend(cs.resizes)
        # gangs that grew this cycle (a regrow, or an elastic start growing): a restart each
        shrunk = {r.job_id for r in cs.resizes}
        for jid in dict.fromkeys(b.job_id for b in cs.bindings) if self.resizes else ():
            n0 = placed.initial(jid)
            rj = snap.running.get(jid)
            if (
                n0
                and rj is not None
                and rj.job.kind is JobKind.TRAINING
                and jid not in shrunk
                and len(rj.bindings) > n0
            ):
                resizes.append(
                    Resize(
                        jid,
                        n0,
                        len(rj.bindings),
                        f"regrown to {len(rj.bindings)} of {rj.job.tasks} tasks",
                        restart=True,
                    )
                )
        why = reasons.pending_reasons(cs) if explain else {}
        self.last_reasons = why
        self.last_attempt_seconds = attempt_s
        self._evict_groups(cs.evictions)
        evictions = tuple(self._evictions) + tuple(cs.evictions)
        self._evictions = []
        replacements = tuple(self._replacements)
        self._replacements = []
        return CycleResult(
            time=now,
            bindings=tuple(cs.bindings),
            evictions=evictions,
            pending=why,
            # a decision = a job this cycle bound (fully or partly) or gave a pending reason
            decisions=len({b.job_id for b in cs.bindings} | set(why)),
            seconds=time.perf_counter() - t0,
            replacements=replacements,
            preemption_attempts=cs.preemption_attempts,
            resizes=tuple(resizes),
        )

    def placement_topology(self, job_id: str, tasks: Iterable[int] | None = None) -> dict[str, Any]:
        """A running job's placement (``tasks``: only these, e.g. one serving replica's world) as
        a topology document (``fabric.placement_document``): the agent writes it where
        ``XPOD_TOPOLOGY`` points, so collectives and MoE placement see the job's real fabric.
        ``XpodError`` when the job does not run there or a task holds no device."""
        rj = self.snapshot.running.get(job_id)
        if rj is None:
            raise XpodError(f"job {job_id}: not running, so it has no placement")
        keep = None if tasks is None else set(tasks)
        bindings = [b for b in rj.bindings if keep is None or b.task in keep]
        nodes = [self.snapshot.nodes[b.node].node for b in bindings if b.node in self.snapshot.nodes]
        try:
            return placement_document(job_id, nodes, self.fabric, bindings)
        except ValueError as err:
            raise XpodError(f"job {job_id}: {err}") from None

    def free_devices(self) -> int:
        return self.snapshot.free_devices()


__all__ = ["AutoscaleStatus", "Scheduler", "DEFAULT_PRIORITY_CLASSES", "MILLI", "UnknownLoadSource"]
