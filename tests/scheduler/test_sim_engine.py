"""The virtual-clock engine (scheduler/sim/engine.py): events drive the real core's cycle;
finishes, failures and preemption cost move in virtual time."""

from __future__ import annotations

import dataclasses
import math

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core.model import Queue
from xpod.scheduler.core.profile import default_profile
from xpod.scheduler.core.scheduler import Scheduler
from xpod.scheduler.core.testing import job, node
from xpod.scheduler.sim.engine import Engine, PreemptionCost

H = "nvidia-h100-sxm"


def _sched(n_nodes: int = 1, devices: int = 8) -> Scheduler:
    return Scheduler([node(f"n{i}").devices(H, devices).build() for i in range(n_nodes)], queues=(Queue("default"),))


def test_jobs_start_when_devices_free_and_finish_after_their_work():
    s = _sched(devices=8)
    e = Engine(s)
    e.arrive(0.0, job("a").devices(H, 8).build(), work_s=100.0)
    e.arrive(10.0, job("b").devices(H, 8).build(), work_s=50.0)
    summary = e.run()
    a, b = e.records["a"], e.records["b"]
    assert (a.first_start_s, a.end_s) == (0.0, 100.0)
    # b waits for a's devices: it starts in the cycle at a's finish and runs its 50 s
    assert (b.first_start_s, b.end_s) == (100.0, 150.0)
    assert b.wait_s == 90.0 and b.jct_s == 140.0
    assert summary.finished == 2 and summary.failed == 0 and summary.end_s == 150.0
    assert not s.running and not s.pending


def test_retry_false_fails_a_job_that_does_not_start_right_after_arriving():
    s = _sched(devices=8)
    e = Engine(s, retry=False)
    e.arrive(1.0, job("a").devices(H, 6).build())
    e.arrive(2.0, job("b").devices(H, 4).build())  # does not fit beside a: fails, never retried
    e.arrive(3.0, job("c").devices(H, 2).build())
    summary = e.run()
    assert e.records["b"].failed and e.records["b"].first_start_s is None
    assert not e.records["c"].failed and e.records["c"].first_start_s == 3.0
    assert summary.failed == 1 and summary.started == 2
    assert "b" not in s.pending  # cancelled, not left waiting


def test_a_node_failure_costs_the_progress_since_the_last_checkpoint_and_a_restart():
    s = _sched(n_nodes=2, devices=8)
    cost = PreemptionCost(checkpoint_every_s=100.0, restart_s=10.0)
    e = Engine(s, preemption=cost)
    e.arrive(0.0, job("a").devices(H, 8).build(), work_s=500.0)
    e.node_down(250.0, "n0")  # a ran 250 s on n0: 200 s are checkpointed, 50 s are lost
    e.run()
    a = e.records["a"]
    assert a.preemptions == 1
    # restarted at 250 on n1: pays 10 s restart, then the 300 s of work left
    assert a.end_s == pytest.approx(250.0 + 10.0 + 300.0)
    assert a.lost_s == pytest.approx(50.0 + 10.0)  # the lost progress plus the restart paid
    assert cost.kept_s(250.0) == 200.0 and PreemptionCost(checkpoint_every_s=math.inf).kept_s(250.0) == 0.0


def test_observers_see_every_cycle_and_the_arrivals_of_its_instant():
    seen = []

    class Watch:
        def on_cycle(self, engine, now, result):
            seen.append((now, tuple(engine.arrived_now), tuple(b.job_id for b in result.bindings)))

    s = _sched()
    e = Engine(s, observers=[Watch()])
    e.arrive(1.0, job("a").devices(H, 1).build(), work_s=5.0)
    e.arrive(1.0, job("b").devices(H, 1).build(), work_s=1.0)
    e.run()
    assert seen == [(1.0, ("a", "b"), ("a", "b")), (2.0, (), ()), (6.0, (), ())]


def test_ticks_keep_cycling_while_jobs_wait_and_bad_times_are_refused():
    times: list[float] = []

    class Watch:
        def on_cycle(self, engine, now, result):
            times.append(now)

    e = Engine(_sched(devices=8), tick_s=10.0, observers=[Watch()])
    e.arrive(0.0, job("a").devices(H, 8).build(), work_s=25.0)
    e.arrive(1.0, job("b").devices(H, 8).build(), work_s=5.0)
    e.run()
    # cycles at the two arrivals, then a tick 10 s later because b waits (no event asked for it)
    assert times[:3] == [0.0, 1.0, 11.0]
    alone = Engine(_sched(), tick_s=10.0)
    alone.arrive(0.0, job("a").devices(H, 1).build(), work_s=25.0)
    assert alone.run().cycles == 2  # nothing waits: no tick asks for a cycle (only 0 and 25)
    e = Engine(_sched(), tick_s=10.0)
    with pytest.raises(XpodError, match="time"):
        e.arrive(-1.0, job("z").devices(H, 1).build())
    with pytest.raises(XpodError, match="work"):
        e.arrive(1.0, job("z").devices(H, 1).build(), work_s=float("nan"))
    e2 = Engine(_sched())
    e2.arrive(0.0, job("d").devices(H, 1).build())
    e2.arrive(1.0, job("d").devices(H, 1).build())
    with pytest.raises(XpodError, match="arrives twice"):
        e2.run()


def test_a_call_runs_before_the_cycle_of_its_instant():
    seen = []

    class Watch:
        def on_cycle(self, engine, now, result):
            seen.append((now, tuple(b.job_id for b in result.bindings)))

    e = Engine(_sched(), observers=[Watch()])
    # the call submits through the scheduler's own API: the cycle of its instant places the job
    e.call(5.0, lambda engine, t: engine.scheduler.submit(job("late").devices(H, 1).build()))
    e.run()
    assert seen == [(5.0, ("late",))]


@pytest.mark.parametrize("notice", [True, False])
def test_a_shrunk_gang_restarts_once_and_runs_at_its_new_size(notice):
    """Serving takes one of an elastic gang's two tasks (``Scheduler(resizes=True)``): the gang
    restarts with one task and runs at half speed; with the notice it checkpoints first, without
    it falls back to its periodic checkpoint."""
    profile = dataclasses.replace(default_profile(), notice=notice)
    s = Scheduler([node("n0").devices(H, 16).build()], profile=profile, resizes=True)
    cost = PreemptionCost(checkpoint_every_s=1000.0, restart_s=10.0, notice_checkpoint_s=5.0)
    e = Engine(s, preemption=cost)
    e.arrive(0.0, job("t").training(tasks=2, min_tasks=1).devices(H, 8).build(), work_s=1000.0)
    e.arrive(100.0, job("s").serving(1, 1).devices(H, 8).priority("high").build())
    e.run()
    t = e.records["t"]
    assert t.preemptions == 0  # shrunk, not evicted
    kept = 100.0 if notice else 0.0  # the notice's checkpoint, or the last periodic one (none yet)
    # 10 s restart, then the work left at half speed
    assert t.end_s == pytest.approx(100.0 + 10.0 + (1000.0 - kept) / 0.5)
    assert t.lost_s == pytest.approx(100.0 - kept + 10.0)  # the progress lost plus the restart paid
    assert s.running["s"].bindings and "t" not in s.running
