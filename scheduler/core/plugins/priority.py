"""priority: higher first, with aging; the victims preemption may take."""

from __future__ import annotations

from typing import Sequence

from ..framework import CycleContext, Plugin, register
from ..model import Job
from ..snapshot import RunningJob


@register
class PriorityPlugin(Plugin):
    """Higher priority first; waiting raises the effective priority by ``aging_per_hour`` per
    hour so nothing starves; then submit time, then id (deterministic).

    Aging counts from the submit time for every job, waiting or running, so the difference of
    two jobs' effective priorities never changes with time: the order is stable, and
    preemption (which evicts only jobs of a lower effective priority, the ones this order puts
    behind the preemptor) cannot swing back and forth between two jobs. A waiting job evicts
    only jobs whose effective priority is at least ``preempt_margin`` below its own (100: the
    step from the low class to normal): aging orders the queue, but two jobs of one class
    submitted seconds apart differ by a sliver of aging, and without the margin the older one
    would evict the younger as soon as it could not start (at 1 per hour, 100 hours of waiting
    make a job of a class evict its class's later arrivals). A lower class is behind by its
    class alone (as long as its aging does not put it ahead). Victims go lowest effective
    priority first, then the fewest devices, then the youngest."""

    name = "priority"
    ARGS = {"aging_per_hour": 1.0, "preempt_margin": 100.0}
    aging_per_hour: float
    preempt_margin: float

    @property
    def fixed_keys(self) -> bool:
        """Without aging a job's key never changes (``JobOrder``: kept across cycles)."""
        return self.aging_per_hour == 0

    def effective(self, job: Job, now: float) -> float:
        return job.priority + self.aging_per_hour * max(0.0, now - job.submit_time) / 3600.0

    def job_key(self, job: Job, now: float) -> tuple:
        return (-self.effective(job, now), job.submit_time, job.id)

    def victims(self, job: Job, candidates: Sequence[RunningJob], ctx: CycleContext, reclaim: bool) -> list[RunningJob]:
        now = ctx.now
        out = list(candidates)
        if not reclaim:  # inside a queue: only what the queue order puts behind the preemptor
            mine = self.effective(job, now)
            margin = self.preempt_margin
            out = [
                rj
                for rj in out
                if (e := self.effective(rj.job, now)) < mine and (rj.job.priority < job.priority or e <= mine - margin)
            ]
        out.sort(key=lambda rj: (self.effective(rj.job, now), rj.job.total_devices, -rj.start_time, rj.job.id))
        return out
