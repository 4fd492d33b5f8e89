"""What keeps a cycle independent of the number of running jobs and nodes: the running jobs'
indexes (queue use, per-queue priority order) and preemption's look-up in them; the ``Observe`` point that lets a plugin learn the workload."""

from __future__ import annotations

import copy
import random

import pytest

from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.framework import PLUGINS, Plugin, register
from xpod.scheduler.core.model import MILLI, DeviceRequest, Queue, ReasonCode
from xpod.scheduler.core.profile import default_profile, profile_from_dict
from xpod.scheduler.core.testing import job, node, placements

H = "nvidia-h100-sxm"
B = "nvidia-b200"


@pytest.fixture
def registered():
    added: list[str] = []

    def add(cls):
        register(cls)
        added.append(cls.name)
        return cls

    yield add
    for name in added:
        PLUGINS.pop(name, None)


def _brute_usage(s: Scheduler) -> dict[str, float]:
    out: dict[str, float] = {}
    for rj in s.running.values():
        out[rj.job.queue] = (
            out.get(rj.job.queue, 0.0) + sum(len(b.device_indices) * b.milli for b in rj.bindings) / MILLI
        )
    return {q: v for q, v in out.items() if v}


@pytest.mark.parametrize("seed", range(6))
def test_running_job_indexes_match_a_recount_through_random_churn(seed):
    rng = random.Random(seed)
    queues = (Queue("a"), Queue("b"))
    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(4)], queues=queues, clock=lambda: 1.0)
    t = 1.0
    for step in range(60):
        t += rng.uniform(1, 600)
        op = rng.random()
        if op < 0.6:
            count = rng.choice([1, 2, 4])
            milli = rng.choice([MILLI, 500]) if count == 1 else MILLI
            j = job(f"j{step}").devices(H, count, milli=milli).queue(rng.choice("ab"))
            if rng.random() < 0.7:
                j = j.duration(rng.uniform(60, 7200))
            s.submit(j.priority(rng.choice(["low", "normal", "high"])).submitted(t).build())
        elif op < 0.85 and s.running:
            s.finish(rng.choice(sorted(s.running)))
        elif s.pending:
            s.cancel(rng.choice(sorted(s.pending)))
        s.cycle(now=t)
        running = s.snapshot.running
        assert s.snapshot.used_devices_by_queue() == pytest.approx(_brute_usage(s))
        # the expected ends (kept per state of the running jobs) and the free-device index
        # (counted without a per-device look-up on one-model nodes) against a recount
        ends = sorted((rj.expected_end, rj.job.id) for rj in running.values() if rj.expected_end is not None)
        assert running.ends() == ends
        for name, ns in s.snapshot.nodes.items():
            whole = sum(1 for f, u in zip(ns.free_milli, ns.usable) if u and f == MILLI)
            assert s.snapshot.free_whole[H][name] == whole
            assert (name in s.snapshot.partial[H]) == any(u and 0 < f < MILLI for f, u in zip(ns.free_milli, ns.usable))
        for q in ("a", "b"):
            assert set(running.by_queue.get(q, {})) == {jid for jid, rj in running.items() if rj.job.queue == q}
            key = running.order_key
            for probe in list(s.pending.values())[:3]:
                want = {jid for jid, rj in running.items() if rj.job.queue == q and key(rj.job) < key(probe)}
                assert {rj.job.id for rj in running.below(q, key(probe))} == want
        for q in ("a", "b"):
            for prio in (0, 1, 100, 1000, 10_000):
                want_below = any(rj.job.queue == q and rj.job.priority < prio for rj in running.values())
                assert running.any_below(prio, queue=q) is want_below
                want_other = any(rj.job.queue != q and rj.job.priority < prio for rj in running.values())
                assert running.any_below(prio, other_than=q) is want_other
    clone = copy.deepcopy(s)  # copies carry the indexes as they are (estimates copy the facade)
    assert clone.snapshot.used_devices_by_queue() == s.snapshot.used_devices_by_queue()
    assert clone.snapshot.running.order_key.__self__ is clone


def test_priority_order_keeps_aging_and_preempt_looks_only_below():
    """A young high-priority job preempts a low one; an old job of the same class is never a
    victim of a younger one (the queue order puts it ahead: aging counts for both)."""
    s = Scheduler([node("n").devices(H, 8).build()], clock=lambda: 1.0)
    s.submit(job("old").devices(H, 8).priority("normal").submitted(1.0).build())
    s.cycle(now=2.0)
    s.submit(job("young").devices(H, 8).priority("normal").submitted(3600.0).build())
    r = s.cycle(now=3601.0)
    assert "old" in s.running and r.pending["young"].code is ReasonCode.UNSCHEDULABLE
    s.submit(job("vip").devices(H, 8).priority("high").submitted(3700.0).build())
    r = s.cycle(now=3701.0)
    assert placements(r) == {"vip": [("n", tuple(range(8)))]} and [e.job_id for e in r.evictions] == ["old"]


def test_observe_sees_submissions_and_history_and_explain_false_keeps_the_decisions(registered):
    seen: list[tuple[str, bool]] = []

    class Learner(Plugin):
        name = "test-learner"

        def observe(self, job, history):
            seen.append((job.id, history))

    registered(Learner)
    prof = profile_from_dict(
        {"actions": ["enqueue", "allocate"], "policies": [n for n, _ in default_profile().policies] + ["test-learner"]}
    )
    nodes = [node("n").devices(H, 2).build()]
    s = Scheduler(nodes, profile=prof, clock=lambda: 1.0)
    s.learn_history([job("past").devices(H, 1).build()])
    s.submit(job("now").devices(H, 1).build())
    s.submit(job("big").devices(H, 4).build())
    assert seen == [("past", True), ("now", False), ("big", False)]
    quiet = Scheduler(nodes, profile=prof, clock=lambda: 1.0)
    quiet.submit(job("now").devices(H, 1).build())
    quiet.submit(job("big").devices(H, 4).build())
    loud, hushed = s.cycle(), quiet.cycle(explain=False)
    assert loud.bindings == hushed.bindings and hushed.pending == {} and "big" in loud.pending


def test_a_request_may_name_several_models():
    s = Scheduler([node("h").devices(H, 1).build(), node("b").devices(B, 1).build()], clock=lambda: 1.0)
    j = job("either").devices(H, 1).build()
    either = j.__class__(**{**j.__dict__, "devices": DeviceRequest(count=1, model_choices=frozenset({B, "x"}))})
    s.submit(either)
    assert placements(s.cycle()) == {"either": [("b", (0,))]}
    assert DeviceRequest(count=1, model_choices=frozenset({B, H})).describe() == f"1 {' or '.join(sorted({B, H}))}"


def test_the_running_jobs_log_names_every_change_and_attained_service_follows_it():
    """``changes_since`` lists the jobs changed since a sequence number, stays bounded by the
    running jobs, and answers None once trimmed; ``Attained`` fed from the log banks the same
    runs as a walk of every running job."""
    from xpod.scheduler.core.framework import CycleContext
    from xpod.scheduler.core.plugins._attained import Attained
    from xpod.scheduler.core.snapshot import RunningJob

    rng = random.Random(3)
    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(4)], clock=lambda: 1.0)
    running = s.snapshot.running
    follow, walk = Attained(), Attained()
    start = running.log_seq
    t = 1.0
    for step in range(300):
        t += rng.uniform(1, 100)
        if rng.random() < 0.55 or not s.running:
            s.submit(job(f"j{step}").devices(H, rng.choice([1, 2, 4])).submitted(t).build())
        else:
            s.finish(rng.choice(sorted(s.running)))
        s.cycle(now=t)
        ctx = CycleContext(snap=s.snapshot, now=t, queues={}, total_devices=32.0, queue_usage={})
        follow.update(ctx)
        walk._source = None  # no log: the walk of every running job
        walk.update(ctx)
        assert follow.runs == walk.runs and follow.banked_s == walk.banked_s and follow.stops == walk.stops
    assert walk.stops  # runs did end and were banked
    log = running.changes_since(start)
    assert log is not None and set(running) <= set(log)  # 300 steps stay within the kept log
    assert len(running._log) <= max(4096, 2 * len(running)) + 1
    # a log trimmed past a reader's place says so: the reader walks the jobs
    x = job("x").build()
    for _ in range(5000):  # churn: one job started and gone again, many times
        running["x"] = RunningJob(x, (), t)
        del running["x"]
    assert len(running._log) <= max(4096, 2 * len(running)) + 1
    assert running.changes_since(start) is None
    assert running.changes_since(running.log_seq) == []


def test_answers_kept_across_cycles_follow_the_job_not_its_id():
    """``never_fits`` answers and fixed order keys (priority without aging) are kept from cycle
    to cycle per job: a job cancelled and submitted again under the same id with another size
    or class is judged and ordered afresh."""
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate"],
            "policies": ["gang", "first-fit", {"name": "priority", "args": {"aging_per_hour": 0}}],
        }
    )
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    s.submit(job("big").devices(H, 16).submitted(1.0).build())
    s.cycle(now=1.0)
    assert s.last_reasons["big"].code is ReasonCode.NEVER_FITS
    s.cancel("big")
    s.submit(job("big").devices(H, 8).submitted(2.0).build())
    assert [b.job_id for b in s.cycle(now=2.0).bindings] == ["big"]
    # the node is full: two waiting jobs in submit order, then the later one re-submitted with a
    # higher class goes first
    s.submit(job("a").devices(H, 8).submitted(3.0).build())
    s.submit(job("b").devices(H, 8).submitted(4.0).build())
    s.cycle(now=5.0)
    s.cancel("b")
    s.submit(job("b").devices(H, 8).priority("high").submitted(4.0).build())
    s.cycle(now=6.0)
    s.finish("big")
    assert [b.job_id for b in s.cycle(now=7.0).bindings] == ["b"]


def test_a_copied_running_set_logs_changes_after_the_source_position():
    """A copy's change log continues at the source's sequence number: a follower copied along
    with it (Attained's ``_seq``) sees the copy's later changes, not an empty log."""
    import copy

    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(2)], clock=lambda: 1.0)
    s.submit(job("a").devices(H, 1).submitted(1.0).build())
    s.cycle(now=1.0)
    seq = s.snapshot.running.log_seq
    assert seq > 0
    clone = copy.deepcopy(s)
    running = clone.snapshot.running
    assert running.log_seq == seq and running.changes_since(seq) == []
    clone.finish("a")
    assert running.changes_since(seq) == ["a"]
