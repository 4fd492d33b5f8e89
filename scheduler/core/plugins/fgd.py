"""``fgd``: Fragmentation Gradient Descent, the FGD paper's scheduler, as a baseline profile.

Re-implemented from the paper's description (Weng et al., USENIX ATC'23; research/scheduler.md
section 2.1): a node's score for a task is ``trunc(100 * sigmoid((F_before - F_after) / 1000))``,
``F`` being the node's fragmentation against the typical pods (``scheduler.core.frag``); a
fractional task goes to the device whose choice scores best (the first such device), whole
devices are the first free ones. Integer scores tie often; ties go to one end of the node
list (``ties``). Typical pods come from the history the scheduler was given (the pod list, as
the authors' simulator takes them), or, without one, from the jobs submitted so far.
"""

from __future__ import annotations

import numpy as np

from ..framework import register
from ..frag import PodShape, fragmentation, take_whole
from ..model import Job
from ._scored import ArrayScorer, sigmoid

#: the kube-scheduler's MaxNodeScore
MAX_NODE_SCORE = 100


@register
class FGDPlugin(ArrayScorer):
    name = "fgd"

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self._history = False

    def observe(self, job: Job, history: bool) -> None:
        # the paper's typical pods are the workload's, known in advance: the history when the
        # scheduler was given one, else the jobs submitted so far
        if history:
            if not self._history:
                self.workload = type(self.workload)()
            self._history = True
            self.workload.observe(job)
        elif not self._history:
            self.workload.observe(job)

    def _cache_token(self) -> tuple:
        self.tp = self.workload.typical(self.arrays.models)
        return (self.workload.version,)

    def _prepare(self) -> None:
        arr = self.arrays
        self.f_now = fragmentation(arr.cpu_left, arr.free, arr.model, self.tp)

    def _refresh(self, rows: np.ndarray) -> None:
        arr = self.arrays
        self.f_now[rows] = fragmentation(arr.cpu_left[rows], arr.free[rows], arr.model[rows], self.tp)

    def _score_rows(self, shape: PodShape, job: Job, rows: np.ndarray):
        ok, usable = self._feasible(shape, job, rows)
        score = np.full(len(rows), -np.inf)
        device = np.full(len(rows), -1)
        if not ok.any():
            return score, device
        sub = rows[ok]
        f_after, variant_ok = frag_after(self.arrays, self.tp, shape, sub, usable[ok] if usable is not None else None)
        s = np.trunc(sigmoid((self.f_now[sub][:, None] - f_after) / 1000.0) * MAX_NODE_SCORE)
        if variant_ok is None:
            score[ok] = s[:, 0]
        else:
            s = np.where(variant_ok, s, -np.inf)
            best = s.argmax(axis=1)
            score[ok] = s[np.arange(len(sub)), best]
            device[ok] = best
        return score, device


def frag_after(arr, tp, shape: PodShape, rows: np.ndarray, usable: np.ndarray | None):
    """F after placing ``shape`` on each of ``rows`` (all feasible).

    Fractional shapes: (R, G) with one variant per device, ``variant_ok`` (R, G) marking the
    devices worth scoring (usable, and no lower-indexed device of the node has the same milli
    free: equal free, equal F, and ties go to the lower index anyway). Other shapes: (R, 1) and
    ``None``: whole devices are the first usable ones, a CPU-only task takes CPU only."""
    cpu_after = arr.cpu_left[rows] - shape.cpu_milli
    free = arr.free[rows]
    model = arr.model[rows]
    if shape.fractional:
        r, g = free.shape
        same = free[:, :, None] == free[:, None, :]
        dup = (same & np.tri(g, g, -1, dtype=bool)[None]).any(axis=2)
        variant_ok = usable & ~dup
        rr, gg = np.nonzero(variant_ok)
        after = free[rr].copy()
        after[np.arange(len(rr)), gg] -= shape.milli
        f = np.full((r, g), np.inf)
        f[rr, gg] = fragmentation(cpu_after[rr], after, model[rr], tp)
        return f, variant_ok
    after = free - take_whole(free, usable, shape.count) * shape.milli if shape.count and usable is not None else free
    return fragmentation(cpu_after, after, model, tp)[:, None], None
