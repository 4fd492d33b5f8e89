"""Backfill beside the head's carve-out: a job without a short enough duration may use devices
of the head's reserved domain that the head itself would not take at its start.

Declarative cases as in ``test_sched_mechanism``: ``running`` jobs are placed at t=0, ``jobs``
are submitted after them and one cycle runs at t=1. ``expect`` is the cycle's bindings;
``pending`` job id -> reason code; ``says`` job id -> words its message must hold.
"""

from __future__ import annotations

import copy
import heapq

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import ReasonCode
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.testing import job, node, placements, run_case

H = "nvidia-h100-sxm"
A3 = "ascend-910c"
BACKFILL = {
    "actions": ["enqueue", "allocate", "backfill"],
    "policies": ["gang", "topology", "ascend", "binpack", "priority"],
}

CASES = [
    dict(
        id="the head needs 8 of the 12 that free up: 4 free now go to a job without duration",
        nodes=[node("n1").devices(H, 16)],
        running=[job("r").devices(H, 12).duration(100)],
        jobs=[job("big").devices(H, 8).submitted(1), job("nodur").devices(H, 4).submitted(2)],
        expect={"nodur": [("n1", (12, 13, 14, 15))]},
        pending={"big": ReasonCode.UNSCHEDULABLE},
    ),
    dict(
        id="the head needs 14: only the 2 it leaves may be backfilled, a 4 waits",
        nodes=[node("n1").devices(H, 16)],
        running=[job("r").devices(H, 12).duration(100)],
        jobs=[
            job("big").devices(H, 14).submitted(1),
            job("four").devices(H, 4).submitted(2),
            job("two").devices(H, 2).submitted(3),
        ],
        expect={"two": [("n1", (14, 15))]},
        pending={"big": ReasonCode.UNSCHEDULABLE, "four": ReasonCode.WAITING_BEHIND},
        says={"four": "it does not fit beside the 14 devices kept for big either"},
    ),
    dict(
        id="the head's CPU on its node is kept: a backfill job may not eat it",
        # n1: 64 cores; r holds 8 until 100. big needs 40 at 100: 64 - 8 + 8 = 64 then.
        # cpu20 leaves 36 + 8 released = 44 >= 40: goes; cpu30 would leave 34 < 40: waits
        nodes=[node("n1").devices(H, 16).cpu(64)],
        running=[job("r").devices(H, 12).cpu(8).duration(100)],
        jobs=[
            job("big").devices(H, 8).cpu(40).submitted(1),
            job("cpu30").devices(H, 2).cpu(30).submitted(2),
            job("cpu20").devices(H, 2).cpu(20).submitted(3),
        ],
        expect={"cpu20": [("n1", (12, 13))]},
        pending={"big": ReasonCode.UNSCHEDULABLE, "cpu30": ReasonCode.WAITING_BEHIND},
    ),
    dict(
        id="an Ascend logical super-pod head keeps its reserve nodes: nothing goes beside it",
        # a0, a1 busy until 100; big (2 nodes) needs 2 free nodes plus the 2 reserve nodes of
        # the super-pod: a job on a2 or a3 would eat the reserve and delay big
        nodes=[node(f"a{i}").devices(A3, 16).supernode("sp") for i in range(4)],
        running=[job("r").training(tasks=2).devices(A3, 16).within("supernode").duration(100)],
        jobs=[
            job("big").training(tasks=2).devices(A3, 16).domain_block(32).submitted(1),
            job("nodur").devices(A3, 16).submitted(2),
        ],
        expect={},
        pending={"big": ReasonCode.UNSCHEDULABLE, "nodur": ReasonCode.WAITING_BEHIND},
    ),
    dict(
        id="an Ascend 910C head's carve-out follows its die-pair rule",
        # a0: r holds dies 0-9 until 100 (dies 10-15 free). big needs 8 dies = 4 whole pairs:
        # at 100 it takes pairs freed by r, so the 6 free dies (3 pairs) may go to a 6-die job
        nodes=[node("a0").devices(A3, 16).supernode("sp")],
        running=[job("r").devices(A3, 10).duration(100)],
        jobs=[job("big").devices(A3, 8).submitted(1), job("six").devices(A3, 6).submitted(2)],
        expect={"six": [("a0", (10, 11, 12, 13, 14, 15))]},
        pending={"big": ReasonCode.UNSCHEDULABLE},
    ),
]


def _run_keeping_promises(s, t: list, real: dict, no_backfill) -> None:
    """Run ``s`` to the end (jobs last ``real`` seconds; ``t[0]`` is its clock) and check that
    every head that was promised a start (its estimate, in a copy without backfill) started by
    then: backfill never delays a head's reservation."""
    promised: dict[str, float] = {}
    started: dict[str, float] = {}
    ends: list = []
    while True:
        probe = copy.deepcopy(s)
        probe.profile = no_backfill
        for jid, why in probe.cycle().pending.items():
            if (
                why.queue_position == 1
                and why.code is ReasonCode.UNSCHEDULABLE
                and jid not in promised
                and why.estimated_start is not None
            ):
                promised[jid] = why.estimated_start
        r = s.cycle()
        for b in r.bindings:
            if b.job_id not in started:
                started[b.job_id] = t[0]
                heapq.heappush(ends, (t[0] + real[b.job_id], b.job_id))
        if not ends:
            break
        t[0] = ends[0][0]
        while ends and ends[0][0] <= t[0]:
            s.finish(heapq.heappop(ends)[1])
    for jid, when in promised.items():
        assert started[jid] <= when + 1e-9, f"{jid} promised {when}, started {started[jid]}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_carve_case(case):
    s, r = run_case(dict(case, profile=BACKFILL))
    assert placements(r) == case["expect"], {j: p.message for j, p in r.pending.items()}
    for jid, code in case.get("pending", {}).items():
        assert r.pending[jid].code is code, r.pending[jid].message
    for jid, words in case.get("says", {}).items():
        assert words in r.pending[jid].message, r.pending[jid].message


def test_the_head_starts_at_its_reservation_beside_the_backfilled_job():
    """Play the first case forward: at 100 r ends and big starts on the dies it freed, while
    nodur (no expected end) keeps running."""
    case = dict(CASES[0], profile=BACKFILL)
    s, r = run_case(case)
    assert "nodur" in s.running
    s.finish("r")
    r2 = s.cycle(now=100.0)
    assert sorted(b.device_indices for b in r2.bindings if b.job_id == "big") == [tuple(range(8))]
    assert not s.pending


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 4, 6, 8, 12, 16]), st.integers(1, 30), st.booleans()), min_size=2, max_size=14
    ),
    st.integers(1, 2),
)
def test_backfill_beside_the_carve_never_delays_the_head(specs, n_nodes):
    """16-device nodes, so a head often needs only part of a node. Some jobs hide their
    duration (no expected_duration_seconds: backfill may only put them beside the head's
    carve-out) but still end at it. Before each cycle a copy without backfill gives the
    blocked head its reservation; with backfill it starts no later."""
    prof = profile_from_dict(BACKFILL)
    no_backfill = profile_from_dict(dict(BACKFILL, actions=["enqueue", "allocate"]))
    t = [0.0]
    s = Scheduler([node(f"n{i}").devices(H, 16).build() for i in range(n_nodes)], profile=prof, clock=lambda: t[0])
    real = {}
    for i, (k, d, known) in enumerate(specs):
        b = job(f"j{i:02d}").devices(H, k).submitted(0.001 * (i + 1))
        s.submit((b.duration(float(d * 10)) if known else b).build())
        real[f"j{i:02d}"] = float(d * 10)
    _run_keeping_promises(s, t, real, no_backfill)
    assert not s.pending, "every job fits an empty node"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["1", "2", "4", "6", "8", "12", "16", "gang", "sp"]), st.integers(1, 30), st.booleans()
        ),
        min_size=2,
        max_size=12,
    ),
    st.integers(4, 6),
)
# the counts said j06 (12 dies) starts at 10 when j00 frees die 0, but the free dies are then 0,
# 3 and 6-15: five whole die pairs, not six (test_a_910c_head_is_promised_no_start_its_die_pairs_refuse)
@example(
    specs=[
        ("1", 1, True),
        ("1", 2, False),
        ("1", 2, False),
        ("2", 2, False),
        ("gang", 2, False),
        ("gang", 2, False),
        ("12", 1, False),
    ],
    n_nodes=5,
)
def test_ascend_backfill_never_delays_the_head(specs, n_nodes):
    """The same on one Ascend 910C super-pod with MindCluster's rules (die pairs, 2 reserve
    nodes for logical super-pods): single-node die requests, gangs of whole nodes and
    ``domain_block`` jobs, some hiding their duration."""
    prof = profile_from_dict(BACKFILL)
    no_backfill = profile_from_dict(dict(BACKFILL, actions=["enqueue", "allocate"]))
    t = [0.0]
    s = Scheduler(
        [node(f"a{i}").devices(A3, 16).supernode("sp").build() for i in range(n_nodes)],
        profile=prof,
        clock=lambda: t[0],
    )
    real = {}
    for i, (what, d, known) in enumerate(specs):
        jid = f"j{i:02d}"
        if what == "gang":
            b = job(jid).training(tasks=2).devices(A3, 16).within("supernode")
        elif what == "sp":
            b = job(jid).training(tasks=2).devices(A3, 16).domain_block(32)
        else:
            b = job(jid).devices(A3, int(what))
        s.submit((b.duration(float(d * 10)) if known else b).submitted(0.001 * (i + 1)).build())
        real[jid] = float(d * 10)
    _run_keeping_promises(s, t, real, no_backfill)


# a0 after these run (each die-pair module 2k, 2k+1): d0 holds die 0, d1 die 1 (it prefers the
# half-busy module), d2 die 2, d45 dies 4-5; free: 3 and 6-15 (11 dies, five whole modules)
_HALF_PAIRS = [
    job("d0").devices(A3, 1).duration(10),
    job("d1").devices(A3, 1),
    job("d2").devices(A3, 1),
    job("d45").devices(A3, 2),
]


@pytest.mark.parametrize(
    "d1_seconds, start",
    [(None, None), (30.0, 30.0)],
    ids=["no later release completes a pair: unknown", "d1's end completes the sixth pair: 30"],
)
def test_a_910c_head_is_promised_no_start_its_die_pairs_refuse(d1_seconds, start):
    """At 10 d0's end leaves 12 free dies by count (0, 3, 6-15) but only five whole die pairs:
    a 12-die task (six pairs) does not place there. The head's reservation, which backfill
    holds and its pending reason shows, is the first end at which its placement rules place
    it: d1's end (die 1 rejoins die 0), or none."""
    running = [j.duration(d1_seconds) if j.build().id == "d1" and d1_seconds else j for j in _HALF_PAIRS]
    s, r = run_case(
        dict(
            profile=BACKFILL,
            nodes=[node("a0").devices(A3, 16).supernode("sp")],
            running=running,
            jobs=[job("big").devices(A3, 12).submitted(1)],
        )
    )
    why = r.pending["big"]
    assert why.code is ReasonCode.UNSCHEDULABLE, why.message
    assert why.estimated_start == start, why.message
    if start is None:
        assert "estimated start unknown" in why.message, why.message
    else:  # and the job starts then
        s.finish("d0")
        assert not s.cycle(now=10.0).bindings
        s.finish("d1")
        got = s.cycle(now=30.0).bindings
        assert [(b.job_id, b.node, b.device_indices) for b in got] == [("big", "a0", (0, 1, *range(6, 16)))]


@pytest.mark.parametrize(
    "cpu_holder_seconds, start",
    [(None, None), (30.0, 30.0)],
    ids=["the CPU never frees: unknown", "the CPU frees at 30: 30"],
)
def test_a_head_short_of_cpu_is_promised_no_start_at_a_release_of_devices_only(cpu_holder_seconds, start):
    """n1: 8 GPUs, 64 cores. ``cpu`` holds 4 GPUs and 40 cores, ``gpus`` 4 GPUs and no CPU
    until 10. At 10 the head (4 GPUs, 40 cores) has its devices by count but 24 cores: its
    start is the end of ``cpu``, or unknown."""
    holder = job("cpu").devices(H, 4).cpu(40)
    s, r = run_case(
        dict(
            profile=BACKFILL,
            nodes=[node("n1").devices(H, 8).cpu(64)],
            running=[
                holder.duration(cpu_holder_seconds) if cpu_holder_seconds else holder,
                job("gpus").devices(H, 4).duration(10),
            ],
            jobs=[job("head").devices(H, 4).cpu(40).submitted(1)],
        )
    )
    why = r.pending["head"]
    assert why.code is ReasonCode.UNSCHEDULABLE, why.message
    assert why.estimated_start == start, why.message


def test_carve_tries_are_bounded_per_queue_and_say_so(monkeypatch):
    """Past MAX_CARVE_TRIES jobs a cycle stops trying beside the carve-out; the jobs left say
    so rather than claim they do not fit."""
    from xpod.scheduler.core.actions import backfill

    monkeypatch.setattr(backfill, "MAX_CARVE_TRIES", 1)
    _, r = run_case(
        dict(
            profile=BACKFILL,
            nodes=[node("n1").devices(H, 16)],
            running=[job("r").devices(H, 12).duration(100)],
            jobs=[
                job("big").devices(H, 14).submitted(1),
                job("four").devices(H, 4).submitted(2),
                job("four2").devices(H, 4).submitted(3),
                job("three").devices(H, 3).submitted(4),
            ],
        )
    )
    assert "it does not fit beside the 14 devices kept for big either" in r.pending["four"].message
    assert "it does not fit beside the 14 devices kept for big either" in r.pending["four2"].message  # same shape
    assert "backfill beside the 14 devices kept for big already tried 1 jobs this cycle" in r.pending["three"].message
    assert not r.bindings
