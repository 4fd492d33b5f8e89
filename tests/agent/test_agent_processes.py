"""The node agent and the scheduler as real processes on loopback (issue 8, items 1, 2 and 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from agent_harness import NODE_TIMEOUT_S, XPOD, pid_alive, task_command, wait_until

H100 = {"count": 1, "model": "nvidia-h100-sxm"}


def _pids(cluster, job_id: str, task: int = 0, attempt: int = 0) -> dict:
    path = cluster.out / f"{job_id}.{task}.{attempt}.pids"
    wait_until(path.exists, 20, f"{path.name} (the task started)")
    return json.loads(path.read_text())


def test_job_runs_to_completion_with_the_right_variables(cluster):
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:2")
    job = cluster.submit("envjob", {"tasks": 2, "devices": H100, "command": task_command(cluster.out), "env": {"LR": "0.1"}})
    wait_until(lambda: cluster.state(job) == "SUCCEEDED", 30, "the job to succeed")
    alloc = {a.task: list(a.devices) for a in cluster.client.get(job).events[-2].job.allocations} or None
    envs = [json.loads((cluster.out / f"{job}.{t}.env").read_text()) for t in (0, 1)]
    devices = sorted(e["XPOD_DEVICES"] for e in envs)
    # node device 0 is this host's CPU; the two simulated H100s are n1/1 and n1/2
    assert devices == ["n1/1", "n1/2"]
    for t, env in enumerate(envs):
        assert env["XPOD_JOB_ID"] == job and env["XPOD_TASK_INDEX"] == str(t)
        assert env["RANK"] == str(t) and env["WORLD_SIZE"] == "2" and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == envs[0]["MASTER_PORT"]
        # the vendor's visible-devices variable names exactly the task's device (sim backend index)
        assert env["XPOD_SIM_VISIBLE_DEVICES"] == str(int(env["XPOD_DEVICES"].split("/")[1]) - 1)
        assert env["XPOD_BACKEND"] == "sim"
    if alloc:
        assert sorted(d for ds in alloc.values() for d in ds) == devices
    logs = subprocess.run(XPOD + ["logs", job, "--task", "1", "--state-dir", str(cluster.tmp / "state-n1")],
                          capture_output=True, text=True, timeout=30, env=cluster.env)
    assert logs.returncode == 0, logs.stderr
    assert f"task 1 of {job} running" in logs.stdout and "exited with code 0" in logs.stdout
    assert cluster.allocated_milli() == 0  # nothing leaked


def test_kill_9_of_an_agent_marks_it_not_ready_and_the_gang_restarts_elsewhere(cluster):
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:1")
    job = cluster.submit("gang", {"tasks": 1, "devices": H100, "command": task_command(cluster.out, "sleep", "600"),
                                   "restart": {"max_restarts": 1}})
    wait_until(lambda: cluster.state(job) == "RUNNING", 30, "the job to run on n1")
    first = _pids(cluster, job)
    cluster.start_agent("n2", "--sim-devices", "nvidia-h100-sxm:1")
    killed_at = time.monotonic()
    cluster.kill("agent-n1")
    wait_until(lambda: not cluster.node_ready("n1"), NODE_TIMEOUT_S + 3, "n1 to be NotReady")
    took_s = time.monotonic() - killed_at
    assert took_s <= NODE_TIMEOUT_S + 2.5, took_s
    wait_until(lambda: cluster.state(job) == "RUNNING" and {a.node for a in cluster.job(job).allocations} == {"n2"}, 30,
               "the job to run again on n2")
    assert any(t == "EVICTED" and m.startswith("restart 1/1: node n1 NotReady") for t, m in cluster.events(job))
    assert _pids(cluster, job, attempt=1)["self"] != first["self"]
    # the only allocation is the new one (1 device): nothing held on the dead node
    assert cluster.allocated_milli() == 1000
    # no restarts left: losing n2 as well fails the job and frees everything
    cluster.kill("agent-n2")
    wait_until(lambda: cluster.state(job) == "FAILED", NODE_TIMEOUT_S + 5, "the job to fail")
    assert "no restarts left" in cluster.job(job).message
    assert cluster.allocated_milli() == 0
    # the first task outlived its agent (own session, nobody supervising it); a new agent on n1
    # ends what its predecessor left behind before registering again
    assert pid_alive(first["self"])
    cluster.start("agent-n1-again", ["agent", "--server", cluster.address, "--node", "n1", "--state-dir", str(cluster.tmp / "state-n1"),
                                     "--heartbeat-interval", "0.3", "--sim-devices", "nvidia-h100-sxm:1"])
    wait_until(lambda: not pid_alive(first["self"]), 30, "the new agent to end the orphaned task")
    assert "ended 1 task(s) a previous agent left running" in cluster.log("agent-n1-again")


def test_cancel_ends_the_whole_process_group(cluster):
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:1", "--grace", "1")
    job = cluster.submit("tree", {"tasks": 1, "devices": H100, "command": task_command(cluster.out, "child", "ignore-term", "sleep", "600")})
    wait_until(lambda: cluster.state(job) == "RUNNING", 30, "the job to run")
    pids = _pids(cluster, job)
    assert pid_alive(pids["self"]) and pid_alive(pids["child"])
    cluster.client.cancel(job)
    # both ignore SIGTERM: SIGKILL after the 1 s grace ends them and the child
    wait_until(lambda: not pid_alive(pids["self"]) and not pid_alive(pids["child"]), 10, "the task and its child to end")
    assert cluster.state(job) == "CANCELLED"
    assert cluster.allocated_milli() == 0


def test_scheduler_restart_loses_and_kills_nothing(cluster):
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:1")
    job = cluster.submit("survivor", {"tasks": 1, "devices": H100, "command": task_command(cluster.out, "sleep", "6")})
    wait_until(lambda: cluster.state(job) == "RUNNING", 30, "the job to run")
    pids = _pids(cluster, job)
    cluster.kill("server")  # kill -9: no goodbye to the agents
    time.sleep(1.0)
    assert pid_alive(pids["self"])  # the agent kept the task while the scheduler was away
    cluster.client.close()
    cluster._client = None
    cluster.start_server()
    wait_until(lambda: "reconnected" in cluster.log("agent-n1"), 20, "the agent to reconnect")
    assert cluster.state(job) == "RUNNING"
    assert pid_alive(pids["self"])
    wait_until(lambda: cluster.state(job) == "SUCCEEDED", 30, "the job to finish after the restart")
    assert not (cluster.out / f"{job}.0.1.pids").exists()  # it never started twice
    assert [t for t, _ in cluster.events(job)].count("SCHEDULED") == 1
    assert cluster.allocated_milli() == 0


def test_simulated_cloudmatrix384_pod_runs_a_job(cluster):
    cluster.start_server()
    p = cluster.start("sim", ["agent", "--server", cluster.address, "--simulate", "default", "--state-dir", str(cluster.tmp / "sim"),
                              "--heartbeat-interval", "0.5"])
    wait_until(lambda: "48 node(s) registered" in cluster.log("sim"), 60, "48 simulated nodes to register")
    nodes = cluster.client.list_nodes()
    assert len(nodes) == 48 and sum(len(n.devices) for n in nodes) == 768
    assert all(n.labels["simulated"] == "true" for n in nodes)
    job = cluster.submit("sim-train", {"tasks": 4, "devices": {"count": 16, "model": "ascend-910c"}, "within": "supernode",
                                       "simulate": {"duration_s": 0.5}})
    fails = cluster.submit("sim-crash", {"tasks": 1, "devices": {"count": 16, "model": "ascend-910c"},
                                         "simulate": {"duration_s": 60, "fail_after_s": 0.2, "exit_code": 3}, "restart": {"max_restarts": 1}})
    wait_until(lambda: cluster.state(job) == "SUCCEEDED", 30, "the simulated job to succeed")
    wait_until(lambda: cluster.state(fails) == "FAILED", 30, "the crashing job to fail after its one restart")
    assert "exited with code 3" in cluster.job(fails).message
    assert sum(1 for t, m in cluster.events(fails) if t == "EVICTED" and m.startswith("restart 1/1")) == 1
    assert cluster.allocated_milli() == 0
    assert p.poll() is None
