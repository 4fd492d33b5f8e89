"""node-selector: a job's required node labels."""

from __future__ import annotations

from ..framework import SKIP, SUCCESS, Plugin, Status, register, unresolvable
from ..model import Job
from ..snapshot import NodeState


@register
class NodeSelectorPlugin(Plugin):
    """A task of a job with a ``node_selector`` goes only to nodes carrying each of its labels
    with that value (Kubernetes' nodeSelector): e.g. ``{xpod/simulated: "false"}`` keeps a job
    that runs a real command off simulated nodes. A node without them can never take the job
    (unresolvable: it counts for nothing in what the cluster could ever offer the job)."""

    name = "node-selector"
    JOB_FIELDS = ("node_selector",)

    def pre_filter(self, job: Job) -> Status:
        return SUCCESS if job.node_selector else SKIP

    def filter(self, job: Job, node: NodeState) -> Status:
        if job.selects(node.node):
            return SUCCESS
        missing = next(f"{k}={v}" for k, v in job.node_selector if node.node.labels.get(k) != v)
        return unresolvable(f"node {node.node.name} lacks label {missing}")
