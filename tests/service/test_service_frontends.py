"""Front-end processes (scheduler.grpc.frontends, ``xpod server --frontends N``): a call answered by a
front end is answered as the main server answers it (codes, rich details, authorisation,
idempotency across the two), relayed submissions count in the main server's metrics and keep
deadlines, and front ends live and die with the main process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service_harness import CLUSTER, TOKEN, TOKENS, job_doc, make_api
from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.grpc.server import build_server


def submit_req(rid: str, doc: dict) -> jpb.SubmitJobRequest:
    req = jpb.SubmitJobRequest(request_id=rid)
    req.job.update(doc)
    return req


def outcome(fn) -> tuple:
    """(code, ErrorInfo reason, BadRequest fields) of a call, or ("OK", response)."""
    try:
        return ("OK", fn())
    except grpc.RpcError as err:
        reason, fields = None, []
        status = rpc_status.from_call(err)
        for d in status.details if status is not None else ():
            if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                d.Unpack(info)
                reason = info.reason
            elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                d.Unpack(bad)
                fields = [v.field for v in bad.field_violations]
        return (err.code().name, reason, fields)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"condition not reached in {timeout_s} s"
        time.sleep(0.02)


@pytest.fixture
def pair(tmp_path):
    """The main server (one front end of its own) and one more front end on a port of its
    own, so a client is sure to reach a front end: (api, metrics, direct port, front-end port)."""
    from xpod.scheduler.service.metrics import ServiceMetrics

    api = make_api(str(tmp_path / "x.db"))
    metrics = ServiceMetrics()
    metrics.attach(api)
    running = build_server(api, Authenticator.from_file(TOKENS), "127.0.0.1:0", frontends=1)
    fronts = running.frontends
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xpod.scheduler.grpc.frontends",
            "--parent-pid",
            str(os.getpid()),
            "--listen",
            "127.0.0.1:0",
            "--relay",
            fronts.relay_path,
            "--upstream",
            fronts.upstream_path,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    m = re.match(r"ready (\d+)", line)
    assert m, f"front end did not start: {line!r}"
    yield api, metrics, running.port, int(m.group(1)), proc
    proc.terminate()
    proc.wait(timeout=10)
    proc.stdout.close()
    running.stop(0)
    api.close()


def _calls(port: int, tag: str) -> dict[str, tuple]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    jobs = job_service_pb2_grpc.JobServiceStub(ch)

    def md(who):
        return (("authorization", f"Bearer {TOKEN[who]}"),)

    raw_submit = ch.unary_unary(
        "/xpod.v1.JobService/SubmitJob", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    unknown = ch.unary_unary(
        "/xpod.v1.JobService/NoSuchCall", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    results = {
        "submit": outcome(
            lambda: jobs.SubmitJob(submit_req(f"{tag}-1", job_doc(f"{tag}", count=1)), metadata=md("alice"), timeout=10)
        ),
        "bad spec": outcome(
            lambda: jobs.SubmitJob(submit_req(f"{tag}-2", job_doc(count=-1)), metadata=md("alice"), timeout=10)
        ),
        "no token": outcome(lambda: jobs.SubmitJob(submit_req(f"{tag}-3", job_doc(count=1)), timeout=10)),
        "other queue": outcome(
            lambda: jobs.SubmitJob(
                submit_req(f"{tag}-4", job_doc(count=1, queue="prod")), metadata=md("alice"), timeout=10
            )
        ),
        "agent submits": outcome(
            lambda: jobs.SubmitJob(submit_req(f"{tag}-5", job_doc(count=1)), metadata=md("agent"), timeout=10)
        ),
        "reused id": outcome(
            lambda: jobs.SubmitJob(submit_req(f"{tag}-1", job_doc("other", count=2)), metadata=md("alice"), timeout=10)
        ),
        "never fits": outcome(
            lambda: jobs.SubmitJob(submit_req(f"{tag}-6", job_doc(count=64)), metadata=md("alice"), timeout=10)
        ),
        "garbage": outcome(lambda: raw_submit(b"\xff\xff\xff\xff\x0f garbage", metadata=md("alice"), timeout=10)),
        "not found": outcome(
            lambda: jobs.GetJob(jpb.GetJobRequest(job_id="job-999"), metadata=md("admin"), timeout=10)
        ),
        "other's job": outcome(lambda: jobs.GetJob(jpb.GetJobRequest(job_id="job-1"), metadata=md("bob"), timeout=10)),
        "unknown method": outcome(lambda: unknown(b"", timeout=10)),
        "health": outcome(
            lambda: (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(service="xpod.v1.JobService"), timeout=10)
                .status
            )
        ),
    }
    stream = jobs.WatchJobs(jpb.WatchJobsRequest(from_revision=0), metadata=md("admin"), timeout=10)
    results["watch"] = ("OK", [next(stream).event.job_id for _ in range(1)])
    stream.cancel()
    ch.close()
    return results


def test_a_front_end_answers_every_call_as_the_main_server_does(pair):
    api, _, direct_port, front_port, _ = pair
    direct = _calls(direct_port, "d")
    relayed = _calls(front_port, "f")
    assert direct["submit"][0] == relayed["submit"][0] == "OK"
    assert direct["submit"][1].created and relayed["submit"][1].created
    assert relayed["submit"][1].job.spec["metadata"]["name"] == "f"  # the document comes back as sent
    for name in direct:
        if name == "submit":
            continue
        assert relayed[name] == direct[name], name
    # the codes themselves, so the comparison above is not two identical failures
    assert direct["bad spec"][:2] == ("INVALID_ARGUMENT", "INVALID_SPEC") and direct["bad spec"][2]
    assert direct["no token"][0] == "UNAUTHENTICATED"
    assert direct["other queue"][0] == direct["agent submits"][0] == "PERMISSION_DENIED"
    assert direct["reused id"][:2] == ("ALREADY_EXISTS", "REQUEST_ID_REUSED")
    assert direct["never fits"][0] == "FAILED_PRECONDITION"
    assert direct["garbage"][:2] == ("INVALID_ARGUMENT", "MALFORMED_REQUEST")
    assert direct["not found"][0] == "NOT_FOUND" and direct["other's job"][0] == "NOT_FOUND"
    assert direct["unknown method"][0] == "UNIMPLEMENTED"
    assert direct["health"] == ("OK", health_pb2.HealthCheckResponse.SERVING)
    assert direct["watch"] == ("OK", ["job-1"])


def test_idempotency_holds_across_the_main_server_and_a_front_end(pair):
    _, _, direct_port, front_port, _ = pair
    md = (("authorization", f"Bearer {TOKEN['alice']}"),)
    with grpc.insecure_channel(f"127.0.0.1:{direct_port}") as a, grpc.insecure_channel(f"127.0.0.1:{front_port}") as b:
        first = job_service_pb2_grpc.JobServiceStub(a).SubmitJob(
            submit_req("same", job_doc(count=1)), metadata=md, timeout=10
        )
        again = job_service_pb2_grpc.JobServiceStub(b).SubmitJob(
            submit_req("same", job_doc(count=1)), metadata=md, timeout=10
        )
    assert first.created and not again.created and again.job.id == first.job.id


def test_relayed_submissions_count_in_the_main_metrics_and_keep_deadlines(pair, monkeypatch):
    api, metrics, _, front_port, _ = pair
    labels = {"grpc_type": "unary", "grpc_service": "xpod.v1.JobService", "grpc_method": "SubmitJob"}

    def handled(code: str) -> float:
        return metrics.registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code}) or 0

    md = (("authorization", f"Bearer {TOKEN['alice']}"),)
    with grpc.insecure_channel(f"127.0.0.1:{front_port}") as ch:
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        assert stub.SubmitJob(submit_req("m1", job_doc(count=1)), metadata=md, timeout=10).created
        _wait_for(lambda: handled("OK") == 1)
        # a wedged disk: the write never commits, the client's deadline ends the call on both sides
        import concurrent.futures

        monkeypatch.setattr(api.store, "submit", lambda write, background=False: concurrent.futures.Future())
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(submit_req("m2", job_doc(count=1)), metadata=md, timeout=0.5)
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 5
        _wait_for(lambda: api.submissions.inflight == 0)  # the main process let go of it too
        _wait_for(lambda: handled("DEADLINE_EXCEEDED") + handled("CANCELLED") == 1)


def _server(tmp_path, *extra: str) -> tuple[subprocess.Popen, str, str]:
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    proc = subprocess.Popen(
        [exe, "server", "--cluster", CLUSTER, "--db", str(tmp_path / "s.db"), "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1), line
    raise AssertionError("server did not start: " + "".join(lines))


def _front_ends(pid: int) -> list[psutil.Process]:
    """The live front-end processes of server ``pid`` (not a killed one its watcher has yet to reap)."""
    found = []
    for c in psutil.Process(pid).children():
        try:
            if "xpod.scheduler.grpc.frontends" in " ".join(c.cmdline()):
                found.append(c)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass
    return found


def _alive(p: psutil.Process) -> bool:
    # an orphaned front end is reaped by init at any moment: between is_running() and status()
    # it may be gone (NoSuchProcess), which is as dead as a zombie
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_front_ends_end_with_a_killed_server_and_are_replaced_when_they_die(tmp_path):
    proc, addr, banner = _server(tmp_path, "--frontends", "2")
    said: list[str] = []  # what the server says from now on, read as it comes
    reader = threading.Thread(target=lambda: said.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert banner.rstrip().endswith("; 2 front-end processes")
        fronts = _front_ends(proc.pid)
        assert len(fronts) == 2
        os.kill(fronts[0].pid, signal.SIGKILL)  # one front end dies: another takes its place
        # a new Python process importing gRPC: slow on a loaded 2-core machine
        _wait_for(
            lambda: len(_front_ends(proc.pid)) == 2 and fronts[0].pid not in [p.pid for p in _front_ends(proc.pid)], 120
        )
        _wait_for(lambda: any("exited with -9; starting another" in line for line in said), 60)
        survivors = _front_ends(proc.pid)
        with grpc.insecure_channel(addr) as ch:  # and the address still answers
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=60)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.kill()  # kill -9 of the main process: its front ends go too, the port closes
        proc.wait(timeout=60)
        _wait_for(lambda: not any(_alive(p) for p in survivors), 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=30)
        proc.stdout.close()


def test_front_ends_flag_is_checked(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    r = subprocess.run(
        [exe, "server", "--db", str(tmp_path / "x.db"), "--listen", "127.0.0.1:0", "--frontends", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "--frontends -1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("second", [[], ["--frontends", "0"]])
def test_a_second_server_on_a_port_in_use_is_refused(tmp_path, second):
    # gRPC sets SO_REUSEPORT on listeners by default: without care a second server would share
    # the port (and take part of the first one's clients, with another database)
    proc, addr, _ = _server(tmp_path)
    try:
        exe = os.path.join(os.path.dirname(sys.executable), "xpod")
        r = subprocess.run(
            [exe, "server", "--db", str(tmp_path / "other.db"), "--listen", addr, *second],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1 and f"--listen {addr}: cannot listen" in r.stderr and "Traceback" not in r.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


# --- review findings: each test below failed before its fix --------------------------------------


def _start(tmp_path, **kwargs):
    api = make_api(str(tmp_path / "r.db"))
    return api, build_server(api, Authenticator.from_file(TOKENS), "127.0.0.1:0", **kwargs)


def test_front_ends_outlive_the_thread_that_built_the_server(tmp_path):
    # PR_SET_PDEATHSIG fires when the *thread* that forked a child ends: front ends started
    # from a short-lived thread (build_server called from a worker) got SIGTERM at its exit
    import threading

    api = make_api(str(tmp_path / "r.db"))
    box = []
    builder = threading.Thread(
        target=lambda: box.append(build_server(api, Authenticator.from_file(TOKENS), "127.0.0.1:0", frontends=1))
    )
    builder.start()
    builder.join(60)
    running = box[0]
    try:
        first = running.frontends.pids()
        assert len(first) == 1
        time.sleep(1.5)  # a SIGTERMed front end is gone (and replaced) well within this
        assert running.frontends.pids() == first and running.frontends.restarts == 0
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            assert (
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        running.stop(0)
        api.close()


def test_a_killed_server_leaves_no_socket_directory(tmp_path):
    # the relay's directory was removed only by a graceful stop: every kill -9 (the crash
    # tests, a crash-looping service) left one behind in the temp directory
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--cluster",
            CLUSTER,
            "--db",
            str(tmp_path / "s.db"),
            "--listen",
            "127.0.0.1:0",
            "--frontends",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, TMPDIR=str(tmp)),
    )
    try:
        for line in proc.stdout:
            if "listening on" in line:
                break
        assert [p.name for p in tmp.iterdir() if p.name.startswith("xpod-server-")]  # the directory in use
        fronts = _front_ends(proc.pid)
        assert len(fronts) == 1
        proc.kill()
        proc.wait(timeout=10)
        psutil.wait_procs(fronts, timeout=10)
        _wait_for(lambda: not any(p.name.startswith("xpod-server-") for p in tmp.iterdir()), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_health_watch_through_a_front_end_sees_not_serving_before_the_port_closes(tmp_path):
    # RunningServer.stop promises probes NOT_SERVING before the port closes; with front ends
    # the port (theirs) closed first and a health Watch was cut without ever seeing it
    import threading

    api, running = _start(tmp_path, frontends=1)
    stopper = None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=9)
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
            stopper = threading.Thread(target=running.stop, args=(1.0,))
            stopper.start()
            seen = []
            try:
                for resp in stream:
                    seen.append(resp.status)
            except grpc.RpcError:
                pass  # the stream ends when the front end goes
            assert health_pb2.HealthCheckResponse.NOT_SERVING in seen, seen
    finally:
        if stopper is not None:
            stopper.join(30)
        running.stop(0)
        api.close()


def test_a_long_tmpdir_does_not_stop_the_server_starting(tmp_path, monkeypatch):
    # a Unix socket path holds at most 107 bytes: under a long TMPDIR (CI workspaces) the
    # server with front ends (xpod server's default) could not start at all
    import tempfile

    long_tmp = tmp_path / ("t" * 100)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    api, running = _start(tmp_path, frontends=1)
    try:
        assert len(running.frontends.relay_path.encode()) < 108
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            md = (("authorization", f"Bearer {TOKEN['alice']}"),)
            assert (
                job_service_pb2_grpc.JobServiceStub(ch)
                .SubmitJob(submit_req("lt", job_doc(count=1)), metadata=md, timeout=10)
                .created
            )
    finally:
        running.stop(0)
        api.close()
    assert not os.path.exists(os.path.dirname(running.frontends.relay_path))


def test_a_replaced_front_end_leaves_no_open_pipe(tmp_path):
    # the watcher replaced a dead front end but kept the pipe of its stdout open: one file
    # descriptor leaked per restart
    api, running = _start(tmp_path, frontends=1)
    try:
        old = running.frontends._procs[0]
        os.kill(old.pid, signal.SIGKILL)
        _wait_for(lambda: running.frontends.restarts == 1 and len(running.frontends.pids()) == 1)
        assert old.stdout.closed
    finally:
        running.stop(0)
        api.close()


def test_a_failed_start_lets_go_of_the_port(tmp_path, monkeypatch):
    # the socket holding the port for the front ends stayed open when the start failed after
    # it (here: the relay cannot listen), so the address stayed taken in this process
    import asyncio
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def refuse(*args, **kwargs):
        raise OSError("no relay socket")

    monkeypatch.setattr(asyncio, "start_unix_server", refuse)
    api = make_api(str(tmp_path / "r.db"))
    try:
        with pytest.raises(OSError, match="no relay socket") as failed:
            build_server(api, Authenticator.from_file(TOKENS), f"127.0.0.1:{port}", frontends=1)
        again = socket.socket()
        try:
            again.bind(("127.0.0.1", port))  # a plain bind fails while any socket holds the port
        finally:
            again.close()
        del failed
    finally:
        api.close()


@pytest.mark.parametrize("frontends", [0, 1], ids=["direct", "via-front-end"])
def test_an_error_echoing_a_huge_value_keeps_its_code(tmp_path, frontends):
    # a message quoting a 5,000-character name went out three times (grpc-message, the Status,
    # BadRequest) and passed the client's 8 KiB metadata limit: the client saw
    # RESOURCE_EXHAUSTED "Stream removed" instead of INVALID_ARGUMENT naming the field
    api, running = _start(tmp_path, frontends=frontends)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            md = (("authorization", f"Bearer {TOKEN['alice']}"),)
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            name = outcome(
                lambda: stub.SubmitJob(submit_req("huge1", job_doc("j" * 5000, count=1)), metadata=md, timeout=10)
            )
            key = outcome(
                lambda: stub.SubmitJob(
                    submit_req("huge2", job_doc(count=1, **{"k" * 5000: 1})), metadata=md, timeout=10
                )
            )
        assert name == ("INVALID_ARGUMENT", "INVALID_SPEC", ["metadata.name"]), name
        assert key[:2] == ("INVALID_ARGUMENT", "INVALID_SPEC") and key[2][0].startswith("spec.kkk"), key[:2]
    finally:
        running.stop(0)
        api.close()


def test_a_front_end_that_cannot_be_replaced_at_once_is_tried_again(tmp_path):
    # the main process does not listen on the port itself: a replacement that failed once
    # (out of processes or memory for a moment) left its slot empty for good, and with every
    # slot empty the server was unreachable while it looked alive
    api, running = _start(tmp_path, frontends=1)
    fronts = running.frontends
    launch = fronts._launch
    failures = []

    def flaky():
        if not failures:
            failures.append(1)
            raise OSError("Resource temporarily unavailable")
        return launch()

    try:
        fronts._launch = flaky
        os.kill(fronts.pids()[0], signal.SIGKILL)
        _wait_for(lambda: failures and len(fronts.pids()) == 1, 10)
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            assert (
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        running.stop(0)
        api.close()


def test_an_ipv6_server_names_an_address_its_clients_can_use(tmp_path):
    # the banner said "listening on ::1:PORT", which no gRPC client (xpod --server included)
    # can parse; the server itself (front ends and all) listens on [::1] fine
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--cluster",
            CLUSTER,
            "--db",
            str(tmp_path / "s.db"),
            "--listen",
            "[::1]:0",
            "--frontends",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        addr = None
        for line in proc.stdout:
            m = re.search(r"listening on (\S+?)[;\s]", line)
            if m:
                addr = m.group(1)
                break
        assert addr is not None and re.fullmatch(r"\[::1\]:\d+", addr), addr
        with grpc.insecure_channel(addr) as ch:
            assert (
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_a_front_end_that_dies_at_start_is_reported_as_such(tmp_path):
    # a front end that exited at once (a broken environment) was reported as "no answer in 30 s"
    from xpod.scheduler.grpc.frontends import FrontEnds

    fronts = FrontEnds(1, "127.0.0.1:0", str(tmp_path / "relay.sock"), str(tmp_path / "grpc.sock"), None, 1 << 20)
    fronts._argv = [sys.executable, "-c", "import sys; sys.exit(3)"]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        fronts.start(timeout_s=30)
    assert "exited with 3" in str(err.value) and time.monotonic() - t0 < 10, str(err.value)
    fronts.stop(0)


def test_a_sigterm_that_lands_on_another_thread_still_stops_the_server(tmp_path):
    # The kernel may hand a process's SIGTERM to any thread that does not block it. Python runs
    # the handler only in the main thread, and the main thread slept in an Event.wait() with
    # no timeout that only a signal to itself interrupts: the server ignored the SIGTERM (seen
    # under load: `xpod server` still running 30 s after terminate()).
    import ctypes

    proc, _, _ = _server(tmp_path, "--frontends", "1")
    try:
        threads = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
        other = [t for t in threads if t != proc.pid][0]
        sys_tgkill = 234 if os.uname().machine == "x86_64" else 131  # x86_64, else aarch64
        assert ctypes.CDLL(None, use_errno=True).syscall(sys_tgkill, proc.pid, other, signal.SIGTERM) == 0
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stdout.read()
        proc.stdout.close()
    assert "xpod server: stopping" in out


def test_socket_directories_of_dead_servers_are_swept_live_ones_kept(tmp_path, monkeypatch):
    import socket
    import tempfile

    from xpod.scheduler.grpc import server as service

    def socket_dir(name: str, listening: bool) -> tuple:
        d = tmp_path / name
        d.mkdir(mode=0o700)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(d / "relay.sock"))
        if listening:
            s.listen()
            return d, s
        s.close()  # the file stays, nothing listens: a server killed with its front ends
        (d / "grpc.sock").touch()
        return d, None

    stale, _ = socket_dir("xpod-server-dead", listening=False)
    live, sock = socket_dir("xpod-server-live", listening=True)
    other = tmp_path / "xpod-server-notours"
    other.mkdir()
    (other / "data").write_text("not a socket directory")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        made = service._socket_dir()
        assert os.path.isdir(made) and not stale.exists()
        assert (live / "relay.sock").exists() and (other / "data").exists()
    finally:
        sock.close()
