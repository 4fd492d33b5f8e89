"""drf: dominant-resource fairness across queues."""

from __future__ import annotations

from ..framework import CycleContext, Plugin, register


@register
class DRFPlugin(Plugin):
    """The queue with the smallest dominant share (devices over the cluster total, divided by
    the queue's weight) goes next."""

    name = "drf"

    def queue_key(self, queue: str, ctx: CycleContext) -> float:
        q = ctx.queues.get(queue)
        weight = q.weight if q else 1.0
        dev = ctx.queue_usage.get(queue, 0.0) / max(ctx.total_devices, 1e-9)
        return dev / max(weight, 1e-9)
