"""``shortest-remaining``: inside a priority class, the job with the least work left goes
first, with a starvation guard; a waiting job may evict running jobs of its class that have far
more work left. The default profile's queue order (``xpod server`` without ``--profile``).

Order inside a queue (``job_key``):

1. the priority class, higher first;
2. *starved* jobs before the others, first come first served among them: a job is starved
   once it has waited (time since submission less the time it ran) at least
   ``max(starve_after_s, starve_factor x its expected duration)``, so no job waits forever
   behind a stream of shorter ones (with ``allocate`` + ``backfill`` the first starved job
   that does not fit holds a reservation nothing later may delay);
3. the others by the work they have left: ``expected_duration_seconds`` less the seconds they
   have run (``by: seconds``), times their devices (``by: device-seconds``, the default: a wide
   job of the same length frees less for others); a job without an expected duration by the
   service it has attained so far (least first, as Tiresias' LAS orders jobs it knows nothing
   of), which puts it before the jobs that declared one;
4. submit time, then id.

This is shortest-remaining-processing-time (SRPT) with the user's declared duration as the
estimate (the time limit a batch system asks for); SRPT minimises the mean completion time on
one server, and the starvation guard bounds how long the long jobs pay for it.

Holding the queue (``hold``): with ``always`` the first job of a queue that does not fit stops
it (``allocate``'s head; ``backfill`` reserves its start and lets only jobs pass that cannot
delay it); with ``starved`` only a starved job does, and a job that does not fit yet is not
starved lets the jobs after it try (fit-first, as Tiresias' simulator does) and asks
``preempt`` for room like them. The reservation, and the devices it keeps idle until the head
starts, then serve only the jobs the starvation guard protects. With ``not-resumed`` every job
holds but an evicted job starved only by ``resume_after_s`` (below): it takes the first room that
fits it, and may preempt for it, without a reservation (Tiresias reserves for no job).

Relaxed backfill (``relax_factor``, 0 = off, the default; 0.25 of the head's wait was chosen on
Philly tuning weeks 11-14 but did not hold on the test weeks 3-10 when rerun: docs/replay-jobs.md):
the head's reservation may be delayed by a bounded slack. A job may go ahead of the head on its
reserved devices when it is expected to end by ``anchor + relax_factor x basis``, where ``anchor`` is the earliest start
backfill has reserved for this head so far (it does not move later as backfilled jobs push the
reservation, so the slack is spent once, not once per cycle) and ``basis`` is the head's
declared duration (``relax_of: duration``) or the time it has waited so far (``wait``: time
since submission less the time it ran); never less than plain EASY's bound (the reserved start).
After Ward, Mahood and West, "Scheduling Jobs on Parallel Systems Using a Relaxed Backfill
Strategy" (JSSPP 2002, LNCS 2537): lower-priority jobs start as long as they do not delay the
highest-priority job "too much", the acceptable delay a factor of the user-estimated run time
(the revised paper) or of the highest-priority job's wait (its preprint's abstract). With
``wait`` the head starts by its first reserved start plus ``relax_factor`` times its wait, so
for ``relax_factor < 1`` it waits at most about ``1 / (1 - relax_factor)`` times the wait that
start promised (estimates exact, nothing else pushing it); with ``duration`` by that start plus
the slack. A factor of 1 or more with ``wait`` grows the slack as fast as the clock, and an
infinite one lets every job ahead, so the head could wait for ever (the starvation guard does not
help: a starved head is still the head); both are refused at profile load.

An evicted job (``resume_after_s``): a job the scheduler stopped and that waits again has, by
this order, the most work left of the jobs that wanted its devices (that is why it was chosen),
so it waits behind every shorter job, for hours on a busy pod, although it had started. With
``resume_after_s`` finite it counts as starved once it has waited that long since its eviction
(first come first served among starved jobs, ahead of the others), so an eviction delays a job
by at most about that long plus the wait for room; ``inf`` (the default): no such guard. The
guard follows Tiresias (Gu et al., NSDI'19, section 4.2), which promotes a job back to its
highest queue once it has waited long against the time it ran (``las``' ``promote_knob``); here
the wait is counted from the eviction, because an evicted job has already waited its turn once.
"Evicted" here is any end of a run that leaves the job waiting again: a preemption, and also a
restart after a failed task or a lost node (the attained-service book sees runs end, not why;
such a job, too, had waited its turn once). ``max_evictions`` counts the same stops.

Preemption (``victims``): a job evicts running jobs of a lower priority class (as ``priority``
does), and running jobs of its own class only when both declared an expected duration, the
victim is not starved, and the victim's remaining work exceeds ``preempt_factor`` times the
preemptor's (and ``preempt_min_s`` seconds of its devices): an eviction costs the victim its
progress since its last checkpoint, so only a large gain pays for it. A job stopped
``max_evictions`` times already (it ran and waits again: evicted) is no victim of its class
again (0: no limit), so no long job pays for many short ones. Victims go (lower classes first)
most work left first (``victim_order: most-work``, the default), or the least service attained
first, the latest start first among equals (``least-service``: Tiresias' choice among the jobs
it may evict, the one that has run the least and so loses the least progress and leaves the
order's head soonest after a restart; chosen on Philly tuning weeks 11-14, but on the test
weeks 3-10 replayed on one core beside ``most-work`` its summed p99 JCT was 3.6 h worse, so it
is not the default: docs/replay-jobs.md), or fewest devices first, then least work left
(``fewest-devices``). ``least-service`` orders the job's own class only: victims of a lower
class (a serving job scaling up over training, or ``reclaim``) go most work left first, as
with ``most-work``, because there the cost that counts is the number of gangs restarted, and the
least-served jobs are many small ones (the mix replay of day 22, Azure: 93 gang restarts with
least-service for every class against 10, the same SLO). ``preempt_factor: 0`` never preempts
inside a class.

The plugin keeps each job's attained service over cycles (``open_session``, ``_attained``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

from xpod.hal.errors import XpodError

from ..framework import CycleContext, Plugin, register
from ..model import Job
from ..snapshot import RunningJob
from ._attained import Attained


@register
class ShortestRemainingPlugin(Plugin):
    name = "shortest-remaining"
    ARGS = {
        "by": "device-seconds",
        "starve_after_s": 4 * 3600.0,
        "starve_factor": 1.0,
        "preempt_factor": 8.0,
        "preempt_min_s": 3600.0,
        "victim_order": "most-work",
        "max_evictions": 1,
        "hold": "always",
        "resume_after_s": math.inf,
        "relax_factor": 0.0,
        "relax_of": "wait",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "by": ("device-seconds", "seconds"),
        "victim_order": ("fewest-devices", "most-work", "least-service"),
        "hold": ("always", "starved", "not-resumed"),
        "relax_of": ("duration", "wait"),
    }
    by: str
    starve_after_s: float
    starve_factor: float
    preempt_factor: float
    preempt_min_s: float
    victim_order: str
    max_evictions: int
    hold: str
    resume_after_s: float
    relax_factor: float
    relax_of: str

    def __init__(self, **args) -> None:
        super().__init__(**args)
        if not math.isfinite(self.relax_factor):
            raise XpodError(
                f"args.relax_factor: {self.relax_factor} lets every job go ahead of the reserved head, "
                "which may then never start; give a finite factor"
            )
        if self.relax_of == "wait" and self.relax_factor >= 1:
            raise XpodError(
                f"args.relax_factor: {self.relax_factor} with relax_of: wait grows the slack as fast as the head "
                "waits, so it may never start; give a factor below 1, or relax_of: duration"
            )
        self.service = Attained()
        self.starved: set[str] = set()  # jobs that were ever starved: no victims of their class
        # waiting head -> the earliest start backfill reserved for it (relaxed backfill's anchor)
        self.anchors: dict[str, float] = {}

    # ------------------------------------------------------------------ the points
    def open_session(self, ctx: CycleContext) -> None:
        """Bank the runs that ended since the last cycle, note the ones that began."""
        self.service.update(ctx)
        if self.service.kept is not None:
            self.starved &= self.service.kept
            self.anchors = {j: a for j, a in self.anchors.items() if j in self.service.kept}
            self.service.kept = None
        if self.anchors:
            # a head that started is reserved afresh if it waits again (evicted)
            running = self.service.running
            self.anchors = {j: a for j, a in self.anchors.items() if j not in running}

    def job_key(self, job: Job, now: float) -> tuple:
        self.service.asked(job.id)
        if self._starved(job, now):
            return (-job.priority, 0, 0.0, job.submit_time, job.id)
        return (-job.priority, 1, self._left(job, now), job.submit_time, job.id)

    @property
    def holds_queue(self):
        """``JobOrder.holds_queue``: with ``hold: starved`` only a starved job that does not fit
        stops its queue (and gets backfill's reservation); the others let later jobs try. With
        ``always``: None, every such job holds (the mechanism's default)."""
        if self.hold == "starved":
            return self._holds
        return self._holds_unless_resumed if self.hold == "not-resumed" else None

    @property
    def backfill_until(self):
        """``JobOrder.backfill_until``: with ``relax_factor`` > 0, the latest expected end a
        job backfilled ahead of a head reserved to start at ``start`` may have (the module's
        "Relaxed backfill"); None (plain EASY: ``start``) when it is 0."""
        return self._relaxed_until if self.relax_factor > 0 else None

    def _relaxed_until(self, head: Job, start: float, now: float) -> float:
        anchor = min(self.anchors.get(head.id, start), start)
        self.anchors[head.id] = anchor
        if self.relax_of == "wait":
            basis = max(0.0, self._wait_s(head, now))
        else:
            basis = head.expected_duration_seconds or 0.0
        return max(start, anchor + self.relax_factor * basis)

    def _holds(self, job: Job, now: float) -> bool:
        return self._starved(job, now)

    def _holds_unless_resumed(self, job: Job, now: float) -> bool:
        """``hold: not-resumed``: every job holds but one that is starved only by
        ``resume_after_s`` (evicted, not waited out): it goes first wherever it fits, and
        asks ``preempt`` for room, without a reservation that keeps shorter jobs waiting."""
        return not self._resumes(job, now) or self._waited_out(job, now)

    def victims(self, job: Job, candidates: Sequence[RunningJob], ctx: CycleContext, reclaim: bool) -> list[RunningJob]:
        """Lower classes always (lowest first); the job's own class as the module says."""
        now = ctx.now
        lefts: dict[str, float] = {}  # victim id -> its work left (computed once per call)

        def left_of(v: Job) -> float:
            got = lefts.get(v.id)
            if got is None:
                got = lefts[v.id] = self._left(v, now)
            return got

        if reclaim:
            out = list(candidates)
        else:
            out = []
            mine = None
            if self.preempt_factor > 0 and job.expected_duration_seconds is not None:
                mine = self._left(job, now)
            for rj in candidates:
                v = rj.job
                if v.priority < job.priority:
                    out.append(rj)
                elif (
                    mine is not None
                    and v.priority == job.priority
                    and v.expected_duration_seconds is not None
                    and v.id not in self.starved
                    and not (self.max_evictions and self.service.stops.get(v.id, 0) >= self.max_evictions)
                ):
                    left = left_of(v)
                    floor = self.preempt_min_s * (v.total_devices if self.by == "device-seconds" else 1)
                    if left > self.preempt_factor * mine and left > floor:
                        out.append(rj)
        if self.victim_order == "most-work":
            out.sort(key=lambda rj: (rj.job.priority, -left_of(rj.job), -rj.start_time, rj.job.id))
        elif self.victim_order == "least-service":
            # Inside the job's class the least served first; a lower class (reclaim too) most
            # work left first, as ``most-work``: see the module's "Preemption".
            seconds = self.service.device_seconds if self.by == "device-seconds" else self.service.seconds
            own = job.priority

            def least_served(rj: RunningJob) -> tuple:
                v = rj.job
                if v.priority < own or reclaim:
                    return (v.priority, 0, -left_of(v), -rj.start_time, v.id)
                return (v.priority, 1, seconds(v, now), -rj.start_time, v.id)

            out.sort(key=least_served)
        else:
            out.sort(key=lambda rj: (rj.job.priority, rj.job.total_devices, left_of(rj.job), rj.job.id))
        return out

    def victim_class_bound(self, job: Job, ctx: CycleContext, reclaim: bool) -> int | None:
        """``victims`` takes lower classes only, and its own class only when ``job`` declared
        a duration (reclaim: any class)."""
        if reclaim:
            return None
        if self.preempt_factor > 0 and job.expected_duration_seconds is not None:
            return job.priority + 1
        return job.priority

    # ------------------------------------------------------------------ internals
    def _left(self, job: Job, now: float) -> float:
        """The work ``job`` has left (the module's point 3), in the unit ``by`` names."""
        d = job.expected_duration_seconds
        if d is None:
            return (
                self.service.device_seconds(job, now) if self.by == "device-seconds" else self.service.seconds(job, now)
            )
        left = max(0.0, d - self.service.seconds(job, now))
        return left * job.total_devices if self.by == "device-seconds" else left

    def _starved(self, job: Job, now: float) -> bool:
        if job.id in self.service.running:
            return False  # a running job is not waiting; it stays in the order by its work left
        if self._waited_out(job, now) or self._resumes(job, now):
            self.starved.add(job.id)
            return True
        return False

    def _wait_s(self, job: Job, now: float) -> float:
        """How long ``job`` has waited: the time since its submission less the time it ran."""
        return now - job.submit_time - self.service.seconds(job, now)

    def _waited_out(self, job: Job, now: float) -> bool:
        """Whether ``job`` has waited (time since submission less the time it ran) at least
        ``starve_after_s``, or ``starve_factor`` times its declared duration if that is longer."""
        return self._wait_s(job, now) >= max(
            self.starve_after_s, self.starve_factor * (job.expected_duration_seconds or 0.0)
        )

    def _resumes(self, job: Job, now: float) -> bool:
        """Whether ``job``, waiting, was stopped by the scheduler at least ``resume_after_s`` ago
        (the module's "An evicted job")."""
        if self.resume_after_s == math.inf:
            return False
        at = self.service.stopped_at.get(job.id)
        return at is not None and now - at >= self.resume_after_s
