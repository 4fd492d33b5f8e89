"""Replicas of `xpod server` on one real PostgreSQL: one leads, followers answer reads and name
the leader, kill -9 of the leader under load loses and duplicates nothing, bad store URLs are
one line, and a replica without its database says NOT_SERVING and comes back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service_harness import job_doc
from test_service_integration import XPOD, LiveServer, cli

EXAMPLE_JOB = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "service", "jobs", "train.yaml")
TASK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "agent", "task.py")

# a short lease keeps the test quick; the default (3 s) is the bench's
LEASE = ("--lease-ttl", "1", "--frontends", "0")


def replica(url: str, *extra: str) -> LiveServer:
    return LiveServer("unused.db", "--store", url, *LEASE, "--metrics", "127.0.0.1:0", *extra)


def metric(server: LiveServer, name: str) -> float:
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", "".join(server.lines)).group(1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not exported"
    return float(m.group(1))


def health(addr: str, service: str = "xpod.v1.JobService") -> int:
    with grpc.insecure_channel(addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def wait_for(what: str, check, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def client(addrs: str):
    from xpod.runtime.client import Client, resolve_target

    return Client(resolve_target(addrs), timeout_s=10, failover_s=60)


def test_one_leader_followers_read_and_name_it(pg_url):
    a = replica(pg_url)
    # a follower that joins while the leader commits: its mirror (loaded, then tailed) must
    # still hold every acknowledged job
    acked: list[str] = []
    stop = threading.Event()

    def submit_meanwhile() -> None:
        with client(a.addr) as c:
            i = 0
            while not stop.is_set():
                acked.append(c.submit(job_doc(f"bg{i}", count=1), f"bg-{i}").job.id)
                i += 1

    background = threading.Thread(target=submit_meanwhile)
    background.start()
    try:
        b = replica(pg_url)
    finally:
        stop.set()
        background.join(timeout=60)
    try:
        with client(b.addr) as c:
            wait_for(
                "the follower to list every acknowledged job",
                lambda: set(acked) <= {j.id for j in c.list()},
                30,
            )
        assert "leader" in "".join(a.lines) and "follower" in "".join(b.lines)
        assert (metric(a, "xpod_scheduler_leader"), metric(b, "xpod_scheduler_leader")) == (1.0, 0.0)
        assert health(b.addr) == health_pb2.HealthCheckResponse.SERVING  # a follower serves reads
        with client(a.addr) as c:
            job = c.submit(job_doc("one"), "rid-1").job
        # the follower's mirror follows the event log
        with client(b.addr) as c:
            wait_for("the follower to see the job", lambda: any(j.id == job.id for j in c.list()))
        # a write on the follower alone: refused, naming the leader (the CLI follows it)
        from xpod.proto.xpod.v1 import job_service_pb2, job_service_pb2_grpc

        with grpc.insecure_channel(b.addr) as ch:
            req = job_service_pb2.SubmitJobRequest(request_id="rid-2")
            req.job.update(job_doc("two"))
            with pytest.raises(grpc.RpcError) as err:
                job_service_pb2_grpc.JobServiceStub(ch).SubmitJob(req, timeout=10)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert a.addr in err.value.details() and "follows" in err.value.details()
        out = cli("jobs", "--server", b.addr)
        assert out.returncode == 0 and job.id in out.stdout, out.stderr
        out = cli("nodes", "--server", b.addr)
        assert out.returncode == 0 and "g1" in out.stdout, out.stderr
        # the CLI given only the follower is sent on to the leader it names
        out = cli("submit", "--server", b.addr, "--request-id", "via-follower", EXAMPLE_JOB)
        assert out.returncode == 0 and "submitted" in out.stdout, out.stderr
        # a clean stop hands over at once (the lease is released)
        a.stop()
        wait_for("the follower to lead", lambda: metric(b, "xpod_scheduler_leader") == 1.0, 30)
        assert metric(b, "xpod_scheduler_leader_changes_total") == 1.0
    finally:
        a.stop()
        b.stop()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill9_of_the_leader_under_load_loses_and_duplicates_nothing(pg_url, tmp_path):
    servers = [replica(pg_url), replica(pg_url)]
    addrs = ",".join(s.addr for s in servers)
    # an agent with a running task (a real process) that must outlive the change of leader
    out = tmp_path / "tasks"
    out.mkdir()
    agent_log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [
            XPOD,
            "agent",
            "--server",
            addrs,
            "--node",
            "ha-agent",
            "--state-dir",
            str(tmp_path / "state"),
            "--sim-devices",
            "mthreads-s4000:1",
            "--heartbeat-interval",
            "0.5",
        ],
        stdout=open(agent_log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    long_doc = {
        "apiVersion": "xpod/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "long"},
        "spec": {
            "tasks": 1,
            "devices": {"count": 1, "model": "mthreads-s4000"},
            "queue": "research",
            "command": [sys.executable, TASK, str(out), "sleep", "600"],
        },
    }
    acked: dict[str, str] = {}
    sent: dict[str, dict] = {}
    after_kill = threading.Event()
    acked_after_kill = [0]
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[str] = []

    def submitter(worker: int) -> None:
        with client(addrs) as c:
            i = 0
            while not stop.is_set():
                rid, doc = f"w{worker}-{i}", job_doc(f"w{worker}-{i}", count=1)
                i += 1
                with lock:
                    sent[rid] = doc
                try:
                    resp = c.submit(doc, rid)
                except Exception as err:  # reported below: a failover must not surface
                    errors.append(f"{rid}: {err}")
                    return
                with lock:
                    acked[rid] = resp.job.id
                    if after_kill.is_set():
                        acked_after_kill[0] += 1

    threads = [threading.Thread(target=submitter, args=(w,)) for w in range(4)]
    try:
        wait_for("the agent to register", lambda: "registered with" in agent_log.read_text(), 60)
        with client(addrs) as c:
            long_id = c.submit(long_doc, "long").job.id
            first = out / f"{long_id}.0.0.pids"
            wait_for("the long task to run", lambda: first.exists() and c.get(long_id).job.state == 3, 60)
        task_pid = json.loads(first.read_text())["self"]
        for t in threads:
            t.start()
        wait_for("submissions to the first leader", lambda: len(acked) >= 20)
        servers[0].kill9()  # the first replica started leads
        after_kill.set()
        wait_for("submissions acknowledged by the new leader", lambda: acked_after_kill[0] >= 20 or errors, 90)
        # the agent reconnects to the new leader and reports its task, which keeps running
        with client(addrs) as c:
            wait_for("the agent to reconnect", lambda: "reconnected to the scheduler" in agent_log.read_text(), 60)
            assert c.get(long_id).job.state == 3  # still RUNNING
        assert _alive(task_pid), "the running task was stopped because the leader changed"
        assert not (out / f"{long_id}.0.1.pids").exists(), "the running task was started again"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
    try:
        assert not errors, errors[:3]
        with client(servers[1].addr) as c:
            jobs = c.list()
            by_rid: dict[str, list[str]] = {}
            for j in jobs:
                by_rid.setdefault(j.request_id, []).append(j.id)
            assert [rid for rid in acked if by_rid.get(rid) != [acked[rid]]] == []  # each once, same id
            assert [rid for rid, ids in by_rid.items() if len(ids) > 1] == []
            # what was sent but never acknowledged: a retry creates each at most once
            for rid in sorted(set(sent) - set(acked)):
                c.submit(sent[rid], rid)
            rids = [j.request_id for j in c.list()]
            assert len(rids) == len(set(rids))
        assert metric(servers[1], "xpod_scheduler_leader") == 1.0
    finally:
        for s in servers:
            s.stop()


def test_the_server_list_comes_from_flag_environment_or_config(tmp_path, monkeypatch):
    from xpod.runtime.client import resolve_target

    monkeypatch.delenv("XPOD_SERVER", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("server: [a:1, b:2]\n")
    monkeypatch.setenv("XPOD_CONFIG", str(config))
    assert resolve_target().addresses == ("a:1", "b:2")
    monkeypatch.setenv("XPOD_SERVER", "c:3, d:4")
    assert resolve_target().addresses == ("c:3", "d:4")
    assert resolve_target("e:5,f:6").addresses == ("e:5", "f:6")


def test_bad_store_urls_are_one_line_and_exit_1(postgres):
    from test_service_integration import XPOD
    import subprocess

    wrong = postgres.url.replace(postgres.password, "wrong-password")
    for url, says in [
        (wrong, "check the user and password"),
        ("postgresql://xpod:pw@127.0.0.1:1/xpod", "check that PostgreSQL runs there"),
        ("mysql://u@h/d", "unknown store kind"),
    ]:
        proc = subprocess.run(
            [XPOD, "server", "--store", url, "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], proc.stderr
        assert "wrong-password" not in proc.stderr and "Traceback" not in proc.stderr


def test_losing_the_database_is_not_serving_and_recovers():
    from xpod.scheduler.store.pg_local import LocalPostgres

    with LocalPostgres.start(fsync=False) as own:
        server = replica(own.url)
        try:
            with client(server.addr) as c:
                first = c.submit(job_doc("before"), "before").job.id
            own.take_down()
            wait_for(
                "NOT_SERVING without the database",
                lambda: health(server.addr) == health_pb2.HealthCheckResponse.NOT_SERVING,
                30,
            )
            from xpod.runtime.client import RpcFailure

            with client(server.addr) as c:
                c.failover_s = 0
                with pytest.raises(RpcFailure) as err:
                    c.submit(job_doc("during"), "during")
                assert err.value.code == "UNAVAILABLE"
            own.bring_back()
            wait_for("SERVING again", lambda: health(server.addr) == health_pb2.HealthCheckResponse.SERVING, 60)
            with client(server.addr) as c:
                wait_for("the replica to lead again", lambda: metric(server, "xpod_scheduler_leader") == 1.0, 30)
                again = c.submit(job_doc("after"), "after")
                assert again.created
                assert first in {j.id for j in c.list()}
        finally:
            server.stop()
