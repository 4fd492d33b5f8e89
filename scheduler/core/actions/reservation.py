"""Reservations: when and where a waiting job is expected to fit, from the running jobs'
expected ends (backfill holds the blocked head's; its pending reason shows the same start)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..estimates import shared_ends
from ..fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from ..model import MILLI, Job, JobKind
from ..snapshot import Snapshot, Statement
from .cycle import CycleState, place_ahead, reserve_devices, tier_of, unit_of


#: look-ahead placements one reservation tries (each walks the nodes as a placement does): past
#: them its start is unknown, as when no release frees enough (backfill then keeps to other
#: devices; the pending reason says the start is unknown)
MAX_RESERVATION_TRIES = 16


@dataclasses.dataclass(frozen=True)
class Reservation:
    """When and where a waiting job is expected to fit: at ``start`` in the domain of its tier
    (one node, one super-node or the cluster) made of ``nodes``."""

    start: float  # clock time
    nodes: frozenset[str]


def reservation(cs: CycleState, job: Job, ends: list | None = None) -> Reservation | None:
    """When and where a waiting job is expected to fit, from the running jobs' expected ends
    only (the jobs queued ahead of it are the estimate walk's business: ``scheduler.estimates``;
    backfill holds the blocked head's reservation with this): the first expected end at which
    the job's own placement rules place it (``place_ahead``) on the state expected then (the
    running jobs ending by then assumed ended), and the domain of its tier (one node, one
    super-node, the cluster) that placement lands in. The free devices counted per node in
    whole tasks (the reserve nodes of an Ascend super-pod added to the need) pick the times
    worth a placement: those where a domain a release touched holds the need by counts.
    None for a CPU-only job, when the running jobs' expected ends never let it place (some
    have no expected end) or past ``MAX_RESERVATION_TRIES`` placements: backfill must never
    delay a start it promised, so no start is promised that the placement rules refuse."""
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

    # a job that just failed to place does not fit now, whatever the device counts say (device
    # rules and partly used nodes are finer than counts): its start is a future release
    best = max(sums, key=lambda d: (sums[d], d)) if sums else None
    ready = best if best is not None and sums[best] >= need else None
    if ready is not None and job.id not in cs.failed:
        return Reservation(cs.ctx.now, frozenset(n for n, d in domain_of.items() if d == ready))
    if ends is None:
        ends = running_ends(snap)
    shared: dict[tuple[str, int], float | None] | None = None  # shared devices: whole again at their last end
    # counts are necessary, not enough (910C die pairs, HCCS groups, CPU and memory, filters):
    # a time the counts allow is only the job's start when its own placement rules place it
    # on the state expected then, in a look-ahead; the placement's domain is the reservation's.
    # The look-ahead assumes ended only the jobs ending by then in the domains that hold the
    # need by counts (the others cannot take the job then): cheap when domains are small
    ahead = Statement(snap, cs.ctx.now)
    ended_in: dict[str, list[str]] = defaultdict(list)  # domain -> jobs ended by now in the walk, not yet assumed
    assumed: set[str] = set()
    tries = 0
    try:
        i = 0
        while i < len(ends):
            end = ends[i][0]
            hits: set[str] = set()  # domains a release at ``end`` touched that hold the need by counts
            if i == 0 and ready is not None:
                hits.add(ready)  # enough by the counts already: the first release may be what it lacks
            while i < len(ends) and ends[i][0] == end:
                jid = ends[i][1]
                i += 1
                for b in snap.running[jid].bindings:
                    if b.node not in per_node:
                        continue
                    d = domain_of[b.node]
                    ended_in[d].append(jid)
                    devs = snap.nodes[b.node].node.devices
                    if b.milli == MILLI:
                        freed = sum(1 for k in b.device_indices if devs[k].model in models)
                    else:
                        if shared is None:
                            shared = dict(shared_ends(snap))
                        freed = 0
                        for k in b.device_indices:
                            if devs[k].model in models and shared.get((b.node, k)) == end:
                                shared[(b.node, k)] = None  # counted once, whichever sharer ends last
                                freed += 1
                    if freed:
                        old = per_node[b.node]
                        per_node[b.node] = old + freed
                        sums[d] += ((old + freed) // unit - old // unit) * unit
                    if sums[d] >= need:
                        hits.add(d)  # (a release of CPU or memory only counts: it may be what it lacks)
            if not hits:
                continue
            tries += 1
            if tries > MAX_RESERVATION_TRIES:
                return None  # the start stays unknown rather than a guess from counts
            for d in hits:
                for jid in ended_in.pop(d, ()):
                    if jid not in assumed:
                        assumed.add(jid)
                        ahead.assume_ended(jid)
            placed = {b.node for b in place_ahead(cs, job)}
            if placed:
                doms = {domain_of[n] for n in placed if n in domain_of}
                return Reservation(max(end, cs.ctx.now), frozenset(n for n, d in domain_of.items() if d in doms))
        return None
    finally:
        ahead.discard()


def running_ends(snap: Snapshot) -> list[tuple[float, str]]:
    """(expected end, job id) of the running jobs that have one, earliest first (kept until the
    running jobs change: do not change the list)."""
    return snap.running.ends()
