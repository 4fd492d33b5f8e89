"""Property tests for the paths a caller that applies resizes opens (``Scheduler(resizes=True)``:
the ``shrink`` action, autoscale scale-down, regrow): whatever the cluster, jobs and loads, the
scheduler's invariants hold, nothing is taken from an equal or higher priority, and every
released task is really gone."""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import JobKind
from xpod.scheduler.core.testing import job

from tests.scheduler.test_sched_properties import A3, check_invariants, clusters, jobs


@st.composite
def mixes(draw):
    out = draw(jobs(n_max=6))
    for i in range(draw(st.integers(1, 3))):  # elastic gangs and batch jobs serving may take from
        t = draw(st.integers(2, 6))
        b = job(f"e{i}").training(tasks=t, min_tasks=draw(st.integers(1, t))).devices(A3, 16)
        out.append(b.priority(draw(st.sampled_from(["low", "low", "normal"]))).submitted(float(10 + i)).build())
        b = job(f"b{i}").batch(tasks=draw(st.integers(1, 8))).devices(A3, draw(st.sampled_from([1, 2, 8])))
        out.append(b.priority("low").submitted(float(15 + i)).build())
    for i in range(draw(st.integers(1, 2))):
        hi = draw(st.integers(1, 6))
        b = job(f"s{i}").serving(1, hi).devices(A3, draw(st.sampled_from([2, 8, 16, 16])))
        b.priority(draw(st.sampled_from(["normal", "high", "high"]))).submitted(float(20 + i))
        out.append(b.autoscale(100.0, down_after_s=float(draw(st.sampled_from([0, 150])))).build())
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), mixes(), st.lists(st.integers(0, 800), min_size=6, max_size=6))
def test_resizes_keep_the_invariants_and_never_take_from_higher_priority(nodes, js, loads):
    t = [0.0]
    s = Scheduler(nodes, clock=lambda: t[0], resizes=True)
    prio = {j.id: s.submit(j).priority for j in js}  # the class's value, resolved at submit
    for load in loads:
        t[0] += 100.0
        for jid, rj in list(s.running.items()):
            if rj.job.autoscale is not None:
                replicas = sorted({b.task for b in rj.bindings})
                for r in replicas:
                    s.report_load(jid, r, load / len(replicas))
        before = {jid: {b.task for b in rj.bindings} for jid, rj in s.running.items()}
        r = s.cycle()
        check_invariants(s)
        # a gang may be shrunk for two serving jobs in one cycle: its resizes chain (the callers
        # merge them: core_link, sim.engine) and its last one says what runs now
        last = {rz.job_id: rz for rz in r.resizes}
        after: dict[str, int] = {}
        for rz in r.resizes:
            event("shrink" if rz.by else ("scale-down" if rz.released else "regrow"))
            if rz.job_id in after:
                assert rz.tasks_before == after[rz.job_id], f"{rz.job_id}: one cycle's resizes do not chain"
            after[rz.job_id] = rz.tasks_after
            now = {b.task for b in s.running[rz.job_id].bindings} if rz.job_id in s.running else set()
            assert not set(rz.released) & now, f"{rz.job_id}: released tasks still bound"
            # (a gang shrunk for one serving job may be evicted whole for another in the same cycle)
            z = last[rz.job_id]
            assert len(now) == z.tasks_after or z.tasks_after > z.tasks_before or rz.job_id not in s.running
            if rz.by is not None:
                assert prio[rz.job_id] < prio[rz.by], f"{rz.by} took from {rz.job_id} of no lower priority"
                assert s.running[rz.by].job.kind is JobKind.SERVING
            if rz.released and rz.by is None:  # a scale-down: only an autoscaled serving job's own replicas
                assert s.running[rz.job_id].job.autoscale is not None
                assert set(rz.released) <= before[rz.job_id]
        for e in r.evictions:
            if e.preemptor is not None:
                assert prio[e.job_id] <= prio[e.preemptor]
