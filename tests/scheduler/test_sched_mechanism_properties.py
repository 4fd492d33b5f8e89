"""Property tests for multi-node serving replicas, backfill reservations and aged-priority
preemption.

* a serving replica is whole or absent; its tasks sit inside one super-node (``within:
  supernode``) or one node (``within: node``); an Ascend 910C replica of 16-die tasks takes
  whole nodes of one physical super-pod and leaves the reserve nodes free; a replica waits only
  when no super-pod has room for it;
* when every job ends at its expected end, backfill never delays the blocked head: it starts no
  later than the estimated start it was given when it first blocked;
* preemption evicts only preemptible jobs of a lower aged priority, never leaves its preemptor
  unplaced, and two jobs never evict each other in turn.
"""

from __future__ import annotations

import copy
import heapq
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.scheduler.core.plugins.ascend import rules as ascend
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import MILLI, JobKind, ReasonCode
from xpod.scheduler.core.plugins.priority import PriorityPlugin as PriorityPolicy
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.testing import assert_supernode_reserve_kept, job, node

A3 = "ascend-910c"
H = "nvidia-h100-sxm"
RESERVE = ascend.DEFAULT_SUPERNODE_RESERVE_NODES
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def no_over_allocation(s: Scheduler) -> None:
    used = defaultdict(int)
    for rj in s.snapshot.running.values():
        for b in rj.bindings:
            for i in b.device_indices:
                used[(b.node, i)] += b.milli
    for (n, i), m in used.items():
        assert m <= MILLI and s.snapshot.nodes[n].free_milli[i] == MILLI - m, f"{n}/{i}"


def replicas_whole(s: Scheduler) -> None:
    snap = s.snapshot
    for jid, rj in snap.running.items():
        j = rj.job
        if j.kind is not JobKind.SERVING:
            continue
        size = j.replica_tasks
        groups = defaultdict(list)
        for b in rj.bindings:
            groups[b.task // size].append(b)
        for r, bs in groups.items():
            assert sorted(b.task for b in bs) == list(range(r * size, (r + 1) * size)), f"{jid} replica {r} not whole"
            sns = {snap.nodes[b.node].node.domains.get("supernode") for b in bs}
            if j.within == "node":
                assert len({b.node for b in bs}) == 1, f"{jid} replica {r} spans nodes"
            elif j.within == "supernode" and size > 1 and len({b.node for b in bs}) > 1:
                assert len(sns) == 1 and None not in sns, f"{jid} replica {r} spans {sns}"
            if j.devices.model == A3 and (size > 1 or j.domain_block):
                assert all(len(b.device_indices) == 16 for b in bs)
                assert len({b.node for b in bs}) == size and len(sns) == 1 and None not in sns


@st.composite
def a3_pods(draw):
    sizes = draw(st.lists(st.integers(3, 8), min_size=1, max_size=3))
    return sizes, [
        node(f"s{k}-{i}").devices(A3, 16).supernode(f"sp{k}").domain(f"s{k}-rack{i // 2}").build()
        for k, n in enumerate(sizes)
        for i in range(n)
    ]


@PROPS
@given(
    a3_pods(),
    st.lists(
        st.tuples(
            st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.sampled_from(["train", "serve", "serve-sp"])
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_a3_replicas_are_logical_superpods_with_the_reserve_kept(pods, specs):
    sizes, nodes = pods
    s = Scheduler(nodes, clock=lambda: 0.0)
    for i, (size, hi, lo_off, what) in enumerate(specs):
        b = job(f"j{i}").duration(100).submitted(float(i + 1))
        if what == "train":  # an sp-block training job competes for the same whole nodes
            b.training(tasks=size).devices(A3, 16).domain_block(16 * size)
        elif what == "serve-sp" or size == 1:  # domain_block names the replica's logical super-pod
            b.serving(max(1, hi - lo_off), hi, tasks_per_replica=size).devices(A3, 16).domain_block(16 * size)
        else:
            b.serving(max(1, hi - lo_off), hi, tasks_per_replica=size).devices(A3, 16).within("supernode")
        s.submit(b.build())
    r = s.cycle()
    no_over_allocation(s)
    replicas_whole(s)
    free = defaultdict(int, assert_supernode_reserve_kept(s.snapshot, RESERVE))
    # a serving job that waits, unplaced, has no room: its min replicas do not fit the spare
    # nodes of the super-pods (each replica inside one)
    for jid, why in r.pending.items():
        j = s.pending[jid]
        if j.kind is not JobKind.SERVING or jid in s.running or why.code is not ReasonCode.UNSCHEDULABLE:
            continue
        room = sum(max(0, free[f"sp{k}"] - RESERVE) // j.replica_tasks for k in range(len(sizes)))
        assert room < j.min_required // j.replica_tasks, f"{jid} waits though {room} replicas fit"


@PROPS
@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.sampled_from([1, 2, 4, 8]), st.sampled_from(["supernode", "node", "any"])),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.integers(0, 5), max_size=3),
)
def test_generic_replicas_stay_in_their_domain_through_node_loss(specs, removals):
    nodes = [
        node(f"g{k}-{i}").devices(H, 8).supernode(f"nvl{k}").domain(f"r{k}{i}").build()
        for k in range(2)
        for i in range(3)
    ]
    t = [0.0]
    s = Scheduler(nodes, clock=lambda: t[0])
    for i, (size, k, within) in enumerate(specs):
        s.submit(
            job(f"j{i}")
            .serving(1, 2, tasks_per_replica=size)
            .devices(H, k)
            .within(within)
            .duration(50)
            .submitted(float(i + 1))
            .build()
        )
    for step in range(3):
        t[0] += 10.0
        s.cycle()
        no_over_allocation(s)
        replicas_whole(s)
        if step < len(removals):
            names = sorted(s.snapshot.nodes)
            if len(names) > 1:
                s.remove_node(names[removals[step] % len(names)])
                replicas_whole(s)  # a lost task takes its whole replica with it


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 4, 6, 8]), st.integers(1, 30), st.integers(1, 2)), min_size=2, max_size=14
    ),
    st.integers(1, 3),
    st.sampled_from([None, "any", "supernode"]),
)
def test_backfill_never_delays_the_blocked_head(specs, n_nodes, supernodes):
    """Every job ends exactly at its expected end; cycles run at every end. Before each cycle a
    copy of the scheduler runs it without backfill: the job that blocks its queue there gets
    the estimated start the running jobs' ends give it (the reservation). With backfill, that
    job starts no later than the reservation."""
    policies = ["gang", "topology", "binpack", "priority"]
    prof = profile_from_dict({"actions": ["enqueue", "allocate", "backfill"], "policies": policies})
    no_backfill = profile_from_dict({"actions": ["enqueue", "allocate"], "policies": policies})
    t = [0.0]
    # nodes in two super-nodes when gangs may span nodes (``supernodes`` is their ``within``)
    nodes = [
        node(f"n{i}").devices(H, 8).supernode(f"sn{i % 2}" if supernodes else None).build()
        for i in range(n_nodes + (supernodes is not None))
    ]
    s = Scheduler(nodes, profile=prof, clock=lambda: t[0])
    for i, (k, d, tasks) in enumerate(specs):
        b = job(f"j{i:02d}").devices(H, k).duration(float(d * 10)).submitted(0.001 * (i + 1))
        if tasks > 1 and supernodes:
            b.training(tasks=tasks).within(supernodes)
        s.submit(b.build())
    promised: dict[str, float] = {}
    started: dict[str, float] = {}
    ends: list[tuple[float, str]] = []
    while True:
        probe = copy.deepcopy(s)
        probe.profile = no_backfill
        for jid, why in probe.cycle().pending.items():
            if why.queue_position == 1 and why.code is ReasonCode.UNSCHEDULABLE and jid not in promised:
                assert why.estimated_start is not None, why.message  # every running job has an end
                promised[jid] = why.estimated_start
        r = s.cycle()
        for b in r.bindings:
            started.setdefault(b.job_id, t[0])
            heapq.heappush(ends, (t[0] + s.running[b.job_id].job.expected_duration_seconds, b.job_id))
        if not ends:
            break  # nothing runs: what still waits can never fit
        t[0] = ends[0][0]
        while ends and ends[0][0] <= t[0]:
            s.finish(heapq.heappop(ends)[1])
    assert all(s.last_reasons[j].code is ReasonCode.NEVER_FITS for j in s.pending), "every job that can fit ran"
    for jid, when in promised.items():
        assert started[jid] <= when + 1e-9, f"{jid} promised {when}, started {started[jid]}"


@PROPS
@given(
    st.lists(
        st.tuples(st.sampled_from(["low", "normal", "high", "system"]), st.sampled_from([2, 4, 8]), st.integers(0, 72)),
        min_size=2,
        max_size=12,
    ),
    st.sampled_from([0.0, 1.0, 50.0, 200.0]),
    st.lists(st.integers(0, 20), min_size=4, max_size=4),
)
def test_preemption_follows_the_aged_order(specs, per_hour, finishes):
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate", "backfill", "preempt"],
            "policies": [
                "gang",
                "topology",
                "binpack",
                "drf",
                {"name": "priority", "args": {"aging_per_hour": per_hour}},
            ],
        }
    )
    rule = PriorityPolicy(aging_per_hour=per_hour)
    classes = {"low": 0, "normal": 100, "high": 1000, "system": 10000}
    t = [0.0]
    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(2)], profile=prof, clock=lambda: t[0])
    order = sorted(range(len(specs)), key=lambda i: specs[i][2])
    pairs = []
    for step, i in enumerate(order):  # jobs arrive in submit order, hours apart
        cls, k, hour = specs[i]
        t[0] = hour * 3600.0 + step
        s.submit(job(f"j{i}").devices(H, k).priority(cls).duration(7200.0).build())
        jobs_now = {**{jid: rj.job for jid, rj in s.running.items()}, **s.pending}
        r = s.cycle()
        no_over_allocation(s)
        bound = {b.job_id for b in r.bindings}
        for e in r.evictions:
            assert e.preemptor in bound and e.preemptor in s.running, "a preemption left its preemptor unplaced"
            p, v = jobs_now[e.preemptor], jobs_now[e.job_id]
            assert classes[v.priority_class] < 10000, "evicted a non-preemptible job"
            assert rule.effective(p, t[0]) > rule.effective(v, t[0]), e.reason
            pairs.append((e.preemptor, e.job_id))
        for jid in sorted(s.running)[: finishes[step % 4] % 3]:
            if finishes[step % 4] > 15:
                s.finish(jid)
    for p, v in pairs:
        assert (v, p) not in pairs, f"{p} and {v} evicted each other"
