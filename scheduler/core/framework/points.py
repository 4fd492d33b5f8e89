"""The extension points: one small typed interface each (Kubernetes' scheduling framework,
Volcano's plugin functions). A plugin (``scheduler/core/plugins/``) implements the points it
cares about; the mechanism (``scheduler/core/actions/``, ``placer.py``) asks the enabled
plugins through these interfaces only, never by a plugin's class or name.

Per job, before placement (``Framework.for_job``): ``pre_filter`` runs once per job; a plugin
answering ``SKIP`` has nothing to say about the job and none of its per-job points (filter,
select, score, blocks, reserve, permit) runs for it.

==================  =================================================  ==========================
point               method                                              when
==================  =================================================  ==========================
``PreFilter``       ``pre_filter(job) -> Status``                       at submit (UNRESOLVABLE
                                                                        refuses the job) and per
                                                                        job before placement
``Filter``          ``filter(job, node) -> Status``                     per candidate node
``DeviceSelect``    ``select(job, node, free, count) -> idx | Status``  devices for one task on
                                                                        one node
``Score``           ``score(job, nodes, ctx) -> scores | Status``       orders the candidate
                                                                        nodes (higher first;
                                                                        -inf: cannot host)
``NodeOrder``       ``node_order(job) -> WalkOrder``                    the free-count walk's
                                                                        direction
``QueueOrder``      ``queue_key(queue, ctx) -> float``                  which queue goes next
``JobOrder``        ``job_key(job, now) -> tuple``                      order inside a queue
``Priority``        ``effective(job, now) -> float``                    a job's priority (aging)
``Gang``            ``min_tasks(job) -> int``                           tasks placed together
``Tiers``           ``tiers(job, fabric) -> tuple[str, ...]``           topology tiers to try
``DomainBlocks``    ``blocks(job, ctx) -> Blocks | Status``             blocks of whole nodes in
                                                                        one domain each
``Reserve``         ``reserve(job, binding, ctx) -> Status``,           each tentative binding
                    ``unreserve(job, binding, ctx)``                    (undone on discard)
``Permit``          ``permit(job, bindings, ctx) -> Status``            a whole placement, before
                                                                        it commits
``VictimSelect``    ``victims(job, candidates, ctx, reclaim) -> list``  who may be evicted for a
                                                                        job, in eviction order
                    optional ``victim_class_bound(job, ctx,            a bound the mechanism
                    reclaim) -> int | None``                            checks first (below)
``Scale``           ``scale_rule(job) -> ScaleRule | None``             how a serving job with
                                                                        ``autoscale`` follows its
                                                                        load (``core.autoscale``)
``Observe``         ``observe(job, history) -> None``                   every submitted job, and
                                                                        (``history``) jobs seen
                                                                        before the scheduler
                                                                        started: plugins that
                                                                        learn the workload
``Session``         ``open_session(ctx) -> None``                       once per cycle, before
                                                                        the actions: plugins that
                                                                        keep state over time
                                                                        (attained service) bring
                                                                        it up to date (Volcano's
                                                                        OnSessionOpen)
==================  =================================================  ==========================

Plugins must be fast at the per-node points (``filter``, ``select``): they run for every node a
placement tries. ``score`` gets every candidate at once so a plugin can use numpy over nodes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..model import Binding, Job
from .status import Status

if TYPE_CHECKING:
    from ..autoscale import ScaleRule
    from ..fabric import Fabric
    from ..snapshot import NodeState, RunningJob, Snapshot


@dataclasses.dataclass
class CycleContext:
    """What plugins may read during one cycle (and what ``Scheduler.never_fits`` reads between
    cycles)."""

    snap: "Snapshot"
    now: float
    queues: dict  # name -> Queue
    total_devices: float
    queue_usage: dict  # name -> devices in use (kept current by the actions)
    priority_preemptible: dict = dataclasses.field(default_factory=dict)  # class name -> bool
    fabric: "Fabric | None" = None  # the cluster's tiers (``scheduler.core.fabric``)


class WalkOrder(str, enum.Enum):
    """How the placer walks nodes by their free whole devices (a ``NodeOrder``'s answer)."""

    FULLEST_FIRST = "fullest-first"  # binpack: fewest free whole devices that still fit, first
    EMPTIEST_FIRST = "emptiest-first"  # spread: most free whole devices first

    def key(self, free_devices: int, name: str) -> tuple:
        """The order this walk yields nodes in (its specification; the placer's bucket walk
        yields exactly this order without sorting the cluster)."""
        return (free_devices if self is WalkOrder.FULLEST_FIRST else -free_devices, name)


class Candidates(Sequence):
    """The nodes a ``Score`` plugin ranks (a sequence of ``NodeState``), with ``rows``: their
    ``NodeState.row`` numbers as a numpy vector, to index a plugin's own arrays over nodes.

    ``Candidates(nodes, rows)`` holds the nodes; ``Candidates(rows=rows, states=by_row)`` looks
    them up in ``by_row`` (the snapshot's states by row) only when asked: a cycle over a large
    cluster ranks every node but takes the first few."""

    def __init__(self, nodes: "Sequence[NodeState]" = (), rows: Any = None, *, states: Any = None) -> None:
        self.rows = rows
        self._states = states
        self._nodes: list | None = None if states is not None else list(nodes)

    def __len__(self) -> int:
        return len(self.rows) if self._nodes is None else len(self._nodes)

    def __getitem__(self, i):
        if self._nodes is not None:
            return self._nodes[i]
        if isinstance(i, slice):
            return [self._states[r] for r in self.rows[i].tolist()]
        return self._states[int(self.rows[i])]

    def __iter__(self):
        if self._nodes is not None:
            return iter(self._nodes)
        states = self._states
        return (states[r] for r in self.rows.tolist())


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A ``DomainBlocks`` answer: the job's tasks go in blocks of ``tasks`` tasks, one task per
    wholly free node, each block inside one domain of ``level`` that keeps ``reserve_nodes``
    further nodes wholly free (a serving job: each replica is one block)."""

    tasks: int  # tasks (whole nodes) per block
    level: str  # the domain level a block lies inside (a super-node)
    reserve_nodes: int = 0  # wholly free nodes a domain keeps beside its blocks


@runtime_checkable
class PreFilter(Protocol):
    def pre_filter(self, job: Job) -> Status: ...


@runtime_checkable
class Filter(Protocol):
    def filter(self, job: Job, node: "NodeState") -> Status: ...


@runtime_checkable
class DeviceSelect(Protocol):
    def select(self, job: Job, node: "NodeState", free: Sequence[bool], count: int) -> "tuple[int, ...] | Status": ...


@runtime_checkable
class Score(Protocol):
    def score(self, job: Job, nodes: Candidates, ctx: CycleContext) -> "Sequence[float] | Status": ...


@runtime_checkable
class NodeOrder(Protocol):
    def node_order(self, job: Job) -> WalkOrder: ...


@runtime_checkable
class QueueOrder(Protocol):
    def queue_key(self, queue: str, ctx: CycleContext) -> float: ...


@runtime_checkable
class JobOrder(Protocol):
    """``job_key``: the job's place in its queue, smallest first. A plugin whose key for a job
    never changes with ``now`` or anything else may say so with a true ``fixed_keys`` attribute
    (optional): the scheduler then keeps each job's key from cycle to cycle. Optional too,
    ``holds_queue(job, now) -> bool``: whether this job, first of its queue not to fit, stops
    the queue (``allocate``'s head, for which ``backfill`` reserves); False lets the jobs
    after it try (as ``allocate-greedy`` does for every job). Without it every such job holds.
    Optional too, ``backfill_until(head, start, now) -> float``: the latest expected end a job
    may have to go ahead of the blocked ``head`` (reserved to start at ``start``) on its
    reserved devices; at least ``start``. Without it (or None) ``start`` (EASY)."""

    def job_key(self, job: Job, now: float) -> tuple: ...


@runtime_checkable
class Priority(Protocol):
    """``effective(a, t) - effective(b, t)`` must not change with ``t`` once both jobs are
    submitted (aging counts for every job alike): preempt keeps the running jobs in this
    order and looks only below the preemptor."""

    def effective(self, job: Job, now: float) -> float: ...


@runtime_checkable
class Gang(Protocol):
    def min_tasks(self, job: Job) -> int: ...


@runtime_checkable
class Tiers(Protocol):
    def tiers(self, job: Job, fabric: "Fabric") -> tuple[str, ...]: ...


@runtime_checkable
class DomainBlocks(Protocol):
    def blocks(self, job: Job, ctx: CycleContext) -> "Blocks | Status": ...


@runtime_checkable
class Reserve(Protocol):
    def reserve(self, job: Job, binding: Binding, ctx: CycleContext) -> Status: ...

    def unreserve(self, job: Job, binding: Binding, ctx: CycleContext) -> None: ...


@runtime_checkable
class Permit(Protocol):
    def permit(self, job: Job, bindings: Sequence[Binding], ctx: CycleContext) -> Status: ...


@runtime_checkable
class VictimSelect(Protocol):
    """``victims`` filters and orders ``candidates`` (it returns a subset of them).

    ``victim_class_bound`` (optional, with ``victims``): every job ``victims`` could return for
    ``job`` has a ``priority`` below the bound (None: no bound). When every selector gives one
    and no running job the action may touch is below the lowest, preempt and reclaim skip the
    job without walking the running jobs (a pod of many one-class jobs fails in O(1))."""

    def victims(
        self, job: Job, candidates: "Sequence[RunningJob]", ctx: CycleContext, reclaim: bool
    ) -> "list[RunningJob]": ...


class VictimClassBound(Protocol):
    def victim_class_bound(self, job: Job, ctx: CycleContext, reclaim: bool) -> int | None: ...


class Scale(Protocol):
    def scale_rule(self, job: Job) -> "ScaleRule | None": ...


@runtime_checkable
class Observe(Protocol):
    def observe(self, job: Job, history: bool) -> None: ...


@runtime_checkable
class Session(Protocol):
    def open_session(self, ctx: CycleContext) -> None: ...


#: every extension point, by the name a plugin's docs and errors use
POINTS: dict[str, Any] = {
    "pre_filter": PreFilter,
    "filter": Filter,
    "select": DeviceSelect,
    "score": Score,
    "node_order": NodeOrder,
    "queue_key": QueueOrder,
    "job_key": JobOrder,
    "effective": Priority,
    "min_tasks": Gang,
    "tiers": Tiers,
    "blocks": DomainBlocks,
    "reserve": Reserve,
    "unreserve": Reserve,
    "permit": Permit,
    "victims": VictimSelect,
    "victim_class_bound": VictimClassBound,
    "scale_rule": Scale,
    "observe": Observe,
    "open_session": Session,
}
