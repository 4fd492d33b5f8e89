"""allocate-greedy: allocate without a head: a job that does not fit lets the next one try."""

from __future__ import annotations

from .allocate import allocate_in_order
from .cycle import CycleState


def action_allocate_greedy(cs: CycleState) -> None:
    """Queues and jobs in the same order as ``allocate``, but a job that does not fit does not
    hold its queue: every later job is tried too (Volcano's allocate, kube-scheduler's queue,
    the Tiresias simulator's "fit-first with FIFO"). Nothing is reserved for a large job, so
    small ones may keep passing it (starvation); a profile that wants heads uses ``allocate``
    (and ``backfill``) instead."""
    allocate_in_order(cs, hold_head=False)
