"""The service each job has attained, kept by the order plugins that need it (``las``,
``shortest-remaining``) over cycles.

A job's attained service is what it has run so far, every run counted (runs cut short by an
eviction included): ``seconds`` (wall time) and ``device_seconds`` (devices x time, Tiresias'
"2D" service). ``update`` is called once per cycle from a plugin's ``open_session``: a running
job's service grows with its run time; when a run ends (the job finished, or was evicted and
waits again) the run is banked at the previous cycle's time.

Jobs leave: every ``PRUNE_CYCLES`` cycles the records of jobs that neither run, nor stopped, nor
were asked about (``asked``, which the plugins call for every job they order) since the last
prune are dropped, so a long-running server keeps records only for the jobs it still has.
"""

from __future__ import annotations

from ..framework import CycleContext
from ..model import Job
from ..snapshot import RunningJob, RunningJobs


#: cycles between two drops of the records of jobs that are gone
PRUNE_CYCLES = 1000


class Attained:
    """Per-job attained service over cycles (see the module docstring)."""

    def __init__(self) -> None:
        self.banked_s: dict[str, float] = {}  # job id -> seconds of its finished runs
        self.banked_device_s: dict[str, float] = {}  # job id -> device-seconds of its finished runs
        self.last_run_s: dict[str, float] = {}  # job id -> length of its last finished run
        self.stopped_at: dict[str, float] = {}  # job id -> when its last run ended
        self.stops: dict[str, int] = {}  # job id -> runs it has ended (an evicted job waits again)
        self.runs: dict[str, tuple[float, float]] = {}  # running job id -> (start, devices)
        self.last_now = 0.0
        self.running: dict[str, RunningJob] = {}
        self._source: RunningJobs | None = None  # the RunningJobs followed, and its log_seq at the last update
        self._seq = 0
        self._asked: set[str] = set()  # jobs asked about since the last prune
        self._cycles = 0
        #: the jobs kept by the last prune (None before the first): a plugin drops its own
        #: per-job records of the others
        self.kept: set[str] | None = None

    def asked(self, job_id: str) -> None:
        """``job_id`` is still there (waiting): keep its records at the next prune."""
        self._asked.add(job_id)

    def update(self, ctx: CycleContext) -> None:
        """Bank the runs that ended since the last cycle, note the ones that began."""
        running = ctx.snap.running
        runs = self.runs
        # a job is never evicted and started again within one cycle, so a run that ended is one
        # whose job is gone from the running jobs at the next cycle; only the jobs the running
        # set's log names changed (a walk of them all when it is another set or trimmed)
        changed = running.changes_since(self._seq) if running is self._source else None
        if changed is None:
            ended, began = runs.keys() - running.keys(), running.keys() - runs.keys()
        else:
            ids = set(changed)
            ended = {jid for jid in ids if jid in runs and jid not in running}
            began = {jid for jid in ids if jid in running and jid not in runs}
        self._source, self._seq = running, running.log_seq
        for jid in ended:
            self._bank(jid)
        for jid in began:
            rj = running[jid]
            runs[jid] = (rj.start_time, rj.job.total_devices)
        self.last_now = ctx.now
        self.running = running
        self._cycles += 1
        if self._cycles % PRUNE_CYCLES == 0:
            keep = self._asked | running.keys()
            for book in (self.banked_s, self.banked_device_s, self.last_run_s, self.stopped_at, self.stops):
                for jid in [j for j in book if j not in keep]:
                    del book[jid]
            self.kept, self._asked = keep, set()

    def seconds(self, job: Job, now: float) -> float:
        """Seconds ``job`` has run by ``now``."""
        got = self.banked_s.get(job.id, 0.0)
        run = self.runs.get(job.id)
        if run is not None and job.id in self.running:
            got += max(0.0, now - run[0])
        return got

    def device_seconds(self, job: Job, now: float) -> float:
        """Device-seconds ``job`` has run by ``now``."""
        got = self.banked_device_s.get(job.id, 0.0)
        run = self.runs.get(job.id)
        if run is not None and job.id in self.running:
            got += max(0.0, now - run[0]) * run[1]
        return got

    def _bank(self, jid: str) -> None:
        start, devices = self.runs.pop(jid)
        ran = max(0.0, self.last_now - start)
        self.banked_s[jid] = self.banked_s.get(jid, 0.0) + ran
        self.banked_device_s[jid] = self.banked_device_s.get(jid, 0.0) + ran * devices
        self.last_run_s[jid] = ran
        self.stopped_at[jid] = self.last_now
        self.stops[jid] = self.stops.get(jid, 0) + 1
        self._asked.add(jid)  # an evicted job waits now: kept until a prune that finds it gone
