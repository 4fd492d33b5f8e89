"""Serving replicas are replaced alone through the API (scheduler.service.liveness over SchedulerApi,
injected clock, no threads): a node times out or a replica's task fails -> only that replica
is released and bound again elsewhere; the others' allocations, the job's state and the
healthy nodes' assignment streams are untouched; no device leaks. Training still restarts whole."""

from __future__ import annotations


import pytest

from xpod.hal.device import Health
from xpod.scheduler.contract import DeviceRecord, NodeRecord
from xpod.scheduler.service.api import OPEN_PRINCIPAL as P
from xpod.scheduler.service.api import SchedulerApi, TaskState
from xpod.scheduler.service.core_link import InProcessCore
from xpod.scheduler.store import EventType, JobState

H = "nvidia-h100-sxm"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(name: str, devices: int = 2, domain: str | None = None) -> NodeRecord:
    labels = (("failure_domain", domain),) if domain else ()
    return NodeRecord(name, tuple(DeviceRecord(i, "cuda", H, 80 * 2**30) for i in range(devices)), labels)


def serving(name: str, lo: int, hi: int, count: int = 2):
    spec = {"devices": {"count": count, "model": H}, "replicas": {"min": lo, "max": hi}}
    return {"apiVersion": "xpod/v1", "kind": "ServingJob", "metadata": {"name": name}, "spec": spec}


def training(name: str, tasks: int, count: int = 2):
    spec = {"devices": {"count": count, "model": H}, "tasks": tasks}
    return {"apiVersion": "xpod/v1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    api = SchedulerApi(str(tmp_path / "xpod.db"), InProcessCore(), clock=clock, node_timeout_s=10.0)
    yield api, clock
    api.close()


def _register(api, names, devices=2):
    for i, n in enumerate(names):
        api.register_node(P, node(n, devices, domain=f"rack{i}"))


def _job(api, job_id):
    return api.get_job(P, job_id)[0].record


def _by_task(record):
    return {a.task: a for a in record.allocations}


def _allocated(api) -> dict[str, int]:
    """device id -> milli in use, as the API reports it (what `xpod nodes` shows)."""
    return {f"{n}/{d.index}": m for n, d, m, _ in api.list_devices(P) if m}


def _core_used(api) -> dict[str, int]:
    snap = api.core.scheduler.snapshot
    return {f"{n}/{i}": 1000 - f for n, st in snap.nodes.items() for i, f in enumerate(st.free_milli) if f < 1000}


def _run_all(api, job_id):
    for n in sorted({a.node for a in _job(api, job_id).allocations}):
        api.report_task_status(P, job_id, n, TaskState.RUNNING)


def _heartbeat(api, names):
    for n in names:
        api.heartbeat(P, {n: {}})


def test_a_lost_node_moves_only_its_replica_and_the_others_keep_running(env):
    api, clock = env
    names = ["n0", "n1", "n2", "n3"]
    _register(api, names)
    view, _ = api.submit_job(P, "s", serving("serve", 2, 3))
    api.schedule_once()
    job_id = view.record.id
    _run_all(api, job_id)
    before = _job(api, job_id)
    assert before.state is JobState.RUNNING and len(before.allocations) == 3
    assert len({a.node for a in before.allocations}) == 3  # spread: one replica per rack
    lost = before.allocations[1]
    healthy_nodes = [a.node for a in before.allocations if a.node != lost.node]
    free_node = next(n for n in names if n not in {a.node for a in before.allocations})
    # the healthy nodes' agents watch their assignments from before the failure
    news: dict[str, list] = {n: [] for n in healthy_nodes + [free_node]}
    first = {n: api.watch_assignments(P, [n], news[n].extend)[1] for n in news}
    assert all(a[0].run and a[0].job.id == job_id for n, a in first.items() if n != free_node)
    assert first[free_node] == []

    clock.now += 10.5
    _heartbeat(api, [n for n in names if n != lost.node])
    assert api.liveness.check() == [lost.node]
    mid = _job(api, job_id)
    assert mid.state is JobState.RUNNING  # two replicas still serve (min 2)
    assert sorted(_by_task(mid)) == sorted(t for t in _by_task(before) if t != lost.task)
    assert f"{lost.node}/{lost.devices[0].rsplit('/', 1)[1]}" not in _allocated(api)
    assert _allocated(api) == _core_used(api)  # freed in the core and the store alike

    api.schedule_once()
    after = _job(api, job_id)
    assert after.state is JobState.RUNNING
    new = _by_task(after)[lost.task]
    assert new.node == free_node  # elsewhere, in the one rack without a replica
    for t, a in _by_task(before).items():
        if t != lost.task:
            assert _by_task(after)[t] == a, f"healthy replica {t} moved"
    _, events = api.get_job(P, job_id)
    texts = [e.message for e in events]
    assert any(f"replica {lost.task} replaced: node {lost.node} NotReady" in m for m in texts), texts
    assert not any(e.type is EventType.EVICTED and "replaced" not in e.message for e in events)
    # no leak: exactly three replicas' devices, the same in the API and the core
    assert len(_allocated(api)) == 3 * 2 and _allocated(api) == _core_used(api)

    # the healthy agents saw nothing more (no stop, no restart); the free node was told to run
    for n in healthy_nodes:
        assert news[n] == []
    got = news[free_node]
    assert [(a.run, a.job.id, [x.task for x in a.allocations]) for a in got] == [(True, job_id, [lost.task])]


def test_a_failed_replica_task_is_replaced_alone(env):
    api, clock = env
    _register(api, ["n0", "n1", "n2"])
    view, _ = api.submit_job(P, "s", serving("serve", 1, 2))
    api.schedule_once()
    job_id = view.record.id
    _run_all(api, job_id)
    before = _by_task(_job(api, job_id))
    bad = before[0]
    api.report_task_status(P, job_id, bad.node, TaskState.FAILED, "boom", exit_code=3)
    mid = _job(api, job_id)
    assert mid.state is JobState.RUNNING and sorted(_by_task(mid)) == [1]
    api.schedule_once()
    after = _by_task(_job(api, job_id))
    assert sorted(after) == [0, 1] and after[1] == before[1]
    assert _allocated(api) == _core_used(api) and len(_allocated(api)) == 4
    _, events = api.get_job(P, job_id)
    assert any(
        m.startswith("restart 1/unlimited: replica 0 replaced: task on node") for m in (e.message for e in events)
    )
    # the new replica reports running: the job stays RUNNING, and success needs every node
    api.report_task_status(P, job_id, after[0].node, TaskState.RUNNING)
    for a in after.values():
        api.report_task_status(P, job_id, a.node, TaskState.SUCCEEDED)
    assert _job(api, job_id).state is JobState.SUCCEEDED
    assert _allocated(api) == {} and _core_used(api) == {}


class EvictedCounter:
    """The part of the scheduler metrics the restart policy calls: counts evictions by reason."""

    def __init__(self) -> None:
        self.evictions: list[tuple[str, str]] = []

    def evicted(self, queue: str, reason: str) -> None:
        self.evictions.append((queue, reason))

    def __getattr__(self, name):  # every other hook (cycle, placed, finished, ...) is a no-op
        return lambda *args, **kwargs: None


def test_below_min_replicas_the_lost_one_is_replaced_alone_and_gangs_restart_whole(env):
    api, clock = env
    names = ["n0", "n1", "n2", "n3", "n4"]
    _register(api, names)
    s, _ = api.submit_job(P, "s", serving("fixed", 2, 2))  # replicas: {min 2, max 2}, as `replicas: 2`
    t, _ = api.submit_job(P, "t", training("gang", 2))
    api.schedule_once()
    for jid in (s.record.id, t.record.id):
        _run_all(api, jid)
    s_before = _by_task(_job(api, s.record.id))
    t_nodes = {a.node for a in _job(api, t.record.id).allocations}
    assert len({a.node for a in s_before.values()} | t_nodes) == 4
    lost = s_before[0]
    clock.now += 10.5
    _heartbeat(api, [n for n in names if n != lost.node])
    api.liveness.check()
    # 1 left < min 2: the job keeps RUNNING (degraded, said by the event), the healthy replica untouched
    rec = _job(api, s.record.id)
    assert rec.state is JobState.RUNNING and _by_task(rec) == {1: s_before[1]}
    _, events = api.get_job(P, s.record.id)
    assert any(f"replica 0 replaced: node {lost.node} NotReady" in e.message for e in events)
    assert _job(api, t.record.id).state is JobState.RUNNING  # not on the dead node
    assert _allocated(api) == _core_used(api)
    api.schedule_once()  # the lost replica is bound again, elsewhere; back at min
    after = _by_task(_job(api, s.record.id))
    assert sorted(after) == [0, 1] and after[1] == s_before[1] and after[0].node not in (lost.node, s_before[1].node)
    assert _allocated(api) == _core_used(api)
    # a training gang that loses a node restarts whole
    dead = sorted(t_nodes)[0]
    clock.now += 10.5
    _heartbeat(api, [n for n in names if n not in (lost.node, dead)])
    api.liveness.check()
    trec = _job(api, t.record.id)
    assert trec.state is JobState.QUEUED or all(a.node != dead for a in trec.allocations)
    assert _allocated(api) == _core_used(api)


def test_a_serving_job_losing_every_replica_restarts_whole(env):
    api, clock = env
    names = ["n0", "n1"]
    _register(api, names)
    s, _ = api.submit_job(P, "s", serving("single", 1, 1))
    api.schedule_once()
    _run_all(api, s.record.id)
    lost = _job(api, s.record.id).allocations[0]
    clock.now += 10.5
    _heartbeat(api, [n for n in names if n != lost.node])
    api.liveness.check()
    rec = _job(api, s.record.id)
    assert rec.state is JobState.QUEUED and rec.allocations == ()
    _, events = api.get_job(P, s.record.id)
    assert not any("replaced" in e.message for e in events)
    assert _allocated(api) == _core_used(api) == {}


def test_a_replica_sharing_its_node_is_replaced_alone(env):
    """Two replicas on one node, one fails (the agent names it in ``failed_tasks``): only it is
    released; the node's assignment stream announces the smaller task set (the agent stops just
    that task), then the set with the replica bound again."""
    api, clock = env
    api.register_node(P, node("n0", devices=4))
    view, _ = api.submit_job(P, "s", serving("pair", 2, 2))  # two replicas of 2 devices: both on n0
    api.schedule_once()
    job_id = view.record.id
    _run_all(api, job_id)
    before = _by_task(_job(api, job_id))
    assert {a.node for a in before.values()} == {"n0"}
    news: list = []
    _, [first] = api.watch_assignments(P, ["n0"], news.extend)
    assert [x.task for x in first.allocations] == [0, 1]
    api.report_task_status(
        P, job_id, "n0", TaskState.FAILED, "task 1 exited with code 3", exit_code=3, failed_tasks=(1,)
    )
    mid = _job(api, job_id)
    assert mid.state is JobState.RUNNING and _by_task(mid) == {0: before[0]}
    api.schedule_once()
    after = _by_task(_job(api, job_id))
    assert after[0] == before[0] and after[1].node == "n0"
    assert _allocated(api) == _core_used(api) and len(_allocated(api)) == 4
    got = [(a.run, [x.task for x in a.allocations]) for a in news]
    assert got == [(True, [0]), (True, [0, 1])]
    # without failed_tasks (an older agent) every replica on the node counts as failed: whole
    api.report_task_status(P, job_id, "n0", TaskState.RUNNING)
    api.report_task_status(P, job_id, "n0", TaskState.FAILED, "boom", exit_code=3)
    assert _job(api, job_id).state is JobState.QUEUED
    assert _allocated(api) == _core_used(api)


def test_an_unhealthy_device_replacement_counts_as_an_eviction(env):
    api, clock = env
    counter = EvictedCounter()
    api.attach_metrics(counter)
    _register(api, ["n0", "n1", "n2"])
    view, _ = api.submit_job(P, "s", serving("serve", 2, 2))
    api.schedule_once()
    job_id = view.record.id
    _run_all(api, job_id)
    bad = _by_task(_job(api, job_id))[1]
    index = int(bad.devices[0].rsplit("/", 1)[1])
    api.heartbeat(P, {bad.node: {index: Health.CRITICAL}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    assert sorted(_by_task(_job(api, job_id))) == [0]
    assert counter.evictions == [("default", "device_unhealthy")]


def test_an_unhealthy_device_moves_only_the_replica_on_it(env):
    api, clock = env
    _register(api, ["n0", "n1", "n2"])
    view, _ = api.submit_job(P, "s", serving("serve", 1, 2))
    api.schedule_once()
    job_id = view.record.id
    _run_all(api, job_id)
    before = _by_task(_job(api, job_id))
    bad = before[1]
    index = int(bad.devices[1].rsplit("/", 1)[1])
    api.heartbeat(P, {bad.node: {index: Health.CRITICAL}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    mid = _job(api, job_id)
    assert mid.state is JobState.RUNNING and sorted(_by_task(mid)) == [0]
    api.schedule_once()
    after = _by_task(_job(api, job_id))
    assert after[0] == before[0] and after[1].node not in (bad.node, before[0].node)
    _, events = api.get_job(P, job_id)
    assert any(f"replica 1 replaced: device {bad.node}/{index} critical" in e.message for e in events)
    assert _allocated(api) == _core_used(api) and len(_allocated(api)) == 4
    # a training job on a device that goes bad is still evicted whole (by the core)
    t, _ = api.submit_job(P, "t", training("gang", 1))
    api.heartbeat(P, {bad.node: {index: Health.OK}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    api.schedule_once()
    rec = _job(api, t.record.id)
    assert rec.state is JobState.SCHEDULED and rec.allocations[0].node == bad.node
    api.heartbeat(P, {bad.node: {index: Health.ALARM}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    api.schedule_once()
    assert _job(api, t.record.id).allocations == () or _job(api, t.record.id).allocations[0].node != bad.node
    assert _allocated(api) == _core_used(api)


def test_replacement_with_the_core_in_its_own_process(tmp_path):
    """`xpod server --core-process`: the release goes to the child core and back in order."""
    from xpod.scheduler.service.core_link import ChildProcessCore

    clock = Clock()
    api = SchedulerApi(str(tmp_path / "xpod.db"), ChildProcessCore(), clock=clock, node_timeout_s=10.0)
    try:
        names = ["n0", "n1", "n2"]
        _register(api, names)
        view, _ = api.submit_job(P, "s", serving("serve", 1, 2))
        api.schedule_once()
        job_id = view.record.id
        before = _by_task(_job(api, job_id))
        lost = before[0]
        clock.now += 10.5
        _heartbeat(api, [n for n in names if n != lost.node])
        assert api.liveness.check() == [lost.node]
        api.schedule_once()
        after = _by_task(_job(api, job_id))
        assert after[1] == before[1] and after[0].node not in (lost.node, before[1].node)
        assert len(_allocated(api)) == 4 and not any(d.startswith(lost.node + "/") for d in _allocated(api))
    finally:
        api.close()


def test_a_degraded_serving_job_shows_in_the_degraded_gauge_until_it_is_whole(env):
    from prometheus_client import generate_latest

    from xpod.scheduler.service.metrics import ServiceMetrics

    api, clock = env
    metrics = ServiceMetrics()
    metrics.attach(api)
    names = ["n0", "n1", "n2"]
    _register(api, names)
    view, _ = api.submit_job(P, "s", serving("fixed", 2, 2))
    api.schedule_once()
    _run_all(api, view.record.id)

    def degraded() -> str:
        return "\n".join(
            line
            for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith("xpod_scheduler_degraded_jobs")
        )

    assert degraded() == ""
    lost = _by_task(_job(api, view.record.id))[0]
    clock.now += 10.5
    _heartbeat(api, [n for n in names if n != lost.node])
    api.liveness.check()
    assert degraded() == 'xpod_scheduler_degraded_jobs{queue="default"} 1.0'
    api.schedule_once()  # the lost replica is bound again: whole
    assert len(_job(api, view.record.id).allocations) == 2 and degraded() == ""
