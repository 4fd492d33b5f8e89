"""``random``: the FGD paper's Random baseline: a uniformly random node among those that fit,
and random devices on it (``seed`` makes runs reproducible)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..framework import NOT_HERE, SKIP, Candidates, CycleContext, Status, register
from ..frag import PodShape
from ..model import Job
from ..snapshot import NodeState
from ._scored import ArrayScorer


@register
class RandomPlugin(ArrayScorer):
    name = "random"
    ARGS = {"ties": "smallest-name", "seed": 0}
    seed: int

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self.rng = np.random.default_rng(int(self.seed))

    def observe(self, job: Job, history: bool) -> None:
        """Random needs no typical pods."""

    def score(self, job: Job, nodes: Candidates, ctx: CycleContext) -> np.ndarray:
        """A fresh random order of the nodes where the task fits (-inf elsewhere)."""
        fits = super().score(job, nodes, ctx) > -np.inf
        return np.where(fits, self.rng.random(len(fits)), -np.inf)

    def select(self, job: Job, node: NodeState, free: Sequence[bool], count: int) -> tuple[int, ...] | Status:
        req = job.devices
        if req is None:
            return SKIP
        fit = [
            d.index
            for d in node.node.devices
            if node.usable[d.index] and node.free_milli[d.index] >= req.milli and req.matches(d)
        ]
        if not req.fractional and free:
            fit = [i for i in fit if free[i]]
        if len(fit) < req.count:
            return NOT_HERE
        if req.fractional:
            return (fit[int(self.rng.integers(len(fit)))],)
        return tuple(sorted(int(i) for i in self.rng.choice(fit, size=req.count, replace=False)))

    def _score_rows(self, shape: PodShape, job: Job, rows: np.ndarray):
        ok, _ = self._feasible(shape, job, rows)
        return np.where(ok, 0.0, -np.inf), np.full(len(rows), -1)
