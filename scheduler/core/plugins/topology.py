"""topology: fewest tiers crossed."""

from __future__ import annotations

from ..fabric import Fabric
from ..framework import Plugin, register
from ..model import Job


@register
class TopologyPlugin(Plugin):
    """Try one node, then one domain of each wider tier of the cluster's fabric (a super-node),
    then the cluster, up to what the job's ``within`` allows; inside a tier, the best-fitting
    domain (least free that fits). Without it a job tries only its ``within`` level."""

    name = "topology"

    def tiers(self, job: Job, fabric: Fabric) -> tuple[str, ...]:
        return fabric.walk(job.within)
