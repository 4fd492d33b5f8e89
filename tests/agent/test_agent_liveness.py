"""Node liveness and the restart policy in process (scheduler.service.liveness over SchedulerApi), with an
injected clock: no threads, no gRPC; plus the task keys of a job document (scheduler.contract)."""

from __future__ import annotations

import os

import pytest

from xpod.hal.device import Health
from xpod.scheduler.contract import DeviceRecord, NodeRecord
from xpod.scheduler.service.api import OPEN_PRINCIPAL as P
from xpod.scheduler.service.api import ApiError, SchedulerApi, TaskState
from xpod.scheduler.service.core_link import InProcessCore
from xpod.scheduler.store import JobState


SMALL_CLUSTER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "service", "small-cluster.yaml")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(name: str, devices: int = 2) -> NodeRecord:
    return NodeRecord(name, tuple(DeviceRecord(i, "cuda", "nvidia-h100-sxm", 80 * 2**30) for i in range(devices)))


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
    api = SchedulerApi(str(tmp_path / "xpod.db"), InProcessCore(), clock=clock, node_timeout_s=10.0)
    yield api, clock
    api.close()


def _allocated(api) -> int:
    return sum(m for _, _, m, _ in api.list_devices(P))


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
    api.heartbeat(P, {"n1": {}})
    clock.now += 10.0
    assert api.liveness.check() == []  # exactly the timeout is still Ready
    clock.now += 0.2
    assert api.liveness.check() == ["n1"]
    assert not api.list_nodes(P)[0].ready
    # nothing lands on a NotReady node
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.QUEUED
    api.heartbeat(P, {"n1": {}})
    api.liveness.check()
    assert api.list_nodes(P)[0].ready
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED


def test_cluster_file_nodes_are_unknown_and_get_no_work_until_their_agent_registers(tmp_path):
    """Issue 19: nodes only the cluster file declares showed READY yes, and jobs bound there sat
    in SCHEDULED forever. Now they are unknown (not ready), the job waits for the agents and
    says so, and it is bound once an agent registers the node."""
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.service.nodes import NodeStatus

    cluster = load_cluster(SMALL_CLUSTER)
    clock = Clock()
    api = SchedulerApi(str(tmp_path / "x.db"), InProcessCore(cluster), cluster=cluster, clock=clock, node_timeout_s=1.0)
    try:
        nodes = api.list_nodes(P)
        assert {n.status for n in nodes} == {NodeStatus.UNKNOWN} and not any(n.ready for n in nodes)
        assert nodes[0].reason == "no agent has registered it yet"
        view, _ = api.submit_job(P, "w", doc("wait", count=8))  # accepted: the declared nodes can hold it
        clock.now += 100
        assert api.liveness.check() == []  # nothing to time out: no agent ever heartbeated
        api.schedule_once()
        job = api.get_job(P, view.record.id)[0]
        assert job.record.state is JobState.QUEUED and job.record.allocations == ()
        assert job.pending.reason == "WAITING_FOR_AGENTS"
        assert job.pending.message == f"waiting for agents: 0 of {len(nodes)} nodes have registered"
        with pytest.raises(ApiError) as err:  # bigger than the whole declared cluster: refused at once
            api.submit_job(P, "big", doc("big", count=9))
        assert err.value.reason == "EXCEEDS_CLUSTER_CAPACITY"
        first = cluster_records(cluster)[0]
        api.register_node(P, first)
        api.schedule_once()
        job = api.get_job(P, view.record.id)[0].record
        assert job.state is JobState.SCHEDULED and {a.node for a in job.allocations} == {first.name}
        assert [n.ready for n in api.list_nodes(P)].count(True) == 1
    finally:
        api.close()


def test_a_server_without_a_cluster_file_queues_jobs_until_agents_register(env):
    """Issue 19: a server without a cluster file refused every job before its first agent
    registered. Now the job is accepted and waits ("no nodes registered yet")."""
    api, _ = env
    view, _ = api.submit_job(P, "early", doc("early"))
    api.schedule_once()
    job = api.get_job(P, view.record.id)[0]
    assert job.record.state is JobState.QUEUED and job.pending.reason == "WAITING_FOR_AGENTS"
    assert job.pending.message.startswith("no nodes registered yet")
    api.register_node(P, node("n1"))
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED


def test_a_restarted_scheduler_gives_agents_a_full_timeout_to_come_back(tmp_path):
    clock = Clock()
    db = str(tmp_path / "x.db")
    api = SchedulerApi(db, InProcessCore(), clock=clock, node_timeout_s=10.0)
    api.register_node(P, node("n1"))
    api.close()
    clock.now += 60  # the scheduler was down a minute
    api = SchedulerApi(db, InProcessCore(), clock=clock, node_timeout_s=10.0)
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
            api.heartbeat(P, {n: {}})
    clock.now += 10.5
    for n in ("n1", "n2", "n3"):
        if n != lost:
            api.heartbeat(P, {n: {}})
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
    api.heartbeat(P, {"n1": {1: Health.CRITICAL}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.QUEUED
    api.heartbeat(P, {"n1": {1: Health.OK}})
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
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
    api.heartbeat(P, {"n1": {0: Health.CRITICAL}})  # out of placement already: recorded, applied on return
    api.liveness.check()  # applies the reported health (the liveness thread does, woken)
    api.register_node(P, node("n1"))  # an agent restarted on that node
    assert api.list_nodes(P)[0].ready
    view, _ = api.submit_job(P, "after", doc("after", count=2))
    api.schedule_once()
    assert api.get_job(P, view.record.id)[0].record.state is JobState.SCHEDULED


def test_a_job_with_a_command_never_lands_on_a_simulated_node(env):
    """Issue 19: in ``xpod up`` a job with a real ``command`` could land on a simulated node and
    never run. Now such a job selects nodes whose agent runs real processes."""
    api, _ = env
    simulated = NodeRecord("sim", node("sim", devices=4).devices, (("xpod/simulated", "true"),))
    api.register_nodes(P, [simulated, node("real", devices=2)])
    sleeper = api.submit_job(P, "sleep", doc("sleep", count=4))[0].record.id  # no command: may go anywhere
    real = api.submit_job(P, "cmd", doc("cmd", count=2, command=["true"]))[0].record.id
    api.schedule_once()
    assert {a.node for a in api.get_job(P, real)[0].record.allocations} == {"real"}
    assert {a.node for a in api.get_job(P, sleeper)[0].record.allocations} == {"sim"}
    with pytest.raises(ApiError) as err:  # only the simulated node has 4 devices: refused, not stuck
        api.submit_job(P, "big", doc("big", count=4, command=["true"]))
    assert err.value.reason == "EXCEEDS_CLUSTER_CAPACITY" and "xpod/simulated=false" in str(err.value)
