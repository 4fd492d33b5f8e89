"""Reservations: when and where a waiting job is expected to fit, from the running jobs'
expected ends (backfill holds the blocked head's; its pending reason shows the same start)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..estimates import shared_ends
from ..fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from ..model import MILLI, Job, JobKind
from ..snapshot import RESERVATIONS_CACHE, Snapshot, Statement
from .cycle import CycleState, place_ahead, reserve_devices, tier_of, unit_of, wanted


#: look-ahead placements one reservation tries (each walks the nodes as a placement does): past
#: them its start is unknown, as when no release frees enough (backfill then keeps to other
#: devices; the pending reason says the start is unknown)
MAX_RESERVATION_TRIES = 16

#: why a waiting job has no reservation (``CycleState.unreserved``; backfill's pending reasons
#: say "the start of HEAD is unknown, as WHY", the head's own estimate says the first)
GAVE_UP = (
    "the look-ahead did not place it at any of the first {tries} times the running jobs' expected ends "
    "free enough devices by count (die pairs, HCCS groups, CPU or memory still in the way), and "
    "gives up there"
)
NO_END = "a job it waits for has no expected duration"
NEVER_PLACES = "it does not place even with every running job that has an expected end ended"

_SEQ = "running log_seq"
#: keep the walks across cycles (a test turns it off to compare the decisions without)
KEEP_WALKS = True
_NO_NOTE = object()


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
    delay a start it promised, so no start is promised that the placement rules refuse; why
    it has none goes to ``cs.unreserved`` (``GAVE_UP``, ``NO_END``, ``NEVER_PLACES``).

    The walk is kept across cycles (``Snapshot.empty_cache``) while the running jobs (their
    change log), the inventory, the nodes' readiness, the job, its placed tasks and what the
    ``Observe`` plugins learnt stay the same: then its placements would repeat exactly."""
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
    # the walk's answer depends on the running jobs, the inventory and what the observing
    # plugins learnt (the placement rules' inputs), never on the clock but for ``max(end,
    # now)``: kept across cycles until one of them changes (a periodic cycle with nothing new
    # repeats it)
    cache = snap.empty_cache.setdefault(RESERVATIONS_CACHE, {})
    seq = snap.running.log_seq
    if cache.get(_SEQ) != seq:
        cache.clear()
        cache[_SEQ] = seq
    key = (cs.placed_tasks.get(job.id, 0), wanted(cs, job), ready, cs.fw.observed)
    hit = cache.get(job.id) if KEEP_WALKS else None
    if hit is not None and hit[0] is job and hit[1] == key:
        _, _, end, nodes, why, note = hit
        if note is not _NO_NOTE:
            cs.placer.notes[job.id] = note
        if end is None:
            cs.unreserved[job.id] = why
            return None
        return Reservation(max(end, cs.ctx.now), nodes)
    before = cs.placer.notes.get(job.id, _NO_NOTE)
    end, nodes, why = _walk(cs, job, ends, models, domain_of, per_node, sums, unit, need, ready)
    after = cs.placer.notes.get(job.id, _NO_NOTE)
    cache[job.id] = (job, key, end, nodes, why, after if after is not before else _NO_NOTE)
    if end is None:
        cs.unreserved[job.id] = why
        return None
    return Reservation(max(end, cs.ctx.now), nodes)


def _walk(
    cs: CycleState,
    job: Job,
    ends: list | None,
    models: set[str],
    domain_of: dict[str, str],
    per_node: dict[str, int],
    sums: dict[str, int],
    unit: int,
    need: int,
    ready: str | None,
) -> tuple[float | None, frozenset[str], str]:
    """``reservation``'s walk over the expected ends: (the end at which the look-ahead places the
    job, the nodes of its domain, "") or (None, empty, why it has no start)."""
    snap = cs.ctx.snap
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
                # the start stays unknown rather than a guess from counts
                return None, frozenset(), GAVE_UP.format(tries=MAX_RESERVATION_TRIES)
            for d in hits:
                for jid in ended_in.pop(d, ()):
                    if jid not in assumed:
                        assumed.add(jid)
                        ahead.assume_ended(jid)
            placed = {b.node for b in place_ahead(cs, job)}
            if placed:
                doms = {domain_of[n] for n in placed if n in domain_of}
                return end, frozenset(n for n, d in domain_of.items() if d in doms), ""
        if len(ends) < len(snap.running):
            return None, frozenset(), NO_END
        return None, frozenset(), NEVER_PLACES
    finally:
        ahead.discard()


def gave_up(cs: CycleState, job_id: str) -> str | None:
    """Why the job has no reservation when the look-ahead gave up on it (``GAVE_UP``), else
    None (its estimate walk says the other reasons in its own words)."""
    why = cs.unreserved.get(job_id)
    return why if why is not None and why not in (NO_END, NEVER_PLACES) else None


def running_ends(snap: Snapshot) -> list[tuple[float, str]]:
    """(expected end, job id) of the running jobs that have one, earliest first (kept until the
    running jobs change: do not change the list)."""
    return snap.running.ends()
