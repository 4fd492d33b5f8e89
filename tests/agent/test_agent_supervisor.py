"""The task supervisor on its own (runtime/agent/supervisor.py): a task never outlives a
supervisor that was killed outright."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

SUPERVISOR = Path(__file__).resolve().parents[2] / "runtime" / "agent" / "supervisor.py"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait(what, timeout_s: float, message: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {message}")


def test_kill_9_of_the_supervisor_ends_its_task():
    # the task ignores SIGTERM and SIGHUP: only the kernel's SIGKILL (the task's own death signal) ends it
    task = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    sup = subprocess.Popen(
        [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), "30", "--", sys.executable, "-c", task],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        sup.stdin.write(json.dumps({"PATH": os.environ.get("PATH", "")}).encode())
        sup.stdin.close()
        children = _wait(lambda: psutil.Process(sup.pid).children(), 60, "the supervisor to start its task")
        (child,) = children
        _wait(lambda: child.cmdline()[1:2] == ["-c"], 60, "the task to exec")
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait(timeout=20)
        _wait(lambda: not _alive(child.pid), 20, f"task {child.pid} to end after its supervisor was killed")
    finally:
        try:
            os.killpg(sup.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
