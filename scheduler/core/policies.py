"""Policies: how to order queues and jobs, which devices a task may take, where a gang goes.

Mechanism (``scheduler.actions``) asks policies through small typed extension points, one
``Protocol`` each; a policy implements the ones it cares about. A profile (``scheduler.profile``)
names the policies to enable; the registry ``POLICIES`` maps names to classes, and an unknown
name or argument is an error at load time.

Extension points:
  ``JobValidator.validate(job) -> str | None``           refuse a job at submit (one line)
  ``JobOrder.job_key(job, now) -> tuple``                  order inside a queue (smaller first)
  ``QueueOrder.queue_key(queue, ctx) -> float``            order across queues (smaller first)
  ``DeviceSelector.select(job, state, mask, k) -> idx``    devices for one task on one node
  ``NodeOrder.node_key(job, state, ctx) -> tuple``          node preference (smaller first); the
                                                            placer's bucket walk yields exactly this
                                                            order without sorting the cluster
  ``GangRule.min_tasks(job) -> int``                        tasks that must be placed together
  ``TierRule.tiers(job) -> tuple[Within, ...]``             topology tiers to try, tightest first
  ``PriorityRule.effective(job, now) -> float``             a job's priority with aging; the queue
                                                            order and preemption both compare it
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

from . import ascend
from .model import MILLI, Job, Within
from .snapshot import NodeState, Snapshot


@dataclasses.dataclass
class CycleContext:
    """What policies may read during one cycle."""

    snap: Snapshot
    now: float
    queues: dict  # name -> Queue
    total_devices: float
    queue_usage: dict  # name -> devices in use (kept current by the actions)
    priority_preemptible: dict = dataclasses.field(default_factory=dict)  # class name -> bool


@runtime_checkable
class JobValidator(Protocol):
    def validate(self, job: Job) -> str | None: ...


@runtime_checkable
class JobOrder(Protocol):
    def job_key(self, job: Job, now: float) -> tuple: ...


@runtime_checkable
class QueueOrder(Protocol):
    def queue_key(self, queue: str, ctx: CycleContext) -> float: ...


@runtime_checkable
class DeviceSelector(Protocol):
    def select(
        self, job: Job, st: NodeState, mask: list[bool], k: int
    ) -> tuple[int, ...] | None | type[NotImplemented]: ...


@runtime_checkable
class NodeOrder(Protocol):
    def node_key(self, job: Job, st: NodeState, ctx: CycleContext) -> tuple: ...


@runtime_checkable
class GangRule(Protocol):
    def min_tasks(self, job: Job) -> int: ...


@runtime_checkable
class TierRule(Protocol):
    def tiers(self, job: Job) -> tuple[Within, ...]: ...


@runtime_checkable
class PriorityRule(Protocol):
    def effective(self, job: Job, now: float) -> float: ...


class Policy:
    """Base: ``ARGS`` names the accepted arguments with their defaults."""

    name = ""
    ARGS: dict[str, Any] = {}

    def __init__(self, **args: Any) -> None:
        for k, default in self.ARGS.items():
            setattr(self, k, type(default)(args.get(k, default)) if default is not None else args.get(k))


class GangPolicy(Policy):
    """All-or-nothing: a training job's tasks are placed together or not at all (at least
    ``min_tasks`` when elastic); serving needs its minimum replicas. Without this policy every
    task is placed on its own."""

    name = "gang"

    def min_tasks(self, job: Job) -> int:
        return job.min_required


class TopologyPolicy(Policy):
    """Fewest tiers crossed: try one node, then one super-node, then the cluster, up to what the
    job's ``within`` allows; inside a tier, the best-fitting domain (least free that fits)."""

    name = "topology"

    def tiers(self, job: Job) -> tuple[Within, ...]:
        w = job.within
        if w is Within.NODE:
            return (Within.NODE,)
        if w is Within.SUPERNODE:
            return (Within.NODE, Within.SUPERNODE)
        return (Within.NODE, Within.SUPERNODE, Within.ANY)


class AscendPolicy(Policy):
    """Huawei MindCluster rules for 910B and 910C (see ``scheduler.ascend``)."""

    name = "ascend"
    ARGS = {"reserve_nodes": ascend.DEFAULT_SUPERNODE_RESERVE_NODES}

    def validate(self, job: Job) -> str | None:
        return ascend.validate(job)

    def select(self, job, st, mask, k):
        fam = ascend.family(job.devices.model if job.devices else None)
        if fam is None or job.devices.fractional:
            return NotImplemented
        if fam == "910b":
            return ascend.select_910b(st.node.devices, mask, k)
        return ascend.select_910c(st.node.devices, mask, k)


class BinpackPolicy(Policy):
    """Fill used nodes first: fewest free whole devices, then node name."""

    name = "binpack"

    def node_key(self, job, st, ctx):
        free = sum(1 for f, h in zip(st.free_milli, st.usable) if h and f == MILLI)
        return (free, st.node.name)


class SpreadPolicy(Policy):
    """The opposite of binpack: emptiest node first (for latency-sensitive serving pools)."""

    name = "spread"

    def node_key(self, job, st, ctx):
        free = sum(1 for f, h in zip(st.free_milli, st.usable) if h and f == MILLI)
        return (-free, st.node.name)


class FragmentationPolicy(Policy):
    """Fractional tasks go to the device that strands the least: the one whose milli left after
    placement is smallest (a device left with a sliver nobody asks for is a fragment), on a node
    already partly used; whole devices are kept whole for whole-device jobs."""

    name = "fragmentation"

    def select(self, job, st, mask, k):
        req = job.devices
        if req is None or not req.fractional:
            return NotImplemented
        best = None
        for d in st.node.devices:
            i = d.index
            if not (st.usable[i] and req.matches(d)):
                continue
            if st.free_milli[i] < req.milli or st.free_memory[i] < _slice_bytes(job, d.memory_bytes):
                continue
            key = (st.free_milli[i] - req.milli, i)
            if best is None or key < best[0]:
                best = (key, i)
        return None if best is None else (best[1],)


class DRFPolicy(Policy):
    """Dominant-resource fairness across queues: the queue with the smallest dominant share
    (devices and CPU, each over the cluster total, divided by the queue's weight) goes next."""

    name = "drf"

    def queue_key(self, queue, ctx):
        q = ctx.queues.get(queue)
        weight = q.weight if q else 1.0
        dev = ctx.queue_usage.get(queue, 0.0) / max(ctx.total_devices, 1e-9)
        return dev / max(weight, 1e-9)


class PriorityPolicy(Policy):
    """Higher priority first; waiting raises the effective priority by ``aging_per_hour`` per
    hour so nothing starves; then submit time, then id (deterministic).

    Aging counts from the submit time for every job, waiting or running, so the difference of
    two jobs' effective priorities never changes with time: the order is stable, and
    preemption (which evicts only jobs of a lower effective priority, the ones this order puts
    behind the preemptor) cannot swing back and forth between two jobs."""

    name = "priority"
    ARGS = {"aging_per_hour": 1.0}

    def effective(self, job: Job, now: float) -> float:
        return job.priority + self.aging_per_hour * max(0.0, now - job.submit_time) / 3600.0

    def job_key(self, job, now):
        return (-self.effective(job, now), job.submit_time, job.id)


def _slice_bytes(job: Job, device_memory: int) -> int:
    req = job.devices
    if req is None or not req.fractional:
        return 0
    return req.memory_bytes or device_memory * req.milli // MILLI


POLICIES: dict[str, Callable[..., Policy]] = {
    c.name: c
    for c in (
        GangPolicy,
        TopologyPolicy,
        AscendPolicy,
        BinpackPolicy,
        SpreadPolicy,
        FragmentationPolicy,
        DRFPolicy,
        PriorityPolicy,
    )
}
