"""preempt: evict lower-priority jobs of the same queue for a job that cannot start; the
machinery reclaim shares (victims, the eviction statement, fewest victims kept)."""

from __future__ import annotations

from ..model import MILLI, Eviction, Job, JobKind, ReasonCode
from ..snapshot import Statement
from .cycle import CycleState, commit_placement, placed_alone, devices_of, permitted, queue_room, shape_key, wanted


def victims(cs: CycleState, job: Job, reclaim: bool) -> list:
    """Running jobs whose eviction could help ``job``, in eviction order. The mechanism keeps
    the jobs this action may touch at all: not placed by this very cycle, of a preemptible
    priority class, holding devices of a model the job asks for, and in the job's queue
    (preempt: only those the queue order's priority puts behind the job, looked up in the
    snapshot's priority index) or in a queue above its deserved and guaranteed share (reclaim). The
    ``VictimSelect`` plugins then filter and order them (priority: lower effective priority
    only for preempt, lowest first, then the fewest devices, then the youngest). Without one:
    a lower priority class only for preempt, in the same order by class value."""
    snap = cs.ctx.snap
    bounds = cs.fw.victim_bounds
    if bounds is not None:
        # every selector says its victims are below some class: with no running job there the
        # answer is empty, known without walking the running jobs
        got = [b.victim_class_bound(job, cs.ctx, reclaim) for b in bounds]
        known = [b for b in got if b is not None]
        if len(known) == len(got):
            lowest = min(known)
            queue, other = (None, job.queue) if reclaim else (job.queue, None)
            if not snap.running.any_below(lowest, queue=queue, other_than=other):
                return []
    running = snap.running
    if reclaim:
        pool = [rj for q, jobs in running.by_queue.items() if q != job.queue for rj in jobs.values()]
    elif running.order_key is not None:
        # only jobs the queue order puts behind the preemptor (a margin for float rounding:
        # the selectors compare exactly)
        pool = running.below(job.queue, running.order_key(job) + 1e-9)
    else:
        pool = running.below(job.queue, 0.0)
    if not pool:
        return []
    models = set(cs.placer.models_for(job))
    if models and job.devices is not None and models >= _cluster_models(cs):
        models = set()  # every device of the cluster is of a model the job takes: no filter
    out = []
    usage = cs.ctx.queue_usage
    bound_now = {b.job_id for b in cs.bindings}
    preemptible = cs.ctx.priority_preemptible
    if not reclaim and not models:
        # the common case in one pass (the loop below, with nothing to check but these):
        # not placed by this very cycle, of the job's queue, of a preemptible class
        out = [
            rj
            for rj in pool
            if rj.job.id not in bound_now and rj.job.queue == job.queue and preemptible.get(rj.job.priority_class, True)
        ]
        pool = []
    for rj in pool:
        v = rj.job
        if v.id in bound_now:
            continue  # placed by this very cycle: evicting it would only churn
        if reclaim:
            if v.queue == job.queue:
                continue
            q = cs.ctx.queues.get(v.queue)
            deserved = deserved_share(cs, v.queue)
            guaranteed = q.guaranteed if q else 0.0
            if usage.get(v.queue, 0.0) <= max(deserved, guaranteed):
                continue
        elif v.queue != job.queue:
            continue
        if not preemptible.get(v.priority_class, True):
            continue
        if (
            models
            and not any(
                snap.nodes[b.node].node.devices[i].model in models
                for b in rj.bindings
                if b.node in snap.nodes
                for i in b.device_indices
            )
            and job.devices is not None
        ):
            continue
        out.append(rj)
    selectors = cs.fw.victim_selectors
    if selectors:
        for p in selectors:
            out = p.victims(job, out, cs.ctx, reclaim)
        return out
    if not reclaim:
        out = [rj for rj in out if rj.job.priority < job.priority]
    out.sort(key=lambda rj: (rj.job.priority, rj.job.total_devices, -rj.start_time, rj.job.id))
    return out


def lent_to(cs: CycleState, job: Job) -> list:
    """The running jobs backfill lent ahead of ``job`` (``CycleState.lent``) that this cycle did
    not place, fewest devices first, then the youngest: the first victims ``job`` takes."""
    running = cs.ctx.snap.running
    bound_now = {b.job_id for b in cs.bindings} if cs.lent else set()
    out = [running[j] for j, ahead in cs.lent.items() if job.id in ahead and j in running and j not in bound_now]
    out.sort(key=lambda rj: (rj.job.total_devices, -rj.start_time, rj.job.id))
    return out


def _cluster_models(cs: CycleState) -> frozenset:
    """The device models of the cluster (kept in the snapshot's cache of the inventory,
    which every inventory change clears)."""
    cache = cs.ctx.snap.empty_cache
    got = cache.get("cluster_models")
    if got is None:
        got = cache["cluster_models"] = frozenset(d.model for st in cs.ctx.snap.nodes.values() for d in st.node.devices)
    return got


def deserved_share(cs: CycleState, queue: str) -> float:
    q = cs.ctx.queues.get(queue)
    if q is not None and q.deserved is not None:
        return q.deserved
    weights = {name: (qq.weight if qq else 1.0) for name, qq in cs.ctx.queues.items()}
    total_w = sum(weights.values()) or 1.0
    return cs.ctx.total_devices * weights.get(queue, 1.0) / total_w


def preempt_for(cs: CycleState, job: Job, reclaim: bool, failed: list | None = None) -> bool:
    """Evict victims for ``job`` when that lets it start now. ``failed``: the (job shape,
    victim ids) of this cycle's failed tries since the state last changed; a job of one of
    those shapes whose victims are a subset of that try's cannot fit either (evicting fewer
    jobs frees less), so it is not tried again (one is added on failure)."""
    snap = cs.ctx.snap
    already = cs.placed_tasks.get(job.id, 0)
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    # the queue's max holds here too, counted before any eviction (as for the candidates: a job
    # its queue's max holds back is QueueOverMax, never a preemptor)
    if wanted(cs, job) - already <= 0:
        return False
    want = queue_room(cs, job, wanted(cs, job) - already, need)
    if want is None:
        return False
    candidates = victims(cs, job, reclaim)
    lent = [] if reclaim else lent_to(cs, job)
    if lent:  # the jobs backfill lent ahead of it go first, whatever the plugins say of them
        mine = {rj.job.id for rj in lent}
        candidates = lent + [rj for rj in candidates if rj.job.id not in mine]
    if not candidates:
        return False
    cs.preemption_attempts += 1
    # every victim the tries below may take
    reach = candidates[: max(MAX_VICTIMS, MAX_SINGLE_VICTIM_TRIES)]
    shape = shape_key(cs, job) if failed is not None else None
    ids = frozenset(rj.job.id for rj in reach)
    if shape is not None and failed is not None and any(sh == shape and ids <= tried for sh, tried in failed):
        return False
    # with all of them gone, does it fit at all? If not, no subset of them helps: one placement
    # try instead of one per victim (and none when even the device counts say no)
    fits = enough_devices(cs, job, reach, need)
    if fits:
        trial = Statement(snap, cs.ctx.now)
        for rj in reach:
            trial.evict(rj.job.id)
        fits = cs.placer.place(job, trial, want, need, first_task=already) >= need
        trial.discard()
    if not fits:
        if shape is not None and failed is not None:
            failed.append((shape, ids))
        return False
    stmt = Statement(snap, cs.ctx.now)
    evicted = []
    got = 0
    # one victim that suffices alone, lowest priority and smallest first
    for rj in candidates[:MAX_SINGLE_VICTIM_TRIES]:
        one = Statement(snap, cs.ctx.now)
        one.evict(rj.job.id)
        if cs.placer.place(job, one, want, need, first_task=already) >= need:
            one.discard()
            evicted.append(stmt.evict(rj.job.id))
            got = cs.placer.place(job, stmt, want, need, first_task=already)
            break
        one.discard()
    # a serving job places every missing replica it can in one go (each replica stands alone);
    # a gang needs its minimum
    goal = want if job.kind is JobKind.SERVING else need
    if got < goal:
        # otherwise evict in order until the job fits (serving: all its missing replicas)
        if got:
            stmt.unbind_job(job.id)
            got = 0
        for rj in candidates[:MAX_VICTIMS]:
            if any(e.job.id == rj.job.id for e in evicted):
                continue
            evicted.append(stmt.evict(rj.job.id))
            got = cs.placer.place(job, stmt, want, need, first_task=already)
            if got >= goal:
                break
            stmt.unbind_job(job.id)
            got = 0
        if got < goal and evicted:  # not all of them: what fits with every victim taken
            got = cs.placer.place(job, stmt, want, need, first_task=already)
    if got < need or not permitted(cs, job, stmt.bindings_of(job.id)):
        stmt.discard()  # never evict for a job that would still not fit (or is not permitted)
        return False
    # fewest victims: give back every victim the preemptor turned out not to need, the last one
    # too (the job may fit in room an earlier preemption of this cycle left free), unless its
    # return would eat the reserve nodes of the preemptor's block rule
    for rj in list(reversed(evicted)):
        if snap.can_apply(rj.bindings) and _keeps_reserve(cs, job, stmt, rj):
            stmt.restore(rj)
            evicted.remove(rj)
    # the statement's own bindings: a replaced replica keeps its (lower) number
    commit_placement(cs, job, stmt, already, got)
    for rj in evicted:
        why = "reclaimed for queue" if reclaim else "preempted by"
        if not reclaim and job.id in cs.lent.pop(rj.job.id, ()):
            reason = f"backfilled ahead of {job.id} while its start was unknown: {job.id} can start now on its devices"
        else:
            reason = f"{why} {job.queue if reclaim else job.id} (priority {_prio(cs, job)} vs {_prio(cs, rj.job)})"
        cs.evictions.append(Eviction(rj.job.id, reason, job.id))
        cs.ctx.queue_usage[rj.job.queue] = cs.ctx.queue_usage.get(rj.job.queue, 0.0) - devices_of(
            rj.job, len(rj.bindings)
        )
        # evicted whole: none of its tasks runs now, it does not fit now (its devices went to the
        # preemptor), and it waits for a later cycle (``CycleState.requeued``)
        cs.placed_tasks[rj.job.id] = 0
        cs.failed[rj.job.id] = ReasonCode.UNSCHEDULABLE
        cs.requeued[rj.job.id] = rj.job
    return True


def enough_devices(cs: CycleState, job: Job, victims: list, need: int) -> bool:
    """Whether the whole devices of the job's models free now plus those these victims hold
    reach ``need`` tasks' worth: a necessary condition for placing them with the victims gone
    (a count, cheaper than evicting them all to try; a device two victims share counts twice,
    which only makes it weaker). Always True for fractional and CPU-only jobs."""
    req = job.devices
    models = cs.placer.models_for(job)
    if req is None or req.fractional or not models:
        return True
    snap = cs.ctx.snap
    goal = need * req.count
    got = sum(snap.free_total.get(m, 0) for m in models)
    if got >= goal:
        return True
    mine = set(models)
    for rj in victims:
        for b in rj.bindings:
            st = snap.nodes.get(b.node)
            if st is not None:
                devs = st.node.devices
                got += sum(1 for i in b.device_indices if devs[i].model in mine)
        if got >= goal:
            return True
    return False


def _keeps_reserve(cs: CycleState, job: Job, stmt: Statement, rj) -> bool:
    """Whether giving victim ``rj`` back leaves every domain holding ``job``'s blocks with its
    reserve of wholly free nodes (an Ascend logical super-pod's ``reserve_nodes``). The block
    was placed beside a reserve counted with the victims gone; a victim returned to one of those
    free nodes would eat it."""
    blocks = cs.placer.blocks(job)
    if blocks is None or not blocks.reserve_nodes:
        return True
    snap = cs.ctx.snap
    doms = {snap.nodes[b.node].node.domains.get(blocks.level) for b in stmt.bindings_of(job.id)} - {None}
    back = {b.node for b in rj.bindings}
    for dom in doms:
        free = sum(
            1
            for name, st in snap.nodes.items()
            if name not in back and st.node.domains.get(blocks.level) == dom and all(f == MILLI for f in st.free_milli)
        )
        if free < blocks.reserve_nodes:
            return False
    return True


def _prio(cs: CycleState, job: Job) -> str:
    """A job's priority for a message: the class value, and the aged value when aging moved it."""
    eff = cs.effective(job)
    return f"{job.priority}" if abs(eff - job.priority) < 0.05 else f"{job.priority}, aged {eff:.1f}"


#: victims tried one by one before evicting several (keeps preemption bounded on big clusters)
MAX_SINGLE_VICTIM_TRIES = 64
#: victims one preemptor may evict in one cycle (keeps preemption bounded on big clusters)
MAX_VICTIMS = 256
#: how many pending jobs one cycle tries to preempt or reclaim for (keeps a cycle bounded)
MAX_PREEMPTORS_PER_CYCLE = 16


def action_preempt(cs: CycleState) -> None:
    """For the highest-priority unschedulable jobs, evict lower-priority jobs of the same queue
    (whole gangs, fewest and lowest first) when that lets the job start now. A victim goes back
    to the queue for a later cycle: no action of this one places it again."""
    preempt_like(cs, reclaim=False)


def preempt_like(cs: CycleState, reclaim: bool) -> None:
    cands = [
        cs.pending[j]
        for j, code in cs.failed.items()
        if code is ReasonCode.UNSCHEDULABLE and j in cs.pending and placed_alone(cs, cs.pending[j])
    ]
    cands.sort(key=cs.job_key)
    failed: list = []  # (shape, victim ids) tried in vain since the state last changed
    for job in cands[:MAX_PREEMPTORS_PER_CYCLE]:
        if job.id in cs.requeued:
            continue  # evicted by an earlier preemption of this cycle (a job still growing)
        if reclaim and cs.ctx.queue_usage.get(job.queue, 0.0) >= deserved_share(cs, job.queue):
            continue
        cs.decisions += 1
        if preempt_for(cs, job, reclaim, failed):
            failed.clear()
            for q, head in list(cs.heads.items()):
                if head == job.id:
                    del cs.heads[q]
