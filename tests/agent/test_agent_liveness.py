"""Node liveness and the restart policy in process (scheduler.liveness over SchedulerApi), with an
injected clock: no threads, no gRPC; plus the task keys of a job document (scheduler.taskspec)."""

from __future__ import annotations

import pytest

from xpod.scheduler.api import OPEN_PRINCIPAL as P
from xpod.scheduler.api import ApiError, DeviceView, NodeView, SchedulerApi, TaskState
from xpod.scheduler.core_bridge import CorePlacer
from xpod.scheduler.store import JobState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(name: str, devices: int = 2) -> NodeView:
    return NodeView(name, tuple(DeviceView(name, i, "cuda", "nvidia-h100-sxm", 80 * 2**30) for i in range(devices)))


def doc(name: str, tasks: int = 1, count: int = 2, kind: str = "TrainingJob", **spec):
    body = {"devices": {"count": count, "model": "nvidia-h100-sxm"}, **spec}
    if kind == "ServingJob":
        body["replicas"] = tasks
    else:
        body["tasks"] = tasks
    return {"apiVersion": "xpod/v1", "kind": kind, "metadata": {"name": name}, "spec": body}


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    api = SchedulerApi(str(tmp_path / "xpod.db"), CorePlacer(None), clock=clock, node_timeout_s=10.0)
    yield api, clock
    api.close()


def _allocated(api) -> int:
    return sum(m for _, m, _ in api.list_devices(P))


def _bind(api, request_id, document):
    view, _ = api.submit_job(P, request_id, document)
    api.schedule_once()
    return api.get_job(P, view.record.id)[0].record


def test_not_ready_only_after_the_timeout_and_ready_again_on_heartbeat(env):
    api, clock = env
    api.register_node(P, node("n1"))
    view, _ = api.submit_job(P, "r1", doc("wait"))  # accepted while n1 is Ready; no cycle yet
    clock.now += 9.9
    assert api.liveness.check() == []
    api.heartbeat(P, "n1", {})
    clock.now += 10.0
    assert api.liveness.check() == []  # exactly the timeout is still Ready
    clock.now += 0.2
    assert api.liveness.check() == ["n1"]
    assert not api.list_nodes(P)[0].ready
    # nothing lands on a NotReady node
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.QUEUED
    api.heartbeat(P, "n1", {})
    api.liveness.check()
    assert api.list_nodes(P)[0].ready
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED


def test_a_node_only_the_cluster_file_declared_never_times_out(tmp_path):
    clock = Clock()
    api = SchedulerApi(
        str(tmp_path / "x.db"), CorePlacer(None), nodes=[node("static")], clock=clock, node_timeout_s=1.0
    )
    try:
        clock.now += 100
        assert api.liveness.check() == []
        assert api.list_nodes(P)[0].ready
    finally:
        api.close()


def test_a_restarted_scheduler_gives_agents_a_full_timeout_to_come_back(tmp_path):
    clock = Clock()
    db = str(tmp_path / "x.db")
    api = SchedulerApi(db, CorePlacer(None), clock=clock, node_timeout_s=10.0)
    api.register_node(P, node("n1"))
    api.close()
    clock.now += 60  # the scheduler was down a minute
    api = SchedulerApi(db, CorePlacer(None), clock=clock, node_timeout_s=10.0)
    try:
        clock.now += 9
        assert api.liveness.check() == []
        clock.now += 2
        assert api.liveness.check() == ["n1"]
    finally:
        api.close()


def test_a_gang_restarts_whole_until_max_restarts_then_fails_without_leaks(env):
    api, clock = env
    for n in ("n1", "n2", "n3"):
        api.register_node(P, node(n))
    job = _bind(api, "g", doc("gang", tasks=2, restart={"max_restarts": 1}))
    first_nodes = {a.node for a in job.allocations}
    assert len(first_nodes) == 2 and _allocated(api) == 4000
    lost = sorted(first_nodes)[0]
    for n in ("n1", "n2", "n3"):
        if n != lost:
            api.heartbeat(P, n, {})
    clock.now += 10.5
    for n in ("n1", "n2", "n3"):
        if n != lost:
            api.heartbeat(P, n, {})
    assert api.liveness.check() == [lost]
    job = api.get_job(P, job.id)[0].record
    assert job.state is JobState.QUEUED and job.allocations == ()  # the whole gang, not one task
    assert _allocated(api) == 0
    api.schedule_once()
    job = api.get_job(P, job.id)[0].record
    assert job.state is JobState.SCHEDULED and lost not in {a.node for a in job.allocations}
    # a task crash now exhausts the budget: the job fails and frees its devices
    api.report_task_status(P, job.id, job.allocations[0].node, TaskState.FAILED, "boom", 3)
    job = api.get_job(P, job.id)[0].record
    assert job.state is JobState.FAILED and "exited with code 3" in job.message and "no restarts left" in job.message
    assert _allocated(api) == 0
    events = [e.message for e in api.get_job(P, job.id)[1]]
    assert any(m.startswith("restart 1/1: node ") for m in events)


def test_a_crashed_task_with_restarts_left_requeues_and_runs_again(env):
    api, clock = env
    api.register_node(P, node("n1"))
    job = _bind(api, "b", doc("batch", kind="BatchJob"))
    api.report_task_status(P, job.id, "n1", TaskState.RUNNING)
    view = api.report_task_status(P, job.id, "n1", TaskState.FAILED, "oom", 137)
    assert view.record.state is JobState.QUEUED
    assert _allocated(api) == 0
    api.schedule_once()
    assert api.get_job(P, job.id)[0].record.state is JobState.SCHEDULED


def test_serving_replicas_are_replaced_without_a_limit_by_default(env):
    api, clock = env
    for n in ("n1", "n2"):
        api.register_node(P, node(n))
    job = _bind(api, "s", doc("serve", kind="ServingJob"))
    for i in range(5):  # more than any training default
        where = job.allocations[0].node
        api.report_task_status(P, job.id, where, TaskState.FAILED, "crash", 1)
        api.schedule_once()
        job = api.get_job(P, job.id)[0].record
        assert job.state is JobState.SCHEDULED, i


def test_max_restarts_zero_fails_at_once(env):
    api, clock = env
    api.register_node(P, node("n1"))
    job = _bind(api, "z", doc("once", restart={"max_restarts": 0}))
    clock.now += 11
    api.liveness.check()
    job = api.get_job(P, job.id)[0].record
    assert job.state is JobState.FAILED and "n1 NotReady" in job.message
    assert _allocated(api) == 0


def test_an_unhealthy_device_leaves_placement_until_it_recovers(env):
    api, clock = env
    api.register_node(P, node("n1", devices=2))
    view, _ = api.submit_job(P, "u", doc("two", count=2))  # accepted while both are healthy
    api.heartbeat(P, "n1", {1: "critical"})
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.QUEUED
    api.heartbeat(P, "n1", {1: "ok"})
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"command": "python x.py"}, "spec.command"),
        ({"command": []}, "spec.command"),
        ({"env": {"XPOD_JOB_ID": "x"}}, "spec.env.XPOD_JOB_ID"),
        ({"env": {"A": 1}}, "spec.env.A"),
        ({"restart": {"max_restarts": -2}}, "spec.restart.max_restarts"),
        ({"restart": {"policy": "always"}}, "spec.restart.policy"),
        ({"simulate": {"duration": 3}}, "spec.simulate.duration"),
        ({"simulate": {"fail_after_s": -1}}, "spec.simulate.fail_after_s"),
        ({"simulate": {"exit_code": 0}}, "spec.simulate.exit_code"),
    ],
)
def test_bad_task_fields_are_refused_at_submission_naming_the_field(env, spec, field):
    api, _ = env
    api.register_node(P, node("n1"))
    with pytest.raises(ApiError) as err:
        api.submit_job(P, "bad", doc("bad", **spec))
    assert err.value.field == field, str(err.value)


def test_a_not_ready_node_may_heartbeat_health_and_register_again(env):
    api, clock = env
    api.register_node(P, node("n1"))
    clock.now += 11
    assert api.liveness.check() == ["n1"]
    api.heartbeat(P, "n1", {0: "critical"})  # out of placement already: recorded, applied on return
    api.register_node(P, node("n1"))  # an agent restarted on that node
    assert api.list_nodes(P)[0].ready
    view, _ = api.submit_job(P, "after", doc("after", count=2))
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED
