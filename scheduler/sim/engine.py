"""A virtual-clock, discrete-event engine that drives the real scheduler core.

The engine owns a ``Scheduler`` (``xpod.scheduler.core``: the object ``xpod server`` runs, with
the same profile format) and a queue of timed events on a simulated pod. It never decides a
placement itself: every placement, eviction and pending reason comes from ``Scheduler.cycle``.
It is the one engine of the replays (``xpod replay openb``, ``xpod replay jobs``).

API (all a caller needs):

* build a ``Scheduler`` (nodes, queues, a profile loaded as ``xpod server`` loads it) and wrap
  it: ``Engine(scheduler, retry=True, preemption=PreemptionCost(), tick_s=None, observers=())``;
* add events at virtual times in seconds: ``arrive(t, job, work_s)``, ``node_down(t, name)``,
  ``node_up(t, node)``, ``device_health(t, node, index, health)``, ``tick(t)``, ``call(t, fn)``;
* ``run(until_s=None, progress=None) -> EngineSummary`` processes them; ``records`` (job id ->
  ``JobRecord``: submit, first start, end, preemptions, lost work) and ``now`` hold the result.

Events (``EventKind``), applied in time order, ties in the order they were added:

* ``ARRIVAL``: a job is submitted (``Scheduler.submit``). ``work_s`` is the run time it needs
  (``None``: it runs until the replay ends, as the openb pods do).
* ``FINISH``: a running job's work is done (``Scheduler.finish``). The engine adds these
  itself when a job starts; an eviction makes the pending one stale.
* ``NODE_DOWN`` / ``NODE_UP`` / ``DEVICE_HEALTH``: the inventory changes
  (``remove_node``/``add_node``/``set_device_health``); the jobs that lose a task are evicted
  by the core and wait in its queue again.
* ``TICK``: nothing changes, a cycle runs (time-sliced profiles re-order running work); with
  ``tick_s`` the engine adds one every ``tick_s`` seconds while jobs wait, as the live
  scheduler's periodic cycle would run.
* ``CALL``: ``fn(engine, t)`` runs (in its turn among the instant's events, before the cycle):
  an input of the replay's own that the scheduler takes through its API, e.g. serving
  replicas reporting their load (``Scheduler.report_load``) every 10 s in ``xpod replay mix``.

Clock and cycles: the clock jumps from one event instant to the next; after the events of one
instant the engine runs exactly one ``Scheduler.cycle(now=t)`` at that instant, then books the
cycle's bindings (a job starts; its ``FINISH`` is queued at ``t + work left + restart owed``) and
evictions. Preemption costs time (``PreemptionCost``): an evicted job loses the progress made
since its last checkpoint and pays a restart before it makes progress again. ``retry=False``
gives the FGD paper's method: a job that arrived and did not start in the cycle right after its
arrival fails (it is cancelled and counted, never retried).

Resizes (a ``Scheduler(resizes=True)``'s ``CycleResult.resizes``, and a running gang that grows):
a job progresses at ``running tasks / tasks`` of its full speed (work scales with its tasks, as
data-parallel training's throughput roughly does). A resize that restarts the gang (an elastic
training job shrunk or regrown: a new world size) stops it as an eviction would (its progress
falls back to the last checkpoint unless the notice lets it write one, see ``PreemptionCost``)
and pays a restart; a resize without restart (batch tasks taken, serving scaled down) only
changes the speed.

Reporting: observers are plain objects; the engine calls the methods they define:
``on_cycle(engine, now, result)`` after every cycle, ``on_failed(engine, now, record)`` for a job
failed under ``retry=False``, ``on_finished(engine, now, record)`` when a job's work is done. The
replays (openb, job traces) build their metrics from these and from ``records``. The engine is
deterministic: the same events and profile give the same cycles.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from xpod.hal.device import Health
from xpod.hal.errors import XpodError

from ..core.model import CycleResult, Job, Node
from ..core.scheduler import Scheduler


class EventKind(str, enum.Enum):
    ARRIVAL = "arrival"
    FINISH = "finish"
    NODE_DOWN = "node-down"
    NODE_UP = "node-up"
    DEVICE_HEALTH = "device-health"
    TICK = "tick"
    CALL = "call"


@dataclasses.dataclass(frozen=True)
class PreemptionCost:
    """What an eviction costs a job: the work since its last checkpoint, plus a restart.

    A job checkpoints every ``checkpoint_every_s`` seconds of its own progress (``inf``: never,
    an eviction loses everything); on each start after an eviction it spends ``restart_s``
    before its work resumes. ``notice_checkpoint_s``: when the scheduler's profile gives the
    notice (``Profile.notice``: the task's ``XPOD_PREEMPT_NOTICE`` file is touched with its
    SIGTERM), a stopped task writes a checkpoint in this long and keeps all its progress when
    that fits in its job's ``grace_period_s``; None: notices are not modelled (every stop falls
    back to the periodic checkpoint)."""

    checkpoint_every_s: float = 1800.0
    restart_s: float = 60.0
    notice_checkpoint_s: float | None = None

    def kept_s(self, progress_s: float) -> float:
        """Progress a job keeps after an eviction (its last checkpoint)."""
        if math.isinf(self.checkpoint_every_s) or self.checkpoint_every_s <= 0:
            return 0.0
        return math.floor(progress_s / self.checkpoint_every_s + 1e-9) * self.checkpoint_every_s

    def checkpoints_on_notice(self, job: Job, notice: bool) -> bool:
        """Whether a stopped task of ``job`` writes a checkpoint before it is killed."""
        return notice and self.notice_checkpoint_s is not None and self.notice_checkpoint_s <= job.grace_period_s


@dataclasses.dataclass
class JobRecord:
    """One job's life in the replay (times in virtual seconds)."""

    job: Job
    work_s: float | None  # run time the job needs; None = runs until the replay ends
    submit_s: float
    first_start_s: float | None = None
    end_s: float | None = None
    failed: bool = False  # retry=False and it did not start right after arriving
    progress_s: float = 0.0  # work done before the current run (after checkpoint losses)
    run_started_s: float | None = None  # start of the current run; None while not running
    tasks_running: int = 0  # tasks of the current run (its speed: tasks_running / job.tasks)
    overhead_s: float = 0.0  # restart time owed by the current run before progress counts
    preemptions: int = 0
    lost_s: float = 0.0  # progress lost to evictions plus restarts paid
    epoch: int = 0  # bumped on every start and eviction; a FINISH of an older epoch is stale

    @property
    def running(self) -> bool:
        return self.run_started_s is not None

    @property
    def rate(self) -> float:
        """Share of its full speed the job runs at now (0 while not running)."""
        if self.run_started_s is None:
            return 0.0
        return min(1.0, self.tasks_running / self.job.tasks) if self.job.tasks > 0 else 1.0

    def progress_at(self, t: float) -> float:
        """Work done (seconds at full speed) by ``t``, the current run's included."""
        if self.end_s is not None:
            return self.work_s or 0.0
        if self.run_started_s is None:
            return self.progress_s
        made = max(0.0, t - self.run_started_s - self.overhead_s) * self.rate
        return self.progress_s + made if self.work_s is None else min(self.work_s, self.progress_s + made)

    @property
    def wait_s(self) -> float | None:
        return None if self.first_start_s is None else self.first_start_s - self.submit_s

    @property
    def jct_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.submit_s


class Observer(Protocol):
    """Sees the replay as it runs. Every method is optional for the engine: it calls the ones an
    observer defines (``on_cycle``, ``on_failed``, ``on_finished``)."""

    def on_cycle(self, engine: Engine, now: float, result: CycleResult) -> None: ...


@dataclasses.dataclass(frozen=True)
class EngineSummary:
    """Counts over one ``Engine.run``."""

    events: int
    cycles: int
    cycle_seconds: float  # wall time spent inside Scheduler.cycle
    seconds: float  # wall time of the whole run
    arrived: int
    started: int
    finished: int
    failed: int
    preemptions: int
    end_s: float  # virtual time of the last event


@dataclasses.dataclass(order=True)
class _Event:
    time_s: float
    seq: int
    kind: EventKind = dataclasses.field(compare=False)
    payload: object = dataclasses.field(compare=False, default=None)


class Engine:
    """Feeds timed events to a ``Scheduler`` and runs its cycle at each event instant.

    Use: build the scheduler (nodes, queues, profile), add events (``arrive``, ``node_down``,
    ...), then ``run()``. ``records`` holds every arrived job's life afterwards.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        retry: bool = True,
        preemption: PreemptionCost = PreemptionCost(),
        tick_s: float | None = None,
        observers: Iterable[object] = (),
        explain: bool = False,
    ) -> None:
        if tick_s is not None and not tick_s > 0:
            raise XpodError(f"tick: {tick_s} must be a positive number of seconds")
        self.scheduler = scheduler
        self.retry = retry
        self.preemption = preemption
        self.tick_s = tick_s
        self.explain = explain  # whether cycles write pending reasons (no replay reads them yet)
        self.observers = list(observers)
        self.records: dict[str, JobRecord] = {}
        self.now = 0.0
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._arrivals_total = 0
        self._cycle_hooks = [o.on_cycle for o in self.observers if hasattr(o, "on_cycle")]
        self._fail_hooks = [o.on_failed for o in self.observers if hasattr(o, "on_failed")]
        self._finish_hooks = [o.on_finished for o in self.observers if hasattr(o, "on_finished")]
        self._next_tick: float | None = None
        self.arrived_now: list[str] = []  # ids of the jobs that arrived at ``now`` (observers read it)

    # ------------------------------------------------------------------------- events in
    def _push(self, t: float, kind: EventKind, payload: object = None) -> None:
        if not math.isfinite(t) or t < 0:
            raise XpodError(f"event {kind.value}: time {t!r} must be a finite number of seconds >= 0")
        heapq.heappush(self._events, _Event(t, next(self._seq), kind, payload))

    def arrive(self, t: float, job: Job, work_s: float | None = None) -> None:
        """Submit ``job`` at virtual time ``t``; it needs ``work_s`` seconds of running."""
        if work_s is not None and not (math.isfinite(work_s) and work_s >= 0):
            raise XpodError(f"job {job.id}: work {work_s!r} must be a finite number of seconds >= 0")
        self._arrivals_total += 1
        self._push(t, EventKind.ARRIVAL, (job, work_s))

    def node_down(self, t: float, name: str) -> None:
        self._push(t, EventKind.NODE_DOWN, name)

    def node_up(self, t: float, node: Node) -> None:
        self._push(t, EventKind.NODE_UP, node)

    def device_health(self, t: float, node: str, index: int, health: Health) -> None:
        self._push(t, EventKind.DEVICE_HEALTH, (node, index, health))

    def tick(self, t: float) -> None:
        self._push(t, EventKind.TICK)

    def call(self, t: float, fn: Callable[[Engine, float], None]) -> None:
        """Run ``fn(engine, t)`` at ``t``, before that instant's cycle (see ``EventKind.CALL``)."""
        self._push(t, EventKind.CALL, fn)

    @property
    def arrivals_total(self) -> int:
        return self._arrivals_total

    # ------------------------------------------------------------------------------ run
    def run(self, until_s: float | None = None, progress: Callable[[int, int], None] | None = None) -> EngineSummary:
        """Process events in time order until none is left (or the next is after ``until_s``).

        ``progress(arrived, total_arrivals)`` is called every few hundred arrivals and at the end.
        """
        t_wall = time.perf_counter()
        sched = self.scheduler
        events = cycles = arrived = 0
        cycle_s = 0.0
        last_progress = 0
        while self._events:
            t = self._events[0].time_s
            if until_s is not None and t > until_s:
                break
            self.now = t
            new_arrivals: list[str] = []
            self.arrived_now = new_arrivals
            while self._events and self._events[0].time_s == t:
                ev = heapq.heappop(self._events)
                if ev.kind is EventKind.FINISH and not self._finish_is_current(ev):
                    continue
                events += 1
                self._apply(ev, new_arrivals)
            arrived += len(new_arrivals)
            result = sched.cycle(now=t, explain=self.explain)
            cycles += 1
            cycle_s += result.seconds
            self._after_cycle(t, result)
            if not self.retry:
                for jid in new_arrivals:
                    rec = self.records[jid]
                    if not rec.running and rec.end_s is None and jid in sched.pending:
                        sched.cancel(jid)
                        rec.failed = True
                        for hook in self._fail_hooks:
                            hook(self, t, rec)
            for hook in self._cycle_hooks:
                hook(self, t, result)
            self._schedule_tick(t)
            if progress is not None and arrived - last_progress >= 256:
                last_progress = arrived
                progress(arrived, self._arrivals_total)
        if progress is not None:
            progress(arrived, self._arrivals_total)
        recs = self.records.values()
        return EngineSummary(
            events=events,
            cycles=cycles,
            cycle_seconds=cycle_s,
            seconds=time.perf_counter() - t_wall,
            arrived=arrived,
            started=sum(1 for r in recs if r.first_start_s is not None),
            finished=sum(1 for r in recs if r.end_s is not None),
            failed=sum(1 for r in recs if r.failed),
            preemptions=sum(r.preemptions for r in recs),
            end_s=self.now,
        )

    def _finish_is_current(self, ev: _Event) -> bool:
        jid, epoch = ev.payload  # type: ignore[misc]
        rec = self.records.get(jid)
        return rec is not None and rec.running and rec.epoch == epoch

    def _apply(self, ev: _Event, new_arrivals: list[str]) -> None:
        sched = self.scheduler
        t = ev.time_s
        if ev.kind is EventKind.ARRIVAL:
            job, work_s = ev.payload  # type: ignore[misc]
            if job.id in self.records:
                raise XpodError(f"job {job.id}: arrives twice (job ids must be unique in a replay)")
            sched.submit(job if job.submit_time else dataclasses.replace(job, submit_time=t))
            self.records[job.id] = JobRecord(job, work_s, t)
            new_arrivals.append(job.id)
        elif ev.kind is EventKind.FINISH:
            jid, _ = ev.payload  # type: ignore[misc]
            rec = self.records[jid]
            sched.finish(jid)
            rec.progress_s = rec.work_s or 0.0
            rec.lost_s += rec.overhead_s  # the restart this last run paid
            rec.overhead_s = 0.0
            rec.run_started_s = None
            rec.tasks_running = 0
            rec.end_s = t
            for hook in self._finish_hooks:
                hook(self, t, rec)
        elif ev.kind is EventKind.NODE_DOWN:
            self._stopped(t, sched.remove_node(ev.payload))  # type: ignore[arg-type]
        elif ev.kind is EventKind.NODE_UP:
            sched.add_node(ev.payload)  # type: ignore[arg-type]
        elif ev.kind is EventKind.DEVICE_HEALTH:
            node, index, health = ev.payload  # type: ignore[misc]
            self._stopped(t, sched.set_device_health(node, index, health))
        elif ev.kind is EventKind.CALL:
            ev.payload(self, t)  # type: ignore[operator]

    def _after_cycle(self, t: float, result: CycleResult) -> None:
        """Book the cycle's evictions, resizes and starts on the job records."""
        self._stopped(t, [e.job_id for e in result.evictions])
        running = self.scheduler.running
        restarts = {r.job_id for r in result.resizes if r.restart}
        changed = dict.fromkeys([r.job_id for r in result.resizes] + [b.job_id for b in result.bindings])
        for jid in changed:
            rec = self.records.get(jid)
            rj = running.get(jid)
            if rec is None or rj is None:
                continue
            if not rec.running:  # a start
                rec.run_started_s = t
                rec.tasks_running = len(rj.bindings)
                rec.epoch += 1
                if rec.first_start_s is None:
                    rec.first_start_s = t
                self._schedule_finish(rec, t)
            elif len(rj.bindings) != rec.tasks_running:
                self._resized(t, rec, len(rj.bindings), restart=jid in restarts)

    def _schedule_finish(self, rec: JobRecord, t: float) -> None:
        if rec.work_s is not None and rec.rate > 0:
            left = max(0.0, rec.work_s - rec.progress_s) / rec.rate + rec.overhead_s
            self._push(t + left, EventKind.FINISH, (rec.job.id, rec.epoch))

    def _checkpoint(self, t: float, rec: JobRecord) -> tuple[float, float]:
        """(time the current run ran, progress kept) for a run that stops at ``t``."""
        ran = t - rec.run_started_s  # type: ignore[operator]
        done = rec.progress_at(t)  # the restart is paid before progress counts
        noticed = self.preemption.checkpoints_on_notice(rec.job, self.scheduler.profile.notice)
        kept = done if noticed else self.preemption.kept_s(done)
        rec.lost_s += (done - kept) + min(ran, rec.overhead_s)
        return ran, kept

    def _resized(self, t: float, rec: JobRecord, tasks: int, restart: bool) -> None:
        """A running job now runs ``tasks`` tasks: with ``restart`` (a new world size) it stops
        and starts again, paying a restart; otherwise only its speed changes."""
        if restart:
            _, rec.progress_s = self._checkpoint(t, rec)
            rec.overhead_s = self.preemption.restart_s
        else:
            ran = t - rec.run_started_s  # type: ignore[operator]
            rec.progress_s = rec.progress_at(t)
            rec.overhead_s = max(0.0, rec.overhead_s - ran)
        rec.run_started_s = t
        rec.tasks_running = tasks
        rec.epoch += 1
        self._schedule_finish(rec, t)

    def _stopped(self, t: float, job_ids: Iterable[str]) -> None:
        """Jobs evicted at ``t``: their progress falls back to the last checkpoint (or the one
        the notice let them write)."""
        for jid in job_ids:
            rec = self.records.get(jid)
            if rec is None or not rec.running:
                continue
            _, rec.progress_s = self._checkpoint(t, rec)
            rec.overhead_s = self.preemption.restart_s
            rec.run_started_s = None
            rec.tasks_running = 0
            rec.preemptions += 1
            rec.epoch += 1

    def _schedule_tick(self, t: float) -> None:
        if self.tick_s is None:
            return
        # only waiting jobs can gain from a cycle that no event asked for
        if self.scheduler.pending and (self._next_tick is None or self._next_tick <= t):
            self._next_tick = t + self.tick_s
            self.tick(self._next_tick)
