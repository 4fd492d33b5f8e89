"""The grpc.aio server's own paths (scheduler.grpc): SubmitJob on the event loop awaiting the
group commit, deadlines and cancels releasing the in-flight slot, the decode guard, handlers
wrapped once at registration (health Watch, metrics), and the pieces that keep the submit path
cheap: the core's one-way calls batched to its child process, the parse cache, checkpoints off
the commit path."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import subprocess
import sys
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service_harness import job_doc, make_api
from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc
from xpod.scheduler.grpc import servicers
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.grpc.server import build_server
from xpod.scheduler.service.auth import OPEN_PRINCIPAL


def submit_req(rid: str, doc: dict) -> jpb.SubmitJobRequest:
    req = jpb.SubmitJobRequest(request_id=rid)
    req.job.update(doc)
    return req


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    for d in rpc_status.from_call(err).details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status")


@pytest.fixture
def live(tmp_path):
    from xpod.scheduler.service.metrics import ServiceMetrics

    api = make_api(str(tmp_path / "x.db"))
    metrics = ServiceMetrics()
    metrics.attach(api)
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield api, channel, running, metrics
    channel.close()
    running.stop(0)
    api.close()


def _stuck_store(api, monkeypatch) -> None:
    """Writes are queued but never commit (a wedged disk)."""
    monkeypatch.setattr(api.store, "submit", lambda write, background=False: concurrent.futures.Future())


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_concurrent_submissions_are_each_acknowledged_once_after_a_group_commit(live):
    api, _, running, _ = live

    async def run() -> list[jpb.SubmitJobResponse]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            calls = [stub.SubmitJob(submit_req(f"c{i}", job_doc(f"j{i}", count=1)), timeout=30) for i in range(64)]
            # the same request id again, concurrently: the same job, not a second one
            calls += [stub.SubmitJob(submit_req("c0", job_doc("j0", count=1)), timeout=30)]
            return await asyncio.gather(*calls)

    # the shape judged once first: the first submissions of a new shape wait for the core's
    # verdict one by one on the admission thread, and may each commit alone
    api.submit_job(OPEN_PRINCIPAL, "warm", job_doc("warm", count=1))
    before = api.store.batches_committed
    answers = asyncio.run(run())
    ids = [a.job.id for a in answers[:64]]
    assert len(set(ids)) == 64 and all(a.created for a in answers[1:64])
    # whichever of the two "c0" calls commits first creates the job; the other gets it back
    assert answers[64].job.id == answers[0].job.id and answers[0].created != answers[64].created
    assert answers[0].job.spec["metadata"]["name"] == "j0"  # the document comes back as sent
    rows = sqlite3.connect(api.store.path).execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM jobs").fetchall()
    assert rows == [(65, 65)]
    assert api.store.batches_committed - before < 64  # grouped: fewer commits than submissions
    assert api.submissions.inflight == 0


def test_submit_without_deadline_is_bounded_by_the_server(live, monkeypatch):
    api, channel, _, metrics = live
    _stuck_store(api, monkeypatch)
    monkeypatch.setattr(servicers, "_DEFAULT_TIMEOUT_S", 0.3)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitJob(submit_req("stuck", job_doc(count=1)))  # no client deadline
    assert time.monotonic() - t0 < 10
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_info(err.value).reason == "DEADLINE_EXCEEDED"
    assert "retry with the same request id" in err.value.details()
    assert api.submissions.inflight == 0


def test_client_deadline_and_cancel_release_the_inflight_slot(live, monkeypatch):
    api, channel, _, metrics = live
    _stuck_store(api, monkeypatch)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitJob(submit_req("late", job_doc(count=1)), timeout=0.3)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: api.submissions.inflight == 0)  # the server's side of that call let go too
    future = stub.SubmitJob.future(submit_req("gone", job_doc(count=1)), timeout=30)
    _wait_for(lambda: api.submissions.inflight >= 1)
    future.cancel()
    _wait_for(lambda: api.submissions.inflight == 0)  # grpc.aio cancelled the handler; it let go
    labels = {"grpc_type": "unary", "grpc_service": "xpod.v1.JobService", "grpc_method": "SubmitJob"}

    def ended(code: str) -> float:
        return metrics.registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": code}) or 0

    # both calls are counted as ended without an answer (which of the two codes the deadline
    # one gets depends on whether the client's cancel or the server's timer comes first)
    _wait_for(lambda: ended("DEADLINE_EXCEEDED") + ended("CANCELLED") == 2)
    assert ended("CANCELLED") >= 1


def test_a_wedged_store_does_not_hold_the_admission_thread(live, monkeypatch):
    # A job shape the core has not judged goes through the admission thread; that thread queues
    # the write and moves on. It once waited for the commit: with a wedged store it never came
    # back, and the interpreter's exit (which joins pool threads) hung after the whole suite.
    api, _, _, _ = live
    _stuck_store(api, monkeypatch)
    submission = api.begin_submit(OPEN_PRINCIPAL, "wedged", job_doc("never-judged", count=3))
    idle = api.submissions.admitting.submit(lambda: None)  # runs only once the admission thread is free
    try:
        idle.result(timeout=30)
    except concurrent.futures.TimeoutError:
        raise AssertionError("the admission thread is still waiting for a write that never commits") from None
    assert not submission.future.done()  # the caller still waits for its commit (the store's to give)
    submission.abandon()


def test_undecodable_request_is_invalid_argument_and_counted(live):
    api, channel, _, metrics = live
    raw = channel.unary_unary(
        "/xpod.v1.JobService/GetJob", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "MALFORMED_REQUEST"
    assert "/xpod.v1.JobService/GetJob" in err.value.details()
    labels = {
        "grpc_type": "unary",
        "grpc_service": "xpod.v1.JobService",
        "grpc_method": "GetJob",
        "grpc_code": "INVALID_ARGUMENT",
    }
    # counted as the handler returns, a moment after the client has its answer
    _wait_for(lambda: metrics.registry.get_sample_value("grpc_server_handled_total", labels) == 1)
    # and the server goes on answering
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    assert stub.SubmitJob(submit_req("after", job_doc(count=1)), timeout=10).created


def test_health_watch_streams_through_the_wrapped_handlers(live):
    api, channel, running, metrics = live
    health = health_pb2_grpc.HealthStub(channel)
    stream = health.Watch(health_pb2.HealthCheckRequest(service="xpod.v1.JobService"), timeout=10)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    assert (
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    _wait_for(
        lambda: (
            metrics.registry.get_sample_value(
                "grpc_server_handled_total",
                {
                    "grpc_type": "server_stream",
                    "grpc_service": "grpc.health.v1.Health",
                    "grpc_method": "Watch",
                    "grpc_code": "CANCELLED",
                },
            )
            == 1
        )
    )


def test_stop_is_idempotent_and_closes_the_port(tmp_path):
    api = make_api(str(tmp_path / "x.db"))
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0")
    port = running.port
    running.stop(0)
    running.stop(0)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            job_service_pb2_grpc.JobServiceStub(ch).SubmitJob(submit_req("x", job_doc()), timeout=2)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    api.close()


def test_listen_failure_is_an_error_not_a_hang(tmp_path):
    api = make_api(str(tmp_path / "x.db"))
    try:
        with pytest.raises((OSError, RuntimeError)):
            build_server(api, Authenticator.open_server(), "203.0.113.1:0")  # not an address of this host
    finally:
        api.close()


# --- the core's child process: one-way calls batched -------------------------------------------


def test_child_core_batches_one_way_calls_in_order(tmp_path):
    from xpod.scheduler.service.core_link import ChildProcessCore

    core = ChildProcessCore()
    sent: list[tuple] = []
    real_send = core._conn.send
    core._conn.send = lambda msg: (sent.append(msg), real_send(msg))[1]
    api = make_api(str(tmp_path / "x.db"), core=core)
    try:
        sent.clear()  # the registrations (ops set_node) went over with the first admission
        api.submit_job(OPEN_PRINCIPAL, "warm", job_doc("warm", count=8))  # the core judges the shape
        api.cancel_job(OPEN_PRINCIPAL, "job-1")
        api.schedule_once()
        sent.clear()
        kept = api.submit_job(OPEN_PRINCIPAL, "keep", job_doc("keep", count=8))[0].record
        gone = api.submit_job(OPEN_PRINCIPAL, "gone", job_doc("gone", count=8))[0].record
        api.cancel_job(OPEN_PRINCIPAL, gone.id)
        assert sent == []  # nothing crossed the pipe yet: buffered until the cycle needs it
        outcome = api.schedule_once()
        assert [m[0] for m in sent] == ["batch", "cycle"]
        # in call order: the cancel, then the one job still queued
        assert [op for op, _ in sent[0][1]] == ["remove_job", "add_job"]
        assert set(outcome.bindings) == {kept.id}  # the cancelled one was removed before the cycle
        assert api.get_job(OPEN_PRINCIPAL, kept.id)[0].record.state.value == "SCHEDULED"
    finally:
        api.close()


def test_child_core_sends_big_bursts_in_bounded_messages():
    from xpod.scheduler.service.core_link import _BATCH_OPS, ChildProcessCore

    placer = ChildProcessCore()
    try:
        sent: list[tuple] = []
        real_send = placer._conn.send
        placer._conn.send = lambda msg: (sent.append(msg), real_send(msg))[1]
        for i in range(2 * _BATCH_OPS + 2):
            placer.remove_job(f"job-{i}")  # idempotent for a job the core never had
        assert placer.cycle(1.0).bindings == {}
        assert [m[0] for m in sent] == ["batch", "batch", "batch", "cycle"]
        assert [len(m[1]) for m in sent[:3]] == [_BATCH_OPS, _BATCH_OPS, 2]
    finally:
        placer.close()


def test_child_core_reports_a_failed_one_way_call_at_the_next_cycle():
    from xpod.scheduler.service.core_link import ChildProcessCore

    placer = ChildProcessCore()
    try:
        placer.remove_job("no-such-job")  # a no-op in the core: fine
        placer._send("no_such_method")  # a one-way call the child cannot run
        with pytest.raises(RuntimeError, match="scheduler core process failed"):
            placer.cycle(1.0)
        assert placer.cycle(2.0).bindings == {}  # reported once; the core goes on
    finally:
        placer.close()


# --- the parse cache ----------------------------------------------------------------------------


def test_parse_cache_shares_the_core_job_per_shape_but_not_errors():
    from xpod.scheduler.service.admission import SpecInvalid, parse_document

    a = parse_document(job_doc("a", count=2))
    b = parse_document(job_doc("b", count=2))
    c = parse_document(job_doc("c", count=4))
    assert (a.name, b.name) == ("a", "b")  # the envelope is read per document
    assert a.core is b.core  # same spec: the parsed core job is reused
    assert c.core is not a.core and c.core.devices.count == 4
    for _ in range(2):  # refused every time, never cached as a success
        with pytest.raises(SpecInvalid) as err:
            parse_document(job_doc("e", count=-1))
        assert err.value.field.startswith("spec.devices")


# --- the store's checkpoints --------------------------------------------------------------------


def test_checkpoints_run_off_the_commit_path(tmp_path):
    from xpod.scheduler.store import SubmitWrite
    from xpod.scheduler.store.sqlite import SqliteStore as Store

    path = str(tmp_path / "c.db")
    store = Store(path, checkpoint_interval_s=0.05)
    try:
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
        store.write_many([SubmitWrite(f"r{i}", "h", "q", "BatchJob", f"n{i}", {"i": i}, 1.0) for i in range(200)])
        _wait_for(lambda: store.checkpoints >= 2)
        # everything committed is in the database file itself now, not only in the WAL (asked
        # again while the store's own checkpoint thread holds the checkpoint: SQLite says busy)

        def in_the_file() -> bool:
            ro = sqlite3.connect(path)
            try:
                busy, wal_frames, checkpointed = ro.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            finally:
                ro.close()
            return busy == 0 and checkpointed == wal_frames

        _wait_for(in_the_file)
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert len(reopened.load_jobs()) == 200
    finally:
        reopened.close()


def test_wal_starts_over_under_continuous_writes(tmp_path):
    """A background checkpointer racing a busy writer never lets the WAL restart; the writer's
    own short pass does, so the WAL stays bounded while submissions keep coming."""
    import os

    from xpod.scheduler.store import SubmitWrite
    from xpod.scheduler.store.sqlite import SqliteStore as Store

    path = str(tmp_path / "w.db")
    # the background thread never runs here (an hour apart): the test makes its passes itself,
    # one every 10 batches, so what it checks does not depend on how busy the machine is
    store = Store(path, checkpoint_interval_s=3600, wal_restart_frames=50)
    try:
        for k in range(300):  # ~3,000 pages of WAL frames without restarts (~12 MB)
            store.write_many(
                [
                    SubmitWrite(f"r{k}-{i}", "h", "q", "BatchJob", f"n{i}", {"i": i, "pad": "x" * 400}, 1.0)
                    for i in range(20)
                ]
            )
            if k % 10 == 9:
                store.checkpoint_pass()
        assert store.writer_checkpoints >= 10
        assert os.path.getsize(path + "-wal") < 2 * 1024 * 1024
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert len(reopened.load_jobs()) == 6000
    finally:
        reopened.close()


# --- the command line -----------------------------------------------------------------------------


def test_server_core_flags_are_exclusive():
    exe = [sys.executable, "-m", "xpod.runtime.cli", "server"]
    proc = subprocess.run(exe + ["--core-process", "--core-in-process"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


# --- the garbage collector --------------------------------------------------------------------


class _FakeContext:
    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return 10.0


def test_submit_path_makes_no_reference_cycles(api):
    """Cyclic garbage is what a frozen permanent generation would keep (scheduler.service.tuning):
    the submit path must free everything by reference counting."""
    import gc

    from xpod.scheduler.grpc.servicers import JobServicer, _LoopWaiter

    async def run(prefix: str) -> None:
        servicer = JobServicer(api, Authenticator.open_server(), None, None, _LoopWaiter(asyncio.get_running_loop()))
        ctx = _FakeContext()
        answers = await asyncio.gather(
            *(servicer.SubmitJob(submit_req(f"{prefix}{i}", job_doc(f"j{i}", count=1)), ctx) for i in range(40))
        )
        assert all(a.created for a in answers)

    asyncio.run(run("warm"))  # first calls fill caches
    gc.collect()
    gc.disable()
    try:
        asyncio.run(run("cyc"))
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_gc_freezer_freezes_and_hands_back():
    import gc

    from xpod.scheduler.service.tuning import GcFreezer

    with pytest.raises(ValueError):
        GcFreezer(freeze_interval_s=1.0, full_interval_s=0.5)
    freezer = GcFreezer(freeze_interval_s=0.02, full_interval_s=0.1).start()
    try:
        assert gc.get_freeze_count() > 0
        _wait_for(lambda: freezer.freezes >= 3 and freezer.full_collections >= 1)
    finally:
        freezer.stop()
    assert gc.get_freeze_count() == 0
