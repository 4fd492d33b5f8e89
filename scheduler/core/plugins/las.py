"""``las``: Tiresias' discretised two-dimensional least-attained-service order (Gu et al.,
NSDI'19), re-implemented from the paper's description and its simulator's README.

A job's *attained service* is the device-seconds it has run so far (devices x time, every run
counted, runs cut short by an eviction included): the "2D" of 2D-LAS, so a wide job ages
faster than a narrow one. Queues are discrete: a job is in the first queue until its attained
service reaches ``threshold_device_s`` (3,600 device-seconds, the simulator README's example of
two queues), then in the second. The order (``job_key``): the first queue before the second,
first come first served inside a queue. A waiting job may evict running jobs that this order
puts behind it (``victims``: the second queue's, latest arrivals first), which is how a new
short job gets devices from a long one; with ``allocate-greedy`` a job that does not fit does
not hold the others back ("fit-first with FIFO" in the simulator). Tiresias knows nothing of a
job's expected duration and uses none.

Starvation: a job of the second queue that waited ``promote_knob`` times as long as it last
ran goes back to the first queue (the paper's PromoteKnob; 0, the default, never promotes).

The plugin keeps each job's attained service over cycles (``open_session``, ``_attained``).
"""

from __future__ import annotations

from typing import Sequence

from ..framework import CycleContext, Plugin, register
from ..model import Job
from ..snapshot import RunningJob
from ._attained import Attained


@register
class LasPlugin(Plugin):
    name = "las"
    ARGS = {"threshold_device_s": 3600.0, "promote_knob": 0.0}
    threshold_device_s: float
    promote_knob: float

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self.service = Attained()
        self._keys: dict[str, tuple] = {}  # job id -> key at ``_keys_at`` (victims ask for many)
        self._keys_at: float | None = None

    # ------------------------------------------------------------------ the points
    def open_session(self, ctx: CycleContext) -> None:
        """Bank the runs that ended since the last cycle, note the ones that began."""
        self.service.update(ctx)
        self._keys.clear()

    def job_key(self, job: Job, now: float) -> tuple:
        if now != self._keys_at:
            self._keys.clear()
            self._keys_at = now
        k = self._keys.get(job.id)
        if k is None:
            self.service.asked(job.id)
            k = self._keys[job.id] = (self._queue(job, now), job.submit_time, job.id)
        return k

    def victims(self, job: Job, candidates: Sequence[RunningJob], ctx: CycleContext, reclaim: bool) -> list[RunningJob]:
        """Running jobs the order puts behind ``job``: a later queue, or its queue and a later
        arrival; the last in that order are evicted first."""
        now = ctx.now
        mine = self.job_key(job, now)  # (also resets the key cache when the clock moved)
        keys, key = self._keys, self.job_key
        behind = []
        for rj in candidates:
            k = keys.get(rj.job.id)  # the cached key, without a call per candidate
            if k is None:
                k = key(rj.job, now)
            if k > mine:
                behind.append((k, rj))
        behind.sort(key=lambda kr: kr[0], reverse=True)
        return [rj for _, rj in behind]

    # ------------------------------------------------------------------ internals
    def _queue(self, job: Job, now: float) -> int:
        service = self.service
        if service.device_seconds(job, now) < self.threshold_device_s:
            return 0
        if self.promote_knob > 0 and job.id not in service.running:
            since = service.stopped_at.get(job.id)
            last = service.last_run_s.get(job.id, 0.0)
            if since is not None and now - since >= self.promote_knob * last:
                return 0
        return 1
