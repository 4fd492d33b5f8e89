"""The gRPC adapter (scheduler.grpc): status details, health, reflection, deadlines,
hostile messages, and the authorisation matrix (every role x every call)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service_harness import TOKEN, TOKENS, job_doc, make_api
from xpod.proto.xpod.v1 import (
    cluster_service_pb2 as cpb,
    cluster_service_pb2_grpc,
    job_service_pb2 as jpb,
    job_service_pb2_grpc,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    types_pb2,
)
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.service.auth import Call
from xpod.scheduler.grpc.server import SERVICE_NAMES, build_server


@pytest.fixture(params=[0, 1], ids=["direct", "via-front-end"])
def server(tmp_path, request):
    """The server answering on its port itself, or (``xpod server``'s default) through a front-end
    process (scheduler.grpc.frontends): every test of this fixture must pass both ways."""
    api = make_api(str(tmp_path / "x.db"))
    running = build_server(api, Authenticator.from_file(TOKENS), "127.0.0.1:0", frontends=request.param)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield api, channel, running.port
    channel.close()
    running.stop(0)
    api.close()


def md(who: str | None):
    return (("authorization", f"Bearer {TOKEN[who]}"),) if who else ()


def submit_req(rid: str, doc: dict) -> jpb.SubmitJobRequest:
    req = jpb.SubmitJobRequest(request_id=rid)
    req.job.update(doc)
    return req


def details(err: grpc.RpcError) -> dict:
    status = rpc_status.from_call(err)
    out = {}
    for d in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out[cls.__name__] = msg
    return out


def test_submit_get_and_rich_errors(server):
    api, ch, _ = server
    jobs = job_service_pb2_grpc.JobServiceStub(ch)
    resp = jobs.SubmitJob(submit_req("r1", job_doc(tasks=2)), metadata=md("alice"), timeout=10)
    assert resp.created and resp.job.state == types_pb2.JOB_STATE_QUEUED and resp.job.id == "job-1"
    assert resp.job.spec["spec"]["tasks"] == 2
    api.schedule_once()
    got = jobs.GetJob(jpb.GetJobRequest(job_id="job-1"), metadata=md("alice"), timeout=10)
    assert got.job.state == types_pb2.JOB_STATE_SCHEDULED and len(got.job.allocations) == 2
    assert [e.type for e in got.events] == [types_pb2.JOB_EVENT_TYPE_SUBMITTED, types_pb2.JOB_EVENT_TYPE_SCHEDULED]

    bad = job_doc()
    bad["spec"]["devices"]["count"] = -2
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(submit_req("r2", bad), metadata=md("alice"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    d = details(err.value)
    assert d["ErrorInfo"].reason == "INVALID_SPEC" and d["ErrorInfo"].domain == "xpod.io"
    assert d["BadRequest"].field_violations[0].field == "spec.devices.count"

    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(submit_req("r1", job_doc(tasks=3)), metadata=md("alice"), timeout=10)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(submit_req("r3", job_doc(tasks=9)), metadata=md("alice"), timeout=10)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert details(err.value)["ErrorInfo"].reason == "EXCEEDS_CLUSTER_CAPACITY"
    with pytest.raises(grpc.RpcError) as err:
        jobs.GetJob(jpb.GetJobRequest(job_id="job-99"), metadata=md("alice"), timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(jpb.SubmitJobRequest(request_id="nojob"), metadata=md("alice"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_shedding_carries_retry_info(tmp_path):
    from xpod.scheduler.service.api import Limits

    api = make_api(str(tmp_path / "x.db"), limits=Limits(max_inflight_submissions=0))
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            with pytest.raises(grpc.RpcError) as err:
                job_service_pb2_grpc.JobServiceStub(ch).SubmitJob(submit_req("r", job_doc()), timeout=10)
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        retry = details(err.value)["RetryInfo"].retry_delay
        assert retry.seconds + retry.nanos / 1e9 > 0
    finally:
        running.stop(0)
        api.close()


def test_health_and_reflection(server):
    _, ch, _ = server
    health = health_pb2_grpc.HealthStub(ch)
    for name in ("",) + SERVICE_NAMES:
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert set(SERVICE_NAMES) <= names and "grpc.health.v1.Health" in names


def test_watch_stream_resumes(server):
    api, ch, _ = server
    jobs = job_service_pb2_grpc.JobServiceStub(ch)
    for i in range(3):
        jobs.SubmitJob(submit_req(f"r{i}", job_doc(f"j{i}")), metadata=md("admin"), timeout=10)
    stream = jobs.WatchJobs(jpb.WatchJobsRequest(from_revision=1), metadata=md("admin"), timeout=10)
    revs = [next(stream).event.revision for _ in range(2)]
    stream.cancel()
    assert revs == [2, 3]


def test_deadline_is_honoured(server):
    api, ch, _ = server
    jobs = job_service_pb2_grpc.JobServiceStub(ch)
    # a watch with nothing new to send ends at the client's deadline, not later
    stream = jobs.WatchJobs(jpb.WatchJobsRequest(from_revision=0), metadata=md("admin"), timeout=0.5)
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # the server's own deadline handling: a submission whose deadline is already spent
    from xpod.scheduler.service.api import ApiError, Code
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL

    with pytest.raises(ApiError) as aerr:
        api.submit_job(OPEN_PRINCIPAL, "late", job_doc(), timeout_s=0.0)
    assert aerr.value.code is Code.DEADLINE_EXCEEDED


def test_hostile_messages_keep_the_server_up(server):
    api, ch, port = server
    jobs = job_service_pb2_grpc.JobServiceStub(ch)
    # larger than the 4 MiB message limit: refused by gRPC itself
    req = jpb.SubmitJobRequest(request_id="huge")
    req.job.update({"kind": "TrainingJob", "metadata": {"name": "x"}, "spec": {"blob": "x" * (5 * 2**20)}})
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(req, metadata=md("admin"), timeout=10)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # garbage bytes where a protobuf message should be
    raw = ch.unary_unary(
        "/xpod.v1.JobService/SubmitJob", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff\xff\x0f garbage", metadata=md("admin"), timeout=10)
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    # unknown protobuf fields are skipped (proto3), unknown keys in the job are refused
    extra = jpb.SubmitJobRequest(request_id="extra").SerializeToString() + b"\xa0\x06\x01"  # field 100 = 1
    with pytest.raises(grpc.RpcError) as err:
        raw(extra, metadata=md("admin"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # no job document
    wrong = job_doc()
    wrong["spec"]["tasks"] = [1, 2]
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(submit_req("w", wrong), metadata=md("admin"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    deep: dict = {}
    cur = deep
    for _ in range(25):
        cur["x"] = {}
        cur = cur["x"]
    nested = job_doc()
    nested["metadata"]["labels"] = deep
    with pytest.raises(grpc.RpcError) as err:
        jobs.SubmitJob(submit_req("deep", nested), metadata=md("admin"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # still up and serving
    assert jobs.SubmitJob(submit_req("ok", job_doc()), metadata=md("admin"), timeout=10).created


# --- authorisation matrix ---------------------------------------------------------------------

ROLES = ("admin", "agent", "alice", "bob", None, "bogus")
OK, DENIED, UNAUTH = "OK", "PERMISSION_DENIED", "UNAUTHENTICATED"
JOB_CALLS = {
    Call.SUBMIT_JOB,
    Call.GET_JOB,
    Call.LIST_JOBS,
    Call.CANCEL_JOB,
    Call.WATCH_JOBS,
    Call.EXPLAIN_JOB,
    Call.GET_MOE_HISTORY,
}
NODE_CALLS = {
    Call.REGISTER_NODES,
    Call.HEARTBEAT,
    Call.WATCH_ASSIGNMENTS,
    Call.REPORT_TASK_STATUS,
    Call.REPORT_EXPERT_LOADS,
    Call.REPORT_LOAD,
}


def expected(role, call: Call) -> str:
    if role in (None, "bogus"):
        return UNAUTH
    if role == "admin":
        return OK
    if role == "agent":
        return DENIED if call in JOB_CALLS else OK
    if role == "alice":  # submitter of queue research; every job here is in research
        return DENIED if call in NODE_CALLS else OK
    if call in (Call.GET_JOB, Call.CANCEL_JOB, Call.EXPLAIN_JOB, Call.GET_MOE_HISTORY):
        return "NOT_FOUND"  # bob: queue prod only; another queue's job is answered as no job (issue 18)
    return DENIED if call in JOB_CALLS | NODE_CALLS else OK  # bob: queue prod only


def invoke(api, ch, call: Call, role):
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL

    meta = (("authorization", "Bearer not-a-known-token-xx"),) if role == "bogus" else md(role)
    jobs = job_service_pb2_grpc.JobServiceStub(ch)
    nodes = node_service_pb2_grpc.NodeServiceStub(ch)
    cluster = cluster_service_pb2_grpc.ClusterServiceStub(ch)
    # a fresh research job, bound to a node, for the calls that need one
    view, _ = api.submit_job(OPEN_PRINCIPAL, f"setup-{call.value}-{role}", job_doc(f"s-{call.value.lower()}", count=1))
    api.schedule_once()
    job = api.get_job(OPEN_PRINCIPAL, view.record.id)[0].record
    node = job.allocations[0].node
    try:
        return _call(jobs, nodes, cluster, meta, call, role, job, node)
    finally:
        if not api.get_job(OPEN_PRINCIPAL, job.id)[0].record.state.terminal:
            api.cancel_job(OPEN_PRINCIPAL, job.id)  # keep the 32 devices free for the next case


def _call(jobs, nodes, cluster, meta, call, role, job, node):
    t = 10
    if call is Call.SUBMIT_JOB:
        resp = jobs.SubmitJob(submit_req(f"m-{role}", job_doc("m", count=1)), metadata=meta, timeout=t)
        jobs.CancelJob(jpb.CancelJobRequest(job_id=resp.job.id), metadata=md("admin"), timeout=t)
        return resp
    if call is Call.GET_JOB:
        return jobs.GetJob(jpb.GetJobRequest(job_id=job.id), metadata=meta, timeout=t)
    if call is Call.LIST_JOBS:
        return jobs.ListJobs(jpb.ListJobsRequest(queue="research"), metadata=meta, timeout=t)
    if call is Call.CANCEL_JOB:
        return jobs.CancelJob(jpb.CancelJobRequest(job_id=job.id), metadata=meta, timeout=t)
    if call is Call.WATCH_JOBS:
        return next(jobs.WatchJobs(jpb.WatchJobsRequest(queue="research"), metadata=meta, timeout=t))
    if call is Call.EXPLAIN_JOB:
        return jobs.ExplainJob(jpb.ExplainJobRequest(job_id=job.id), metadata=meta, timeout=t)
    if call is Call.REGISTER_NODES:
        n = types_pb2.Node(
            name=f"n-{role}", devices=[types_pb2.Device(index=0, vendor="cuda", model="nvidia-h100-sxm", health="ok")]
        )
        return nodes.RegisterNodes(npb.RegisterNodesRequest(nodes=[n]), metadata=meta, timeout=t)
    if call is Call.HEARTBEAT:
        return nodes.Heartbeat(npb.HeartbeatRequest(nodes=[npb.NodeHeartbeat(node=node)]), metadata=meta, timeout=t)
    if call is Call.WATCH_ASSIGNMENTS:
        return next(nodes.WatchAssignments(npb.WatchAssignmentsRequest(nodes=[node]), metadata=meta, timeout=t))
    if call is Call.REPORT_TASK_STATUS:
        report = npb.TaskReport(job_id=job.id, node=node, state=npb.TASK_STATE_RUNNING)
        answers = nodes.ReportTaskStatus(npb.ReportTaskStatusRequest(reports=[report]), metadata=meta, timeout=t)
        assert [a.refused_reason for a in answers.answers] == [""]
        return answers
    if call is Call.GET_MOE_HISTORY:  # the job has no spec.moe: past the checks, FAILED_PRECONDITION
        return _past_authorisation(
            lambda: jobs.GetMoeHistory(jpb.GetMoeHistoryRequest(job_id=job.id), metadata=meta, timeout=t)
        )
    if call is Call.REPORT_EXPERT_LOADS:
        req = npb.ReportExpertLoadsRequest(job_id=job.id, node=node, layers=2, experts=4)
        return _past_authorisation(lambda: nodes.ReportExpertLoads(req, metadata=meta, timeout=t))
    if call is Call.REPORT_LOAD:  # the job has no spec.autoscale: past the checks, FAILED_PRECONDITION
        req = npb.ReportLoadRequest(job_id=job.id, node=node, replica=0, value=1.0)
        return _past_authorisation(lambda: nodes.ReportLoad(req, metadata=meta, timeout=t))
    if call is Call.GET_CLUSTER:
        return cluster.GetCluster(cpb.GetClusterRequest(), metadata=meta, timeout=t)
    if call is Call.LIST_NODES:
        return cluster.ListNodes(cpb.ListNodesRequest(), metadata=meta, timeout=t)
    if call is Call.LIST_DEVICES:
        return cluster.ListDevices(cpb.ListDevicesRequest(), metadata=meta, timeout=t)
    raise AssertionError(call)


def _past_authorisation(call):
    """A call that passed authentication and authorisation and was then refused for what it
    asked (FAILED_PRECONDITION: a job without spec.moe or spec.autoscale) counts as allowed."""
    try:
        return call()
    except grpc.RpcError as err:
        details = err.details() or ""
        if err.code() is not grpc.StatusCode.FAILED_PRECONDITION or not (
            "no spec.moe" in details or "no spec.autoscale" in details
        ):
            raise
        return None


def test_authorisation_matrix(server):
    api, ch, _ = server
    got, want = {}, {}
    for call in Call:
        for role in ROLES:
            try:
                invoke(api, ch, call, role)
                outcome = OK
            except grpc.RpcError as err:
                outcome = err.code().name
            got[(call.value, role)] = outcome
            want[(call.value, role)] = expected(role, call)
    assert got == want
    assert len(got) == len(Call) * len(ROLES) == 96


def test_generated_code_has_not_drifted(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    gen = os.path.join(repo, "proto", "generate.py")
    subprocess.run([sys.executable, gen, "--out", str(tmp_path)], check=True, capture_output=True, timeout=120)
    committed = os.path.join(repo, "proto", "xpod", "v1")
    names = sorted(os.listdir(tmp_path))
    assert names and names == sorted(
        n for n in os.listdir(committed) if n.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
    )
    for name in names:
        with open(os.path.join(committed, name), encoding="utf-8") as a, open(tmp_path / name, encoding="utf-8") as b:
            assert a.read() == b.read(), f"proto/xpod/v1/{name} differs from the .proto: run `make proto`"


def test_buf_lint_is_clean():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    buf = os.path.join(os.path.dirname(sys.executable), "buf")
    assert os.path.exists(buf), "buf is missing: pip install -e '.[dev]' (buf-bin)"
    proc = subprocess.run([buf, "lint"], cwd=os.path.join(repo, "proto"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stream_limit_refuses_with_retry_info(tmp_path):
    api = make_api(str(tmp_path / "x.db"))
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0", max_workers=4)  # 2 streams
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            jobs.SubmitJob(submit_req("r", job_doc()), timeout=10)
            open_streams = [jobs.WatchJobs(jpb.WatchJobsRequest(), timeout=30) for _ in range(2)]
            for s in open_streams:
                next(s)  # both are being served
            third = jobs.WatchJobs(jpb.WatchJobsRequest(), timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                next(third)
            assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details(err.value)["RetryInfo"].retry_delay.seconds == 5
            assert jobs.ListJobs(jpb.ListJobsRequest(), timeout=10).jobs  # unary calls still served
            for s in open_streams:
                s.cancel()
            deadline = time.time() + 10
            while True:  # a slot frees once a cancelled stream notices
                try:
                    next(jobs.WatchJobs(jpb.WatchJobsRequest(), timeout=30))
                    break
                except grpc.RpcError:
                    assert time.time() < deadline
                    time.sleep(0.2)
    finally:
        running.stop(0)
        api.close()
