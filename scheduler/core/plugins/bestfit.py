"""``bestfit``: the FGD paper's BestFit baseline (research/scheduler.md section 2.1).

Score = ``trunc(100 * (1 - [0.5 (cpu_left - cpu) / C + 0.5 (dev_left - dev) / D]))``, where
``dev_left`` is the node's free device milli, ``C`` the largest node's CPU and ``D`` the largest
node's device count x 1000 (128,000 and 8,000 on the openb cluster, the paper's constants);
a fractional task takes the device with the least milli left that fits. It learns nothing
from the workload.
"""

from __future__ import annotations

import numpy as np

from ..framework import register
from ..frag import PodShape
from ..model import MILLI, Job
from ._scored import ArrayScorer
from .fgd import MAX_NODE_SCORE


@register
class BestFitPlugin(ArrayScorer):
    name = "bestfit"

    def observe(self, job: Job, history: bool) -> None:
        """BestFit needs no typical pods."""

    def _prepare(self) -> None:
        arr = self.arrays
        self.cpu_norm = float(max(int(arr.cpu_total.max(initial=0)), 1))
        self.dev_norm = float(max(int((arr.model >= 0).sum(axis=1).max(initial=0)), 1) * MILLI)

    def _score_rows(self, shape: PodShape, job: Job, rows: np.ndarray):
        arr = self.arrays
        ok, usable = self._feasible(shape, job, rows)
        cpu_rest = (arr.cpu_left[rows] - shape.cpu_milli) / self.cpu_norm
        dev_rest = (arr.free_total[rows] - shape.count * shape.milli) / self.dev_norm
        score = np.trunc(MAX_NODE_SCORE * (1.0 - (0.5 * cpu_rest + 0.5 * dev_rest)))
        device = np.full(len(rows), -1)
        if shape.fractional and usable is not None and len(rows):
            left = np.where(usable, arr.free[rows], np.iinfo(np.int64).max)
            device = left.argmin(axis=1)
        return np.where(ok, score, -np.inf), device
