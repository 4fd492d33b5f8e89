"""reclaim: a queue below its deserved share takes devices back from queues above theirs."""

from __future__ import annotations

from .cycle import CycleState
from .preempt import preempt_like


def action_reclaim(cs: CycleState) -> None:
    """A queue below its deserved share takes back devices from queues above theirs (never
    below a queue's guaranteed share)."""
    preempt_like(cs, reclaim=True)
