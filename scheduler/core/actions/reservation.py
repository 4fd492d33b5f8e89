"""Reservations: when and where a waiting job is expected to fit, from the running jobs'
expected ends (backfill holds the blocked head's; its pending reason shows the same start)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..estimates import shared_ends
from ..fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from ..model import MILLI, Job, JobKind
from ..snapshot import Snapshot
from .cycle import CycleState, reserve_devices, tier_of, unit_of


@dataclasses.dataclass(frozen=True)
class Reservation:
    """When and where a waiting job is expected to fit: at ``start`` in the domain of its tier
    (one node, one super-node or the cluster) made of ``nodes``."""

    start: float  # clock time
    nodes: frozenset[str]


def reservation(cs: CycleState, job: Job, ends: list | None = None) -> Reservation | None:
    """When and where a waiting job is expected to fit, from the running jobs' expected ends
    only (the jobs queued ahead of it are the estimate walk's business: ``scheduler.estimates``;
    backfill holds the blocked head's reservation with this): the first domain of the job's
    tier whose free devices (counted per node in whole tasks, the reserve nodes of an Ascend
    super-pod added to the need) reach the job's need as the running jobs end. None for a CPU-only job or
    when the running jobs' expected ends never free enough (some have no expected end)."""
    req = job.devices
    if req is None:
        return None
    snap = cs.ctx.snap
    models = set(cs.placer.models_for(job))
    level = tier_of(cs, job)
    unit = unit_of(job)
    need = cs.placer.min_tasks(job) * unit
    if job.kind is JobKind.SERVING:
        need = unit * job.replica_tasks  # one replica
    blocks = cs.placer.blocks(job)
    if blocks is not None and job.kind is not JobKind.SERVING:
        need = blocks.tasks * unit  # one block
    # plus the domain's reserve nodes (a block rule's: Ascend super-pods)
    need += reserve_devices(cs, job)
    per_node = {
        st.node.name: sum(snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models) for st in snap.nodes.values()
    }
    # per domain of the tier, free devices in whole tasks; kept current as releases add up
    if level == CLUSTER:
        domain_of = dict.fromkeys(per_node, "")
    elif level == NODE or level in NODE_LOCAL_LEVELS:
        domain_of = {name: name for name in per_node}
    else:
        domain_of = {name: snap.nodes[name].node.domains.get(level) or name for name in per_node}
    sums: dict[str, int] = defaultdict(int)
    for name, c in per_node.items():
        sums[domain_of[name]] += c // unit * unit

    def found(domain: str, start: float) -> Reservation:
        return Reservation(max(start, cs.ctx.now), frozenset(n for n, d in domain_of.items() if d == domain))

    # a job that just failed to place does not fit now, whatever the device counts say (device
    # rules and partly used nodes are finer than counts): its start is a future release
    best = max(sums, key=lambda d: (sums[d], d)) if sums else None
    ready = best if best is not None and sums[best] >= need else None
    if ready is not None and job.id not in cs.failed:
        return found(ready, cs.ctx.now)
    if ends is None:
        ends = running_ends(snap)
    shared: dict[tuple[str, int], float | None] | None = None  # shared devices: whole again at their last end
    for end, jid in ends:
        hit = None
        for b in snap.running[jid].bindings:
            if b.node in per_node:
                devs = snap.nodes[b.node].node.devices
                if b.milli == MILLI:
                    freed = sum(1 for i in b.device_indices if devs[i].model in models)
                else:
                    if shared is None:
                        shared = dict(shared_ends(snap))
                    freed = 0
                    for i in b.device_indices:
                        if devs[i].model in models and shared.get((b.node, i)) == end:
                            shared[(b.node, i)] = None  # counted once, whichever sharer ends last
                            freed += 1
                if freed:
                    old = per_node[b.node]
                    per_node[b.node] = old + freed
                    d = domain_of[b.node]
                    sums[d] += ((old + freed) // unit - old // unit) * unit
                    if hit is None and sums[d] >= need:
                        hit = d
        if hit is None:
            hit = ready  # enough by the counts already: the first release may be what it lacks
        if hit is not None:
            return found(hit, end)
    return None


def running_ends(snap: Snapshot) -> list[tuple[float, str]]:
    """(expected end, job id) of the running jobs that have one, earliest first."""
    return sorted((rj.expected_end, rj.job.id) for rj in snap.running.values() if rj.expected_end is not None)
