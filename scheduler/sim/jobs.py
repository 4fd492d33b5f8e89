"""``xpod replay jobs``: a job trace replayed through the scheduler ``xpod server`` runs.

Each trace row (``sim.trace``) becomes a training job (a gang) of the size the cluster's rules
allow (``trace.legal_shape``), submitted at its ``submit_s`` with its ``duration_s`` as the work
it needs and as its ``expected_duration_seconds`` (what a user declares, as Slurm's time limit;
``estimate_factor`` scales the declaration, never the work). The engine (``sim.engine``) runs the
core's cycle at every event instant with the profile given; a job runs once started until its
work is done, unless it is evicted: then it loses the progress since its last checkpoint and pays
a restart before progress counts again (``engine.PreemptionCost``).

The replay covers the jobs submitted in a window ``[from_s, to_s)`` on an empty cluster and runs
until every one of them has finished (jobs that can never fit, by ``Scheduler.never_fits``, are
counted and not submitted). Metrics (``JobsResult``):

* JCT = finish - submit, over the finished jobs (mean, p50, p99); wait = first start - submit;
* utilisation = device-seconds allocated inside the window / (devices x window length), the
  allocation counted by the independent audit (``sim.audit``), work later lost to an eviction
  included; ``goodput`` counts only the work kept;
* violations: placements that break the cluster's rules, checked by ``sim.audit`` without asking
  any plugin (must be 0);
* preemptions (evictions), and the longest wait of a large job (>= ``LARGE_DEVICES`` devices).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xpod.hal.errors import XpodError

from ..core.fabric import Fabric
from ..core.model import CLUSTER, CycleResult, DeviceRequest, Job, JobKind, Node, Queue
from ..core.profile import Profile
from ..core.scheduler import Scheduler
from .audit import PlacementAudit
from .engine import Engine, JobRecord, PreemptionCost
from .trace import Shape, TraceJob, legal_shape

#: jobs of at least this many devices are "large" (their longest wait is reported apart)
LARGE_DEVICES = 64
#: points of the utilisation / queue-length curve kept for the plot (evenly spaced in time)
CURVE_POINTS = 2000


@dataclasses.dataclass(frozen=True)
class ReplaySettings:
    """How a trace is replayed (the CLI's flags)."""

    from_s: float | None = None  # window start (None: the first submission)
    to_s: float | None = None  # window end, exclusive (None: after the last submission)
    checkpoint_every_s: float = 1800.0  # a job checkpoints every this many seconds of progress
    restart_s: float = 60.0  # what a restart after an eviction costs before progress resumes
    estimate_factor: float = 1.0  # declared expected duration = factor x trace duration
    queue: str = "default"  # the queue every job goes to
    # jobs submitted this long before the window are replayed too (the cluster is as busy at
    # the window's start as the trace had it), and left out of the metrics; inf: all of them
    warmup_s: float = math.inf
    # a cycle every this many seconds while jobs wait, besides the cycles events bring (the
    # live scheduler cycles periodically; time-dependent orders such as LAS need it); None: none
    tick_s: float | None = 60.0


@dataclasses.dataclass
class JobsResult:
    """What one replay measured over one window (``to_json`` is the CLI's JSON)."""

    profile: str
    window_s: tuple[float, float]
    devices: int
    jobs: int  # jobs submitted in the window (never-fitting ones aside)
    finished: int
    never_fit: int
    never_fit_examples: list[str]
    mean_jct_s: float | None
    p50_jct_s: float | None
    p99_jct_s: float | None
    mean_wait_s: float | None
    p99_wait_s: float | None
    utilisation: float  # 0..1: device-seconds allocated in the window / (devices x its length)
    goodput: float  # 0..1: the same, less the work thrown away by the runs evictions stopped in it
    violations: int  # over the whole replay
    violation_examples: list[str]
    preemptions: int  # evictions of the window's jobs
    lost_device_s: float  # work (and restarts) the window's jobs lost to evictions
    max_wait_s_large: float | None
    large_jobs: int
    size_mapping: list[dict[str, Any]]
    cycles: int  # of the whole replay
    seconds: float  # wall time of the whole replay
    end_s: float  # virtual time the replay ended
    waits_s: dict[str, float] = dataclasses.field(default_factory=dict)  # large job id -> wait

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 1) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "engine": "scheduler",
            "profile": self.profile,
            "window_s": [self.window_s[0], self.window_s[1]],
            "devices": self.devices,
            "jobs": self.jobs,
            "finished": self.finished,
            "never_fit": self.never_fit,
            "never_fit_examples": self.never_fit_examples,
            "mean_jct_s": r(self.mean_jct_s),
            "p50_jct_s": r(self.p50_jct_s),
            "p99_jct_s": r(self.p99_jct_s),
            "mean_wait_s": r(self.mean_wait_s),
            "p99_wait_s": r(self.p99_wait_s),
            "utilisation": round(self.utilisation, 4),
            "goodput": round(self.goodput, 4),
            "violations": self.violations,
            "violation_examples": self.violation_examples,
            "preemptions": self.preemptions,
            "lost_device_s": round(self.lost_device_s, 1),
            "max_wait_s_large": r(self.max_wait_s_large),
            "large_jobs": self.large_jobs,
            "large_devices": LARGE_DEVICES,
            "size_mapping": self.size_mapping,
            "cycles": self.cycles,
            "end_s": self.end_s,
            "seconds": round(self.seconds, 2),
        }


class _Watch:
    """The replay's observer: feeds the audit with every start and stop, and samples the
    devices allocated and the jobs waiting after every cycle (a step function of time: both
    change only at event instants, and a cycle follows every instant)."""

    def __init__(self, audit: PlacementAudit, jobs: dict[str, Job]) -> None:
        self.audit = audit
        self.jobs = jobs
        self.t: list[float] = []
        self.used: list[float] = []  # devices allocated from t on
        self.queue: list[int] = []  # jobs waiting from t on
        # (time, device-seconds thrown away): the progress an eviction lost, the restarts paid,
        # booked when the run they belong to stops
        self.lost_at: list[tuple[float, float]] = []
        self._lost_seen: dict[str, float] = {}

    def _book_lost(self, t: float, rec: JobRecord) -> None:
        new = rec.lost_s - self._lost_seen.get(rec.job.id, 0.0)
        if new > 0:
            self.lost_at.append((t, new * rec.job.total_devices))
            self._lost_seen[rec.job.id] = rec.lost_s

    def on_finished(self, engine: Engine, t: float, rec: JobRecord) -> None:
        self.audit.stopped(rec.job.id)
        self._book_lost(t, rec)

    def on_cycle(self, engine: Engine, now: float, result: CycleResult) -> None:
        audit = self.audit
        # evictions first, the ones a preemptor caused just before its own bindings
        for_job: dict[str, list[str]] = {}
        for e in result.evictions:
            rec = engine.records.get(e.job_id)
            if rec is not None:
                self._book_lost(now, rec)
            if e.preemptor is None:
                audit.stopped(e.job_id)
            else:
                for_job.setdefault(e.preemptor, []).append(e.job_id)
        by_job: dict[str, list] = {}
        for b in result.bindings:
            by_job.setdefault(b.job_id, []).append(b)
        for jid, bindings in by_job.items():
            for victim in for_job.pop(jid, ()):
                audit.stopped(victim)
            audit.started(self.jobs[jid], bindings)
        for victims in for_job.values():
            for victim in victims:
                audit.stopped(victim)
        if self.t and self.t[-1] == now:
            self.used[-1], self.queue[-1] = audit.used_devices, len(engine.scheduler.pending)
        else:
            self.t.append(now)
            self.used.append(audit.used_devices)
            self.queue.append(len(engine.scheduler.pending))

    def area(self, lo: float, hi: float) -> float:
        """Device-seconds allocated in ``[lo, hi)``."""
        t = np.asarray(self.t)
        if not len(t) or hi <= lo:
            return 0.0
        used = np.asarray(self.used)
        ends = np.append(t[1:], t[-1])  # nothing runs after the last cycle
        overlap = np.clip(np.minimum(ends, hi) - np.maximum(t, lo), 0.0, None)
        return float((used * overlap).sum())

    def lost(self, lo: float, hi: float) -> float:
        """Device-seconds thrown away by runs that stopped in ``[lo, hi)``."""
        return sum(d for t, d in self.lost_at if lo <= t < hi)


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def build_jobs(
    trace: Sequence[TraceJob], nodes: Sequence[Node], settings: ReplaySettings
) -> tuple[list[tuple[TraceJob, Job]], list[dict[str, Any]]]:
    """The core jobs for the trace rows (sizes made legal), and the size mapping used:
    [{"trace_devices", "devices", "tasks", "per_task", "block", "jobs"}]."""
    models = sorted({d.model for n in nodes for d in n.devices})
    per_node: dict[str, int] = {}
    for n in nodes:
        for m, c in Counter(d.model for d in n.devices).items():
            per_node[m] = max(per_node.get(m, 0), c)
    largest = max(per_node.values(), default=1)
    out = []
    used: Counter = Counter()
    shapes: dict[tuple[int, str], Shape] = {}
    for tj in trace:
        model = tj.device_type or (models[0] if len(models) == 1 else "")
        if tj.device_milli < 1000:
            shape = Shape(1, 1)
        else:
            key = (tj.num_devices, model)
            shape = shapes.get(key) or shapes.setdefault(
                key, legal_shape(tj.num_devices, model, per_node.get(model) or largest)
            )
        used[(tj.num_devices, shape)] += 1
        job = Job(
            id=tj.job_id,
            kind=JobKind.TRAINING,
            tasks=shape.tasks,
            devices=DeviceRequest(count=shape.per_task, model=model or None, milli=tj.device_milli),
            within=CLUSTER,
            queue=settings.queue,
            submit_time=tj.submit_s,
            expected_duration_seconds=tj.duration_s * settings.estimate_factor,
            domain_block=shape.block,
        )
        out.append((tj, job))
    mapping = [
        {
            "trace_devices": n,
            "devices": s.devices,
            "tasks": s.tasks,
            "per_task": s.per_task,
            "block": s.block,
            "jobs": c,
        }
        for (n, s), c in sorted(used.items(), key=lambda kv: (kv[0][0], kv[0][1].devices))
    ]
    return out, mapping


class Replay:
    """One run of the engine over a trace (``run_replay``), read per window (``window``)."""

    def __init__(self, engine, watch, audit, trace, mapping, never, profile_name, capacity, summary) -> None:
        self.engine: Engine = engine
        self.watch: _Watch = watch
        self.audit: PlacementAudit = audit
        self.trace: list[TraceJob] = trace
        self.mapping = mapping
        self.never: list[tuple[TraceJob, str]] = never  # (row, why it can never fit)
        self.profile_name = profile_name
        self.capacity = capacity
        self.summary = summary

    def window(self, lo: float, hi: float) -> JobsResult:
        """The metrics of the jobs submitted in ``[lo, hi)``, the allocation inside it."""
        ids = {tj.job_id for tj in self.trace if lo <= tj.submit_s < hi}
        recs = [r for jid, r in self.engine.records.items() if jid in ids]
        never = [f"{tj.job_id} ({tj.num_devices} devices): {why}" for tj, why in self.never if lo <= tj.submit_s < hi]
        jct = np.array([r.jct_s for r in recs if r.jct_s is not None], dtype=np.float64)
        wait = np.array([r.wait_s for r in recs if r.wait_s is not None], dtype=np.float64)
        large = [r for r in recs if r.job.total_devices >= LARGE_DEVICES]
        large_waits = {r.job.id: r.wait_s for r in large if r.wait_s is not None}
        lost = sum(r.lost_s * r.job.total_devices for r in recs)
        span = self.capacity * (hi - lo)
        area = self.watch.area(lo, hi)
        util = area / span if span > 0 else 0.0
        good = (area - self.watch.lost(lo, hi)) / span if span > 0 else util
        return JobsResult(
            profile=self.profile_name,
            window_s=(lo, hi),
            devices=self.capacity,
            jobs=len(recs),
            finished=sum(1 for r in recs if r.end_s is not None),
            never_fit=len(never),
            never_fit_examples=never[:10],
            mean_jct_s=float(jct.mean()) if len(jct) else None,
            p50_jct_s=_percentile(jct, 50),
            p99_jct_s=_percentile(jct, 99),
            mean_wait_s=float(wait.mean()) if len(wait) else None,
            p99_wait_s=_percentile(wait, 99),
            utilisation=util,
            goodput=good,
            violations=self.audit.violations,
            violation_examples=self.audit.examples,
            preemptions=sum(r.preemptions for r in recs),
            lost_device_s=lost,
            max_wait_s_large=max(large_waits.values()) if large_waits else None,
            large_jobs=len(large),
            size_mapping=self.mapping,
            cycles=self.summary.cycles,
            seconds=self.summary.seconds,
            end_s=self.summary.end_s,
            waits_s=large_waits,
        )

    def curve(self, points: int = CURVE_POINTS) -> tuple[list[float], list[float], list[int]]:
        """(time, devices allocated, jobs waiting), at most ``points`` samples evenly in time."""
        t = self.watch.t
        if not t:
            return [], [], []
        grid = np.linspace(t[0], t[-1], points)
        idx = np.searchsorted(np.asarray(t), grid, side="right") - 1
        used = np.asarray(self.watch.used)[idx]
        queue = np.asarray(self.watch.queue)[idx]
        return grid.tolist(), used.tolist(), queue.tolist()


def run_replay(
    trace: Sequence[TraceJob],
    nodes: Sequence[Node],
    profile: Profile,
    *,
    fabric: Fabric | None = None,
    profile_name: str = "default",
    settings: ReplaySettings = ReplaySettings(),
    progress: Callable[[int, int], None] | None = None,
) -> Replay:
    """Replay the jobs of ``trace`` submitted in ``[from_s - warmup_s, to_s)`` on ``nodes``
    with ``profile`` until every one of them has finished."""
    start = None if settings.from_s is None else settings.from_s - settings.warmup_s
    rows = [
        tj
        for tj in trace
        if (start is None or tj.submit_s >= start) and (settings.to_s is None or tj.submit_s < settings.to_s)
    ]
    rows.sort(key=lambda tj: (tj.submit_s, tj.line))
    if settings.from_s is not None and not any(tj.submit_s >= settings.from_s for tj in rows):
        rows = []
    if not rows:
        raise XpodError(
            f"no job of the trace is submitted in the window [{settings.from_s}, {settings.to_s}) (check --from/--to)"
        )
    sched = Scheduler(nodes, queues=(Queue(settings.queue),), profile=profile, fabric=fabric)
    capacity = sum(len(n.devices) for n in nodes)
    built, mapping = build_jobs(rows, nodes, settings)
    jobs = {job.id: job for _, job in built}
    audit = PlacementAudit(nodes)
    watch = _Watch(audit, jobs)
    engine = Engine(
        sched,
        preemption=PreemptionCost(settings.checkpoint_every_s, settings.restart_s),
        tick_s=settings.tick_s,
        observers=[watch],
    )
    never: list[tuple[TraceJob, str]] = []
    never_shapes: dict[tuple, str | None] = {}
    for tj, job in built:
        key = (job.tasks, job.devices, job.domain_block)
        if key not in never_shapes:
            nf = sched.never_fits(job)
            never_shapes[key] = None if nf is None else nf.message
        why = never_shapes[key]
        if why is not None:
            never.append((tj, why))
            continue
        engine.arrive(tj.submit_s, job, work_s=tj.duration_s)
    summary = engine.run(progress=progress)
    return Replay(engine, watch, audit, rows, mapping, never, profile_name, capacity, summary)


def replay(
    trace: Sequence[TraceJob],
    nodes: Sequence[Node],
    profile: Profile,
    *,
    fabric: Fabric | None = None,
    profile_name: str = "default",
    settings: ReplaySettings = ReplaySettings(),
    progress: Callable[[int, int], None] | None = None,
) -> JobsResult:
    """``run_replay`` read over its window ``[from_s, to_s)`` (the first and last submissions
    when not given)."""
    run = run_replay(
        trace, nodes, profile, fabric=fabric, profile_name=profile_name, settings=settings, progress=progress
    )
    lo = settings.from_s if settings.from_s is not None else run.trace[0].submit_s
    hi = settings.to_s if settings.to_s is not None else run.trace[-1].submit_s + 1.0
    return run.window(lo, hi)
