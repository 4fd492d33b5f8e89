"""Servers and agents that tests start die with the test process (``XPOD_EXIT_WITH_PID``, set for
the whole suite by tests/conftest.py): a killed pytest leaves no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from agent_harness import XPOD, pid_alive, wait_until

# stands in for a test process: starts a server and an agent with XPOD_EXIT_WITH_PID naming
# itself, prints their pids, then waits to be killed
_LAUNCHER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    xpod, tmp = json.loads(sys.argv[1]), sys.argv[2]
    env = {**os.environ, "XPOD_EXIT_WITH_PID": str(os.getpid()), "XPOD_CONFIG": os.path.join(tmp, "none.yaml")}
    def start(name, args):
        return subprocess.Popen(xpod + args, env=env, stdout=open(os.path.join(tmp, name + ".log"), "ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = start("server", ["server", "--db", os.path.join(tmp, "x.db"), "--listen", "127.0.0.1:" + sys.argv[3]])
    agent = start("agent", ["agent", "--server", "127.0.0.1:" + sys.argv[3], "--node", "n1",
                            "--state-dir", os.path.join(tmp, "state"), "--sim-devices", "mthreads-s4000:1"])
    print(json.dumps([server.pid, agent.pid]), flush=True)
    time.sleep(600)
    """
)


def test_a_killed_test_process_leaves_no_server_or_agent(tmp_path):
    from agent_harness import free_port

    pids: list[int] = []
    launcher = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, json.dumps(XPOD), str(tmp_path), str(free_port())],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids += json.loads(launcher.stdout.readline())
        log = tmp_path / "agent.log"
        wait_until(
            lambda: log.exists() and "registered with" in log.read_text(errors="replace"), 60, "the agent to register"
        )
        assert all(pid_alive(p) for p in pids)
        launcher.send_signal(signal.SIGKILL)  # the "test process" dies without any cleanup
        launcher.wait(timeout=20)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, "the server and the agent to end with it")
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
