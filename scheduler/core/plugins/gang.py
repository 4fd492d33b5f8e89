"""gang: all or nothing."""

from __future__ import annotations

from ..framework import Plugin, register
from ..model import Job


@register
class GangPlugin(Plugin):
    """A training job's tasks are placed together or not at all (at least ``min_tasks`` when
    elastic); serving needs its minimum replicas. Without it every task is placed on its own."""

    name = "gang"

    def min_tasks(self, job: Job) -> int:
        return job.min_required
