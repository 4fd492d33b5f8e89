#!/usr/bin/env python3
"""How long a task outlives its agent after ``kill -9`` (not run by make test).

    .venv/bin/python bench/agent_kill9.py --runs 3 --grace 1

Starts ``xpod server`` and one ``xpod agent`` (real processes, loopback, a simulated device so
the job lands there), submits a one-task job whose task spawns a child and both ignore SIGTERM,
waits until both run, ``kill -9``s the agent and measures until the task and its child are both
gone (so: the supervisor noticed the agent's death, sent SIGTERM, waited ``--grace``, sent
SIGKILL). Prints each run and the median. Expected: about ``--grace`` plus polling slack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TASK = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "agent", "task.py")
XPOD = [sys.executable, "-m", "xpod.runtime.cli"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def one_run(work: str, grace_s: float) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    env = {**os.environ, "XPOD_CONFIG": os.path.join(work, "none.yaml"), "XPOD_SERVER": "", "XPOD_TOKEN": ""}
    env.pop("XPOD_SIM_DEVICES", None)
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)
    logs = {n: open(os.path.join(work, f"{n}.log"), "wb") for n in ("server", "agent")}
    server = subprocess.Popen(
        XPOD + ["server", "--db", os.path.join(work, "x.db"), "--listen", addr, "--cycle-interval", "0.2"],
        env=env,
        stdout=logs["server"],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    agent = None
    try:
        _wait(lambda: "listening on" in open(os.path.join(work, "server.log")).read(), 30, "the server")
        agent = subprocess.Popen(
            XPOD
            + [
                "agent",
                "--server",
                addr,
                "--node",
                "n1",
                "--state-dir",
                os.path.join(work, "state"),
                "--sim-devices",
                "mthreads-s4000:1",
                "--grace",
                str(grace_s),
                "--heartbeat-interval",
                "0.3",
            ],
            env=env,
            stdout=logs["agent"],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(lambda: "registered with" in open(os.path.join(work, "agent.log")).read(), 30, "the agent")
        from xpod.runtime.client import Client, Target

        with Client(Target(addr, None, None, "bench"), timeout_s=5.0) as c:
            doc = {
                "apiVersion": "xpod/v1",
                "kind": "TrainingJob",
                "metadata": {"name": "k9"},
                "spec": {
                    "tasks": 1,
                    "devices": {"count": 1, "model": "mthreads-s4000"},
                    "command": [sys.executable, TASK, out, "child", "ignore-term", "sleep", "600"],
                },
            }
            job = c.submit(doc).job.id
        path = os.path.join(out, f"{job}.0.0.pids")
        pids = _wait(lambda: os.path.exists(path) and json.load(open(path)), 30, "the task")
        _wait(lambda: all(_alive(p) for p in pids.values()), 10, "the task and its child")
        started = time.monotonic()
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        _wait(lambda: not any(_alive(p) for p in pids.values()), 30, "the task group to end")
        return time.monotonic() - started
    finally:
        for p in (agent, server):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--grace", type=float, default=1.0, help="the agent's --grace (SIGTERM to SIGKILL), seconds")
    args = ap.parse_args()
    times = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="xpod-k9-") as work:
            t = one_run(work, args.grace)
        times.append(t)
        print(f"run {i + 1}: task group gone {t:.3f} s after kill -9 of its agent (grace {args.grace:g} s)", flush=True)
    print(f"median {statistics.median(times):.3f} s, max {max(times):.3f} s over {len(times)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
