"""Real-process harness for the node-agent tests: ``xpod server`` and ``xpod agent`` as child
processes on loopback, every one of them (and every task pid a task script records) killed in
teardown. Waits are bounded (``wait_until``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

XPOD = [sys.executable, "-m", "xpod.runtime.cli"]
TASK_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "agent", "task.py")
NODE_TIMEOUT_S = 3.0  # the server's NotReady bound in these tests (default 10 s)
# ... in the tests that are not about liveness: on a loaded machine (a CPU hog beside the suite)
# an agent's heartbeats can stall for seconds, and a NotReady there would test something else
PATIENT_NODE_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``predicate`` until it returns a truthy value; fail the test naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Cluster:
    """One test's processes: a server, agents, a client, a folder for task output."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db = str(tmp_path / "xpod.db")
        self.procs: dict[str, subprocess.Popen] = {}
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.env = {
            **os.environ,
            "XPOD_NODE_TIMEOUT_S": str(NODE_TIMEOUT_S),
            "XPOD_CONFIG": str(tmp_path / "no-config.yaml"),
            "XPOD_SERVER": "",
            "XPOD_TOKEN": "",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("XPOD_SIM_DEVICES", None)
        self._client = None
        self.server_starts = 0

    def patient(self) -> "Cluster":
        """Processes started from now on judge nodes NotReady only after
        ``PATIENT_NODE_TIMEOUT_S`` (a test about something else than liveness)."""
        self.env["XPOD_NODE_TIMEOUT_S"] = str(PATIENT_NODE_TIMEOUT_S)
        return self

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        p = subprocess.Popen(
            XPOD + args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(self.tmp),
        )
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start_server(self, *extra: str) -> subprocess.Popen:
        """Start (or restart) ``xpod server`` on the same address and database."""
        self.server_starts += 1
        name = "server" if self.server_starts == 1 else f"server-{self.server_starts}"
        p = self.start(name, ["server", "--db", self.db, "--listen", self.address, "--cycle-interval", "0.2", *extra])
        self.procs["server"] = p
        wait_until(lambda: "listening on" in self.log(name), 120, "the server to listen")
        return p

    def start_agent(self, node: str, *extra: str) -> subprocess.Popen:
        p = self.start(
            f"agent-{node}",
            [
                "agent",
                "--server",
                self.address,
                "--node",
                node,
                "--state-dir",
                str(self.tmp / f"state-{node}"),
                "--heartbeat-interval",
                "0.3",
                *extra,
            ],
        )
        wait_until(lambda: "registered with" in self.log(f"agent-{node}"), 120, f"agent {node} to register")
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[name]
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        p.wait(timeout=20)

    @property
    def client(self):
        # an ``xpod up`` under this test's folder is never open: its admin token, once written
        tokens = sorted(self.tmp.glob("*/admin-token"))
        token = tokens[0].read_text().strip() if tokens else None
        if self._client is not None and self._client.target.token != token:
            self._client.close()
            self._client = None
        if self._client is None:
            from xpod.runtime.client import Client, Target

            self._client = Client(Target(self.address, token, None, "test"), timeout_s=5.0)
        return self._client

    def submit(self, name: str, spec: dict, kind: str = "TrainingJob") -> str:
        doc = {"apiVersion": "xpod/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        return self.client.submit(doc).job.id

    def job(self, job_id: str):
        return self.client.get(job_id).job

    def state(self, job_id: str) -> str:
        from xpod.proto.xpod.v1 import types_pb2

        return types_pb2.JobState.Name(self.job(job_id).state).removeprefix("JOB_STATE_")

    def events(self, job_id: str) -> list[tuple[str, str]]:
        from xpod.proto.xpod.v1 import types_pb2

        return [
            (types_pb2.JobEventType.Name(e.type).removeprefix("JOB_EVENT_TYPE_"), e.message)
            for e in self.client.get(job_id).events
        ]

    def allocated_milli(self) -> int:
        return sum(d.allocated_milli for d in self.client.list_devices())

    def node_ready(self, node: str) -> bool:
        return {n.name: n.ready for n in self.client.list_nodes()}[node]

    def task_pids(self) -> list[int]:
        pids = []
        for f in self.out.glob("*.pids"):
            pids.extend(json.loads(f.read_text()).values())
        return pids

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.task_pids():  # tasks an agent killed with -9 left behind
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def task_command(out_dir, *args: str) -> list[str]:
    """The fixture task: writes its environment and pids under ``out_dir``, then acts per ``args``."""
    return [sys.executable, TASK_SCRIPT, str(out_dir), *args]


@pytest.fixture
def cluster(tmp_path):
    """A ``Cluster`` whose processes are all killed in teardown (import it into a test module)."""
    c = Cluster(tmp_path)
    yield c
    c.close()
