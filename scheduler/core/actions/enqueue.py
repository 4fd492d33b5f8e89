"""enqueue: admit the pending jobs into the cycle, marking those that can never fit.

``never_fits`` / ``never_fits_reason`` are the one implementation of "can never fit": the
enqueue action asks them for every pending job, and ``Scheduler.never_fits`` (the service's
admission) for a job before it is accepted."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from ..fabric import CLUSTER, NODE_LOCAL_LEVELS
from ..model import Job, JobKind, NeverFits, ReasonCode
from .cycle import CycleState, empty_block, empty_per_node, job_shape, largest_block, tier_of, unit_of


def action_enqueue(cs: CycleState) -> None:
    """Admit pending jobs into the cycle: drop none, but mark jobs that can never fit (bigger
    than the empty cluster offers) so allocate does not waste time on them.

    The answer for a job that runs no task yet depends only on the job and the inventory, so it
    is kept from cycle to cycle (``Snapshot.empty_cache``, dropped when the inventory changes;
    only the pending jobs' answers are carried over): a queue of thousands behind a full cluster
    costs a look-up per job, not a ``never_fits`` each."""
    cache = cs.ctx.snap.empty_cache
    before: dict = cache.get("never_by_job", {})
    kept: dict = {}  # job id -> (the job, its answer)
    for jid, job in cs.pending.items():
        if jid in cs.done:
            continue
        if cs.placed_tasks.get(jid, 0):
            never = never_fits(cs, job)  # a partly running job: its missing tasks, afresh
        else:
            hit = before.get(jid)
            if hit is None or hit[0] is not job:
                hit = (job, never_fits(cs, job))
            kept[jid] = hit
            never = hit[1]
        if never:
            cs.failed[jid] = ReasonCode.NEVER_FITS
        else:
            cs.enqueued.append(jid)
    cache["never_by_job"] = kept


def never_fits(cs: CycleState, job: Job) -> bool:
    """True when even the empty cluster (healthy devices of present nodes, ready or not, that
    no filter rules out for the job) could not hold the job: more devices than it has, a task
    larger than any node, a gang or replica larger than any domain of its tier, or blocks
    (``DomainBlocks``) that the domains cannot hold beside their reserve nodes. Such a job
    never blocks its queue. Cached per job shape until the inventory changes
    (``Snapshot.empty_cache``)."""
    req = job.devices
    if req is None:
        return False
    models = cs.placer.models_for(job)
    unit = unit_of(job)
    filtered = bool(cs.placer.active(job).filters)
    if filtered:
        total = empty_block(cs, job, tuple(models), 1, CLUSTER)
    else:
        total = sum(cs.ctx.snap.model_total.get(m, 0) for m in models)
    if total < cs.placer.min_tasks(job) * unit:
        return True
    if req.fractional or cs.placed_tasks.get(job.id, 0):
        return False  # a partly running job's missing tasks are judged by allocate
    shape = ("never", job_shape(job, filtered))
    hit = cs.ctx.snap.empty_cache.get(shape)
    if hit is None:
        hit = cs.ctx.snap.empty_cache[shape] = _never_fits_shape(cs, job, models, unit)
    return hit


def _never_fits_shape(cs: CycleState, job: Job, models: list[str], unit: int) -> bool:
    """``never_fits`` beyond the device total, for a job shape (cached by the caller)."""
    key = tuple(models)
    if empty_block(cs, job, key, unit, "node") < unit:
        return True  # one task's devices always sit on one node
    blocks = cs.placer.blocks(job)
    if blocks is not None:
        whole = _empty_whole_nodes(cs, job, key, unit, blocks.level).values()
        reserve = blocks.reserve_nodes
        if job.kind is JobKind.SERVING:  # one replica (one block) in one domain beside its reserve
            return max((n - reserve for n in whole), default=0) < job.replica_tasks
        room = sum(max(0, n - reserve) // blocks.tasks for n in whole)
        return room < job.tasks // blocks.tasks
    level = tier_of(cs, job)
    if level == CLUSTER or level in NODE_LOCAL_LEVELS:
        return False
    need = unit * (job.replica_tasks if job.kind is JobKind.SERVING else cs.placer.min_tasks(job))
    return empty_block(cs, job, key, unit, level) < need


def _empty_whole_nodes(cs: CycleState, job: Job, models: Sequence[str], unit: int, level: str) -> dict[str, int]:
    """Domain of ``level`` -> its nodes with at least one task's ``unit`` healthy devices of
    these models (a block's task takes a whole node), cached until the inventory changes."""
    snap = cs.ctx.snap
    filtered = bool(cs.placer.active(job).filters)
    key = ("whole", tuple(models), unit, level, job_shape(job, True) if filtered else None)
    hit = snap.empty_cache.get(key)
    if hit is None:
        hit = defaultdict(int)
        for name, ok in empty_per_node(cs, job, models).items():
            dom = snap.nodes[name].node.domains.get(level)
            if dom is not None and ok >= unit:
                hit[dom] += 1
        snap.empty_cache[key] = hit
    return hit


# ---------------------------------------------------------------------------- the reason

_WHERE = {"node": "one node", "group": "one device group", "package": "one package", CLUSTER: "the cluster"}


def where_words(level: str) -> str:
    """A level as a pending reason reads it ("one node", "one super-node", "the cluster")."""
    return _WHERE.get(level) or f"one {'super-node' if level == 'supernode' else level}"


def asks(cs: CycleState, job: Job, level: str) -> tuple[str, str, int, int, int]:
    """How a waiting job's need reads in its pending reason: (what, where, need in devices,
    tasks needed at once, reserve devices kept free beside it)."""
    req = job.devices
    per_task = (req.count if not req.fractional else 1) if req else 0
    placed = cs.placed_tasks.get(job.id, 0)
    need_tasks = max(cs.placer.min_tasks(job) - placed, 1)
    need = per_task * (job.replica_tasks if job.kind is JobKind.SERVING else need_tasks)
    blocks = cs.placer.blocks(job)
    reserve = blocks.reserve_nodes * unit_of(job) if blocks is not None else 0
    where = where_words(level)
    what = req.describe() if req else f"{job.cpu_milli}m CPU"
    if req and job.kind is not JobKind.SERVING and need_tasks > 1:
        what = f"{need_tasks} x {what}"
    elif req and job.kind is JobKind.SERVING and job.replica_tasks > 1:
        what = f"one replica of {job.replica_tasks} x {what}"
    if reserve and blocks is not None:
        where += f" plus {blocks.reserve_nodes} reserve nodes ({reserve} devices) kept free there"
    if job.node_selector:
        where += " on nodes labelled " + ", ".join(f"{k}={v}" for k, v in job.node_selector)
    return what, where, need, need_tasks, reserve


def never_fits_message(what: str, where: str, need: int, cluster_devices: int) -> str:
    return (
        f"needs {what} = {need} devices in {where}; the whole cluster has {cluster_devices} such healthy devices "
        "there: it cannot fit until devices are added or repaired (or shrink the job)"
    )


def never_fits_reason(cs: CycleState, job: Job) -> NeverFits | None:
    """Why ``job`` can never fit the cluster (``never_fits``), or None when it could fit once
    enough devices are free."""
    if not never_fits(cs, job):
        return None
    level = tier_of(cs, job)
    what, where, need, _, reserve = asks(cs, job, level)
    cluster = largest_block(cs, job, level, empty=True)
    return NeverFits(never_fits_message(what, where, need, cluster), need, reserve, cluster, where)
