"""allocate: queues in fair-share order, jobs in priority order inside each."""

from __future__ import annotations

import heapq

from ..model import ReasonCode
from .cycle import CycleState, try_place


def action_allocate(cs: CycleState) -> None:
    """Queues in the ``QueueOrder`` plugin's order (drf: fair share), jobs in the ``JobOrder``
    plugin's order inside each (priority with aging); a queue stops at its first job that does
    not fit, its head (that job keeps its place: the backfill action may still use the gap
    without delaying it)."""
    queues = cs.ordered_by_queue(
        j for j in cs.enqueued if j not in cs.done and cs.failed.get(j) is not ReasonCode.NEVER_FITS
    )
    pos = {q: 0 for q in queues}
    heap = [(_qkey(cs, q), q) for q in queues]
    heapq.heapify(heap)
    while heap:
        _, q = heapq.heappop(heap)
        jobs = queues[q]
        i = pos[q]
        if i >= len(jobs) or q in cs.heads:
            continue
        job = jobs[i]
        pos[q] = i + 1
        cs.decisions += 1
        if not try_place(cs, job) and cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE:
            cs.heads[q] = job.id
        heapq.heappush(heap, (_qkey(cs, q), q))


def _qkey(cs: CycleState, q: str) -> float:
    order = cs.queue_order
    return order.queue_key(q, cs.ctx) if order else 0.0
