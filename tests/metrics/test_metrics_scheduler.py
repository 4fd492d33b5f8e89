"""Scheduler metrics (scheduler/service/metrics.py, scheduler/grpc/metrics.py): the series an
in-process SchedulerApi exports after submit, cycle, preemption and a node timeout (injected
clock), promtool's lint of the whole exposition, and grpc_server_* from a real `xpod server`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time

import grpc
import pytest

from xpod.hal.device import Health
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(os.path.dirname(HERE), "fixtures", "metrics_scheduler", "small-cluster.yaml")
_spec = importlib.util.spec_from_file_location("metrics_harness_sched", os.path.join(HERE, "metrics_harness.py"))
mh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mh)

MODEL = "nvidia-h100-sxm"


def job_doc(
    name: str, *, count: int = 8, queue: str = "research", priority_class: str = "normal", kind: str = "TrainingJob"
):
    return {
        "apiVersion": "xpod/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "tasks": 1,
            "devices": {"count": count, "model": MODEL},
            "queue": queue,
            "priority_class": priority_class,
        },
    }


def samples(registry) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} of one scrape."""
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap, name: str, **labels) -> float | None:
    return snap.get((name, tuple(sorted(labels.items()))))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def system(tmp_path):
    """SchedulerApi over an agent-registered pod: a1, a2 in super-node s1, b1 in s2 (8 H100 each),
    node timeout 10 s, an injected clock; no scheduling thread (tests call schedule_once)."""
    from xpod.scheduler.contract import DeviceRecord, NodeRecord
    from xpod.scheduler.service.api import OPEN_PRINCIPAL, SchedulerApi
    from xpod.scheduler.service.core_link import InProcessCore
    from xpod.scheduler.service.metrics import ServiceMetrics

    clock = Clock(1000.0)
    metrics = ServiceMetrics()
    api = SchedulerApi(str(tmp_path / "xpod.db"), InProcessCore(), clock=clock, node_timeout_s=10.0, metrics=metrics)
    for name, supernode in (("a1", "s1"), ("a2", "s1"), ("b1", "s2")):
        devices = tuple(DeviceRecord(i, "cuda", MODEL, 80 << 30) for i in range(8))
        api.register_node(OPEN_PRINCIPAL, NodeRecord(name, devices, labels=(("supernode", supernode),)))
    yield api, metrics, clock, OPEN_PRINCIPAL
    api.close()


def test_nodes_blocks_wait_running_preemption_and_node_timeout(system):
    api, metrics, clock, who = system
    reg = metrics.registry
    s = samples(reg)
    assert value(s, "xpod_scheduler_nodes", state="ready") == 3
    assert value(s, "xpod_scheduler_nodes", state="not_ready") == 0
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="node") == 8
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="supernode") == 16

    # three low-priority jobs fill the pod; they waited 12 s from submission to placement
    low = [api.submit_job(who, f"low-{i}", job_doc(f"low-{i}", priority_class="low"))[0].record.id for i in range(3)]
    clock.t += 12.0
    out = api.schedule_once()
    assert set(out.bindings) == set(low)
    s = samples(reg)
    assert value(s, "xpod_scheduler_queue_wait_seconds_count", queue="research", kind="training") == 3
    assert value(s, "xpod_scheduler_queue_wait_seconds_sum", queue="research", kind="training") == pytest.approx(36.0)
    assert value(s, "xpod_scheduler_queue_wait_seconds_bucket", queue="research", kind="training", le="10.0") == 0
    assert value(s, "xpod_scheduler_queue_wait_seconds_bucket", queue="research", kind="training", le="30.0") == 3
    assert value(s, "xpod_scheduler_running_jobs", queue="research", kind="training") == 3
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="node") == 0
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="supernode") == 0
    assert value(s, "xpod_scheduler_preemption_attempts_total") == 0

    # a high-priority batch job 5 s later preempts one of them (one attempt, one eviction)
    high = api.submit_job(who, "high", job_doc("high", priority_class="high", kind="BatchJob"))[0].record.id
    clock.t += 5.0
    out = api.schedule_once()
    assert high in out.bindings and len(out.evictions) == 1
    victim = next(iter(out.evictions))
    s = samples(reg)
    assert value(s, "xpod_scheduler_preemption_attempts_total") == 1
    assert value(s, "xpod_scheduler_evicted_jobs_total", queue="research", reason="preempted") == 1
    assert value(s, "xpod_scheduler_queue_wait_seconds_count", queue="research", kind="batch") == 1
    assert value(s, "xpod_scheduler_queue_wait_seconds_sum", queue="research", kind="batch") == pytest.approx(5.0)
    assert value(s, "xpod_scheduler_running_jobs", queue="research", kind="training") == 2
    assert value(s, "xpod_scheduler_running_jobs", queue="research", kind="batch") == 1
    assert sum(v for (n, _), v in s.items() if n == "xpod_scheduler_pending_jobs") == 1  # the victim, requeued

    # the victim (low priority) finds no victims of its own: no further attempt is counted
    api.schedule_once()
    assert value(samples(reg), "xpod_scheduler_preemption_attempts_total") == 1

    # b1 stops heartbeating: NotReady after the 10 s timeout; its job is evicted (restart policy)
    on_b1 = [j.id for j in (api.jobs.get(x) for x in low + [high]) if any(a.node == "b1" for a in j.allocations)]
    assert len(on_b1) == 1
    clock.t += 11.0
    for n in ("a1", "a2"):
        api.heartbeat(who, {n: {}})
    assert api.liveness.check() == ["b1"]
    s = samples(reg)
    assert value(s, "xpod_scheduler_nodes", state="ready") == 2
    assert value(s, "xpod_scheduler_nodes", state="not_ready") == 1
    assert value(s, "xpod_scheduler_evicted_jobs_total", queue="research", reason="node_not_ready") == 1
    # b1's devices are not free while it is NotReady; a1 and a2 are full
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="node") == 0

    # the requeued jobs are placed again when b1 returns, but that is not a first placement
    api.heartbeat(who, {"b1": {}})
    api.liveness.check()
    clock.t += 1.0
    out = api.schedule_once()
    assert out.bindings, "a requeued job should be placed on b1 again"
    s = samples(reg)
    assert value(s, "xpod_scheduler_nodes", state="not_ready") == 0
    waits = sum(v for (n, _), v in s.items() if n == "xpod_scheduler_queue_wait_seconds_count")
    assert waits == 4  # three low jobs and the high one: each counted once, at its first placement
    assert victim not in out.evictions


def test_largest_free_block_counts_partial_nodes_and_unhealthy_devices(system):
    api, metrics, clock, who = system
    job = api.submit_job(who, "half", job_doc("half", count=4))[0].record.id
    api.schedule_once()
    node = api.jobs.get(job).allocations[0].node
    other = "b1" if node != "b1" else "a1"
    api.heartbeat(who, {other: {0: Health.CRITICAL, 1: Health.ALARM, 2: Health.WARNING}})  # warning still takes work
    api.liveness.check()  # applies the reported health
    s = samples(metrics.registry)
    sizes = {"a1": 8, "a2": 8, "b1": 8}
    sizes[node] -= 4
    sizes[other] -= 2
    supers = {"s1": sizes["a1"] + sizes["a2"], "s2": sizes["b1"]}
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="node") == max(sizes.values())
    assert value(s, "xpod_scheduler_largest_free_block_devices", pool=MODEL, level="supernode") == max(supers.values())

    # a device the job holds turns critical: the core evicts the job, counted by reason
    held = int(api.jobs.get(job).allocations[0].devices[0].rsplit("/", 1)[1])
    api.heartbeat(who, {node: {held: Health.CRITICAL}})
    api.liveness.check()
    out = api.schedule_once()
    assert job in out.evictions
    assert (
        value(
            samples(metrics.registry), "xpod_scheduler_evicted_jobs_total", queue="research", reason="device_unhealthy"
        )
        == 1
    )


def test_exposition_passes_promtool_lint(system):
    api, metrics, clock, who = system
    api.submit_job(who, "j", job_doc("j"))
    clock.t += 3.0
    api.schedule_once()
    text = generate_latest(metrics.registry)
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    for name in (
        "xpod_scheduler_nodes",
        "xpod_scheduler_queue_wait_seconds",
        "xpod_scheduler_running_jobs",
        "xpod_scheduler_preemption_attempts",
        "xpod_scheduler_evicted_jobs",
        "xpod_scheduler_largest_free_block_devices",
        "grpc_server_handled",
        "grpc_server_handling_seconds",
        "xpod_scheduler_scheduling_attempt_duration_seconds",
        "xpod_scheduler_scheduling_cycle_duration_seconds",
    ):
        assert name in names
    res = subprocess.run([mh.tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert res.returncode == 0 and res.stdout.decode().strip() == "" and res.stderr.decode().strip() == "", (
        res.stdout,
        res.stderr,
    )


def test_server_process_exports_grpc_server_metrics(tmp_path):
    from xpod.proto.xpod.v1 import cluster_service_pb2 as cpb, cluster_service_pb2_grpc
    from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc

    port = mh.free_port()
    argv = [
        mh.XPOD,
        "server",
        "--cluster",
        CLUSTER,
        "--db",
        str(tmp_path / "xpod.db"),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        f"127.0.0.1:{port}",
    ]
    with mh.running(argv, "listening on", timeout_s=60) as (_, line, _reader):
        grpc_port = int(re.search(r"listening on [^:]+:(\d+)", line).group(1))
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            cluster = cluster_service_pb2_grpc.ClusterServiceStub(ch)
            jobs = job_service_pb2_grpc.JobServiceStub(ch)
            for _ in range(2):
                cluster.GetCluster(cpb.GetClusterRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as err:
                jobs.GetJob(jpb.GetJobRequest(job_id="job-404"), timeout=10)
            assert err.value.code() is grpc.StatusCode.NOT_FOUND
            # a watch that the client's deadline ends: counted when the stream closes
            with pytest.raises(grpc.RpcError):
                list(jobs.WatchJobs(jpb.WatchJobsRequest(from_revision=0), timeout=0.5))
        text = ""
        for _ in range(50):  # the stream's end reaches the server a moment after the client's
            status, body = mh.http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            text = body.decode()
            if _watch_done(text):
                break
            time.sleep(0.1)
    s = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            s[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    svc = "xpod.v1.ClusterService"
    assert (
        value(
            s,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service=svc,
            grpc_method="GetCluster",
            grpc_code="OK",
        )
        == 2
    )
    assert (
        value(
            s,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service="xpod.v1.JobService",
            grpc_method="GetJob",
            grpc_code="NOT_FOUND",
        )
        == 1
    )
    assert (
        value(s, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service=svc, grpc_method="GetCluster")
        == 2
    )
    assert (
        value(
            s,
            "grpc_server_started_total",
            grpc_type="server_stream",
            grpc_service="xpod.v1.JobService",
            grpc_method="WatchJobs",
        )
        == 1
    )
    watch = {
        dict(k[1])["grpc_code"]: v
        for k, v in s.items()
        if k[0] == "grpc_server_handled_total" and dict(k[1])["grpc_method"] == "WatchJobs"
    }
    assert watch == {"DEADLINE_EXCEEDED": 1}, watch


def _watch_done(text: str) -> bool:
    return any(
        line.startswith("grpc_server_handled_total{") and 'grpc_method="WatchJobs"' in line
        for line in text.splitlines()
    )


def test_grpc_handler_codes_for_ok_abort_raise_and_streams():
    """Handlers counted as the server wraps them (``wrap_aio_handler``), on a real ``grpc.aio``
    server over a raw-bytes service: each way a call can end gets its code."""
    import asyncio
    import threading

    from prometheus_client import CollectorRegistry

    from xpod.scheduler.grpc.metrics import wrap_aio_handler
    from xpod.scheduler.service.metrics import GrpcCounters

    async def ok(req, ctx):
        return req

    async def abort(req, ctx):
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no")

    async def boom(req, ctx):
        raise RuntimeError("bug")

    async def stream(req, ctx):
        yield b"a"
        yield b"b"

    async def stream_boom(req, ctx):
        yield b"a"
        raise RuntimeError("bug")

    reg = CollectorRegistry()
    m = GrpcCounters(reg)
    handlers = {
        name: wrap_aio_handler(m, f"/t.v1.Svc/{name}", factory(fn))
        for name, factory, fn in (
            ("Ok", grpc.unary_unary_rpc_method_handler, ok),
            ("Abort", grpc.unary_unary_rpc_method_handler, abort),
            ("Boom", grpc.unary_unary_rpc_method_handler, boom),
            ("Stream", grpc.unary_stream_rpc_method_handler, stream),
            ("StreamBoom", grpc.unary_stream_rpc_method_handler, stream_boom),
        )
    }
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.v1.Svc", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert ch.unary_unary("/t.v1.Svc/Ok")(b"x", timeout=10) == b"x"
            for method, code in (("Abort", grpc.StatusCode.PERMISSION_DENIED), ("Boom", grpc.StatusCode.UNKNOWN)):
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary(f"/t.v1.Svc/{method}")(b"x", timeout=10)
                assert err.value.code() is code
            assert list(ch.unary_stream("/t.v1.Svc/Stream")(b"x", timeout=10)) == [b"a", b"b"]
            with pytest.raises(grpc.RpcError):
                list(ch.unary_stream("/t.v1.Svc/StreamBoom")(b"x", timeout=10))
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary("/t.v1.Svc/Missing")(b"x", timeout=10)
            assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
    s = samples(reg)
    handled = {
        (dict(k[1])["grpc_method"], dict(k[1])["grpc_code"], dict(k[1])["grpc_type"]): v
        for k, v in s.items()
        if k[0] == "grpc_server_handled_total"
    }
    assert handled == {
        ("Ok", "OK", "unary"): 1,
        ("Abort", "PERMISSION_DENIED", "unary"): 1,
        ("Boom", "UNKNOWN", "unary"): 1,
        ("Stream", "OK", "server_stream"): 1,
        ("StreamBoom", "UNKNOWN", "server_stream"): 1,
    }
    assert (
        value(s, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service="t.v1.Svc", grpc_method="Ok")
        == 1
    )


def test_failed_preemption_attempt_counts_without_eviction(system):
    """A pending job with eligible victims that would still not fit: an attempt, no eviction."""
    api, metrics, clock, who = system
    api.submit_job(who, "low", job_doc("low", priority_class="low"))
    for i in range(2):
        api.submit_job(who, f"high-{i}", job_doc(f"high-{i}", priority_class="high"))
    api.schedule_once()
    gang = job_doc("gang", priority_class="normal")
    gang["spec"]["tasks"] = 2  # 16 devices; evicting the one low job frees only 8
    api.submit_job(who, "gang", gang)
    api.schedule_once()
    api.schedule_once()
    s = samples(metrics.registry)
    assert value(s, "xpod_scheduler_preemption_attempts_total") == 2  # one per cycle
    assert not any(n == "xpod_scheduler_evicted_jobs_total" for (n, _) in s)
    assert value(s, "xpod_scheduler_running_jobs", queue="research", kind="training") == 3


def test_attempt_duration_histogram_counts_each_job_a_cycle_tried_by_result(system):
    """One observation per job whose placement a cycle searched, labelled by what came of it;
    the attempts' time is part of (at most) the cycle's."""
    api, metrics, clock, who = system
    fits = [api.submit_job(who, f"fit-{i}", job_doc(f"fit-{i}"))[0].record.id for i in range(3)]
    api.schedule_once()
    s = samples(metrics.registry)
    assert value(s, "xpod_scheduler_scheduling_attempt_duration_seconds_count", result="scheduled") == 3
    assert value(s, "xpod_scheduler_scheduling_attempt_duration_seconds_count", result="unschedulable") is None
    # the pod is full: the next job is tried and stays pending, once per cycle
    api.submit_job(who, "wait", job_doc("wait"))
    api.schedule_once()
    api.schedule_once()
    s = samples(metrics.registry)
    assert value(s, "xpod_scheduler_scheduling_attempt_duration_seconds_count", result="scheduled") == 3
    assert value(s, "xpod_scheduler_scheduling_attempt_duration_seconds_count", result="unschedulable") == 2
    attempts = sum(
        value(s, "xpod_scheduler_scheduling_attempt_duration_seconds_sum", result=r)
        for r in ("scheduled", "unschedulable")
    )
    assert 0 < attempts <= value(s, "xpod_scheduler_scheduling_cycle_duration_seconds_sum")
    assert len(fits) == 3
