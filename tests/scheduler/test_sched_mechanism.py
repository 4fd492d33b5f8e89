"""Declarative cases for the mechanism's second round: serving replicas larger than one node,
backfill with expected durations, and preemption by aged priority.

Same shape as ``test_sched_cases``: ``running`` jobs are submitted and placed at t=0, then
``jobs`` are submitted and one more cycle runs at ``now`` (default 1). ``expect`` maps job id ->
[(node, device indices)] in task order for that cycle's bindings; ``pending`` maps job id ->
reason code (and ``says`` -> words its message must hold); ``evicted`` lists evicted job ids.
"""

from __future__ import annotations

import dataclasses

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import JobKind, Queue, ReasonCode
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.spec import parse_job
from xpod.scheduler.core.testing import assert_supernode_reserve_kept, job, node, placements, run_case

A3 = "ascend-910c"
B = "ascend-910b3"
H = "nvidia-h100-sxm"
ALL = tuple(range(16))


def a3(name, sn, rack=None):
    return node(name).devices(A3, 16).supernode(sn).domain(rack or f"rack-{name}")


def aging(per_hour):
    return {
        "actions": ["enqueue", "allocate", "backfill", "preempt"],
        "policies": [
            "gang",
            "topology",
            "ascend",
            "binpack",
            "drf",
            {"name": "priority", "args": {"aging_per_hour": per_hour}},
        ],
    }


CASES = [
    # ------------------------------------------------------------ serving replicas over nodes
    dict(
        id="replica-spans-nodes-inside-one-superpod",
        # each replica = 2 tasks x 16 dies = one logical super-pod of 2 nodes; the second replica
        # goes to the other super-pod (spread), each super-pod keeps its 2 reserve nodes
        nodes=[a3(f"a{i}", "spA") for i in range(4)] + [a3(f"b{i}", "spB") for i in range(4)],
        jobs=[job("svc").serving(2, 2, tasks_per_replica=2).devices(A3, 16).within("supernode")],
        expect={"svc": [("a0", ALL), ("a1", ALL), ("b0", ALL), ("b1", ALL)]},
    ),
    dict(
        id="replica-spreads-across-failure-domains-inside-the-superpod",
        # racks: a0 a2 in rA, a1 a3 in rB, a4 a5 in rC, a6 a7 in rD; replica 0 takes a0 (rA) and
        # a1 (rB); replica 1 avoids rA and rB: a4, a5 (rC), not the next names a2, a3
        nodes=[
            a3("a0", "sp", "rA"),
            a3("a1", "sp", "rB"),
            a3("a2", "sp", "rA"),
            a3("a3", "sp", "rB"),
            a3("a4", "sp", "rC"),
            a3("a5", "sp", "rC"),
            a3("a6", "sp", "rD"),
            a3("a7", "sp", "rD"),
        ],
        jobs=[job("svc").serving(2, 2, tasks_per_replica=2).devices(A3, 16).within("supernode")],
        expect={"svc": [("a0", ALL), ("a1", ALL), ("a4", ALL), ("a5", ALL)]},
    ),
    dict(
        id="replica-keeps-the-superpod-reserve",
        # spA: 4 nodes, 1 busy -> 3 free - 2 reserve = 1 spare < 2 nodes; spB: 3 free, 1 spare;
        # 2 spare nodes in all, but a replica never crosses super-pods
        nodes=[a3(f"a{i}", "spA") for i in range(4)] + [a3(f"b{i}", "spB") for i in range(3)],
        running=[job("ra").devices(A3, 16)],
        jobs=[job("svc").serving(1, 1, tasks_per_replica=2).devices(A3, 16).within("supernode")],
        expect={},
        pending={"svc": ReasonCode.UNSCHEDULABLE},
        says={
            "svc": "one replica of 2 x 16 ascend-910c = 32 devices in one super-node plus 2 reserve nodes (32 devices) kept free there; largest free block 48"
        },
    ),
    dict(
        id="replica-larger-than-any-superpod-never-fits",
        nodes=[a3(f"a{i}", "spA") for i in range(4)],
        jobs=[
            job("svc").serving(1, 1, tasks_per_replica=3).devices(A3, 16).within("supernode"),
            job("next").devices(A3, 16).submitted(5),
        ],
        expect={"next": [("a0", ALL)]},
        pending={"svc": ReasonCode.NEVER_FITS},
    ),
    dict(
        id="replica-of-16-die-tasks-within-node-never-fits",
        nodes=[a3(f"a{i}", "spA") for i in range(4)],
        jobs=[
            job("svc").serving(1, 1, tasks_per_replica=2).devices(A3, 16).within("node"),
            job("next").devices(A3, 16).submitted(5),
        ],
        expect={"next": [("a0", ALL)]},
        pending={"svc": ReasonCode.NEVER_FITS},
        says={"svc": "needs one replica of 2 x 16 ascend-910c = 32 devices in one node"},
    ),
    dict(
        id="one-node-replica-with-sp-block-keeps-the-reserve",
        # domain_block 16: each replica is a logical super-pod of one node; 3 nodes - 2 reserve = 1
        nodes=[a3(f"a{i}", "sp") for i in range(3)],
        jobs=[job("svc").serving(1, 2).devices(A3, 16).domain_block(16)],
        expect={"svc": [("a0", ALL)]},
        pending={"svc": ReasonCode.UNSCHEDULABLE},
        says={
            "svc": "running 1 of 2 tasks; needs 16 ascend-910c = 16 devices in one super-node plus 2 reserve nodes (32 devices) kept free there"
        },
    ),
    dict(
        id="replica-whole-or-not-at-all",
        # min 2 replicas of 2 nodes need 4 spare nodes; 6 nodes - 2 reserve = 4: both or none
        nodes=[a3(f"a{i}", "sp") for i in range(6)],
        running=[job("r").devices(A3, 2)],
        jobs=[job("svc").serving(2, 2, tasks_per_replica=2).devices(A3, 16).within("supernode")],
        expect={},
        pending={"svc": ReasonCode.UNSCHEDULABLE},
    ),
    dict(
        id="replica-fits-one-node-before-spanning",
        # 2 tasks x 4 GPUs fit one 8-GPU node: fewest tiers crossed; the second replica goes to
        # the other failure domain
        nodes=[
            node("g0").devices(H, 8).supernode("nvl").domain("r0"),
            node("g1").devices(H, 8).supernode("nvl").domain("r1"),
        ],
        jobs=[job("svc").serving(2, 2, tasks_per_replica=2).devices(H, 4).within("supernode")],
        expect={"svc": [("g0", (0, 1, 2, 3)), ("g0", (4, 5, 6, 7)), ("g1", (0, 1, 2, 3)), ("g1", (4, 5, 6, 7))]},
    ),
    dict(
        id="replica-spans-nodes-when-no-node-holds-it",
        nodes=[
            node("g0").devices(H, 8).supernode("nvl"),
            node("g1").devices(H, 8).supernode("nvl"),
            node("x").devices(H, 8),
        ],
        running=[job("r0").devices(H, 6), job("r1").devices(H, 6), job("r2").devices(H, 6)],
        jobs=[job("svc").serving(1, 1, tasks_per_replica=2).devices(H, 2).within("supernode")],
        # g0 and g1 share a super-node; x (2 free) is outside it
        expect={"svc": [("g0", (6, 7)), ("g1", (6, 7))]},
    ),
    dict(
        id="replica-within-node-refuses-to-span",
        nodes=[node("g0").devices(H, 8).supernode("nvl"), node("g1").devices(H, 8).supernode("nvl")],
        running=[job("r0").devices(H, 6), job("r1").devices(H, 6)],
        jobs=[job("svc").serving(1, 1, tasks_per_replica=2).devices(H, 2).within("node")],
        expect={},
        pending={"svc": ReasonCode.UNSCHEDULABLE},
        says={"svc": "one replica of 2 x 2 nvidia-h100-sxm = 4 devices in one node"},
    ),
    dict(
        id="preempt-makes-room-for-a-whole-replica",
        # 4 nodes, 2 reserve: a 2-node replica needs all 4 free; both low jobs go, nothing else
        nodes=[a3(f"a{i}", "sp") for i in range(4)] + [node("h").devices(H, 8)],
        running=[
            job("low1").devices(A3, 16).priority("low"),
            job("low2").devices(A3, 16).priority("low"),
            job("other").devices(H, 8).priority("low"),
        ],
        jobs=[job("svc").serving(1, 1, tasks_per_replica=2).devices(A3, 16).within("supernode").priority("high")],
        expect={"svc": [("a0", ALL), ("a1", ALL)]},
        evicted=["low1", "low2"],
    ),
    # ------------------------------------------------------------------------------ backfill
    dict(
        id="backfill-ends-before-the-reservation",
        nodes=[node("n1").devices(H, 8)],
        running=[job("r").devices(H, 4).duration(100)],
        # big waits for r's end at 100; short ends at 1 + 99 = 100: in time; late at 101: not
        jobs=[
            job("big").devices(H, 8).submitted(1),
            job("short").devices(H, 2).duration(99).submitted(2),
            job("late").devices(H, 2).duration(100).submitted(3),
        ],
        expect={"short": [("n1", (4, 5))]},
        pending={"big": ReasonCode.UNSCHEDULABLE, "late": ReasonCode.WAITING_BEHIND},
        says={
            "late": "waiting behind big (holding resources for it): it would end at 101, after big's estimated start 100 on the devices reserved for it;"
        },
    ),
    dict(
        id="backfill-needs-an-expected-duration",
        nodes=[node("n1").devices(H, 8)],
        running=[job("r").devices(H, 4).duration(100)],
        jobs=[job("big").devices(H, 8).submitted(1), job("nodur").devices(H, 2).submitted(2)],
        expect={},
        pending={"big": ReasonCode.UNSCHEDULABLE, "nodur": ReasonCode.WAITING_BEHIND},
        says={"nodur": "it has no expected_duration_seconds, so it may not use the devices reserved for big;"},
    ),
    dict(
        id="backfill-any-job-off-the-reserved-node",
        profile=aging(1.0),  # submit order (the default orders by work left)
        # big's reservation: n1 at 100 (r1 ends); n2 is held by r2 with no end. A job without
        # an expected duration may still take n2's free GPUs: big's devices free up on n1
        nodes=[node("n1").devices(H, 8), node("n2").devices(H, 8)],
        running=[job("r1").devices(H, 4).duration(100), job("r2").devices(H, 6)],
        jobs=[
            job("big").devices(H, 8).submitted(1),
            job("nodur").devices(H, 2).submitted(2),
            job("nodur4").devices(H, 4).submitted(3),
        ],
        expect={"nodur": [("n2", (6, 7))]},
        pending={"big": ReasonCode.UNSCHEDULABLE, "nodur4": ReasonCode.WAITING_BEHIND},
        says={
            "nodur4": "no expected_duration_seconds, so it may not use the devices reserved for big, and it does not fit off them now"
        },
    ),
    dict(
        id="backfill-holds-everyone-when-the-head-start-is-unknown",
        # r has no expected duration: big's start is unknown; a profile without `lend` lets
        # nothing run ahead of it (the default lends: test_sched_backfill_lend)
        profile=aging(1.0),
        nodes=[node("n1").devices(H, 8)],
        running=[job("r").devices(H, 4)],
        jobs=[job("big").devices(H, 8).submitted(1), job("short").devices(H, 2).duration(1).submitted(2)],
        expect={},
        pending={"big": ReasonCode.UNSCHEDULABLE, "short": ReasonCode.WAITING_BEHIND},
        says={"short": "the start of big is unknown, as a job it waits for has no expected duration"},
    ),
    dict(
        id="backfill-says-when-the-reservation-gives-up",
        # 20 releases free a device each, but the CPU big needs stays with hog (no end): the
        # look-ahead fails at every one, and gives up after MAX_RESERVATION_TRIES of them
        nodes=[node("n1").devices(H, 20).cpu(4)],
        running=[job("hog").cpu(4)] + [job(f"r{i}").devices(H, 1).duration(10 * (i + 1)) for i in range(20)],
        jobs=[
            job("big").devices(H, 1).cpu(1).submitted(1),
            job("short").devices(H, 1).duration(5).submitted(2),
        ],
        expect={},
        pending={"big": ReasonCode.UNSCHEDULABLE, "short": ReasonCode.WAITING_BEHIND},
        says={
            "big": "estimated start unknown: the look-ahead did not place it at any of the first 16 times",
            "short": "the start of big is unknown, as the look-ahead did not place it at any of the first 16 times the running jobs' expected ends free enough devices by count",
        },
    ),
    dict(
        id="backfill-other-devices-cannot-delay-the-head",
        # a 910B job takes nothing the H100 head waits for: it goes, duration or not (without
        # `lend`, the H100 job waits)
        profile=aging(1.0),
        nodes=[node("h").devices(H, 8), node("b").devices(B, 8)],
        running=[job("r").devices(H, 4)],
        jobs=[
            job("big").devices(H, 8).submitted(1),
            job("other").devices(B, 2).submitted(2),
            job("same").devices(H, 2).submitted(3),
        ],
        expect={"other": [("b", (0, 1))]},
        pending={"big": ReasonCode.UNSCHEDULABLE, "same": ReasonCode.WAITING_BEHIND},
    ),
    dict(
        id="backfill-other-devices-but-not-the-heads-cpu",
        # the head needs CPU too: a 910B job may go only to a node without H100s
        nodes=[node("hb").devices(H, 8).devices(B, 8).cpu(64), node("b").devices(B, 8).cpu(64)],
        running=[job("r").devices(H, 4).cpu(8)],
        jobs=[job("big").devices(H, 8).cpu(32).submitted(1), job("other").devices(B, 8).cpu(8).submitted(2)],
        expect={"other": [("b", tuple(range(8)))]},
    ),
    # ----------------------------------------------------------------- aged-priority preemption
    dict(
        id="preempt-a-new-high-job-evicts-a-fresh-normal-one",
        nodes=[node("n1").devices(H, 8)],
        profile=aging(1.0),
        running=[job("v").devices(H, 8).submitted(0.5)],
        jobs=[job("hi").devices(H, 8).priority("high").submitted(3600.0)],
        now=3600.0,
        expect={"hi": [("n1", tuple(range(8)))]},
        evicted=["v"],
    ),
    dict(
        id="preempt-never-a-job-the-aged-order-puts-ahead",
        # aging 200/h: v (normal, submitted at 0.5 s) is at 100 + 2000 after 10 h, above a new
        # high job (1000): the queue order puts v first, so hi may not evict it
        nodes=[node("n1").devices(H, 8)],
        profile=aging(200.0),
        running=[job("v").devices(H, 8).submitted(0.5)],
        jobs=[job("hi").devices(H, 8).priority("high").submitted(36000.0)],
        now=36000.0,
        expect={},
        evicted=[],
        pending={"hi": ReasonCode.UNSCHEDULABLE},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case):
    s, r = run_case(case)
    if "expect" in case:
        assert placements(r) == case["expect"]
    for jid, code in case.get("pending", {}).items():
        assert r.pending[jid].code is code, r.pending[jid].message
    for jid, words in case.get("says", {}).items():
        assert words in r.pending[jid].message, r.pending[jid].message
    if "evicted" in case:
        assert sorted(e.job_id for e in r.evictions) == sorted(case["evicted"])


# ------------------------------------------------------------------ replicas: spec, replacement


def test_spec_tasks_per_replica_scales_the_task_counts():
    j = parse_job(
        {
            "id": "s",
            "kind": "serving",
            "replicas": {"min": 1, "max": 3},
            "tasks_per_replica": 2,
            "devices": {"count": 16, "model": A3},
            "within": "supernode",
        }
    )
    assert (j.kind, j.tasks, j.min_tasks, j.replica_tasks, j.min_required) == (JobKind.SERVING, 6, 2, 2, 2)
    assert parse_job({"id": "s", "kind": "serving", "replicas": 2}).replica_tasks == 1


@pytest.mark.parametrize(
    "doc, needle",
    [
        (
            {"kind": "training", "tasks": 2, "tasks_per_replica": 2},
            "tasks_per_replica: only serving jobs have replicas",
        ),
        ({"kind": "serving", "tasks_per_replica": 0}, "tasks_per_replica: 0 must be in 1..4096"),
        ({"kind": "serving", "tasks_per_replica": "two"}, "tasks_per_replica: 'two' is not a whole number"),
    ],
)
def test_spec_tasks_per_replica_errors(doc, needle):
    with pytest.raises(XpodError) as e:
        parse_job({"id": "x", **doc}, source="jobs/x.yaml")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "build, needle",
    [
        (
            lambda: job("s").serving(1, 1, tasks_per_replica=2).devices(A3, 8),
            "a distributed Ascend 910C task takes all 16 dies",
        ),
        (
            lambda: job("s").serving(1, 1, tasks_per_replica=2).devices(A3, 16).domain_block(16),
            "set domain_block to its 32 dies",
        ),
    ],
)
def test_a3_replica_rules_at_submit(build, needle):
    s = Scheduler([a3("a0", "sp").build()], clock=lambda: 0.0)
    with pytest.raises(XpodError) as e:
        s.submit(build().build())
    assert needle in str(e.value)
    s.submit(job("ok").serving(1, 1, tasks_per_replica=2).devices(A3, 16).domain_block(32).build())


def test_losing_a_node_replaces_its_whole_replica_only():
    nodes = [a3(f"a{i}", "sp", f"r{i}").build() for i in range(8)]
    t = [0.0]
    s = Scheduler(nodes, clock=lambda: t[0])
    s.submit(job("svc").serving(1, 2, tasks_per_replica=2).devices(A3, 16).within("supernode").build())
    first = {b.task: b.node for b in s.cycle().bindings}
    assert len(first) == 4 and len(set(first.values())) == 4
    s.remove_node(first[1])  # task 1 = the second half of replica 0
    assert sorted(b.task for b in s.running["svc"].bindings) == [2, 3]  # replica 1 untouched
    t[0] = 10.0
    r = s.cycle()
    assert sorted((x.task, x.node) for x in r.replacements) == [(0, first[0]), (1, first[1])]
    again = {b.task: b.node for b in r.bindings}
    assert sorted(again) == [0, 1] and first[1] not in again.values()
    assert {b.task: b.node for b in s.running["svc"].bindings if b.task >= 2} == {2: first[2], 3: first[3]}
    # replica 0 is again one logical super-pod on two whole nodes of one super-pod
    assert len({s.snapshot.nodes[n].node.domains.get("supernode") for n in again.values()}) == 1


def test_replica_estimate_counts_reserve_and_whole_nodes():
    """The estimated start of a waiting multi-node replica comes from the running jobs'
    expected ends: two nodes must be whole and free beside the reserve."""
    t = [0.0]
    s = Scheduler([a3(f"a{i}", "sp").build() for i in range(4)], clock=lambda: t[0])
    s.submit(job("half").devices(A3, 8).duration(50).build())  # a0 half used
    s.submit(job("full").devices(A3, 16).duration(300).build())  # a1 used
    s.cycle()
    s.submit(job("svc").serving(1, 1, tasks_per_replica=2).devices(A3, 16).within("supernode").build())
    t[0] = 1.0
    r = s.cycle()
    why = r.pending["svc"]
    assert why.code is ReasonCode.UNSCHEDULABLE
    assert why.numbers["need_devices"] == 32 and why.numbers["reserve_devices"] == 32
    assert why.numbers["largest_free_block"] == 32  # a2 and a3; a0's 8 free dies are no whole node
    assert why.estimated_start == 300.0  # 50 frees a0, still 3 whole nodes < 2 + 2 reserve; 300 frees a1


# ----------------------------------------------------------------- aged priority, over time


def test_a_long_waiting_low_job_preempts_a_younger_normal_one():
    """low (all 8 GPUs) waits behind a system job; normal arrives 2 h later and backfills (it
    should end before low's reserved start) but overruns. When the system job ends, low's aged
    priority (0 + 200/h x 2.8 h) is above normal's (100 + 200/h x 0.8 h): low evicts it. With
    the class values alone (0 < 100) low would wait for normal without any expected end."""
    prof = profile_from_dict(aging(200.0))
    t = [0.0]
    s = Scheduler([node("n1").devices(H, 8).build()], profile=prof, clock=lambda: t[0])
    s.submit(job("sys").devices(H, 6).priority("system").duration(10_000).build())
    s.cycle()
    t[0] = 10.0
    s.submit(job("low").devices(H, 8).priority("low").build())
    assert s.cycle().pending["low"].code is ReasonCode.UNSCHEDULABLE
    t[0] = 7200.0
    s.submit(job("normal").devices(H, 2).duration(100).build())
    r = s.cycle()
    assert placements(r) == {"normal": [("n1", (6, 7))]}  # backfilled: ends at 7300 < 10,000
    t[0] = 10_010.0  # sys is done; normal overran its expected duration and still holds 2 GPUs
    s.finish("sys")
    r = s.cycle()
    assert [e.job_id for e in r.evictions] == ["normal"]
    assert r.evictions[0].reason == "preempted by low (priority 0, aged 555.6 vs 100, aged 256.1)"
    assert placements(r) == {"low": [("n1", tuple(range(8)))]}
    assert "normal" in s.pending
    # the evicted job does not swing back: the aged order of two jobs never changes
    t[0] = 20_000.0
    r = s.cycle()
    assert not r.evictions and "low" in s.running
    assert r.pending["normal"].code is ReasonCode.UNSCHEDULABLE


def test_class_values_alone_would_leave_the_low_job_waiting():
    """The same story without aging: low never evicts normal."""
    prof = profile_from_dict(aging(0.0))
    t = [0.0]
    s = Scheduler([node("n1").devices(H, 8).build()], profile=prof, clock=lambda: t[0])
    s.submit(job("sys").devices(H, 6).priority("system").duration(10_000).build())
    s.cycle()
    s.submit(job("low").devices(H, 8).priority("low").build())
    s.submit(job("normal").devices(H, 2).duration(100).build())
    t[0] = 7200.0
    assert "normal" in {b.job_id for b in s.cycle().bindings}  # normal goes first here (100 > 0)
    t[0] = 10_010.0
    s.finish("sys")
    r = s.cycle()
    assert not r.evictions and "low" in s.pending


def test_example_multi_node_serving_job_on_cloudmatrix384():
    """examples/jobs/deepseek-serving-supernode.yaml through the service's document parser onto
    the CloudMatrix384 example: 3 replicas of 2 whole nodes, racks not shared between replicas."""
    import pathlib

    from xpod.scheduler.jobspec import load_job_file
    from xpod.scheduler.core.from_cluster import load_nodes
    from xpod.scheduler.service.admission import parse_document

    root = pathlib.Path(__file__).resolve().parents[2]
    core = parse_document(load_job_file(str(root / "examples/jobs/deepseek-serving-supernode.yaml")).document).core
    assert (core.tasks, core.min_tasks, core.replica_tasks) == (6, 2, 2)
    nodes = load_nodes(str(root / "examples/clusters/cloudmatrix384.yaml"))
    s = Scheduler(nodes, queues=[Queue("serving")], clock=lambda: 1.0)
    s.submit(dataclasses.replace(core, id="ep32"))
    r = s.cycle()
    by_replica: dict[int, list] = {}
    for b in r.bindings:
        by_replica.setdefault(b.task // 2, []).append(b)
    assert sorted(by_replica) == [0, 1, 2]
    racks = []
    for bs in by_replica.values():
        assert len({b.node for b in bs}) == 2 and all(len(b.device_indices) == 16 for b in bs)
        racks.append({s.snapshot.nodes[b.node].node.domain for b in bs})
    assert not (racks[0] & racks[1] or racks[0] & racks[2] or racks[1] & racks[2]), racks


def test_service_explains_a_waiting_multi_node_replica(tmp_path):
    """Through the in-process service API on the CloudMatrix384 example: a replica larger than
    the super-pod beside its reserve is refused at submit; one that does not fit now waits
    with the numbers in ExplainJob."""
    import pathlib

    import yaml

    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.service.api import ApiError, Code, SchedulerApi
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL
    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.service.core_link import InProcessCore
    from xpod.scheduler.store import JobState

    root = pathlib.Path(__file__).resolve().parents[2]
    cluster = load_cluster(str(root / "examples/clusters/cloudmatrix384.yaml"))
    api = SchedulerApi(str(tmp_path / "x.db"), InProcessCore(cluster), cluster=cluster)
    api.register_nodes(OPEN_PRINCIPAL, cluster_records(cluster))  # every node's agent
    try:
        ep32 = yaml.safe_load((root / "examples/jobs/deepseek-serving-supernode.yaml").read_text())

        def replica(name, nodes):
            spec = {
                "replicas": 1,
                "tasks_per_replica": nodes,
                "devices": {"count": 16, "model": A3},
                "within": "supernode",
            }
            return {"apiVersion": "xpod/v1", "kind": "ServingJob", "metadata": {"name": name}, "spec": spec}

        with pytest.raises(ApiError) as err:
            api.submit_job(OPEN_PRINCIPAL, "r0", replica("too-big", 47))  # 48 nodes - 2 reserve = 46
        assert err.value.code is Code.FAILED_PRECONDITION, err.value
        assert (
            "needs one replica of 47 x 16 ascend-910c = 752 devices in one super-node plus 2 reserve nodes (32 devices) "
            "kept free there; the whole cluster has 768 such healthy devices there" in str(err.value)
        )
        first = api.submit_job(OPEN_PRINCIPAL, "r1", ep32)[0].record.id
        api.schedule_once()
        big = api.submit_job(OPEN_PRINCIPAL, "r2", replica("big", 44))[0].record.id
        api.schedule_once()
        assert api.get_job(OPEN_PRINCIPAL, first)[0].record.state is JobState.SCHEDULED
        ex = api.explain_job(OPEN_PRINCIPAL, big)
        assert ex.job.record.state is JobState.QUEUED
        assert ex.numbers["needDevices"] == 704 and ex.numbers["reserveDevices"] == 32
        assert ex.numbers["largestFreeBlock"] == 42 * 16  # ep32 holds 6 of the 48 nodes
        assert (
            "needs one replica of 44 x 16 ascend-910c = 704 devices in one super-node plus 2 reserve nodes"
            in ex.job.pending.message
        )
    finally:
        api.close()


def test_a_replaced_replica_placed_by_preemption_is_reported():
    """A replica replaced under its old number (0, below the running replica 1) and placed by
    preemption is in the cycle's bindings like any other placement."""
    t = [0.0]
    s = Scheduler([node(f"n{i}").devices(H, 8).domain(f"r{i}").build() for i in range(3)], clock=lambda: t[0])
    s.submit(job("svc").serving(2, 2).devices(H, 8).priority("high").build())
    s.cycle()
    s.submit(job("low").devices(H, 8).priority("low").build())
    s.cycle()
    first = {b.task: b.node for b in s.running["svc"].bindings}
    s.remove_node(first[0])
    t[0] = 5.0
    r = s.cycle()
    assert [e.job_id for e in r.evictions] == ["low"]
    assert [(b.job_id, b.task, b.node) for b in r.bindings] == [("svc", 0, s.running["svc"].bindings[-1].node)]
    assert sorted(b.task for b in s.running["svc"].bindings) == [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind=JobKind.SERVING, tasks=3, min_tasks=2, replica_tasks=2),
        dict(kind=JobKind.SERVING, tasks=4, min_tasks=1, replica_tasks=2),
        dict(kind=JobKind.TRAINING, tasks=4, replica_tasks=2),
        dict(kind=JobKind.SERVING, tasks=4, replica_tasks=0),
    ],
)
def test_submit_refuses_replicas_that_are_not_whole(bad):
    from xpod.scheduler.core.model import DeviceRequest, Job

    s = Scheduler([node("g").devices(H, 8).build()], clock=lambda: 0.0)
    with pytest.raises(XpodError) as e:
        s.submit(Job("x", devices=DeviceRequest(count=1, model=H), **bad))
    assert str(e.value).startswith("job x: tasks_per_replica:") and "\n" not in str(e.value)


def test_service_replaces_a_lost_multi_node_replica_whole_and_alone(tmp_path):
    """scheduler.service.liveness over the in-process API: a node of replica 0 stops heartbeating; both
    tasks of replica 0 are released (its task on a healthy node cannot serve alone), replica 1
    keeps its nodes, the job is not restarted whole, and the next cycle binds replica 0 again."""
    from xpod.scheduler.contract import DeviceRecord, NodeRecord
    from xpod.scheduler.service.api import SchedulerApi
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL
    from xpod.scheduler.service.core_link import InProcessCore
    from xpod.scheduler.store import JobState

    clock = [1000.0]
    api = SchedulerApi(str(tmp_path / "x.db"), InProcessCore(), clock=lambda: clock[0], node_timeout_s=10.0)
    names = [f"n{i}" for i in range(5)]
    try:
        for n in names:
            api.register_node(
                OPEN_PRINCIPAL, NodeRecord(n, tuple(DeviceRecord(i, "cuda", H, 80 * 2**30) for i in range(2)))
            )
        doc = {
            "apiVersion": "xpod/v1",
            "kind": "ServingJob",
            "metadata": {"name": "svc"},
            "spec": {"replicas": 2, "tasks_per_replica": 2, "devices": {"count": 2, "model": H}},
        }
        jid = api.submit_job(OPEN_PRINCIPAL, "s", doc)[0].record.id
        api.schedule_once()
        before = {a.task: a.node for a in api.get_job(OPEN_PRINCIPAL, jid)[0].record.allocations}
        assert sorted(before) == [0, 1, 2, 3] and len(set(before.values())) == 4
        lost = before[0]
        clock[0] += 10.5
        for n in names:
            if n != lost:
                api.heartbeat(OPEN_PRINCIPAL, {n: {}})
        assert api.liveness.check() == [lost]
        job, events = api.get_job(OPEN_PRINCIPAL, jid)
        assert job.record.state is not JobState.QUEUED  # not restarted whole
        assert {a.task: a.node for a in job.record.allocations} == {2: before[2], 3: before[3]}
        assert "replica 0 (tasks 0, 1) replaced" in events[-1].message  # one replica of two tasks
        api.schedule_once()
        after = {a.task: a.node for a in api.get_job(OPEN_PRINCIPAL, jid)[0].record.allocations}
        assert sorted(after) == [0, 1, 2, 3] and lost not in after.values()
        assert (after[2], after[3]) == (before[2], before[3])
    finally:
        api.close()


def test_a_victim_given_back_never_eats_the_reserve_of_the_preemptors_super_pod():
    """One super-pod of 5 A3 nodes (reserve 2). x, v2, v1 hold n0, n1, n4 (v1 the lowest class,
    so the first victim). A high 2-node logical super-pod needs 2 + 2 wholly free nodes: evicting
    v1 frees 3, evicting v2 too frees 4 and it takes n1, n2. Giving v1 back (it was not needed for
    the block's own nodes) would fill n4 and leave one free node: v1 stays evicted."""
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate", "preempt"],
            "policies": ["gang", "ascend", "first-fit", {"name": "priority", "args": {"aging_per_hour": 0}}],
        }
    )
    t = [0.0]
    s = Scheduler(
        [node(f"n{i}").devices(A3, 16).supernode("sp0").build() for i in range(5)], profile=prof, clock=lambda: t[0]
    )
    for jid, cls in (("x", "high"), ("v2", "normal"), ("f2", "normal"), ("f3", "normal"), ("v1", "low")):
        s.submit(job(jid).devices(A3, 16).priority(cls).build())
        s.cycle()
    s.finish("f2")
    s.finish("f3")
    t[0] = 10.0
    s.submit(job("block").training(2).devices(A3, 16).domain_block(32).priority("high").build())
    r = s.cycle()
    assert placements(r) == {"block": [("n1", tuple(range(16))), ("n2", tuple(range(16)))]}
    assert sorted(e.job_id for e in r.evictions) == ["v1", "v2"]
    assert assert_supernode_reserve_kept(s.snapshot, 2) == {"sp0": 2}
