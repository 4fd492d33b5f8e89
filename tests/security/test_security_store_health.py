"""Issue 18: a store that cannot write answered UNKNOWN while health stayed SERVING. Here the
service as ``xpod server`` wires it (``runtime.cli.app.start_service``: real SQLite, real gRPC
server, the standard grpc.health.v1 probe) loses its database's ability to write: SQLite itself
refuses (a full database: ``max_page_count`` reached, SQLITE_FULL; a read-only one: the
writer's connection in query-only mode, as a read-only file answers). Each time: SubmitJob is
UNAVAILABLE ``STORE_UNAVAILABLE``, the health probe turns NOT_SERVING, and the failure is logged."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from security_harness import CLUSTER, job_doc
from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc


def _fill(conn) -> None:
    """The database may not grow past the pages it has: the next write that needs a page fails
    with SQLite's 'database or disk is full'."""
    pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def _read_only(conn) -> None:
    conn.execute("PRAGMA query_only = ON")


def _submit(stub, rid: str):
    req = jpb.SubmitJobRequest(request_id=rid)
    req.job.update(job_doc(rid, env={"PAD": "x" * 200_000}))
    return stub.SubmitJob(req, timeout=30)


def _health(channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service="xpod.v1.JobService"), timeout=10)
        .status
    )


@pytest.mark.parametrize("break_store", [_fill, _read_only], ids=["full", "read-only"])
def test_an_unwritable_store_is_unavailable_and_not_serving(tmp_path, caplog, break_store):
    from xpod.runtime.cli.app import ServiceOptions, start_service

    service = start_service(ServiceOptions(store=str(tmp_path / "h.db"), listen="127.0.0.1:0", cluster_file=CLUSTER))
    channel = grpc.insecure_channel(service.address)
    try:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        assert _submit(stub, "before").created
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        # the writer's own connection (test-only access): SQLite refuses its next transaction
        break_store(service.api.store._conn)
        with caplog.at_level(logging.ERROR, logger="xpod.store"):
            with pytest.raises(grpc.RpcError) as err:
                _submit(stub, "after")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
        infos = [d for d in rpc_status.from_call(err.value).details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
        info = error_details_pb2.ErrorInfo()
        infos[0].Unpack(info)
        assert info.reason == "STORE_UNAVAILABLE", info
        assert any("a write failed, nothing acknowledged" in r.getMessage() for r in caplog.records), caplog.text
        deadline = time.monotonic() + 30
        while _health(channel) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health stayed SERVING 30 s after the store failed"
            time.sleep(0.1)
    finally:
        channel.close()
        service.close()
