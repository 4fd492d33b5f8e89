"""backfill: EASY backfill behind each queue's blocked head."""

from __future__ import annotations

from ..model import Job, JobKind, ReasonCode
from ..snapshot import Statement
from .carve import MAX_CARVE_TRIES, CarveMask, head_carve, try_carved
from .cycle import CycleState, shape_key, try_place, wanted
from .preempt import lent_to
from .reservation import NO_END, reservation


def action_backfill(cs: CycleState) -> None:
    """EASY backfill behind each blocked head (the first job of a queue that did not fit). The
    head holds a reservation (``reservation``): the time its devices are expected free, from
    the running jobs' expected ends, and the domain of its tier (one node, one super-node, the
    cluster) where they free up. A later job of the queue may start now only when it cannot
    delay the head:

    * it ends, by its ``expected_duration_seconds``, no later than the head's reserved start
      (or, when the ``JobOrder`` plugin relaxes it with ``backfill_until(head, start, now)``,
      no later than the end that returns: relaxed backfill, a bounded delay of the head); or
    * it fits now off the reserved domain's nodes (any duration: the head's devices free up
      there whatever it does); or
    * it asks for none of the device models the head waits for (and, when the head needs CPU
      or memory, lands only on nodes without such devices); or
    * it fits beside the head's carve-out (``head_carve``): the devices the head's own
      placement rules would take in its reserved domain at its start, found by placing the
      head on a copy of the state at that time (the running jobs that end by then released,
      the devices free now left to backfill when the head can do without them). The job may
      use any other device, the reserved domain's included, as long as it touches none of the
      carved devices and leaves the head's CPU and memory on their nodes.

    So a job without an expected duration never runs on the devices reserved for a head. When
    the head's start is unknown (a running job it waits for has no expected duration) there is
    no start to keep: jobs of the third kind go, and any other job that fits now goes *lent*
    (``lendable``; IBM LSF's interruptible backfill, which kills such jobs when the reserving
    job is about to start): the ``preempt`` action evicts it for the head as soon as that lets
    the head start (``CycleState.lent``; so may any job of the queue it passed, waiting then,
    when that one is the head), with the notice and grace period of any eviction, so the head
    waits at most that grace period longer, and devices no job could use meanwhile
    (holes beside other tasks) are not left idle. Only profiles with ``lend: true`` lend (the
    default profile; it needs ``preempt``); the others keep EASY's rule. The lent marks live in the scheduler's memory: a restarted scheduler forgets them
    (the jobs run on as ordinary jobs). The others wait with ``WaitingBehind`` and say why."""
    snap = cs.ctx.snap
    cs.backfill_ran = True
    queues = cs.ordered_by_queue(j for j in cs.enqueued if j not in cs.done and j not in cs.failed)
    relax = getattr(cs.job_order, "backfill_until", None)
    for q, jobs in queues.items():
        head = cs.heads.get(q)
        if head is None:
            continue
        head_job = cs.pending[head]
        held = reservation(cs, head_job)
        shadow = held.start if held is not None else None
        # the latest end a job may have to go ahead on the head's devices: its reserved start
        # (EASY), or later by the job order's bounded slack (``JobOrder.backfill_until``)
        until = shadow
        if shadow is not None and relax is not None:
            until = max(shadow, relax(head_job, shadow, cs.ctx.now))
        # lend only while the head cannot start by taking back what it lent already (then
        # ``preempt`` starts it this cycle, and a job lent now would stop again at once)
        lend = shadow is None and cs.lend and not takes_back(cs, head_job)
        # a reservation of the whole cluster leaves no node off it to try
        off = held is not None and len(held.nodes) < len(snap.nodes)
        head_models = set(cs.placer.models_for(head_job))
        # job shapes that did not fit since the last placement: the state is the same, so they
        # would not fit again (keeps a long queue behind a full cluster cheap)
        no_room: set = set()
        carve: list = []  # [Carve or None], computed when a job first needs it
        mask = CarveMask(snap, cs.ctx.now)
        carve_tries = 0  # jobs tried beside the carve-out (MAX_CARVE_TRIES)
        waiting = [head]  # the queue's jobs still waiting ahead of the one tried: a lent job passed them
        prev = None
        try:
            for job in jobs:
                if prev is not None and prev.id not in cs.done and prev.id != head:
                    waiting.append(prev.id)
                prev = job
                if job.id == head or job.id in cs.done or job.group is not None:
                    continue  # (a role starts only with its job's other roles: allocate)
                cs.decisions += 1
                d = job.expected_duration_seconds
                shape = shape_key(cs, job)
                beside = None  # how it fared beside the head's carve-out: "failed", "capped"
                if until is not None and d is not None and cs.ctx.now + d <= until:
                    mask.off()  # a job that ends before the head starts may use its devices too
                    if ("in time", shape) in no_room:
                        cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
                    elif try_place(cs, job):
                        no_room.clear()
                    elif shape is not None:
                        no_room.add(("in time", shape))
                    continue
                if (
                    job.devices is not None
                    and head_job.devices is not None
                    and head_models.isdisjoint(cs.placer.models_for(job))
                ):
                    accept = None
                    if head_job.cpu_milli or head_job.memory_bytes:
                        accept = lambda bs: (  # noqa: E731
                            not any(dev.model in head_models for b in bs for dev in snap.nodes[b.node].node.devices)
                        )
                    if try_place(cs, job, accept):
                        no_room.clear()
                        continue
                    if cs.failed.get(job.id) is not ReasonCode.WAITING_BEHIND:
                        continue
                else:
                    if held is not None and off and ("off", shape) not in no_room:
                        if try_off(cs, job, held.nodes):
                            no_room.clear()
                            continue
                        if shape is not None:
                            no_room.add(("off", shape))
                    if held is not None and job.devices is not None:
                        if not carve:
                            mask.off()
                            carve.append(head_carve(cs, head_job, held))
                        if carve[0] is None:
                            pass
                        elif ("carve", shape) in no_room:
                            beside = "failed"  # the same shape did not fit beside it since
                        elif carve_tries >= MAX_CARVE_TRIES:
                            beside = "capped"
                        else:
                            carve_tries += 1
                            if try_carved(cs, job, carve[0], mask):
                                no_room.clear()
                                continue
                            beside = "failed"
                            if shape is not None:
                                no_room.add(("carve", shape))
                if lend and lendable(cs, job):
                    # the head's start is unknown: EASY has no start to keep, so the job may run
                    # now on devices the head takes back when it can start (``preempt``)
                    if ("lend", shape) in no_room:
                        beside = "lend"
                    else:
                        mask.off()
                        if try_place(cs, job):
                            cs.lent[job.id] = frozenset(waiting)
                            no_room.clear()
                            continue
                        beside = "lend"
                        if shape is not None:
                            no_room.add(("lend", shape))
                cs.failed[job.id] = ReasonCode.WAITING_BEHIND
                elsewhere = ", and it does not fit off them now" if off else ""
                if beside == "failed":
                    elsewhere += f"; it does not fit beside the {carve[0].devices} devices kept for {head} either"
                elif beside == "capped":
                    elsewhere += f"; backfill beside the {carve[0].devices} devices kept for {head} already tried {MAX_CARVE_TRIES} jobs this cycle"
                if shadow is None and head_job.devices is None:
                    cs.behind_why[job.id] = (
                        f"the start of {head} cannot be estimated (it waits for CPU or memory), so nothing may go ahead of it"
                    )
                elif shadow is None and beside == "lend":
                    cs.behind_why[job.id] = (
                        f"the start of {head} is unknown, as {cs.unreserved.get(head, NO_END)}: a job may go ahead "
                        f"on devices {head} takes back when it can start, and this one does not fit now"
                    )
                elif shadow is None:
                    cs.behind_why[job.id] = (
                        f"the start of {head} is unknown, as {cs.unreserved.get(head, NO_END)}: only jobs on other devices may go ahead"
                    )
                elif d is None:
                    cs.behind_why[job.id] = (
                        f"it has no expected_duration_seconds, so it may not use the devices reserved for {head}{elsewhere}"
                    )
                elif until is not None and until > shadow:
                    cs.behind_why[job.id] = (
                        f"it would end at {cs.ctx.now + d:.0f}, after {until:.0f}, the latest end that delays {head} "
                        f"(estimated start {shadow:.0f}) no more than its relaxed backfill allows, on the devices "
                        f"reserved for it{elsewhere}"
                    )
                else:
                    cs.behind_why[job.id] = (
                        f"it would end at {cs.ctx.now + d:.0f}, after {head}'s estimated start {shadow:.0f} on the devices reserved for it{elsewhere}"
                    )
        finally:
            mask.off()


def takes_back(cs: CycleState, head: Job) -> bool:
    """Whether ``head`` fits now with the jobs lent ahead of it gone (``preempt`` then evicts
    them for it)."""
    lent = lent_to(cs, head)
    if not lent:
        return False
    already = cs.placed_tasks.get(head.id, 0)
    want = wanted(cs, head) - already
    need = max(1, cs.placer.min_tasks(head) - already) if cs.placer.gang else 1
    trial = Statement(cs.ctx.snap, cs.ctx.now)
    try:
        for rj in lent:
            trial.evict(rj.job.id)
        return want > 0 and cs.placer.place(head, trial, want, need, first_task=already) >= need
    finally:
        trial.discard()


def lendable(cs: CycleState, job: Job) -> bool:
    """Whether ``job`` may run ahead of a blocked head whose start is unknown, lent: the head
    evicts it (``preempt``) as soon as that lets the head start, so the head waits no longer
    than the job's grace period. Only a job the head can take back: it is of a preemptible priority class, it is not a serving job (its
    replicas would go whole) and none of its tasks runs yet (a growing gang would lose its
    running tasks too)."""
    return (
        job.kind is not JobKind.SERVING
        and not cs.placed_tasks.get(job.id)
        and cs.ctx.priority_preemptible.get(job.priority_class, True)
    )


def try_off(cs: CycleState, job: Job, nodes: frozenset[str]) -> bool:
    """``try_place`` with these nodes (a head's reservation) closed to this one placement."""
    ahead = Statement(cs.ctx.snap, cs.ctx.now)
    ahead.close(nodes)
    try:
        return try_place(cs, job)
    finally:
        ahead.discard()
