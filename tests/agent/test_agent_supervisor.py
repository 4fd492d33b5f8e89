"""The task supervisor on its own (runtime/agent/supervisor.py): a task never outlives a
supervisor that was killed outright."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from agent_harness import pid_alive, wait_until

SUPERVISOR = Path(__file__).resolve().parents[2] / "runtime" / "agent" / "supervisor.py"


def test_kill_9_of_the_supervisor_ends_its_task():
    # the task ignores SIGTERM: only the kernel's SIGKILL (the task's own death signal) ends it
    task = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    sup = subprocess.Popen(
        [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), "30", "--", sys.executable, "-c", task],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        sup.stdin.write(json.dumps({"PATH": os.environ.get("PATH", "")}).encode())
        sup.stdin.close()
        children = wait_until(lambda: psutil.Process(sup.pid).children(), 60, "the supervisor to start its task")
        (child,) = children
        wait_until(lambda: child.cmdline()[1:2] == ["-c"], 60, "the task to exec")
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(timeout=20)
        wait_until(lambda: not pid_alive(child.pid), 20, f"task {child.pid} to end after its supervisor was killed")
    finally:
        try:
            os.killpg(sup.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
