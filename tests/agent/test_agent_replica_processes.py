"""A serving replica whose node agent dies is replaced alone, with real processes on loopback
(issue 8 item 2): the replica on the surviving node keeps its process (same pid, no second
attempt), the lost one starts again on a spare node, nothing leaks."""

from __future__ import annotations

import json

from agent_harness import NODE_TIMEOUT_S, cluster, pid_alive, task_command, wait_until  # noqa: F401 (cluster is a fixture)

S4000 = {"count": 1, "model": "mthreads-s4000"}


def _pids(cluster, job_id: str, task: int, attempt: int = 0) -> dict:
    path = cluster.out / f"{job_id}.{task}.{attempt}.pids"
    wait_until(path.exists, 20, f"{path.name} (the task started)")
    return json.loads(path.read_text())


def test_a_dead_agent_moves_only_its_serving_replica(cluster):
    cluster.start_server()
    for n in ("n1", "n2", "n3"):
        cluster.start_agent(n, "--sim-devices", "mthreads-s4000:1")
    job = cluster.submit(
        "serve",
        {"replicas": {"min": 1, "max": 2}, "devices": S4000, "command": task_command(cluster.out, "sleep", "600")},
        kind="ServingJob",
    )
    wait_until(
        lambda: cluster.state(job) == "RUNNING" and len(cluster.job(job).allocations) == 2, 30, "both replicas to run"
    )
    where = {a.task: a.node for a in cluster.job(job).allocations}
    lost_task = 1
    lost_node, kept_node = where[1], where[0]
    spare = ({"n1", "n2", "n3"} - set(where.values())).pop()
    kept_pid = _pids(cluster, job, 0)["self"]
    lost_pid = _pids(cluster, job, 1)["self"]
    cluster.kill(f"agent-{lost_node}")
    wait_until(lambda: not cluster.node_ready(lost_node), NODE_TIMEOUT_S + 3, f"{lost_node} to be NotReady")
    wait_until(
        lambda: {a.task: a.node for a in cluster.job(job).allocations} == {0: kept_node, 1: spare},
        30,
        f"replica 1 to run again on {spare}",
    )
    new_pid = _pids(cluster, job, lost_task, attempt=1)["self"]
    assert new_pid != lost_pid
    assert cluster.state(job) == "RUNNING"
    # the healthy replica was never stopped or started again
    assert pid_alive(kept_pid) and not (cluster.out / f"{job}.0.1.pids").exists()
    events = cluster.events(job)
    assert any(t == "EVICTED" and f"replica 1 replaced: node {lost_node} NotReady" in m for t, m in events), events
    assert cluster.allocated_milli() == 2000  # two replicas, nothing held on the dead node
    cluster.client.cancel(job)
    wait_until(lambda: cluster.allocated_milli() == 0, 20, "the devices to be free after cancel")
    wait_until(lambda: not pid_alive(kept_pid) and not pid_alive(new_pid), 20, "both replicas' processes to end")


def test_a_crashed_replica_sharing_its_node_is_replaced_alone(cluster):
    """`replicas: 2` (min = max = 2) on one node: replica 1 crashes; it alone is started again
    (on the same node, the only one) while replica 0's process keeps running, though the job is
    below its min replicas meanwhile."""
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "mthreads-s4000:2", "--grace", "1")
    job = cluster.submit(
        "pair",
        {
            "replicas": 2,
            "devices": S4000,
            "command": task_command(cluster.out, "sleep", "600", "crash-first-attempt-of", "1"),
        },
        kind="ServingJob",
    )
    kept_pid = _pids(cluster, job, 0)["self"]
    crashed = _pids(cluster, job, 1)["self"]
    again = _pids(cluster, job, 1, attempt=1)["self"]  # the crashed replica runs again
    assert again != crashed and not pid_alive(crashed)
    wait_until(
        lambda: cluster.state(job) == "RUNNING" and len(cluster.job(job).allocations) == 2,
        20,
        "both replicas to be bound",
    )
    assert pid_alive(kept_pid) and pid_alive(again)
    assert not (cluster.out / f"{job}.0.1.pids").exists()  # replica 0 was never restarted
    events = cluster.events(job)
    assert any(t == "EVICTED" and "replica 1 replaced: task on node n1 exited with code 3" in m for t, m in events), (
        events
    )
    assert not any(t == "EVICTED" and "replaced" not in m for t, m in events), events
    assert cluster.allocated_milli() == 2000
    cluster.client.cancel(job)
    wait_until(lambda: not pid_alive(kept_pid) and not pid_alive(again), 20, "both replicas' processes to end")
    assert cluster.allocated_milli() == 0
