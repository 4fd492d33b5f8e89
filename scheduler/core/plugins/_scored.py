"""The shared machinery of the scoring plugins that work on numpy arrays of the nodes.

Such a plugin scores every node for a task shape at once (the ``score`` point) and names the
device on the node the placer took (``select``, fractional tasks). A node's score depends only
on the node's state and the task's *shape* (``frag.PodShape`` and its memory), so each shape
keeps its scores with the node versions they were computed at (``NodeArrays.version``): a
placement changes one node, and the next task of the shape re-scores only the nodes that
changed since. A change of the typical pods or of the inventory drops every cache.

Ties: the placer gives equal scores to the smaller node name, as the kube-scheduler the FGD
authors simulate does (research/scheduler.md section 2.1); ``ties: largest-name`` takes the
other end. The workload's typical pods come from ``observe`` (``frag.Workload``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import numpy as np

from ..framework import SKIP, Candidates, CycleContext, Plugin, Status
from ..frag import NodeArrays, PodShape, Workload, shape_of
from ..model import Job
from ..snapshot import NodeState

TIES = ("smallest-name", "largest-name")


@dataclasses.dataclass
class _ShapeCache:
    score: np.ndarray  # (N,) float, -inf where the shape does not fit
    device: np.ndarray  # (N,) chosen device for a fractional shape, -1 otherwise
    version: np.ndarray  # (N,) NodeArrays.version when scored


class ArrayScorer(Plugin):
    """Base of the numpy scoring plugins. Subclasses implement ``_score_rows``."""

    ARGS: ClassVar[dict[str, Any]] = {"ties": "smallest-name"}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"ties": TIES}
    ties: str

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.arrays = NodeArrays()
        self.workload = Workload()
        self._caches: dict[tuple, _ShapeCache] = {}
        self._cache_key: tuple | None = None

    # ------------------------------------------------------------------ the points
    def observe(self, job: Job, history: bool) -> None:
        """Every submitted job (and the history) counts towards the typical pods."""
        self.workload.observe(job)

    def score(self, job: Job, nodes: Candidates, ctx: CycleContext) -> np.ndarray:
        self._sync(ctx)
        c = self._scores(job)
        rows = nodes.rows if nodes.rows is not None else np.array([st.row for st in nodes], dtype=np.int64)
        s = c.score[rows]
        if self.ties == "largest-name" and len(rows):
            # below one score unit: equal scores go to the later candidate, the larger name (the
            # placer's stable sort gives them to the smaller)
            s = s + np.arange(len(rows)) / (2.0 * len(rows))
        return s

    def select(self, job: Job, node: NodeState, free: Sequence[bool], count: int) -> tuple[int, ...] | Status:
        """The fractional device this plugin scored on the node; whole devices: first fit."""
        req = job.devices
        if req is None or not req.fractional:
            return SKIP
        arr = self.arrays
        i = node.row
        c = self._caches.get((shape_of(job), job.memory_bytes))
        if c is None or not 0 <= i < len(c.version) or c.version[i] != arr.version[i] or c.device[i] < 0:
            return SKIP  # not scored in this state (a trial placement): first fit
        d = int(c.device[i])
        if node.usable[d] and node.free_milli[d] >= req.milli and req.matches(node.node.devices[d]):
            return (d,)
        return SKIP

    # ------------------------------------------------------------ for subclasses
    def _prepare(self) -> None:
        """Called after the inventory or the typical pods changed (caches are empty)."""

    def _refresh(self, rows: np.ndarray) -> None:
        """Called with the rows whose node state changed since the last call."""

    def _cache_token(self) -> tuple:
        """Anything besides the inventory whose change invalidates the score caches."""
        return ()

    def _score_rows(self, shape: PodShape, job: Job, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores (higher is better, -inf = does not fit) and chosen device (fractional shapes,
        else -1) of ``shape`` on node rows ``rows``."""
        raise NotImplementedError

    def _feasible(self, shape: PodShape, job: Job, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(R,) whether the shape fits on each row, and (R, G) the devices it could use there
        (None for a CPU-only shape). Device memory slices are left to the placer's check."""
        arr = self.arrays
        ok = (arr.cpu_left[rows] >= shape.cpu_milli) & (arr.memory_left[rows] >= job.memory_bytes)
        if shape.count == 0:
            return ok, None
        usable = arr.access(shape.models)[rows] & (arr.free[rows] >= shape.milli)
        return ok & (usable.sum(axis=1) >= shape.count), usable

    # ------------------------------------------------------------------ internals
    def _sync(self, ctx: CycleContext) -> None:
        arr = self.arrays
        rows = arr.sync(ctx.snap)
        # rows added since (nodes joined) grow the arrays: the plugin's own per-row state is rebuilt
        key = (arr.generation, len(arr.version), *self._cache_token())
        if key != self._cache_key:
            self._caches.clear()
            self._cache_key = key
            self._prepare()
        elif len(rows):
            self._refresh(rows)

    def _scores(self, job: Job) -> _ShapeCache:
        arr = self.arrays
        shape = shape_of(job)
        key = (shape, job.memory_bytes)
        c = self._caches.get(key)
        if c is None or len(c.version) != len(arr.version):
            rows = np.arange(len(arr.version))
            score, dev = self._score_rows(shape, job, rows)
            c = self._caches[key] = _ShapeCache(score.astype(np.float64), dev.astype(np.int64), arr.version.copy())
            return c
        dirty = np.flatnonzero(c.version != arr.version)
        if len(dirty):
            score, dev = self._score_rows(shape, job, dirty)
            c.score[dirty] = score
            c.device[dirty] = dev
            c.version[dirty] = arr.version[dirty]
        return c


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
