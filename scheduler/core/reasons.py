"""Pending reasons: why each waiting job waits, with the numbers behind it, and its estimated
start from a walk of its queue (``scheduler.core.estimates``)."""

from __future__ import annotations

from .actions.cycle import CycleState, largest_block, tier_of, unit_of
from .actions.enqueue import asks, never_fits_message
from .actions.reservation import gave_up, reservation, running_ends
from .estimates import Demand, Timeline, holds_without_end, releases_by_model, shared_by_model
from .model import MILLI, Job, JobKind, PendingReason, ReasonCode
from .snapshot import Snapshot


def pending_reasons(cs: CycleState) -> dict[str, PendingReason]:
    """A reason, with numbers, for every job that still waits, and an estimated start for the
    first ``cs.estimate_depth`` jobs of each queue: a walk of the queue in order
    (``scheduler.estimates``), so jobs ahead take the devices that free up first. Beyond that
    position the start is not computed (the message says so): the walk stays bounded however
    long the queue is. No job shows an earlier start than its queue's first job, which
    allocate reaches first, unless backfill runs and the job wants none of the first job's
    device models (backfill lets such a job pass the head whenever it fits)."""
    waiting = [j for j in cs.pending if j not in cs.done]
    by_queue = cs.ordered_by_queue(waiting)
    out: dict[str, PendingReason] = {}
    block_cache: dict = {}
    snap = cs.ctx.snap
    depth = cs.estimate_depth
    ends = None
    releases = shared = None
    open_ended: dict = {}  # pool -> a running job holds its devices without an expected end
    not_ready = _not_ready_words(snap)
    ready_nodes = sum(1 for st in snap.nodes.values() if st.ready)
    for q, jobs in by_queue.items():
        head_est = None
        head_models: set = set()
        timelines: dict[tuple, Timeline] = {}  # pool (device models) -> this queue's walk
        for pos, job in enumerate(jobs, start=1):
            placed_now = cs.placed_tasks.get(job.id, 0)
            if job.id in cs.failed:
                code = cs.failed[job.id]
            elif placed_now:
                code = ReasonCode.UNSCHEDULABLE  # running in part, the rest does not fit now
            else:
                code = ReasonCode.WAITING_BEHIND if cs.enqueued else ReasonCode.NOT_CONSIDERED
            tier = tier_of(cs, job)
            req = job.devices
            shape = (
                (
                    req.vendor,
                    req.model,
                    req.model_choices,
                    req.min_memory_bytes,
                    req.min_bf16_tflops,
                    req.count,
                    req.milli,
                )
                if req
                else None
            )
            # a job its filters treat specially (a node selector) counts its own nodes
            kb = (shape, tier, job if cs.placer.active(job).filters else None)
            if kb not in block_cache:
                block_cache[kb] = (
                    largest_block(cs, job, tier) if req else 0,
                    largest_block(cs, job, tier, empty=True) if req else 0,
                )
            free_block, empty_block = block_cache[kb]
            what, where, need, need_tasks, reserve = asks(cs, job, tier)
            est_why = ""
            if req is None:
                est = cs.ctx.now
            elif code is ReasonCode.NEVER_FITS:
                est = None  # the message says why; it takes no devices in the walk
            elif pos > depth:
                est = None
                est_why = f"estimated start not computed beyond queue position {depth} (the profile's estimate_depth)"
            else:
                models = tuple(cs.placer.models_for(job))
                tl = timelines.get(models)
                if tl is None:
                    if releases is None:  # the running jobs do not change here
                        releases, shared = releases_by_model(snap), shared_by_model(snap)
                    if models not in open_ended:
                        open_ended[models] = holds_without_end(snap, models)
                    tl = timelines[models] = Timeline(snap, models, releases, cs.ctx.now, open_ended[models], shared)
                demand = _demand(cs, job, tier, need, need_tasks, reserve)
                if pos == 1 or job.id == cs.heads.get(q):
                    # the head's reservation, as backfill holds it: the walk goes on from there
                    if ends is None:
                        ends = running_ends(snap)
                    held = reservation(cs, job, ends)
                    e = (
                        tl.offer(demand, held.start, held.nodes)
                        if held is not None
                        else tl.unknown(demand, gave_up(cs, job.id))
                    )
                else:
                    e = tl.offer(demand)
                est, est_why = e.start, e.why
                if est is None:
                    est_why = f"estimated start unknown: {est_why}"
            if head_est is not None and est is not None:
                passes = (
                    cs.backfill_ran
                    and req is not None
                    and head_models
                    and head_models.isdisjoint(cs.placer.models_for(job))
                )
                if not passes:
                    est = max(est, head_est)
            if pos == 1:
                head_est = est
                head_models = set(cs.placer.models_for(job)) if req else set()
            if code is ReasonCode.NEVER_FITS:
                msg = never_fits_message(what, where, need, empty_block)
            elif code is ReasonCode.QUEUE_OVER_MAX:
                qq = cs.ctx.queues.get(job.queue)
                cap = qq.max if qq is not None and qq.max is not None else 0.0
                msg = f"queue {job.queue} would exceed its max of {cap:g} devices (in use {cs.ctx.queue_usage.get(job.queue, 0.0):g}); needs {job.devices_per_task * need_tasks:g}"
            elif code is ReasonCode.WAITING_BEHIND:
                why = f": {cs.behind_why[job.id]}" if job.id in cs.behind_why else ""
                msg = f"waiting behind {cs.heads.get(q, 'a job ahead')} (holding resources for it){why}; needs {what} in {where}; largest free block {free_block}; {pos - 1} jobs ahead"
            else:
                msg = f"needs {what} = {need} devices in {where}; largest free block {free_block}; {pos - 1} jobs ahead"
            if placed_now and code is ReasonCode.UNSCHEDULABLE:
                msg = f"running {placed_now} of {job.tasks} tasks; " + msg
            note = cs.placer.notes.get(job.id)
            if note and code is ReasonCode.UNSCHEDULABLE:
                msg += f"; {note}"
            if not_ready and code in (ReasonCode.UNSCHEDULABLE, ReasonCode.WAITING_BEHIND):
                msg += "; " + not_ready
            if req is None:
                msg = (
                    f"needs {job.cpu_milli}m CPU and {job.memory_bytes} bytes memory on one node; {pos - 1} jobs ahead"
                )
            elif est_why:
                msg += f"; {est_why}"
            out[job.id] = PendingReason(
                job_id=job.id,
                code=code,
                message=msg,
                queue_position=pos,
                jobs_ahead=pos - 1,
                estimated_start=est,
                numbers={
                    "need_devices": need,
                    "largest_free_block": free_block,
                    "cluster_block": empty_block,
                    "jobs_ahead": pos - 1,
                }
                | ({"nodes_ready": ready_nodes, "nodes": len(snap.nodes)} if not_ready else {})
                | ({"reserve_devices": reserve} if reserve else {})
                | (
                    {"estimate_depth": depth}
                    if req is not None and pos > depth and code is not ReasonCode.NEVER_FITS
                    else {}
                ),
            )
    return out


def _not_ready_words(snap: Snapshot) -> str:
    """Present nodes not ready yet, as a pending reason reads them ("waiting for agents: 0 of
    48 nodes ready"); "" when every node is ready."""
    groups = snap.not_ready()
    if not groups:
        return ""
    total = len(snap.nodes)
    ready = total - sum(groups.values())
    return "; ".join(f"{why}: {ready} of {total} nodes ready" for why in sorted(groups))


def _demand(cs: CycleState, job: Job, tier: str, need: int, need_tasks: int, reserve: int) -> Demand:
    """What a waiting job asks of its queue's estimate walk: ``need`` devices at once in one
    domain of its tier (its gang, one replica, one block), holding ``take`` once
    started (a gang's remaining tasks, a serving job's missing minimum, a batch job's missing
    tasks) for its expected duration."""
    unit = unit_of(job)
    placed = cs.placed_tasks.get(job.id, 0)
    blocks = cs.placer.blocks(job)
    if blocks is not None and job.kind is not JobKind.SERVING:
        need = blocks.tasks * unit  # one block
    if job.kind is JobKind.BATCH:
        take = unit * max(job.tasks - placed, 1)
    elif job.kind is JobKind.SERVING:
        take = unit * max(cs.placer.min_tasks(job) - placed, job.replica_tasks)
    else:
        take = unit * need_tasks
    return Demand(
        job_id=job.id,
        tier=tier,
        unit=unit,
        need=need,
        reserve=reserve,
        take=max(take, need),
        duration_seconds=job.expected_duration_seconds,
        fails_now=cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE,
        milli=job.devices.milli if job.devices is not None else MILLI,
    )
