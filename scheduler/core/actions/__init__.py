"""Actions: what a cycle does, in order (Volcano's actions), one module each.

``enqueue`` marks the jobs that can never fit; ``allocate`` places queues' jobs in order until
each queue's first job that does not fit (its head); ``allocate-greedy`` tries every job (no
head); ``backfill`` lets later jobs pass a head
when they cannot delay it; ``shrink`` takes batch tasks and elastic training above its minimum
for serving replicas; ``preempt`` evicts lower-priority jobs of the same queue for a job
that cannot start; ``reclaim`` takes devices back from queues above their share. Beside them:
``cycle`` (the state actions share, one job's placement), ``reservation`` (when and where a
waiting job is expected to fit) and ``carve`` (the devices a blocked head takes at its start).
Actions change the snapshot only through statements and ask plugins only through the
framework's extension points.
"""

from typing import Callable

from .allocate import action_allocate
from .allocate_greedy import action_allocate_greedy
from .backfill import action_backfill
from .cycle import CycleState, PlacedTasks
from .enqueue import action_enqueue, never_fits, never_fits_reason
from .preempt import action_preempt
from .reclaim import action_reclaim
from .shrink import action_shrink

#: action name (as a profile names it) -> the action
ACTIONS: dict[str, Callable[[CycleState], None]] = {
    "enqueue": action_enqueue,
    "allocate": action_allocate,
    "allocate-greedy": action_allocate_greedy,
    "backfill": action_backfill,
    "shrink": action_shrink,
    "preempt": action_preempt,
    "reclaim": action_reclaim,
}

__all__ = ["ACTIONS", "CycleState", "PlacedTasks", "never_fits", "never_fits_reason"]
