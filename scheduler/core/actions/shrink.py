"""shrink: a serving job that cannot place its replicas takes devices from less important work
that can give some up without stopping: tasks of preemptible batch jobs first, then elastic
training gangs down to their ``min_tasks``. What it cannot get this way is left to ``preempt``
(whole gangs) and ``reclaim``; idle devices went first, in ``allocate``.

The order of a cycle that lends serving capacity to training is so: idle capacity, batch tasks,
elastic training above its minimum (shrink: the gang restarts once with the smaller world
size), then lower-priority training gangs whole (``preempt``), never a job of equal or higher
priority. A shrunk gang regrows to its ``tasks`` (one more restart) when the devices are free
again, not before the serving job's ``scale_down_after_s`` has passed (the ``Scheduler`` holds
it), so a serving peak does not make the gang flap.
"""

from __future__ import annotations

from ..model import Binding, Eviction, Job, JobKind, ReasonCode, Resize
from ..snapshot import RunningJob, Statement
from .cycle import CycleState, commit_placement, placed_alone, devices_of, permitted, wanted
from .preempt import MAX_PREEMPTORS_PER_CYCLE

#: tasks one shrink may release while looking for room (keeps a cycle bounded on big pods)
MAX_RELEASED_PER_JOB = 256


def _releasable(cs: CycleState, job: Job) -> list[tuple[RunningJob, list[Binding]]]:
    """Running jobs of ``job``'s queue that may give tasks up for it, in the order they give
    them, each with its tasks in release order (the highest task first): batch jobs (any task),
    then elastic training above ``min_tasks``; only preemptible classes the queue order puts
    behind ``job`` (its effective priority is strictly lower), holding a model ``job`` asks for,
    and not placed by this very cycle."""
    snap = cs.ctx.snap
    running = snap.running
    key = running.order_key(job) + 1e-9 if running.order_key is not None else 0.0
    pool = running.below(job.queue, key)
    mine = cs.effective(job)
    models = set(cs.placer.models_for(job))
    bound_now = {b.job_id for b in cs.bindings}
    batch: list[tuple[RunningJob, list[Binding]]] = []
    elastic: list[tuple[RunningJob, list[Binding]]] = []
    for rj in pool:
        v = rj.job
        if v.id in bound_now or v.id == job.id or not cs.ctx.priority_preemptible.get(v.priority_class, True):
            continue
        if cs.effective(v) >= mine:
            continue  # never from an equal or higher priority
        if v.kind is JobKind.BATCH:
            spare = len(rj.bindings)
        elif v.kind is JobKind.TRAINING:
            spare = len(rj.bindings) - cs.placer.min_tasks(v)
        else:
            continue
        if spare <= 0:
            continue
        held = [b for b in rj.bindings if b.node in snap.nodes]
        if models and not any(
            snap.nodes[b.node].node.devices[i].model in models for b in held for i in b.device_indices
        ):
            continue
        order = sorted(rj.bindings, key=lambda b: -b.task)[:spare]
        (batch if v.kind is JobKind.BATCH else elastic).append((rj, order))
    prio = cs.effective
    batch.sort(key=lambda x: (prio(x[0].job), -x[0].start_time, x[0].job.id))
    elastic.sort(key=lambda x: (prio(x[0].job), -len(x[1]), -x[0].start_time, x[0].job.id))
    return batch + elastic


def shrink_for(cs: CycleState, job: Job) -> bool:
    """Release tasks of less important batch and elastic training jobs until ``job``'s missing
    replicas fit; commit (and report each victim's ``Resize``) only if they do, giving back
    every released task the placement turned out not to need."""
    snap = cs.ctx.snap
    candidates = _releasable(cs, job)
    if not candidates:
        return False
    already = cs.placed_tasks.get(job.id, 0)
    want = wanted(cs, job) - already
    if want <= 0:
        return False
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    need = min(need, want)
    stmt = Statement(snap, cs.ctx.now)
    released: list[tuple[RunningJob, Binding]] = []
    got = 0
    # release one task at a time until all the missing replicas fit (or nothing is left to
    # release); then place what fits, at least ``need``
    for rj, order in candidates:
        for b in order:
            if len(released) >= MAX_RELEASED_PER_JOB:
                break
            stmt.release_tasks(rj.job.id, [b.task])
            released.append((rj, b))
            got = cs.placer.place(job, stmt, want, need, first_task=already)
            if got >= want:
                break
            stmt.unbind_job(job.id)
            got = 0
        if got >= want or len(released) >= MAX_RELEASED_PER_JOB:
            break
    if got < want:  # got is 0 here: every partial try was unbound
        got = cs.placer.place(job, stmt, want, need, first_task=already)
    if got < need or not permitted(cs, job, stmt.bindings_of(job.id)):
        stmt.discard()
        return False
    # fewest tasks taken: give back every released task whose devices the placement left free
    for rj, b in reversed(released):
        if snap.can_apply([b]):
            stmt.give_back(rj, b)
            released.remove((rj, b))
    commit_placement(cs, job, stmt, already, got)
    jobs = {rj.job.id: rj.job for rj, _ in candidates}
    by_victim: dict[str, list[int]] = {}
    for rj, b in released:
        by_victim.setdefault(rj.job.id, []).append(b.task)
    for jid, tasks in by_victim.items():
        victim = jobs[jid]
        cs.ctx.queue_usage[victim.queue] = cs.ctx.queue_usage.get(victim.queue, 0.0) - devices_of(victim, len(tasks))
        # it wants its tasks back (a shrunk gang: once the hold ends), never in this cycle
        cs.requeued[jid] = victim
        left_now = snap.running.get(jid)
        cs.placed_tasks[jid] = len(left_now.bindings) if left_now is not None else 0
        why = f"for serving job {job.id} (priority {job.priority} > {victim.priority})"
        left = snap.running.get(jid)
        if left is None:  # every task of a batch job taken: it stopped whole
            cs.evictions.append(Eviction(jid, f"preempted {why}", job.id))
            continue
        training = victim.kind is JobKind.TRAINING
        cs.resizes.append(
            Resize(
                jid,
                len(left.bindings) + len(tasks),
                len(left.bindings),
                f"{'shrunk' if training else 'tasks taken'} {why}",
                released=tuple(sorted(tasks)),
                restart=training,
                by=job.id,
            )
        )
    return True


def action_shrink(cs: CycleState) -> None:
    """For the serving jobs still missing replicas after ``allocate`` (highest priority
    first), take tasks of less important batch jobs and elastic training gangs (see the module
    docstring). Nothing when the scheduler's caller does not apply resizes."""
    if not cs.allow_resizes:
        return
    cands = [
        cs.pending[j]
        for j, code in cs.failed.items()
        if code is ReasonCode.UNSCHEDULABLE
        and j in cs.pending
        and cs.pending[j].kind is JobKind.SERVING
        and placed_alone(cs, cs.pending[j])
    ]
    cands.sort(key=cs.job_key)
    for job in cands[:MAX_PREEMPTORS_PER_CYCLE]:
        cs.decisions += 1
        if shrink_for(cs, job):
            cs.preemption_attempts += 1
            for q, head in list(cs.heads.items()):
                if head == job.id:
                    del cs.heads[q]
