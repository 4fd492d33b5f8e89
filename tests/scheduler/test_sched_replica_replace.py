"""Serving replicas are replaced alone when their node or device goes; training gangs restart
whole (issue 8, failure handling). Declarative cases over the core facade: a pod, the jobs
running on it, one failure, what the next cycle must do."""

from __future__ import annotations

import pytest

from xpod.scheduler.core import Scheduler
from xpod.hal.device import Health
from xpod.scheduler.core.model import JobKind
from xpod.scheduler.core.testing import job, node

H = "nvidia-h100-sxm"


def _pod(n_nodes: int, domains: int | None = None, per_node: int = 8):
    out = []
    for i in range(n_nodes):
        b = node(f"n{i}").devices(H, per_node)
        if domains:
            b = b.domain(f"rack{i % domains}")
        out.append(b.build())
    return out


def _tasks(sched: Scheduler, job_id: str) -> dict[int, tuple[str, tuple[int, ...]]]:
    return {b.task: (b.node, b.device_indices) for b in sched.running[job_id].bindings}


def _used_devices(sched: Scheduler) -> int:
    return sum(len(b.device_indices) for rj in sched.running.values() for b in rj.bindings)


def _start(nodes, jobs) -> Scheduler:
    sched = Scheduler(nodes, clock=lambda: 100.0)
    for j in jobs:
        sched.submit(j.build())
    sched.cycle()
    return sched


CASES = [
    dict(
        id="node-removed-moves-only-its-replica",
        nodes=_pod(4, domains=4),
        jobs=[job("s").serving(2, 3).devices(H, 4)],
        fail=("remove", "replica-node", 1),
        replaced={"s": [1]},
        whole=[],
    ),
    dict(
        id="at-min-replicas-left-is-replaced",
        nodes=_pod(4, domains=4),
        jobs=[job("s").serving(2, 3).devices(H, 8)],
        fail=("remove", "replica-node", 0),
        replaced={"s": [0]},
        whole=[],
    ),
    dict(
        id="below-min-replicas-is-replaced-alone",
        # replicas: 3 (min = max = 3): two left is below the minimum, yet only the lost replica
        # is placed again (the job runs degraded meanwhile); the healthy two are never restarted
        nodes=_pod(4, domains=4),
        jobs=[job("s").serving(3, 3).devices(H, 8)],
        fail=("remove", "replica-node", 0),
        replaced={"s": [0]},
        whole=[],
    ),
    dict(
        id="below-min-replica-on-a-bad-device-is-replaced-alone",
        nodes=_pod(2, domains=2),
        jobs=[job("s").serving(4, 4).devices(H, 2)],  # two replicas per node share it
        fail=("device", "replica-node", 1),
        replaced={"s": [1]},
        whole=[],
    ),
    dict(
        id="unhealthy-device-moves-only-its-replica",
        nodes=_pod(3, domains=3),
        jobs=[job("s").serving(1, 3).devices(H, 2)],
        fail=("device", "replica-node", 2),
        replaced={"s": [2]},
        whole=[],
    ),
    dict(
        id="training-gang-still-restarts-whole",
        nodes=_pod(3),
        jobs=[job("t").training(tasks=2).devices(H, 8)],
        fail=("remove", "task-node", ("t", 1)),
        replaced={},
        whole=["t"],
    ),
    dict(
        id="serving-losing-every-replica-restarts-whole",
        nodes=_pod(3),
        jobs=[job("s").serving(1, 1).devices(H, 8)],
        fail=("remove", "replica-node", 0),
        replaced={},
        whole=["s"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_replica_replacement(case):
    sched = _start(case["nodes"], case["jobs"])
    jobs = {j.build().id: j.build() for j in case["jobs"]}
    before = {jid: _tasks(sched, jid) for jid in jobs}
    how, _, arg = case["fail"]
    if isinstance(arg, tuple):
        jid, task = arg
    else:
        jid, task = next(iter(jobs)), arg
    dead_node, dead_devs = before[jid][task]
    if how == "remove":
        evicted = sched.remove_node(dead_node)
    else:
        evicted = sched.set_device_health(dead_node, dead_devs[0], Health.CRITICAL)
    assert sorted(evicted) == sorted(case["whole"])
    # freed at once: the lost replicas' devices (or the whole job's) are back
    assert _used_devices(sched) == sum(
        len(d)
        for j, ts in before.items()
        if j not in case["whole"]
        for t, (_, d) in ts.items()
        if t not in case["replaced"].get(j, [])
    )
    result = sched.cycle()
    assert {(r.job_id, r.task) for r in result.replacements} == {
        (j, t) for j, ts in case["replaced"].items() for t in ts
    }
    for r in result.replacements:
        assert r.node == dead_node and r.message.startswith(f"replica {r.task} replaced: ")
    assert sorted(e.job_id for e in result.evictions) == sorted(case["whole"])
    for j, ts in case["replaced"].items():
        after = _tasks(sched, j)
        # every replica runs again, numbered 0..n-1, the healthy ones exactly where they were
        assert sorted(after) == sorted(before[j])
        for t, where in before[j].items():
            if t in ts:
                assert after[t][0] != dead_node or how == "device", f"replica {t} placed back on the lost node"
                if how == "device":
                    assert dead_devs[0] not in after[t][1] or after[t][0] != dead_node
            else:
                assert after[t] == where, f"healthy replica {t} moved"
        assert {b.job_id for b in result.bindings} == {j}
        assert sorted(b.task for b in result.bindings) == sorted(ts)
    for j in case["whole"]:
        if j in sched.running:  # placed again whole, away from the dead node
            assert all(b.node != dead_node for b in sched.running[j].bindings)
    # no leak: the used count equals what the running bindings hold, per node and device
    used = {}
    for rj in sched.running.values():
        for b in rj.bindings:
            for i in b.device_indices:
                used[(b.node, i)] = used.get((b.node, i), 0) + b.milli
    for name, state in sched.snapshot.nodes.items():
        for i, free in enumerate(state.free_milli):
            assert free == 1000 - used.get((name, i), 0), f"{name}/{i}"


def test_replacement_respects_spread_across_domains():
    # 4 racks of 2 nodes; 4 replicas one per rack; rack0's replica's node dies: the new replica
    # goes to rack0's other node (the only rack without a replica), not next to another one
    nodes = [node(f"n{r}{k}").devices(H, 8).domain(f"rack{r}").build() for r in range(4) for k in range(2)]
    sched = _start(nodes, [job("s").serving(2, 4).devices(H, 8)])
    before = _tasks(sched, "s")
    assert len({sched.snapshot.nodes[n].node.domain for n, _ in before.values()}) == 4
    lost_task = next(t for t, (n, _) in before.items() if n.startswith("n0"))
    dead = before[lost_task][0]
    sched.remove_node(dead)
    result = sched.cycle()
    after = _tasks(sched, "s")
    assert after[lost_task][0] != dead and after[lost_task][0].startswith("n0")
    assert [(r.task, r.reason) for r in result.replacements] == [(lost_task, f"node {dead} removed")]


def test_replace_tasks_for_a_failed_task_and_refusals():
    sched = _start(_pod(3, domains=3), [job("s").serving(1, 3).devices(H, 8), job("t").training(tasks=1).devices(H, 1)])
    assert sched.running["s"].job.kind is JobKind.SERVING
    before = _tasks(sched, "s")
    out = sched.replace_tasks("s", [0], "task on node n0 exited with code 1")
    assert [(r.task, r.node) for r in out] == [(0, before[0][0])]
    assert sorted(_tasks(sched, "s")) == [1, 2]
    # not serving, unknown job, unknown task, every replica: nothing happens, caller decides
    assert sched.replace_tasks("t", [0], "x") == []
    assert sched.replace_tasks("nope", [0], "x") == []
    assert sched.replace_tasks("s", [7], "x") == []
    assert sched.replace_tasks("s", [1, 2], "x") == [] and sorted(_tasks(sched, "s")) == [1, 2]
    assert sched.replace_tasks("s", [1], "x") != []  # min 1: one replica left is enough
    result = sched.cycle()
    assert sorted(b.task for b in result.bindings) == [0, 1]
    assert sorted(_tasks(sched, "s")) == [0, 1, 2]
    assert "s" not in sched.pending  # whole again: nothing more to place


def test_replace_replicas_off_keeps_old_whole_eviction():
    sched = _start(_pod(3, domains=3), [job("s").serving(1, 3).devices(H, 8)])
    dead = _tasks(sched, "s")[1][0]
    assert sched.remove_node(dead, replace_replicas=False) == ["s"]
    assert "s" not in sched.running and sched.cycle().replacements == ()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


SEEN = {"replaced": 0}  # how many replacements the property saw (checked below)


# derandomized: the same examples every run, so the count check below is stable
@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_nodes=st.integers(2, 6),
    domains=st.integers(1, 3),
    shapes=st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 2), st.sampled_from([1, 2, 4])), min_size=1, max_size=5
    ),
    losses=st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_replacement_invariants(n_nodes, domains, shapes, losses):
    """Through node removals and bad devices: replica numbers stay unique in 0..max-1, a serving
    job keeps at least its min replicas (or one while degraded and pending for the rest) or is
    requeued whole, healthy replicas never move, and
    the free counts always match the bindings."""
    sched = Scheduler(_pod(n_nodes, domains=domains), clock=lambda: 1.0)
    for i, (hi, lo_off, count) in enumerate(shapes):
        sched.submit(job(f"s{i}").serving(max(1, hi - lo_off), hi).devices(H, count).build())
    sched.cycle()
    for remove, pick, dev in losses:
        names = sorted(sched.snapshot.nodes)
        if not names:
            break
        victim = names[pick % len(names)]
        before = {jid: _tasks(sched, jid) for jid in sched.running}
        if remove:
            whole = set(sched.remove_node(victim))
            hit = lambda n, d: n == victim  # noqa: E731
        else:
            idx = dev % len(sched.snapshot.nodes[victim].node.devices)
            whole = set(sched.set_device_health(victim, idx, Health.CRITICAL))
            hit = lambda n, d: n == victim and idx in d  # noqa: E731
        result = sched.cycle()
        replaced = {(r.job_id, r.task) for r in result.replacements}
        SEEN["replaced"] += len(replaced)
        for jid, tasks in before.items():
            lost = {t for t, (n, d) in tasks.items() if hit(n, d)}
            if jid in whole:
                assert not any(r[0] == jid for r in replaced)
                continue
            assert {t for (j, t) in replaced if j == jid} == lost
            if jid in sched.running:
                now = _tasks(sched, jid)
                for t, where in tasks.items():
                    if t not in lost:
                        assert now[t] == where, f"{jid}: healthy replica {t} moved"
        for jid, rj in sched.running.items():
            numbers = [b.task for b in rj.bindings]
            assert len(numbers) == len(set(numbers)) and all(0 <= t < rj.job.tasks for t in numbers)
            # below min replicas only while degraded: still pending for the missing ones
            assert len(numbers) >= rj.job.min_required or (numbers and jid in sched.pending)
        used = {}
        for rj in sched.running.values():
            for b in rj.bindings:
                for i in b.device_indices:
                    used[(b.node, i)] = used.get((b.node, i), 0) + b.milli
        for name, state in sched.snapshot.nodes.items():
            for i, free in enumerate(state.free_milli):
                assert free == 1000 - used.get((name, i), 0)


def test_the_property_exercised_replacements():
    # the property above is only worth something if its examples replaced replicas
    SEEN["replaced"] = 0
    test_replacement_invariants()
    assert SEEN["replaced"] > 10, SEEN
