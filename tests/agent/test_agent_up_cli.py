"""``xpod up`` end to end (scheduler + local agent + simulated pod in one process) and the
one-line errors of ``xpod agent``, ``xpod logs`` and ``xpod up``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

from agent_harness import XPOD, cluster, pid_alive, task_command, wait_until  # noqa: F401 (cluster is a fixture)


def test_up_runs_a_local_job_and_a_simulated_pod_job_and_stops_cleanly(cluster):
    state = cluster.tmp / "up"
    p = cluster.start("up", ["up", "--listen", cluster.address, "--state-dir", str(state), "--node-timeout", "5"])
    wait_until(lambda: "Ctrl-C to stop" in cluster.log("up"), 60, "xpod up to be ready")
    assert "simulated pod cloudmatrix384: 48 nodes, 768 devices" in cluster.log("up")
    nodes = {n.name: n for n in cluster.client.list_nodes()}
    local = [n for n in nodes.values() if not n.simulated]
    assert len(nodes) == 49 and len(local) == 1
    real = cluster.submit(
        "local", {"tasks": 1, "devices": {"count": 1, "vendor": "cpu"}, "command": task_command(cluster.out)}
    )
    sim = cluster.submit(
        "pod",
        {
            "tasks": 2,
            "devices": {"count": 16, "model": "ascend-910c"},
            "within": "supernode",
            "simulate": {"duration_s": 0.3},
        },
    )
    wait_until(
        lambda: cluster.state(real) == "SUCCEEDED" and cluster.state(sim) == "SUCCEEDED", 30, "both jobs to succeed"
    )
    env = json.loads((cluster.out / f"{real}.0.env").read_text())
    cpu = [d.id for d in local[0].devices if d.vendor == "cpu"]
    assert env["XPOD_DEVICES"] in cpu and env["XPOD_BACKEND"] == "cpu"
    assert (state / "xpod.db").exists() and (state / "logs" / real / "task-0.log").exists()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    assert "xpod up: stopped" in cluster.log("up")


def _run(cluster, *args):
    return subprocess.run(
        XPOD + list(args), capture_output=True, text=True, timeout=60, env=cluster.env, cwd=str(cluster.tmp)
    )


def test_user_errors_are_one_line(cluster):
    cases = [
        (("logs", "job-404", "--state-dir", str(cluster.tmp)), "no logs for job 'job-404'"),
        (("up", "--no-simulate", "--no-local", "--state-dir", str(cluster.tmp)), "leave nothing to run"),
        (("up", "--listen", "0.0.0.0:7070", "--state-dir", str(cluster.tmp)), "stays on loopback"),
        (("up", "--node-timeout", "0", "--state-dir", str(cluster.tmp)), "--node-timeout 0: must be a positive"),
        (
            ("agent", "--simulate", str(cluster.tmp / "missing.yaml"), "--state-dir", str(cluster.tmp)),
            "no such cluster descriptor",
        ),
        (("agent", "--heartbeat-interval", "-1", "--state-dir", str(cluster.tmp)), "--heartbeat-interval -1"),
    ]
    for args, needle in cases:
        r = _run(cluster, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    (cluster.tmp / "logs" / "job-1").mkdir(parents=True)
    (cluster.tmp / "logs" / "job-1" / "task-0.log").write_text("x\n")
    r = _run(cluster, "logs", "job-1", "--task", "3", "--state-dir", str(cluster.tmp))
    assert r.returncode == 1 and "has no task 3 on this host (tasks here: 0)" in r.stderr


def test_logs_follow_stops_at_the_exit_line(cluster):
    folder = cluster.tmp / "logs" / "job-7"
    folder.mkdir(parents=True)
    log = folder / "task-0.log"
    log.write_text("=== xpod: task 0 of job job-7 starting on n1: x\nfirst\n")
    p = subprocess.Popen(
        XPOD + ["logs", "job-7", "--follow", "--state-dir", str(cluster.tmp)],
        stdout=subprocess.PIPE,
        text=True,
        env=cluster.env,
    )
    try:
        wait_until(lambda: log.stat().st_size > 0, 5, "the log")
        import time

        time.sleep(0.5)
        assert p.poll() is None  # still following: the task has not exited
        with open(log, "a") as f:
            f.write("second\n=== xpod: task 0 exited with code 0\n")
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and out.splitlines()[1:] == ["first", "second", "=== xpod: task 0 exited with code 0"]


def test_an_agent_takes_the_descriptor_node_named_like_its_host(cluster):
    host = socket.gethostname().split(".", 1)[0]
    descriptor = cluster.tmp / "cluster.yaml"
    descriptor.write_text(
        "apiVersion: xpod/v1\nkind: Cluster\nmetadata: {name: agent-host-test}\nspec:\n"
        "  fabrics:\n    - {name: eth, plane: scale-out, link: Ethernet, tiers: [{tier: 1, name: lan, scope: cluster, bandwidth: 10Gb/s}]}\n"
        "  nodeGroups:\n"
        "    - {name: gpu, hosts: g1, devices: {model: nvidia-h100-sxm, packagesPerNode: 1}}\n"
        f"    - {{name: this-host, hosts: '{host}', devices: {{model: nvidia-h100-sxm, packagesPerNode: 1}}}}\n"
    )
    cluster.start_server("--cluster", str(descriptor))
    cluster.start(
        "agent",
        [
            "agent",
            "--server",
            cluster.address,
            "--state-dir",
            str(cluster.tmp / "state"),
            "--heartbeat-interval",
            "0.3",
        ],
    )
    wait_until(lambda: "registered with" in cluster.log("agent"), 30, "the agent to register")
    assert f"node {host} with" in cluster.log("agent")
    nodes = {n.name: n for n in cluster.client.list_nodes()}
    assert sorted(nodes) == sorted(["g1", host])  # replaced, not added beside it
    assert [d.model for d in nodes["g1"].devices] == ["nvidia-h100-sxm"]  # the other node is untouched
    from xpod.runtime.agent.agent import discover_devices

    assert [(d.vendor, d.model) for d in nodes[host].devices] == [
        (d.vendor, d.model) for d in discover_devices()
    ]  # this host's own
    assert nodes[host].ready
    # a command that cannot start fails the job per its policy, saying why
    job = cluster.submit(
        "nocmd",
        {
            "tasks": 1,
            "devices": {"count": 1, "vendor": "cpu"},
            "command": ["/nonexistent/xpod-test-binary"],
            "restart": {"max_restarts": 0},
        },
    )
    wait_until(lambda: cluster.state(job) == "FAILED", 30, "the job to fail")
    assert "could not start: cannot start '/nonexistent/xpod-test-binary'" in cluster.job(job).message
    assert cluster.allocated_milli() == 0


def test_a_second_instance_on_the_same_state_exits_at_once_and_touches_nothing(cluster):
    """Issue 19: a second ``xpod up`` on the same state directory killed the first one's live
    task (spending a restart), crashed in end_leftover_tasks, and left the first server failing
    every submission (UNIQUE constraint failed: events.revision). Now the second ``xpod up``,
    ``xpod agent`` and ``xpod server`` each exit 1 at once with one line naming the path and the
    holder, and the first instance does not notice."""
    state = cluster.tmp / "up"
    cluster.start("up", ["up", "--listen", cluster.address, "--state-dir", str(state), "--no-simulate"])
    wait_until(lambda: "Ctrl-C to stop" in cluster.log("up"), 60, "xpod up to be ready")
    job = cluster.submit(
        "live",
        {"tasks": 1, "devices": {"count": 1, "vendor": "cpu"}, "command": task_command(cluster.out, "sleep", "600")},
    )
    wait_until(lambda: cluster.state(job) == "RUNNING" and cluster.task_pids(), 30, "the task to run")
    pids = cluster.task_pids()
    up_pid = cluster.procs["up"].pid
    files = sorted(p.name for p in state.iterdir())
    second = [
        (("up", "--listen", "127.0.0.1:0", "--state-dir", str(state), "--no-simulate"), state, "xpod up"),
        (("agent", "--server", cluster.address, "--state-dir", str(state)), state, "xpod up"),
        (("server", "--db", str(state / "xpod.db"), "--listen", "127.0.0.1:0"), state / "xpod.db", "xpod up"),
    ]
    for args, path, holder in second:
        r = _run(cluster, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stderr == f"xpod: {path} is in use by {holder} (pid {up_pid}, {cluster.address})\n", r.stderr
    assert sorted(p.name for p in state.iterdir()) == files
    assert all(pid_alive(pid) for pid in pids)  # the first one's task still runs
    assert cluster.state(job) == "RUNNING" and not [e for e in cluster.events(job) if e[0] == "EVICTED"]
    cluster.client.cancel(job)  # and the first server still takes writes
    wait_until(lambda: cluster.state(job) == "CANCELLED", 30, "the cancel")
    again = cluster.submit("after", {"tasks": 1, "devices": {"count": 1, "vendor": "cpu"}})
    assert cluster.state(again) in ("QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED")


def test_up_runs_the_live_moe_loop_end_to_end(cluster):
    """A serving task under ``xpod up`` writes skewed expert loads; the agent forwards them; the
    server publishes a plan (then a rebalance once the load moves); the task reads each plan
    file as it changes; ``xpod moe history`` and the job's events list them."""
    state = cluster.tmp / "up"
    # two simulated H100s on this host (real processes, simulated devices): a replica of two
    # expert-parallel ranks, so there is a balance to improve
    up = ["up", "--no-simulate", "--sim-devices", "nvidia-h100-sxm:2", "--listen", cluster.address]
    cluster.start("up", up + ["--state-dir", str(state)])
    wait_until(lambda: "Ctrl-C to stop" in cluster.log("up"), 60, "xpod up to be ready")
    layers, experts = 2, 16
    script = str(Path(__file__).with_name("moe_task.py"))
    job = cluster.submit(
        "moe",
        {
            "replicas": 1,
            "devices": {"count": 2, "model": "nvidia-h100-sxm"},
            "command": [sys.executable, script, str(cluster.out), str(layers), str(experts)],
            "moe": {
                "experts": experts,
                "layers": layers,
                "slots_per_device": 9,
                "rebalance": {"every_s": 1, "max_moves": 8},
            },
        },
        kind="ServingJob",
    )

    def seen(task: int) -> list:
        path = cluster.out / f"moe-seen-{task}.json"
        return json.loads(path.read_text()) if path.exists() else []

    wait_until(lambda: seen(0), 90, "the task to read a first plan")
    assert seen(0)[0]["revision"] == 1 and seen(0)[0]["sglang_rows"] == layers
    assert len(seen(0)[0]["phy2log"][0]) == 2 * 9  # 2 ranks x 9 slots
    wait_until(lambda: seen(0)[-1]["revision"] >= 2, 90, "a rebalanced plan once the load moved")
    assert seen(0)[-1]["phy2log"] != seen(0)[0]["phy2log"]
    r = _run(cluster, "moe", "history", job, "--server", cluster.address, "-o", "json")
    assert r.returncode == 0, r.stderr
    windows = json.loads(r.stdout)
    published = [w for w in windows if w["published"]]
    assert published[0]["initial"] and published[0]["plan_revision"] == 1
    assert any(0 < w["moves"] <= 8 and w["balance_after"] > w["balance_before"] for w in published[1:]), windows
    r = _run(cluster, "moe", "history", job, "--server", cluster.address)
    assert r.returncode == 0 and "plan(s) published" in r.stdout and "first plan" in r.stdout, r.stdout
    assert sum(1 for kind, _ in cluster.events(job) if kind == "MOE_PLAN") >= 2
    assert cluster.state(job) == "RUNNING"
