"""Issue 18, queues from configuration: any queue name was auto-created on first use (3,000
hostile names filled the metrics). A server with a tokens file now accepts the queues it
declares (its ``queues:`` list, its submitters' queues, ``default``): another is INVALID_ARGUMENT
``UNKNOWN_QUEUE``, unless ``--auto-queues N`` lets N be created on first use. Declared queues
carry their own limits. ``xpod up`` (one user) still takes any queue."""

from __future__ import annotations

import grpc
import pytest
from security_harness import CLUSTER, TOKEN, TOKENS_TEXT, job_doc, make_api, refused

from xpod.hal.errors import XpodError
from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc
from xpod.scheduler.grpc.auth import load_access
from xpod.scheduler.service.api import Code
from xpod.scheduler.service.queues import QueuePolicy, Queues

DECLARED = "queues:\n  - shared\n  - {name: tiny, max_pending: 2, max_stored_bytes: 100000}\n" + TOKENS_TEXT


def test_the_tokens_file_declares_queues_with_their_limits(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(DECLARED)
    _, queues = load_access(str(path))
    assert queues.names == {"shared", "tiny", "research", "prod", "default"}
    assert queues.policy("tiny") == QueuePolicy("tiny", 2, 100_000)
    assert queues.auto_queues == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("queues: research\n", "'queues' must be a list"),
        ("queues:\n  - Bad_Name\n", "must be a DNS label"),
        ("queues:\n  - {name: a, max_pending: -1}\n", "max_pending: '-1' is not a positive whole number"),
        ("queues:\n  - {name: a, colour: red}\n", "unknown key 'colour'"),
        ("queues:\n  - a\n  - a\n", "declared twice"),
    ],
)
def test_bad_queue_declarations_are_one_line_naming_the_line(tmp_path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text + TOKENS_TEXT)
    with pytest.raises(XpodError, match=message) as err:
        load_access(str(path))
    assert str(err.value).startswith(f"{path}:") and "\n" not in str(err.value)


def test_an_undeclared_queue_is_refused_and_declared_limits_hold(tmp_path, who):
    queues = Queues((QueuePolicy("shared"), QueuePolicy("tiny", 2, None), QueuePolicy("research")), auto_queues=0)
    api = make_api(str(tmp_path / "q.db"), queues=queues)
    try:
        err = refused(lambda: api.submit_job(who["admin"], "x", job_doc("x", queue="nope")))
        assert (err.code, err.reason, err.field) == (Code.INVALID_ARGUMENT, "UNKNOWN_QUEUE", "spec.queue")
        assert "'nope' is not a queue of this server" in err.message and "shared" in err.message
        for q in ("shared", "default", "research"):
            assert api.submit_job(who["admin"], f"ok-{q}", job_doc("ok", queue=q), timeout_s=30)[1]
        for i in range(2):
            api.submit_job(who["admin"], f"t{i}", job_doc("t", queue="tiny", count=None), timeout_s=30)
        err = refused(lambda: api.submit_job(who["admin"], "t3", job_doc("t", queue="tiny", count=None)))
        assert (err.code, err.reason, err.metadata["limit"]) == (Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", "2")
    finally:
        api.close()


def test_auto_queues_creates_a_capped_number_on_first_use(tmp_path, who):
    api = make_api(str(tmp_path / "a.db"), queues=Queues((QueuePolicy("research"),), auto_queues=2))
    try:
        for q in ("extra-1", "extra-2", "extra-1", "research"):
            api.submit_job(who["admin"], f"r-{q}-{api.store.last_revision()}", job_doc("a", queue=q), timeout_s=30)
        err = refused(lambda: api.submit_job(who["admin"], "x3", job_doc("a", queue="extra-3")))
        assert (err.code, err.reason, err.metadata["maxQueues"]) == (Code.FAILED_PRECONDITION, "TOO_MANY_QUEUES", "2")
    finally:
        api.close()


def _submit(address: str, queue: str, token: str | None):
    channel = grpc.insecure_channel(address)
    try:
        req = jpb.SubmitJobRequest(request_id=f"q-{queue}")
        req.job.update(job_doc("q", queue=queue))
        md = (("authorization", f"Bearer {token}"),) if token else ()
        return job_service_pb2_grpc.JobServiceStub(channel).SubmitJob(req, metadata=md, timeout=30)
    finally:
        channel.close()


@pytest.mark.parametrize("any_queue", [False, True], ids=["xpod-server", "xpod-up"])
def test_the_service_takes_its_queues_from_the_tokens_file(tmp_path, any_queue):
    """``xpod server --tokens`` refuses a queue its file does not declare; ``xpod up`` (one user,
    its own tokens file declares none) takes any queue."""
    from xpod.runtime.cli.app import ServiceOptions, start_service

    path = tmp_path / "tokens.yaml"
    path.write_text(DECLARED)
    options = ServiceOptions(
        store=str(tmp_path / "s.db"),
        listen="127.0.0.1:0",
        cluster_file=CLUSTER,
        tokens_file=str(path),
        any_queue=any_queue,
    )
    service = start_service(options)
    try:
        assert _submit(service.address, "shared", TOKEN["admin"]).created
        if any_queue:
            assert _submit(service.address, "my-experiments", TOKEN["admin"]).created
        else:
            with pytest.raises(grpc.RpcError) as err:
                _submit(service.address, "my-experiments", TOKEN["admin"])
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "'my-experiments' is not a queue of this server" in err.value.details()
    finally:
        service.close()
