"""spread: the opposite of binpack."""

from __future__ import annotations

from ..framework import Plugin, WalkOrder, register
from ..model import Job


@register
class SpreadPlugin(Plugin):
    """Emptiest node first (latency-sensitive serving pools), then node name."""

    name = "spread"

    def node_order(self, job: Job) -> WalkOrder:
        return WalkOrder.EMPTIEST_FIRST
