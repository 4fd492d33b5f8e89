"""``shortest-first``: inside a priority class, the job with the least expected work first, aged
so that no job waits for ever (the default profile's job order)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from ..framework import register
from ..model import Job
from .priority import PriorityPlugin


@register
class ShortestFirstPlugin(PriorityPlugin):
    """Order (``job_key``): higher priority class first; inside a class, the smallest
    ``log2(expected work) - wait / half_life_s`` first, then submit time and id. Expected work is
    the job's declared ``expected_duration_seconds`` (``unknown_duration_s`` when it declares
    none), times its devices when ``by`` is ``device-seconds``: a short narrow job goes before a
    long wide one, as a user's declared time limit lets Slurm's backfill run short jobs first.
    Aging halves a job's effective size every ``half_life_s`` it waits, so a job of work W
    passes a stream of new jobs of work w after waiting ``half_life_s * log2(W / w)``. The
    difference of two jobs' keys never changes with time (both age at the same rate), so the
    order is stable between cycles.

    Preemption (``effective``, ``victims``) is the priority plugin's: a higher effective priority
    (the class value plus ``aging_per_hour`` per hour waited) may evict a lower one. With
    ``aging_per_hour`` 0 (the default here) only a higher class evicts: the order inside a class
    never evicts a running job for a shorter one."""

    name = "shortest-first"
    ARGS: ClassVar[dict[str, Any]] = {
        "aging_per_hour": 0.0,
        "half_life_s": 3600.0,
        "unknown_duration_s": 86400.0,
        "by": "device-seconds",
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"by": ("device-seconds", "seconds")}
    half_life_s: float
    unknown_duration_s: float
    by: str

    def job_key(self, job: Job, now: float) -> tuple:
        d = job.expected_duration_seconds
        work = max(self.unknown_duration_s if d is None else d, 1.0)
        if self.by == "device-seconds":
            work *= max(job.total_devices, 1e-3)
        aged = math.log2(work)
        if self.half_life_s > 0:
            aged -= max(0.0, now - job.submit_time) / self.half_life_s
        return (-job.priority, aged, job.submit_time, job.id)
