"""Estimated starts that walk the queue in order: jobs ahead take the devices that free up
first (``scheduler/core/estimates.py``).

Declarative cases, as in ``test_sched_cases``: ``running`` jobs are placed at t=0, ``jobs``
are submitted after them (in the order of their submit times) and one cycle runs at ``now``
(default 1). ``starts`` maps job id -> the estimated start its pending reason must carry
(None = unknown), ``says`` job id -> words its message must hold.
"""

from __future__ import annotations

import heapq
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import ReasonCode
from xpod.scheduler.core.profile import DEFAULT_ESTIMATE_DEPTH, profile_from_dict
from xpod.scheduler.core.testing import job, node, run_case

A3 = "ascend-910c"
H = "nvidia-h100-sxm"


def gpu(name, n=8):
    return node(name).devices(H, n)


def queued(jid, k, i, d=None):
    """A job of ``k`` H100s submitted ``i``-th (submit time orders the queue)."""
    b = job(jid).devices(H, k).submitted(0.1 * (i + 1))
    return b.duration(d) if d is not None else b


#: the queue in submit order (the default profile orders by work left: these cases are about
#: the estimate walk over a queue in a known order)
SUBMIT_ORDER = {
    "policies": ["gang", "topology", "node-selector", "ascend", "binpack", "fragmentation", "drf", "priority"]
}

CASES = [
    dict(
        id="five identical jobs behind each other start one after the other",
        nodes=[gpu("n0")],
        running=[job("r").devices(H, 8).duration(100)],
        jobs=[queued(f"j{i}", 8, i, 50) for i in range(5)],
        starts={"j0": 100.0, "j1": 150.0, "j2": 200.0, "j3": 250.0, "j4": 300.0},
    ),
    dict(
        id="a job ahead without expected duration makes the later estimates unknown",
        profile=SUBMIT_ORDER,
        nodes=[gpu("n0")],
        running=[job("r").devices(H, 8).duration(100)],
        jobs=[queued("j0", 8, 0, 50), queued("j1", 8, 1), queued("j2", 8, 2, 50), queued("j3", 8, 3, 50)],
        starts={"j0": 100.0, "j1": 150.0, "j2": None, "j3": None},
        says={
            "j2": "estimated start unknown: job j1 ahead of it has no expected_duration_seconds",
            "j3": "estimated start unknown: job j2 ahead of it has no estimated start",
        },
    ),
    dict(
        id="jobs ahead take the earliest devices; a later job shares what they leave",
        profile=SUBMIT_ORDER,
        # n0 frees at 100, n1 at 200: a takes n0 (until 400); b waits for n1 and leaves 4
        # GPUs there that c takes at the same time
        nodes=[gpu("n0"), gpu("n1")],
        running=[
            job("r0").devices(H, 8).duration(100).submitted(0.01),
            job("r1").devices(H, 8).duration(200).submitted(0.02),
        ],
        jobs=[queued("a", 8, 0, 300), queued("b", 4, 1, 10), queued("c", 4, 2, 10), queued("d", 8, 3, 10)],
        starts={"a": 100.0, "b": 200.0, "c": 200.0, "d": 210.0},
    ),
    dict(
        id="gangs inside one super-node share it once the running gang ends",
        nodes=[node(f"a{i}").devices(A3, 16).supernode("sp0") for i in range(4)],
        profile={"policies": ["gang", "topology", "binpack", "priority"]},  # no reserve nodes
        running=[job("r").training(tasks=4).devices(A3, 16).within("supernode").duration(500)],
        jobs=[
            job(f"g{i}").training(tasks=2).devices(A3, 16).within("supernode").duration(100).submitted(0.1 * (i + 1))
            for i in range(3)
        ],
        starts={"g0": 500.0, "g1": 500.0, "g2": 600.0},
    ),
    dict(
        id="a running job without an expected end: the head's start is unknown, so all behind it",
        nodes=[gpu("n0")],
        running=[job("r").devices(H, 8)],
        jobs=[queued("j0", 8, 0, 50), queued("j1", 8, 1, 50)],
        starts={"j0": None, "j1": None},
        says={
            "j1": "estimated start unknown: job j0 ahead of it has no estimated start (a running job it waits for has no expected duration)"
        },
    ),
    dict(
        id="fractional jobs ahead share a device as the placer does",
        # r frees the one GPU at 100: f0 opens it, f1 shares it, both end at 150; f2 and f3
        # then share it again; f4 (600m) does not fit beside f2 (500m): it waits for 200
        nodes=[gpu("n0", 1)],
        running=[job("r").devices(H, 1).duration(100)],
        jobs=[job(f"f{i}").devices(H, 1, milli=500).duration(50).submitted(0.1 * (i + 1)) for i in range(4)]
        + [job("f4").devices(H, 1, milli=600).duration(50).submitted(0.5)],
        starts={"f0": 100.0, "f1": 100.0, "f2": 150.0, "f3": 150.0, "f4": 200.0},
    ),
    dict(
        id="a device shared by running fractional jobs comes back whole when the last ends",
        profile=SUBMIT_ORDER,
        # two running 500m jobs fill the GPU until 100 and 300: a whole-GPU head waits for 300;
        # a 400m job behind it, too (the walk frees shared devices whole, at their last end)
        nodes=[gpu("n0", 1)],
        running=[
            job("s1").devices(H, 1, milli=500).duration(100).submitted(0.01),
            job("s2").devices(H, 1, milli=500).duration(300).submitted(0.02),
        ],
        jobs=[queued("whole", 1, 0, 10), job("small").devices(H, 1, milli=400).duration(10).submitted(0.5)],
        starts={"whole": 300.0, "small": 310.0},
    ),
    dict(
        id="with backfill a job on other devices is not held to the head's start",
        # big waits for n0's H100s until 100; a100 waits for n1's A100s until 50: backfill lets
        # it pass big when they free up (it wants none of big's devices)
        nodes=[gpu("n0"), node("n1").devices("nvidia-a100-40gb", 8)],
        running=[
            job("r0").devices(H, 8).duration(100).submitted(0.01),
            job("r1").devices("nvidia-a100-40gb", 8).duration(50).submitted(0.02),
        ],
        jobs=[queued("big", 8, 0, 10), job("a100").devices("nvidia-a100-40gb", 8).duration(10).submitted(0.5)],
        starts={"big": 100.0, "a100": 50.0},
    ),
    dict(
        id="without backfill the queue waits for its head: a job on other devices too",
        nodes=[gpu("n0"), node("n1").devices("nvidia-a100-40gb", 8)],
        profile={"actions": ["enqueue", "allocate"]},
        running=[
            job("r0").devices(H, 8).duration(100).submitted(0.01),
            job("r1").devices("nvidia-a100-40gb", 8).duration(50).submitted(0.02),
        ],
        jobs=[queued("big", 8, 0, 10), job("a100").devices("nvidia-a100-40gb", 8).duration(10).submitted(0.5)],
        starts={"big": 100.0, "a100": 100.0},
    ),
    dict(
        id="the profile's estimate_depth bounds the walk; later positions say so",
        nodes=[gpu("n0")],
        profile={"estimate_depth": 2},
        running=[job("r").devices(H, 8).duration(100)],
        jobs=[queued(f"j{i}", 8, i, 50) for i in range(4)],
        starts={"j0": 100.0, "j1": 150.0, "j2": None, "j3": None},
        says={"j2": "estimated start not computed beyond queue position 2 (the profile's estimate_depth)"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_estimate_case(case):
    _, r = run_case(case)
    got = {jid: r.pending[jid].estimated_start for jid in case["starts"]}
    assert got == case["starts"], {jid: r.pending[jid].message for jid in case["starts"]}
    for jid, words in case.get("says", {}).items():
        assert words in r.pending[jid].message, r.pending[jid].message


def test_estimate_depth_number_and_default():
    _, r = run_case(CASES[-1])
    assert r.pending["j3"].numbers["estimate_depth"] == 2 and "estimate_depth" not in r.pending["j1"].numbers
    # the default depth: position 256 gets a number, 257 does not
    assert DEFAULT_ESTIMATE_DEPTH == 256
    n = DEFAULT_ESTIMATE_DEPTH + 1
    _, r = run_case(
        dict(
            nodes=[gpu("n0")],
            running=[job("r").devices(H, 8).duration(100)],
            jobs=[queued(f"j{i:03d}", 8, i, 1) for i in range(n)],
        )
    )
    assert r.pending[f"j{n - 2:03d}"].estimated_start == 100.0 + n - 2
    assert r.pending[f"j{n - 1:03d}"].estimated_start is None
    assert "beyond queue position 256" in r.pending[f"j{n - 1:03d}"].message


@pytest.mark.parametrize("bad", [-1, 1.5, "many", True])
def test_estimate_depth_must_be_a_whole_number(bad):
    with pytest.raises(XpodError, match=r"^p.yaml: estimate_depth: .* must be a whole number >= 0"):
        profile_from_dict({"estimate_depth": bad}, "p.yaml")


def test_queues_walk_apart():
    """Each queue's walk starts from the same cluster: a job of another queue is not 'ahead'."""
    from xpod.scheduler.core.model import Queue

    _, r = run_case(
        dict(
            nodes=[gpu("n0")],
            queues=[Queue("a"), Queue("b")],
            profile={"actions": ["enqueue", "allocate", "backfill"]},  # no reclaim across the queues
            running=[job("r").devices(H, 8).duration(100).queue("a")],
            jobs=[
                queued("a0", 8, 0, 50).queue("a"),
                queued("a1", 8, 1, 50).queue("a"),
                queued("b0", 8, 2, 50).queue("b"),
            ],
        )
    )
    assert [r.pending[j].estimated_start for j in ("a0", "a1", "b0")] == [100.0, 150.0, 100.0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from([1, 2, 4, 8]), st.integers(1, 20)), min_size=1, max_size=12),
    st.integers(1, 3),
    st.integers(0, 2**16),
)
def test_estimates_never_precede_the_jobs_ahead_and_hold_without_backfill(specs, n_nodes, seed):
    """One queue of single-task jobs on one model, every duration exact, allocate only (the
    queue starts in order). The estimates never decrease along the queue. On one node (where
    counting free devices is exact: no choice of node) each job then starts exactly at the
    estimate it was first given; on several nodes the walk's choice of node may differ from
    the placer's, so only the order is checked there."""
    rng = random.Random(seed)
    prof = profile_from_dict(
        {"actions": ["enqueue", "allocate"], "policies": ["gang", "topology", "binpack", "priority"]}
    )
    t = [0.0]
    s = Scheduler([gpu(f"n{i}").build() for i in range(n_nodes)], profile=prof, clock=lambda: t[0])
    # the cluster is busy first: running jobs with known ends
    for i in range(n_nodes):
        s.submit(
            job(f"r{i}")
            .devices(H, rng.choice([4, 8]))
            .duration(float(rng.randint(1, 30) * 10))
            .submitted(0.001 * (i + 1))
            .build()
        )
    ends: list = []
    for b in s.cycle().bindings:
        heapq.heappush(ends, (s.running[b.job_id].job.expected_duration_seconds, b.job_id))
    for i, (k, d) in enumerate(specs):
        s.submit(job(f"j{i:02d}").devices(H, k).duration(float(d * 10)).submitted(1 + 0.001 * i).build())
    t[0] = 0.5
    promised: dict = {}
    started: dict = {}
    while True:
        r = s.cycle()
        for b in r.bindings:
            started.setdefault(b.job_id, t[0])
            heapq.heappush(ends, (t[0] + s.running[b.job_id].job.expected_duration_seconds, b.job_id))
        order = sorted(r.pending.values(), key=lambda p: p.queue_position)
        starts = [p.estimated_start for p in order]
        assert all(x is not None for x in starts), [p.message for p in order]  # every duration known
        assert starts == sorted(starts), [(p.job_id, p.estimated_start) for p in order]
        for p in order:
            promised.setdefault(p.job_id, p.estimated_start)
        if not ends:
            break
        t[0] = ends[0][0]
        while ends and ends[0][0] <= t[0]:
            s.finish(heapq.heappop(ends)[1])
    if n_nodes == 1:
        for jid, when in promised.items():
            assert started[jid] == pytest.approx(when), f"{jid} promised {when}, started {started[jid]}"


def test_a_long_queue_cycle_stays_cheap():
    """10,000 queued jobs: only the first 256 per queue are walked (the rest say so)."""
    t = [0.0]
    s = Scheduler([gpu(f"n{i}").build() for i in range(4)], clock=lambda: t[0])
    for i in range(4):
        s.submit(job(f"r{i}").devices(H, 8).duration(100).submitted(0.1).build())
    s.cycle()
    t[0] = 1.0
    for i in range(10_000):
        s.submit(job(f"q{i:05d}").devices(H, 1).duration(10).submitted(2 + i * 1e-4).build())
    r = s.cycle()
    assert r.pending["q00000"].estimated_start == 100.0
    assert r.pending["q00031"].estimated_start == 100.0 and r.pending["q00032"].estimated_start == 110.0
    assert r.pending["q00255"].estimated_start == 170.0 and r.pending["q00256"].estimated_start is None
    assert r.pending["q09999"].code is ReasonCode.UNSCHEDULABLE or r.pending["q09999"].code is ReasonCode.WAITING_BEHIND


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from([100, 250, 300, 500, 700, 1000]), st.integers(1, 20)), min_size=1, max_size=12),
    st.sampled_from([250, 500, 1000]),
)
def test_fractional_estimates_hold_on_one_device(specs, running_milli):
    """One GPU shared by fractional jobs (and whole ones), allocate only: each job starts no
    later than the estimate it was first given (the walk gives a shared device back only when
    its last sharer ends; the placer may reuse milli sooner), and estimates never decrease."""
    prof = profile_from_dict(
        {"actions": ["enqueue", "allocate"], "policies": ["gang", "topology", "binpack", "fragmentation", "priority"]}
    )
    t = [0.0]
    s = Scheduler([gpu("n0", 1).build()], profile=prof, clock=lambda: t[0])
    s.submit(job("r").devices(H, 1, milli=running_milli).duration(30.0).submitted(0.001).build())
    ends: list = []
    for b in s.cycle().bindings:
        heapq.heappush(ends, (30.0, b.job_id))
    for i, (m, d) in enumerate(specs):
        s.submit(job(f"j{i:02d}").devices(H, 1, milli=m).duration(float(d * 10)).submitted(1 + 0.001 * i).build())
    t[0] = 0.5
    promised: dict = {}
    started: dict = {}
    while True:
        r = s.cycle()
        for b in r.bindings:
            started.setdefault(b.job_id, t[0])
            heapq.heappush(ends, (t[0] + s.running[b.job_id].job.expected_duration_seconds, b.job_id))
        order = sorted(r.pending.values(), key=lambda p: p.queue_position)
        starts = [p.estimated_start for p in order]
        assert all(x is not None for x in starts), [p.message for p in order]
        assert starts == sorted(starts), [(p.job_id, p.estimated_start) for p in order]
        for p in order:
            promised.setdefault(p.job_id, p.estimated_start)
        if not ends:
            break
        t[0] = ends[0][0]
        while ends and ends[0][0] <= t[0]:
            s.finish(heapq.heappop(ends)[1])
    for jid, when in promised.items():
        assert started[jid] <= when + 1e-9, f"{jid} promised {when}, started {started[jid]}"


def test_the_job_on_other_devices_starts_at_its_estimate():
    """Play the backfill case forward: at 50 the A100s free up and backfill starts a100 while
    big still waits for 100, as the estimates said."""
    case = next(c for c in CASES if c["id"].startswith("with backfill a job on other devices"))
    s, r = run_case(case)
    assert r.pending["a100"].estimated_start == 50.0
    s.finish("r1")
    r2 = s.cycle(now=50.0)
    assert {b.job_id for b in r2.bindings} == {"a100"} and r2.pending["big"].estimated_start == 100.0
