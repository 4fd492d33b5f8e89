"""The restart policy, as a pure function: what happens to a bound job that lost part of itself.

``decide(job, loss, ...)`` looks only at its arguments:

* A job that lost a node, a device or a task is requeued *whole* (a training gang restarts all
  its tasks) while it has restarts left (``spec.restart.max_restarts``, ``scheduler.contract``;
  the count spent is the job's stored ``restarts`` less its ``resizes``: a gang restarted by an
  elastic resize, the scheduler's choice, spends nothing).
* Except a serving job of which at least one replica keeps serving: only the lost replicas (on
  the lost node, on the bad device, or the failed tasks the agent names) are released and placed
  again by the next cycle; the others keep running untouched and the job keeps its state, even
  below its min replicas (degraded, which the event says). A replica of several tasks
  (``tasks_per_replica``) goes whole. A serving job that loses every replica restarts whole.
* A job with roles (``roles``: its ``contract.RoleSpan``s) is a serving job as above when every
  lost task belongs to a role with replicas and each role that lost one keeps a replica: only
  those replicas are replaced (each a gang of its role's tasks); a lost task of a role without
  replicas (one gang) requeues the whole job.
* With no restarts left the job FAILS with the reason.

Each restart's event message starts with ``restart K/N:`` (K = the restarts spent with this one,
N = the budget, ``unlimited`` for -1); a resize's with ``restart (resize, R):``.
"""

from __future__ import annotations

import dataclasses
import enum

from xpod.scheduler.contract import RoleSpan
from xpod.scheduler.store import AllocationRecord, JobRecord


class Action(str, enum.Enum):
    REPLACE = "replace"  # release the lost replicas alone; the job keeps running
    REQUEUE = "requeue"  # back to the queue whole, one restart spent
    FAIL = "fail"  # no restarts left
    NONE = "none"  # nothing to do (``Loss.replace_only`` and the replicas cannot go alone)


@dataclasses.dataclass(frozen=True)
class Loss:
    """What a job lost: the allocations on ``node`` (on ``device`` of it, or only ``tasks``)."""

    why: str  # one line for the event
    node: str | None = None
    device: str | None = None  # "node/index"
    tasks: frozenset[int] = frozenset()  # empty: every task there
    replace_only: bool = False  # act only if serving replicas can be replaced alone


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    message: str  # the event's message
    restarts: int  # the job's restart count after this decision
    kept: tuple[AllocationRecord, ...] = ()  # REPLACE: what the job keeps
    lost_tasks: tuple[int, ...] = ()  # REPLACE: the tasks released


def replica_names(tasks: list[int], size: int = 1) -> str:
    """How an event names the replicas of lost ``tasks`` (task t is replica t // size):
    ``replica 1``, ``replicas 0, 2``; with several tasks per replica their tasks follow,
    ``replica 0 (tasks 0, 1)``."""
    replicas = sorted({t // size for t in tasks})
    text = "replica" + ("s " if len(replicas) > 1 else " ") + ", ".join(map(str, replicas))
    if size > 1:
        text += f" (task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, sorted(tasks)))})"
    return text


def decide(
    job: JobRecord,
    loss: Loss,
    max_restarts: int,
    serving: bool,
    replica_tasks: int = 1,
    roles: tuple[RoleSpan, ...] = (),
) -> Decision:
    """The policy for ``job`` (bound) after ``loss``; ``max_restarts`` -1 is unlimited,
    ``replica_tasks`` the tasks of one serving replica; ``roles`` a job with roles' spans."""
    hit = [
        a.node == loss.node
        and (loss.device is None or loss.device in a.devices)
        and (not loss.tasks or a.task in loss.tasks)
        for a in job.allocations
    ]
    # task -> (its replica, named for the event): a job with roles numbers replicas per role
    span_of = {t: s for s in roles for t in range(s.first, s.first + s.tasks)}
    size = replica_tasks if serving else 1

    def replica(t: int) -> tuple:
        s = span_of.get(t)
        return (None, t // size) if s is None else (s.name, s.replica_of(t))

    if roles or size > 1:  # a replica of several tasks goes whole: the rest of it cannot serve alone
        gone = {replica(a.task) for a, h in zip(job.allocations, hit) if h}
        hit = [h or replica(a.task) in gone for a, h in zip(job.allocations, hit)]
    lost = tuple(a for a, h in zip(job.allocations, hit) if h)
    kept = tuple(a for a, h in zip(job.allocations, hit) if not h)
    spent = job.restarts - job.resizes
    left = max_restarts < 0 or spent < max_restarts
    total = "unlimited" if max_restarts < 0 else str(max_restarts)
    restart = f"restart {spent + 1}/{total}"
    if roles and serving:  # replaceable: every lost task in a role with replicas that keeps one
        hit_roles = {span_of[a.task].name for a in lost if a.task in span_of}
        serving = all(a.task in span_of and span_of[a.task].per_replica is not None for a in lost) and all(
            any(a.task in span_of and span_of[a.task].name == r for a in kept) for r in hit_roles
        )
    if left and serving and lost and kept:  # at least one replica keeps serving
        tasks = sorted(a.task for a in lost)
        if roles:
            names = sorted({replica(t) for t in tasks})
            what = ", ".join(f"{r} replica {i}" for r, i in names)
        else:
            what = replica_names(tasks, size)
        message = f"{restart}: {what} replaced: {loss.why}"
        return Decision(Action.REPLACE, message, job.restarts + 1, kept, tuple(tasks))
    if loss.replace_only:
        return Decision(Action.NONE, "", job.restarts)
    if left:
        return Decision(Action.REQUEUE, f"{restart}: {loss.why}", job.restarts + 1)
    return Decision(Action.FAIL, f"{loss.why}; no restarts left (max_restarts {max_restarts})", job.restarts)
