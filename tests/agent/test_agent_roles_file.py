"""The roles file leaves with the job's last task on a node (issue 14 item 3), as real
processes: ``xpod server`` and one agent on loopback run jobs with two roles (the fixture
task, ``fixtures/agent/task.py``, each until a file of the test appears). The agent writes
``STATE/roles/JOB.json`` (``XPOD_ROLES_FILE``) when the job starts there; it must stay while
any task of the job runs on the node, and go once none does: the last one finished, failed,
the job was preempted by a higher priority, or cancelled. Every wait is bounded and names what
it waited for."""

from __future__ import annotations

import json
import signal

from agent_harness import cluster, pid_alive, task_command, wait_until  # noqa: F401 (cluster is a fixture)

H100 = {"count": 1, "model": "nvidia-h100-sxm"}


def _roles(out, first: list[str], second: list[str], devices: bool = False) -> dict:
    """Two roles of one task each, running the fixture task with ``first`` / ``second`` args."""
    return {
        "roles": [
            {"name": "router", "tasks": 1, "command": task_command(out, *first)},
            {
                "name": "worker",
                "tasks": 1,
                **({"devices": H100} if devices else {}),
                "command": task_command(out, *second),
            },
        ],
        "restart": {"max_restarts": 0},
    }


def _file(cluster, job: str):
    return cluster.tmp / "state-n1" / "roles" / f"{job}.json"


def _started(cluster, job: str) -> None:
    wait_until(lambda: _file(cluster, job).exists(), 90, f"job {job}'s roles file to be written")
    for t in (0, 1):
        wait_until((cluster.out / f"{job}.{t}.0.pids").exists, 90, f"task {t} of job {job} to start")


def _gone(cluster, job: str, why: str) -> None:
    wait_until(lambda: not _file(cluster, job).exists(), 60, f"job {job}'s roles file to be removed ({why})")


def test_the_roles_file_stays_while_a_task_runs_and_goes_with_the_last(cluster):
    cluster.patient().start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:2")
    out = cluster.out
    ok = cluster.submit("ok", _roles(out, ["until", str(out / "ok-router")], ["until", str(out / "ok-worker")]))
    bad = cluster.submit("bad", _roles(out, ["until", str(out / "bad")], ["until", str(out / "bad"), "exit", "3"]))
    _started(cluster, ok)
    _started(cluster, bad)

    # one task of "ok" finished; the other still runs: the file stays
    (out / "ok-router").touch()
    line = f"job {ok} task 0 exited with code 0"
    wait_until(lambda: line in cluster.log("agent-n1"), 60, f"the agent to see {line!r}")
    wait_until(lambda: cluster.state(ok) == "RUNNING", 30, f"job {ok} to be RUNNING with one task left")
    assert _file(cluster, ok).exists(), "the roles file went while a task of the job still runs on the node"
    (out / "ok-worker").touch()
    wait_until(lambda: cluster.state(ok) == "SUCCEEDED", 60, f"job {ok} to succeed")
    _gone(cluster, ok, "finished")

    # a task failed: the job fails, its other task is stopped, the file goes
    (out / "bad").touch()
    wait_until(lambda: cluster.state(bad) == "FAILED", 60, f"job {bad} to fail")
    _gone(cluster, bad, "failed")


def test_the_roles_file_goes_when_the_job_is_preempted_or_cancelled(cluster):
    cluster.patient().start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:1")
    out = cluster.out
    spec = _roles(out, ["until", str(out / "never")], ["until", str(out / "never")], devices=True)
    low = cluster.submit("low", {**spec, "priority_class": "low", "grace_period_s": 5})
    _started(cluster, low)
    high = cluster.submit(
        "high",
        {
            "tasks": 1,
            "devices": H100,
            "priority_class": "high",
            "command": task_command(out, "until", str(out / "high")),
        },
    )
    wait_until((out / f"{high}.0.0.pids").exists, 90, f"the high-priority job {high} to start on the preempted device")
    _gone(cluster, low, "preempted")
    assert cluster.state(low) == "QUEUED", cluster.state(low)

    (out / "high").touch()
    wait_until(lambda: cluster.state(high) == "SUCCEEDED", 60, f"job {high} to succeed")
    wait_until((out / f"{low}.0.1.pids").exists, 90, f"the preempted job {low} to start again")
    wait_until(lambda: _file(cluster, low).exists(), 60, f"job {low}'s roles file to be written again")
    cluster.client.cancel(low)
    wait_until(lambda: cluster.state(low) == "CANCELLED", 60, f"job {low} to be cancelled")
    _gone(cluster, low, "cancelled")


def test_an_agent_that_shuts_down_during_a_long_grace_ends_the_stop_first(cluster):
    """A preempted job with a long grace whose tasks ignore SIGTERM is still stopping when the
    agent is told to go: the agent cuts the grace to its own, waits for those tasks to end, and
    only then removes the job's roles file and exits (it used to exit at once, leaving both)."""
    cluster.patient().start_server()
    agent = cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:1")
    out = cluster.out
    spec = _roles(
        out, ["until", str(out / "never"), "ignore-term"], ["until", str(out / "never"), "ignore-term"], devices=True
    )
    low = cluster.submit("low", {**spec, "priority_class": "low", "grace_period_s": 600})
    _started(cluster, low)
    pids = [p for t in (0, 1) for p in json.loads((out / f"{low}.{t}.0.pids").read_text()).values()]
    cluster.submit(
        "high",
        {
            "tasks": 1,
            "devices": H100,
            "priority_class": "high",
            "command": task_command(out, "until", str(out / "high")),
        },
    )
    line = f"stopping job {low}"
    wait_until(lambda: line in cluster.log("agent-n1"), 90, f"the agent to start stopping the preempted job ({line!r})")
    assert all(pid_alive(p) for p in pids), "the tasks ignoring SIGTERM keep their 600 s grace"
    agent.send_signal(signal.SIGTERM)
    agent.wait(timeout=60)  # the agent's own grace (5 s) and the join's bound, well inside
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"the agent exited while task processes {alive} of the job it was stopping still ran"
    assert not _file(cluster, low).exists(), "the agent exited leaving the roles file of a job it was stopping"


def test_a_new_agent_removes_the_roles_files_a_killed_one_left(tmp_path):
    from xpod.runtime.agent import agent as ag

    ag.write_roles_file(str(tmp_path), "job-3", {"job": "job-3", "roles": {}})
    left = tmp_path / "roles" / "job-3.json"
    # an agent killed inside write_roles_file, between writing its temporary file and the rename
    half = tmp_path / "roles" / "job-4.json.4242.tmp"
    half.write_text("{")
    assert left.exists()
    assert ag.end_leftover_tasks(str(tmp_path)) == []
    assert not left.exists(), "a roles file of a job whose tasks an agent killed with -9 left stayed"
    assert not half.exists(), "the temporary roles file of an agent killed while writing it stayed"
    assert not list((tmp_path / "roles").iterdir())


def test_removing_a_roles_file_takes_its_temporary_files_and_nothing_else(tmp_path):
    from xpod.runtime.agent import agent as ag

    ag.write_roles_file(str(tmp_path), "job-1", {"job": "job-1", "roles": {}})
    ag.write_roles_file(str(tmp_path), "job-12", {"job": "job-12", "roles": {}})
    (tmp_path / "roles" / "job-1.json.77.tmp").write_text("{")
    ag.remove_roles_file(str(tmp_path), "job-1")
    assert sorted(p.name for p in (tmp_path / "roles").iterdir()) == ["job-12.json"]
    ag.remove_roles_file(str(tmp_path), "job-1")  # none there: nothing to do
