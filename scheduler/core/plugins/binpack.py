"""binpack: fill used nodes first."""

from __future__ import annotations

from ..framework import Plugin, WalkOrder, register
from ..model import Job


@register
class BinpackPlugin(Plugin):
    """Fewest free whole devices that still fit, then node name."""

    name = "binpack"

    def node_order(self, job: Job) -> WalkOrder:
        return WalkOrder.FULLEST_FIRST
