"""``first-fit``: the first node by name that fits (kube-scheduler without scoring, Slurm's
linear node selection)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..framework import CycleContext, Plugin, register
from ..model import Job
from ..snapshot import NodeState


@register
class FirstFitPlugin(Plugin):
    """Every node scores the same, so the placer takes nodes in name order (its tie rule) and
    the first one that fits wins; devices on the node are chosen as without it (the device
    rules of the model, e.g. the ascend plugin's, else the lowest free indices)."""

    name = "first-fit"

    def score(self, job: Job, nodes: Sequence[NodeState], ctx: CycleContext) -> np.ndarray:
        return np.zeros(len(nodes))
