"""Backfill that lends (the default profile's ``lend: true``, ``actions/backfill.py``): behind a
blocked head whose start is unknown (a job it waits for has no expected duration), a later job
may run on devices the head takes back by preemption as soon as it can start."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import PriorityClass, ReasonCode
from xpod.scheduler.core.profile import default_profile, profile_from_dict
from xpod.scheduler.core.testing import job, node, placements

H = "nvidia-h100-sxm"
A3 = "ascend-910c"


def test_a_job_behind_a_head_of_unknown_start_runs_lent_and_goes_when_the_head_can_start():
    t = [0.0]
    s = Scheduler([node("n1").devices(H, 8).build()], clock=lambda: t[0])
    s.submit(job("r").devices(H, 4).build())  # no expected duration: big's start is unknown
    s.cycle()
    t[0] = 1.0
    s.submit(job("big").devices(H, 8).submitted(1).build())
    s.submit(job("small").devices(H, 2).submitted(2).build())
    r = s.cycle()
    assert placements(r) == {"small": [("n1", (4, 5))]}  # EASY alone would hold it (nothing to promise)
    assert r.pending["big"].code is ReasonCode.UNSCHEDULABLE
    t[0] = 2.0
    s.finish("r")
    r = s.cycle()  # big fits once small goes: small is taken back for it, in the same cycle
    assert placements(r) == {"big": [("n1", tuple(range(8)))]}
    (ev,) = r.evictions
    assert ev.job_id == "small" and ev.preemptor == "big"
    assert "backfilled ahead of big while its start was unknown" in ev.reason
    assert "small" in s.pending
    t[0] = 3.0
    s.finish("big")
    assert placements(s.cycle()) == {"small": [("n1", (0, 1))]}


def _two_nodes_small_lent(r1: int, r2: int, small: int, where: tuple) -> tuple[Scheduler, list[float]]:
    """Two 8-GPU nodes; r1 on n1 and r2 on n2 (no expected duration), then the 2-node gang big
    (blocked, its start unknown) and small, which is lent at ``where``."""
    t = [0.0]
    s = Scheduler([node("n1").devices(H, 8).build(), node("n2").devices(H, 8).build()], clock=lambda: t[0])
    s.submit(job("r1").devices(H, r1).build())
    s.submit(job("r2").devices(H, r2).build())
    s.cycle()
    t[0] = 1.0
    s.submit(job("big").training(tasks=2).devices(H, 8).submitted(1).build())
    s.submit(job("small").devices(H, small).submitted(2).build())
    assert placements(s.cycle()) == {"small": [where]}
    return s, t


def test_a_lent_job_stays_while_taking_it_back_would_not_start_the_head():
    # big needs both nodes; small is lent on n2's free devices. n1 frees up, n2 is still held by
    # r2: evicting small would not start big, so small keeps running
    s, t = _two_nodes_small_lent(r1=8, r2=4, small=2, where=("n2", (4, 5)))
    t[0] = 2.0
    s.finish("r1")
    r = s.cycle()
    assert not r.evictions and r.bindings == () and "small" in s.running
    t[0] = 3.0
    s.finish("r2")
    r = s.cycle()
    assert [e.job_id for e in r.evictions] == ["small"]
    assert sorted(b.node for b in r.bindings if b.job_id == "big") == ["n1", "n2"]


def test_nothing_more_is_lent_while_the_head_can_start_by_taking_back_what_it_lent():
    # small is lent on n1; r1 and r2 end together: big fits on n1 + n2 with small gone. small2
    # must not be lent onto n2 first (this cycle's placements are no victims: big would wait)
    s, t = _two_nodes_small_lent(r1=4, r2=8, small=4, where=("n1", (4, 5, 6, 7)))
    t[0] = 2.0
    s.submit(job("small2").devices(H, 4).submitted(3).build())
    s.finish("r1")
    s.finish("r2")
    r = s.cycle()
    assert sorted(b.node for b in r.bindings if b.job_id == "big") == ["n1", "n2"]
    assert [e.job_id for e in r.evictions] == ["small"] and "small2" in s.pending


def test_without_lend_and_for_jobs_nothing_may_take_back_nothing_is_lent():
    easy = profile_from_dict({**_default_dict(), "lend": False})
    for prof, jobs, waits in (
        (easy, [job("small").devices(H, 2).submitted(2)], "small"),
        # a job of a class nothing may preempt is never lent
        (default_profile(), [job("pinned").devices(H, 2).priority("pinned").submitted(2)], "pinned"),
    ):
        classes = [PriorityClass("normal", 100), PriorityClass("pinned", 100, preemptible=False)]
        s = Scheduler([node("n1").devices(H, 8).build()], profile=prof, priority_classes=classes, clock=lambda: 0.0)
        s.submit(job("r").devices(H, 4).build())
        s.cycle()
        s.submit(job("big").devices(H, 8).submitted(1).build())
        for j in jobs:
            s.submit(j.build())
        r = s.cycle()
        assert r.bindings == () and r.pending[waits].code is ReasonCode.WAITING_BEHIND, r.pending[waits].message
        assert "the start of big is unknown" in r.pending[waits].message


def test_a_job_that_does_not_fit_even_lent_says_so():
    s = Scheduler([node("n1").devices(H, 8).build()], clock=lambda: 0.0)
    s.submit(job("r").devices(H, 6).build())
    s.cycle()
    s.submit(job("big").devices(H, 8).submitted(1).build())
    s.submit(job("four").devices(H, 4).submitted(2).build())
    r = s.cycle()
    assert r.pending["four"].code is ReasonCode.WAITING_BEHIND
    assert "a job may go ahead on devices big takes back when it can start, and this one does not fit now" in (
        r.pending["four"].message
    )


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"lend": "yes"}, "profile: lend: 'yes' must be true or false"),
        (
            {"actions": ["enqueue", "allocate", "backfill"], "lend": True},
            "profile: lend: true needs the preempt action",
        ),
    ],
)
def test_bad_lend_is_one_line_naming_the_key(doc, needle):
    with pytest.raises(XpodError) as err:
        profile_from_dict(doc)
    assert needle in str(err.value) and "\n" not in str(err.value)


def _default_dict() -> dict:
    from xpod.scheduler.core.profile import DEFAULT_PROFILE

    return dict(DEFAULT_PROFILE)


# Generated draws again (40, about 2 s of CPU; CI's profile derandomizes them). One draw failed
# once inside a full `make test` and never alone (the third example below was written from it).
# Its cause is not found: nothing a cycle decides reads a wall clock (perf_counter only times the
# attempts for the metrics; the clock here is the test's), so load cannot change a decision; the
# example passes at the commit of that run (342a687) and under any PYTHONHASHSEED tried; and the
# draws pass beside CPU hogs and after the tests before them in one process (commit message).
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 4, 6, 8, 16]), st.integers(1, 2)), min_size=3, max_size=14),
    st.lists(st.integers(0, 50), min_size=12, max_size=12),
    st.integers(1, 3),
)
# a lent job whose head starts in the last cycle keeps its mark until the next cycle's start
@example(
    specs=[(1, 1)] * 4 + [(1, 2)] * 4 + [(1, 1), (1, 2), (1, 1), (1, 2), (16, 1), (1, 1)],
    ends=[0, 0, 0, 0, 31, 0, 0, 0, 0, 0, 41, 0],
    n_nodes=3,
)
# a job lent ahead of an earlier head (only) still runs when the next head could start without it
@example(
    specs=[
        (8, 1),
        (1, 2),
        (1, 1),
        (6, 2),
        (6, 1),
        (1, 2),
        (4, 1),
        (8, 1),
        (16, 1),
        (6, 1),
        (6, 2),
        (6, 2),
        (4, 1),
        (4, 2),
    ],
    ends=[25, 44, 41, 46, 12, 10, 4, 28, 8, 10, 5, 2],
    n_nodes=3,
)
@example(specs=[(1, 2), (1, 1), (1, 2), (1, 1), (16, 1)], ends=[0] * 12, n_nodes=3)
def test_lending_never_delays_the_head(specs, ends, n_nodes):
    """Jobs without expected durations (so every head's start is unknown and the default
    lends) on 910C nodes; a running job ends between cycles. Before each cycle a copy of the
    scheduler with the jobs lent ahead of the queue's head gone runs allocate alone: when the
    head starts there, it starts in the real cycle too (taking them back), so lending never
    delays it. (A job lent ahead of an earlier head only was ahead of this one in the queue.)"""
    plain = profile_from_dict({**_default_dict(), "actions": ["enqueue", "allocate"], "lend": False})
    t = [0.0]
    s = Scheduler([node(f"a{i}").devices(A3, 16).build() for i in range(n_nodes)], clock=lambda: t[0])
    for i, (k, tasks) in enumerate(specs):
        b = job(f"j{i:02d}").devices(A3, k if tasks == 1 else 16).submitted(0.001 * (i + 1))
        if tasks > 1:
            b.training(tasks=tasks)
        s.submit(b.build())
    r = s.cycle()
    for step, pick in enumerate(ends):
        head = next((j for j, why in r.pending.items() if why.queue_position == 1), None)
        probe = copy.deepcopy(s)
        for jid, ahead in probe._lent.items():
            if head in ahead:  # the jobs lent ahead of the head (others passed only jobs before it)
                probe.finish(jid)
        probe.profile = plain
        t[0] = step + 1.0
        starts_there = head is not None and any(b.job_id == head for b in probe.cycle().bindings)
        r = s.cycle()
        if starts_there:
            assert any(b.job_id == head for b in r.bindings), f"{head} started without the lent jobs, not with them"
        running = sorted(s.running)
        if running:
            s.finish(running[pick % len(running)])
    r = s.cycle()
    # a lent mark is kept while its job runs and a job it passed waits (checked at a cycle's
    # start: one it passed may have started in this very cycle)
    for jid, ahead in s._lent.items():
        assert jid in s.running and ahead & (set(s.pending) | {b.job_id for b in r.bindings}), (jid, ahead)
