"""``lifetime``: place a task where it does not keep a node busy longer than its other tasks do,
so nodes empty together and whole nodes free up for the jobs that need them.

Each node has an *expected empty time*: the latest expected end (start +
``expected_duration_seconds``) of the tasks on it, running or placed this cycle; a task without
a declared duration keeps its node busy for an unknown time (never empty, as far as this plugin
can tell); an empty node is empty now. A task of a job that declared a duration ends at ``now +
duration``; on a node it *extends* the node's busy life by ``max(0, end - empty time)``. The
score ranks candidate nodes by that extension in steps of ``bucket_s`` (fewer steps first; 0:
the exact seconds), then fullest first (``binpack``'s order, which the scored walk would otherwise lose). So a short task
fills holes as before; a long task goes where long tasks already run instead of pinning a node
about to empty; an empty node is the last resort of every task that fits elsewhere.

Why: with whole-device jobs of mixed sizes, a pod whose free devices are scattered over many
partly used nodes cannot start a job that needs a whole node (16 dies of a CloudMatrix384 node,
or several nodes) while enough devices are idle in total; EASY backfill then keeps the head's
node draining and its dies idle for hours (docs/replay-jobs.md measures it on the tuning weeks).
Placing by expected lifetime is Google's NILAS (non-invasive lifetime-aware scoring: prefer
hosts whose expected exit the new VM does not extend; Ling et al., "LAVA: Lifetime-Aware VM
Allocation with Learned Distributions and Adaptation to Mispredictions", MLSys 2025, which
reports 2.3-9.2 points more empty hosts in production); here the lifetime is the user's
declared duration, the estimate the default's queue order and backfill already use.

Jobs without a declared duration, fractional requests (``fragmentation`` scores those) and
serving jobs are skipped (``pre_filter``): the walk's own order places them.
"""

from __future__ import annotations

import math

import numpy as np

from ..framework import SKIP, SUCCESS, Candidates, CycleContext, Plugin, Status, register
from ..model import Binding, Job, JobKind
from ..snapshot import Snapshot


@register
class LifetimePlugin(Plugin):
    name = "lifetime"
    ARGS = {"bucket_s": 3600.0}
    bucket_s: float

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self._snap: Snapshot | None = None
        self._seq = -1  # the running jobs' log_seq this book follows
        # node -> (job id, task) -> expected end (inf: no declared duration)
        self._ends: dict[str, dict[tuple[str, int], float]] = {}
        self._where: dict[str, list[tuple[str, tuple[str, int]]]] = {}  # job id -> its entries
        self._empty_at = np.zeros(0)  # by node row: the node's expected empty time (-inf: empty)
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------ the points
    def pre_filter(self, job: Job) -> Status:
        req = job.devices
        if job.expected_duration_seconds is None or req is None or req.fractional or job.kind is JobKind.SERVING:
            return SKIP
        return SUCCESS

    def score(self, job: Job, nodes: Candidates, ctx: CycleContext) -> "np.ndarray | Status":
        snap = ctx.snap
        self._sync(snap)
        rows = np.asarray(nodes.rows) if nodes.rows is not None else np.array([n.row for n in nodes], dtype=np.int64)
        empty_at = np.maximum(self._empty_at[rows], ctx.now)
        end = ctx.now + float(job.expected_duration_seconds or 0.0)
        ext = np.maximum(end - empty_at, 0.0)
        steps = np.ceil(ext / self.bucket_s) if self.bucket_s > 0 else ext  # 0: the exact seconds
        vec = snap.vectors()
        req = job.devices
        free = np.zeros(len(rows))
        for m, by_row in vec.free.items():
            dev = snap.model_example.get(m)
            if req is not None and dev is not None and req.matches(dev):
                free += by_row[rows]
        # whole steps of extension first; inside a step the fullest node (a fraction below 1)
        return -steps - free / (free.max(initial=0.0) + 1.0)

    def reserve(self, job: Job, binding: Binding, ctx: CycleContext) -> Status:
        self._sync(ctx.snap)
        d = job.expected_duration_seconds
        self._add(job.id, binding.task, binding.node, math.inf if d is None else ctx.now + d)
        return SUCCESS

    def unreserve(self, job: Job, binding: Binding, ctx: CycleContext) -> None:
        key = (job.id, binding.task)
        got = self._ends.get(binding.node)
        if got is not None and got.pop(key, None) is not None:
            self._dirty.add(binding.node)
            entries = self._where.get(job.id)
            if entries is not None:
                try:
                    entries.remove((binding.node, key))
                except ValueError:
                    pass

    # ------------------------------------------------------------------ internals
    def _add(self, job_id: str, task: int, node: str, end: float) -> None:
        key = (job_id, task)
        self._ends.setdefault(node, {})[key] = end
        self._where.setdefault(job_id, []).append((node, key))
        self._dirty.add(node)

    def _drop(self, job_id: str) -> None:
        for node, key in self._where.pop(job_id, ()):
            got = self._ends.get(node)
            if got is not None and got.pop(key, None) is not None:
                self._dirty.add(node)

    def _sync(self, snap: Snapshot) -> None:
        """Bring the book up to the running jobs (their change log since the last look; a new
        snapshot or a trimmed log: read them all), then the per-row empty times of the nodes
        that changed."""
        running = snap.running
        changed = running.changes_since(self._seq) if snap is self._snap else None
        if changed is None:
            self._snap = snap
            self._ends, self._where = {}, {}
            self._dirty = set(snap.nodes)
            changed = list(running)
        for jid in dict.fromkeys(changed):
            self._drop(jid)
            rj = running.get(jid)
            if rj is not None:
                end = rj.expected_end
                for b in rj.bindings:
                    self._add(jid, b.task, b.node, math.inf if end is None else end)
        self._seq = running.log_seq
        rows = max((st.row for st in snap.nodes.values()), default=-1) + 1
        if len(self._empty_at) < rows:
            grown = np.full(rows, -np.inf)
            grown[: len(self._empty_at)] = self._empty_at
            self._empty_at = grown
        for name in self._dirty:
            st = snap.nodes.get(name)
            if st is not None:
                got = self._ends.get(name)
                self._empty_at[st.row] = max(got.values()) if got else -np.inf
        self._dirty.clear()
