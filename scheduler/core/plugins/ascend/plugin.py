"""The ascend plugin: MindCluster's rules (``rules.py``) through the framework's points.

* ``pre_filter``: jobs that name an Ascend 910B or 910C model and take whole devices are its
  business (the others are skipped); a job breaking a rule is refused at submit.
* ``select``: 910B HCCS groups, 910C die pairs (the core's device groups and packages).
* ``blocks``: a 910C job of 16-die tasks in logical super-pods (``domain_block``, MindCluster's
  sp-block), or a serving replica of several 16-die tasks (one logical super-pod each): blocks
  of whole nodes inside one physical super-pod (the fabric's scale-up level) that keeps
  ``reserve_nodes`` nodes free for fault rescheduling.
"""

from __future__ import annotations

from typing import Sequence

from ...fabric import NODE
from ...framework import NOT_HERE, SKIP, SUCCESS, Blocks, CycleContext, Plugin, Status, register, unresolvable
from ...model import Job, JobKind
from ...snapshot import NodeState
from . import rules

#: the topology level a logical super-pod lies inside when the fabric names no scale-up level
SUPERPOD_LEVEL = "supernode"


@register
class AscendPlugin(Plugin):
    """Huawei MindCluster rules for 910B and 910C."""

    name = "ascend"
    ARGS = {"reserve_nodes": rules.DEFAULT_SUPERNODE_RESERVE_NODES}
    JOB_FIELDS = ("domain_block",)
    reserve_nodes: int

    def pre_filter(self, job: Job) -> Status:
        req = job.devices
        if req is None or req.fractional or rules.family(req.model) is None:
            return SKIP  # vNPU slices and other models: not governed by the whole-NPU rules
        why = rules.validate(job)
        return SUCCESS if why is None else unresolvable(why)

    def select(self, job: Job, node: NodeState, free: Sequence[bool], count: int) -> tuple[int, ...] | Status:
        model = job.devices.model if job.devices else None
        if rules.family(model) == "910b":
            got = rules.select_910b(node.node.devices, free, count)
        else:
            got = rules.select_910c(node.node.devices, free, count)
        return NOT_HERE if got is None else got

    def blocks(self, job: Job, ctx: CycleContext) -> Blocks | Status:
        req = job.devices
        if req is None or req.count != rules.A3_DIES_PER_NODE or rules.family(req.model) != "910c":
            return SKIP
        level = (ctx.fabric.scale_up_level if ctx.fabric is not None else None) or SUPERPOD_LEVEL
        if job.kind is JobKind.SERVING:
            # a replica of several 16-die tasks (or one with domain_block 16) is one logical
            # super-pod; within: node never fits (two 16-die tasks on one node)
            if (job.replica_tasks > 1 or (job.domain_block or 0) >= rules.A3_DIES_PER_NODE) and (
                job.within != NODE and ctx.snap.has_level(level)
            ):
                return Blocks(job.replica_tasks, level, self.reserve_nodes)
            return SKIP
        if job.domain_block and job.domain_block >= rules.A3_DIES_PER_NODE:
            return Blocks(job.domain_block // rules.A3_DIES_PER_NODE, level, self.reserve_nodes)
        return SKIP
