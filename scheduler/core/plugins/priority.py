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
    behind the preemptor) cannot swing back and forth between two jobs. Victims go lowest
    effective priority first, then the fewest devices, then the youngest."""

    name = "priority"
    ARGS = {"aging_per_hour": 1.0}
    aging_per_hour: float

    def effective(self, job: Job, now: float) -> float:
        return job.priority + self.aging_per_hour * max(0.0, now - job.submit_time) / 3600.0

    def job_key(self, job: Job, now: float) -> tuple:
        return (-self.effective(job, now), job.submit_time, job.id)

    def victims(self, job: Job, candidates: Sequence[RunningJob], ctx: CycleContext, reclaim: bool) -> list[RunningJob]:
        now = ctx.now
        out = list(candidates)
        if not reclaim:  # inside a queue: only what the queue order puts behind the preemptor
            mine = self.effective(job, now)
            out = [rj for rj in out if self.effective(rj.job, now) < mine]
        out.sort(key=lambda rj: (self.effective(rj.job, now), rj.job.total_devices, -rj.start_time, rj.job.id))
        return out
