"""allocate: queues in fair-share order, jobs in priority order inside each."""

from __future__ import annotations

import heapq

from ..model import JobKind, ReasonCode
from .cycle import CycleState, placed_alone, regrowing, shape_key, try_place, try_place_group


def action_allocate(cs: CycleState) -> None:
    """Queues in the ``QueueOrder`` plugin's order (drf: fair share), jobs in the ``JobOrder``
    plugin's order inside each (priority with aging); a queue stops at its first job that does
    not fit, its head (that job keeps its place: the backfill action may still use the gap
    without delaying it)."""
    allocate_in_order(cs, hold_head=True)


def allocate_in_order(cs: CycleState, hold_head: bool) -> None:
    """The allocate loop: queues by ``QueueOrder``, jobs by ``JobOrder``; with ``hold_head`` a
    queue stops at its first job that does not fit now (it becomes the queue's head) unless the
    ``JobOrder`` plugin's ``holds_queue`` says that job does not hold it; without ``hold_head``
    every job is tried (``allocate-greedy``)."""
    queues = cs.ordered_by_queue(
        j for j in cs.enqueued if j not in cs.done and cs.failed.get(j) is not ReasonCode.NEVER_FITS
    )
    pos = {q: 0 for q in queues}
    # the job order may let a job that does not fit pass on its turn (``JobOrder.holds_queue``)
    holds = getattr(cs.job_order, "holds_queue", None) if hold_head else None
    # without heads: shapes that did not fit since the last placement (the state is the same,
    # so they would not fit again; keeps a long queue behind a full cluster cheap)
    no_room: set = set()
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
        if not placed_alone(cs, job):
            if job.id in cs.done or cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE:
                heapq.heappush(heap, (_qkey(cs, q), q))
                continue  # its group was tried with an earlier role
            members = [m for m in jobs if m.group == job.group] + [
                m for qq, js in queues.items() if qq != q for m in js if m.group == job.group
            ]
            if len(members) < job.group_size or not try_place_group(
                cs, [m for m in members if not placed_alone(cs, m)]
            ):
                for m in members:
                    if m.id not in cs.done:
                        cs.failed[m.id] = ReasonCode.UNSCHEDULABLE
                if hold_head:
                    cs.heads[q] = job.id
            else:
                no_room.clear()
            heapq.heappush(heap, (_qkey(cs, q), q))
            continue
        shape = None if hold_head and holds is None else shape_key(cs, job)
        if shape is not None and shape in no_room:
            cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
            if holds is not None and not regrowing(cs, job) and holds(job, cs.ctx.now):
                cs.heads[q] = job.id  # the shape did not fit since: it would not now, and it holds
        elif try_place(cs, job):
            no_room.clear()
            if job.id not in cs.done and (job.kind is not JobKind.SERVING or job.autoscale is not None):
                # placed short of what it wants: its other tasks do not fit now, so preempt (or
                # shrink, for serving) may find room for them (a plain serving job grows to its
                # max only into free devices)
                cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
        elif (
            hold_head
            and cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE
            and not regrowing(cs, job)  # a running gang waiting to regrow holds nothing for itself
            and (holds is None or holds(job, cs.ctx.now))
        ):
            cs.heads[q] = job.id
        elif shape is not None and cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE:
            no_room.add(shape)
        heapq.heappush(heap, (_qkey(cs, q), q))


def _qkey(cs: CycleState, q: str) -> float:
    order = cs.queue_order
    return order.queue_key(q, cs.ctx) if order else 0.0
