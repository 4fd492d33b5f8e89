"""fragmentation: fractional tasks on the device that strands the least."""

from __future__ import annotations

from typing import Sequence

from ..framework import NOT_HERE, SKIP, SUCCESS, Plugin, Status, register
from ..model import Job, slice_bytes
from ..snapshot import NodeState


@register
class FragmentationPlugin(Plugin):
    """A fractional task goes to the device whose milli left after placement is smallest (a
    device left with a sliver nobody asks for is a fragment), on a node already partly used;
    whole devices are kept whole for whole-device jobs. Whole-device jobs are not its business."""

    name = "fragmentation"

    def pre_filter(self, job: Job) -> Status:
        return SUCCESS if job.devices is not None and job.devices.fractional else SKIP

    def select(self, job: Job, node: NodeState, free: Sequence[bool], count: int) -> tuple[int, ...] | Status:
        req = job.devices
        assert req is not None  # pre_filter skipped the others
        best = None
        for d in node.node.devices:
            i = d.index
            if not (node.usable[i] and req.matches(d)):
                continue
            if node.free_milli[i] < req.milli or node.free_memory[i] < slice_bytes(job, d.memory_bytes):
                continue
            key = (node.free_milli[i] - req.milli, i)
            if best is None or key < best[0]:
                best = (key, i)
        return NOT_HERE if best is None else (best[1],)
