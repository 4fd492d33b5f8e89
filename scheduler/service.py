"""The gRPC adapter: ``xpod.v1`` servicers over ``scheduler.api.SchedulerApi``.

The only scheduler module that imports generated protobuf code. Each RPC: authenticate the
bearer token, convert the request, call the in-process API with the call's remaining deadline,
convert the answer. An ``ApiError`` becomes a ``google.rpc.Status`` with an ``ErrorInfo``
(reason, domain ``xpod.io``, metadata), plus ``BadRequest`` when a field is named and
``RetryInfo`` when the caller should retry (RESOURCE_EXHAUSTED, UNAVAILABLE).

``build_server`` adds grpc.health.v1 (the whole server and each service by name) and server
reflection, so grpcurl and friends work without the .proto files.

The server is ``grpc.aio`` on an event loop of its own thread: ``SubmitJob``, the hot path, runs
on the loop itself (check, queue the write, ``await`` the group commit: no thread per call and no
GIL hand-off per call), and every other RPC runs the in-process API's blocking method on a
bounded thread pool (``max_workers``). Callers see a plain synchronous ``RunningServer``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Callable

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1 import _async as health_aio
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_status import rpc_status

from xpod.proto.xpod.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
    types_pb2,
)
from xpod.scheduler.api import (
    ERROR_DOMAIN,
    ApiError,
    Code,
    DeviceView,
    JobView,
    NodeView,
    SchedulerApi,
    Submission,
    TaskState,
)
from xpod.scheduler.auth import Authenticator, AuthError, Principal, Unauthenticated
from xpod.scheduler import trace as _trace
from xpod.scheduler.store import AllocationRecord, EventRecord, JobRecord, JobState, PendingReasonRecord

SERVICE_NAMES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
)

_STATE_TO_PB = {s: types_pb2.JobState.Value(f"JOB_STATE_{s.value}") for s in JobState}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_CODE_TO_GRPC = {c: getattr(grpc.StatusCode, c.value) for c in Code}
_TASK_FROM_PB = {
    node_service_pb2.TASK_STATE_RUNNING: TaskState.RUNNING,
    node_service_pb2.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    node_service_pb2.TASK_STATE_FAILED: TaskState.FAILED,
}
# Streams end at the client's cancel; this bounds how long a deadline-less unary call waits.
_DEFAULT_TIMEOUT_S = 60.0


# --- conversions ------------------------------------------------------------------------------


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def struct_to_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values; integral numbers become ints (Struct keeps only doubles,
    so ``count: 8`` arrives as 8.0 and the spec parser wants an int). Walks the message
    directly: ``json_format.MessageToDict`` costs several times more per submission."""
    return {k: _value(v) for k, v in s.fields.items()}


def _value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = v.number_value
        if math.isfinite(x) and x.is_integer() and abs(x) < 2**53:
            return int(x)
        return x
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return {k: _value(x) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(x) for x in v.list_value.values]
    return None


def dict_to_struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _pending_pb(p: PendingReasonRecord | None) -> types_pb2.PendingReason | None:
    if p is None:
        return None
    return types_pb2.PendingReason(reason=p.reason, message=p.message, metadata=dict(p.metadata))


def _alloc_pb(a: AllocationRecord) -> types_pb2.Allocation:
    return types_pb2.Allocation(
        node=a.node,
        devices=list(a.devices),
        milli_per_device=a.milli_per_device,
        task=a.task,
        cpu_milli=a.cpu_milli,
        memory_bytes=a.memory_bytes,
        device_memory_bytes=a.device_memory_bytes,
    )


def job_pb(
    job: JobRecord,
    queue_position: int = 0,
    pending: PendingReasonRecord | None = None,
    spec: struct_pb2.Struct | None = None,
) -> types_pb2.Job:
    """``spec``: the Struct the job came in (SubmitJob answers with it rather than rebuild it)."""
    msg = types_pb2.Job(
        id=job.id,
        request_id=job.request_id,
        queue=job.queue,
        kind=job.kind,
        name=job.name,
        state=_STATE_TO_PB[job.state],
        allocations=[_alloc_pb(a) for a in job.allocations],
        create_time=_ts(job.create_time_s),
        update_time=_ts(job.update_time_s),
        revision=job.revision,
        queue_position=queue_position,
        message=job.message,
    )
    if spec is not None:
        msg.spec.CopyFrom(spec)  # cheaper than a constructor argument
    else:
        msg.spec.update(job.spec)
    p = _pending_pb(pending if pending is not None else job.pending)
    if p is not None and job.state is JobState.QUEUED:
        msg.pending_reason.CopyFrom(p)
    return msg


def view_pb(view: JobView, spec: struct_pb2.Struct | None = None) -> types_pb2.Job:
    return job_pb(view.record, view.queue_position, view.pending, spec)


def event_pb(ev: EventRecord) -> types_pb2.JobEvent:
    return types_pb2.JobEvent(
        revision=ev.revision,
        job_id=ev.job_id,
        type=types_pb2.JobEventType.Value(f"JOB_EVENT_TYPE_{ev.type.value}"),
        time=_ts(ev.time_s),
        message=ev.message,
        job=job_pb(ev.job),
    )


def device_pb(d: DeviceView, allocated_milli: int = 0, job_ids: list[str] | None = None) -> types_pb2.Device:
    return types_pb2.Device(
        id=d.id,
        node=d.node,
        index=d.index,
        vendor=d.vendor,
        model=d.model,
        health=d.health,
        memory_total_bytes=d.memory_total_bytes,
        allocated_milli=allocated_milli,
        job_ids=job_ids or [],
        simulated=d.simulated,
    )


def node_pb(n: NodeView) -> types_pb2.Node:
    return types_pb2.Node(
        name=n.name,
        devices=[device_pb(d) for d in n.devices],
        labels=dict(n.labels),
        ready=n.ready,
        last_heartbeat_time=_ts(n.last_heartbeat_s),
        cpu_milli=n.cpu_milli,
        memory_bytes=n.memory_bytes,
    )


def node_from_pb(n: types_pb2.Node) -> NodeView:
    return NodeView(
        name=n.name,
        devices=tuple(
            DeviceView(n.name, d.index, d.vendor, d.model, d.memory_total_bytes, d.health or "unknown", d.simulated)
            for d in n.devices
        ),
        labels=tuple(sorted(n.labels.items())),
        cpu_milli=n.cpu_milli,
        memory_bytes=n.memory_bytes,
    )


# --- errors -----------------------------------------------------------------------------------


_MAX_MESSAGE_CHARS = 500


def status_for(err: ApiError) -> status_pb2.Status:
    """The google.rpc.Status for an API error (AIP-193). The message, field and metadata values
    (which may quote the caller's input) are cut to ``_MAX_MESSAGE_CHARS``: they go out in the
    trailers several times (grpc-message, the Status, ErrorInfo, BadRequest), and past the
    client's 8 KiB metadata limit the caller would get RESOURCE_EXHAUSTED instead of this error."""
    message = err.message if len(err.message) <= _MAX_MESSAGE_CHARS else err.message[: _MAX_MESSAGE_CHARS - 1] + "…"
    status = status_pb2.Status(code=getattr(code_pb2, err.code.value), message=message)
    metadata = {k: v[:_MAX_MESSAGE_CHARS] for k, v in err.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata)
    status.details.add().Pack(info)
    if err.field is not None:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=err.field[:_MAX_MESSAGE_CHARS], description=message)
            ]
        )
        status.details.add().Pack(bad)
    if err.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after_s * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def _auth_error(err: AuthError) -> ApiError:
    if isinstance(err, Unauthenticated):
        return ApiError(Code.UNAUTHENTICATED, "UNAUTHENTICATED", str(err))
    return ApiError(Code.PERMISSION_DENIED, "PERMISSION_DENIED", str(err))


async def _abort(context: grpc.aio.ServicerContext, err: ApiError) -> None:
    await context.abort_with_status(rpc_status.to_status(status_for(err)))


class _CallContext:
    """What the servicers' blocking code needs of a call (``invocation_metadata``,
    ``time_remaining``, ``is_active``), over a ``grpc.aio`` context, usable from a pool thread.
    ``is_active`` turns false once the call's coroutine ends (done, cancelled or deadline)."""

    __slots__ = ("_context", "active")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.active = True

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def is_active(self) -> bool:
        return self.active


_END = object()


def _close_stream(gen: Any, streams: threading.BoundedSemaphore) -> None:
    try:
        gen.close()
    except Exception:  # a generator that fails while closing: the stream is over anyway
        pass
    finally:
        streams.release()


def _rpc(method: Callable) -> Callable:
    """Authenticate, run, and turn ApiError into a rich status. ``async def`` methods run on
    the event loop; plain methods run on the server's thread pool; generator methods (the
    Watch streams) are driven item by item on the pool and hold a stream slot."""

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def native(self, request, context):
            try:
                principal = self._principal(context)
                return await method(self, request, context, principal)
            except ApiError as err:
                await _abort(context, err)
            except AuthError as err:
                await _abort(context, _auth_error(err))

        return native

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context):
            # Each open stream holds a pool thread for its whole life: past the limit, refuse
            # with RetryInfo rather than let streams starve the unary calls of threads.
            if not self.streams.acquire(blocking=False):
                err = ApiError(
                    Code.RESOURCE_EXHAUSTED,
                    "TOO_MANY_STREAMS",
                    "too many open watch streams on this server; retry later",
                    retry_after_s=5.0,
                )
                await _abort(context, err)
            call = _CallContext(context)
            gen = None
            step: concurrent.futures.Future | None = None
            try:
                principal = self._principal(call)
                gen = method(self, request, call, principal)
                while True:
                    step = self.pool.submit(next, gen, _END)
                    item = await asyncio.wrap_future(step)
                    step = None
                    if item is _END:
                        break
                    yield item
            except ApiError as err:
                await _abort(context, err)
            except AuthError as err:
                await _abort(context, _auth_error(err))
            finally:
                call.active = False  # the generator's is_active() loop ends at its next poll
                if gen is None:
                    self.streams.release()
                elif step is not None and not step.done():
                    # still inside next() on a pool thread: close it there once it returns
                    step.add_done_callback(lambda _f, g=gen: _close_stream(g, self.streams))
                else:
                    _close_stream(gen, self.streams)

        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        call = _CallContext(context)
        try:
            principal = self._principal(call)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, method, self, request, call, principal)
        except ApiError as err:
            await _abort(context, err)
        except AuthError as err:
            await _abort(context, _auth_error(err))
        finally:
            call.active = False

    return unary


class _LoopWaiter:
    """Turns concurrent futures resolved on another thread (the store's writer) into asyncio
    futures, waking the loop once per batch of resolutions rather than once per future: a group
    commit of N submissions costs one loop wake-up, not N."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future, concurrent.futures.Future]] = []
        self._trace_first = 0.0  # debug timeline only (XPOD_TRACE): when the first waiting one resolved

    def wait(self, cf: concurrent.futures.Future) -> asyncio.Future:
        af = self._loop.create_future()

        # uses its argument, never ``cf`` from this scope: cf -> callback -> cf would be a
        # reference cycle per call, i.e. work for the cyclic GC (whose full passes stall the loop)
        def resolved(done: concurrent.futures.Future) -> None:
            with self._lock:
                first = not self._ready
                self._ready.append((af, done))
            if first:
                if _trace.ENABLED:
                    self._trace_first = time.monotonic()
                try:
                    self._loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # the loop closed (server stopped): nobody waits any more
                    pass

        cf.add_done_callback(resolved)
        return af

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        if _trace.ENABLED:
            _trace.add("drain", self._trace_first, time.monotonic(), len(ready))
        for af, cf in ready:
            if af.done():  # its caller gave up (deadline) meanwhile
                continue
            err = cf.exception()
            if err is not None:
                af.set_exception(err)
            else:
                af.set_result(cf.result())


class _Base:
    def __init__(
        self,
        api: SchedulerApi,
        authenticator: Authenticator,
        streams: threading.BoundedSemaphore | None = None,
        pool: concurrent.futures.ThreadPoolExecutor | None = None,
        waiter: _LoopWaiter | None = None,
    ) -> None:
        self.api = api
        self.auth = authenticator
        self.streams = streams or threading.BoundedSemaphore(16)  # shared by every servicer of a server
        self.pool = pool  # runs the blocking API calls (shared by every servicer of a server)
        self.waiter = waiter  # awaits store commits on the loop

    def _principal(self, context: Any) -> Principal:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value
                break
        return self.auth.authenticate(authorization)

    @staticmethod
    def _timeout(context: Any) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return _DEFAULT_TIMEOUT_S
        return max(0.0, min(remaining, _DEFAULT_TIMEOUT_S))


class JobServicer(_Base, job_service_pb2_grpc.JobServiceServicer):
    @_rpc
    async def SubmitJob(self, request, context, principal):
        # On the event loop: the checks are short (parse and never-fits answers are cached per
        # job shape), the write is queued, and the call waits for its group commit without a
        # thread of its own.
        if _trace.ENABLED:
            t_start = time.monotonic()
        document = struct_to_dict(request.job) if request.HasField("job") else None
        submission: Submission = self.api.begin_submit(principal, request.request_id, document)
        waiting = self.waiter.wait(submission.future)
        if _trace.ENABLED:
            t_queued = time.monotonic()
        # grpc.aio cancels this coroutine when the client's deadline passes; a call without a
        # deadline is bounded here instead
        expire = None
        if context.time_remaining() is None:
            expire = asyncio.get_running_loop().call_later(_DEFAULT_TIMEOUT_S, _expire, waiting)
        try:
            result = await waiting
        except BaseException as err:  # deadline, shutdown, a reused request id, cancelled
            submission.abandon()
            api_err = submission.result_error(err)
            if api_err is not None:
                raise api_err from None
            raise
        finally:
            if expire is not None:
                expire.cancel()
        if _trace.ENABLED:
            t_resumed = time.monotonic()
        view, created = submission.finish(result)
        same = created or view.record.request_id == request.request_id
        response = job_service_pb2.SubmitJobResponse(job=view_pb(view, request.job if same else None), created=created)
        if _trace.ENABLED:
            _trace.add("submit", t_start, t_queued, t_resumed, time.monotonic())
        return response

    @_rpc
    def GetJob(self, request, context, principal):
        view, events = self.api.get_job(principal, request.job_id)
        return job_service_pb2.GetJobResponse(job=view_pb(view), events=[event_pb(e) for e in events])

    @_rpc
    def ListJobs(self, request, context, principal):
        states = []
        for s in request.states:
            if s not in _STATE_FROM_PB:
                raise ApiError(
                    Code.INVALID_ARGUMENT, "INVALID_STATE", f"states: {s} is not a job state", field="states"
                )
            states.append(_STATE_FROM_PB[s])
        views, token = self.api.list_jobs(
            principal, queue=request.queue, states=states, page_size=request.page_size, page_token=request.page_token
        )
        return job_service_pb2.ListJobsResponse(jobs=[view_pb(v) for v in views], next_page_token=token)

    @_rpc
    def CancelJob(self, request, context, principal):
        view = self.api.cancel_job(principal, request.job_id, timeout_s=self._timeout(context))
        return job_service_pb2.CancelJobResponse(job=view_pb(view))

    @_rpc
    def WatchJobs(self, request, context, principal):
        for ev in self.api.watch_jobs(
            principal,
            from_revision=request.from_revision,
            queue=request.queue,
            job_id=request.job_id,
            is_active=context.is_active,
        ):
            yield job_service_pb2.WatchJobsResponse(event=event_pb(ev))

    @_rpc
    def ExplainJob(self, request, context, principal):
        ex = self.api.explain_job(principal, request.job_id)
        resp = job_service_pb2.ExplainJobResponse(
            job=view_pb(ex.job), queue_position=ex.job.queue_position, numbers=ex.numbers, lines=list(ex.lines)
        )
        p = _pending_pb(ex.job.pending)
        if p is not None:
            resp.pending_reason.CopyFrom(p)
        return resp


class NodeServicer(_Base, node_service_pb2_grpc.NodeServiceServicer):
    @_rpc
    def RegisterNode(self, request, context, principal):
        node = self.api.register_node(principal, node_from_pb(request.node), timeout_s=self._timeout(context))
        return node_service_pb2.RegisterNodeResponse(node=node_pb(node))

    @_rpc
    def Heartbeat(self, request, context, principal):
        interval = self.api.heartbeat(principal, request.node, {d.index: d.health for d in request.devices})
        return node_service_pb2.HeartbeatResponse(interval_seconds=interval)

    @_rpc
    def WatchAssignments(self, request, context, principal):
        for a in self.api.watch_assignments(principal, request.node, is_active=context.is_active):
            msg = node_service_pb2.Assignment(
                job_id=a.job.id, run=a.run, job=job_pb(a.job), allocations=[_alloc_pb(x) for x in a.allocations]
            )
            yield node_service_pb2.WatchAssignmentsResponse(assignment=msg)

    @_rpc
    def ReportTaskStatus(self, request, context, principal):
        state = _TASK_FROM_PB.get(request.state)
        if state is None:
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_TASK_STATE", "state must be RUNNING, SUCCEEDED or FAILED", field="state"
            )
        view = self.api.report_task_status(
            principal,
            request.job_id,
            request.node,
            state,
            request.message,
            request.exit_code,
            timeout_s=self._timeout(context),
            failed_tasks=tuple(request.failed_tasks),
        )
        return node_service_pb2.ReportTaskStatusResponse(job=view_pb(view))


def _expire(waiting: asyncio.Future) -> None:
    if not waiting.done():
        waiting.set_exception(
            ApiError(
                Code.DEADLINE_EXCEEDED,
                "DEADLINE_EXCEEDED",
                "the deadline passed before the write was on disk; retry with the same request id",
            )
        )


class ClusterServicer(_Base, cluster_service_pb2_grpc.ClusterServiceServicer):
    @_rpc
    def GetCluster(self, request, context, principal):
        c = self.api.get_cluster(principal)
        return cluster_service_pb2.GetClusterResponse(**c)

    @_rpc
    def ListNodes(self, request, context, principal):
        return cluster_service_pb2.ListNodesResponse(nodes=[node_pb(n) for n in self.api.list_nodes(principal)])

    @_rpc
    def ListDevices(self, request, context, principal):
        rows = self.api.list_devices(principal, request.node)
        return cluster_service_pb2.ListDevicesResponse(devices=[device_pb(d, m, ids) for d, m, ids in rows])


# --- the server -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files; ``client_ca`` turns on mutual TLS (clients must present a cert it signed)."""

    cert: str
    key: str
    client_ca: str | None = None


class _Undecodable:
    """What the guarded deserializer returns for bytes that are not the request message."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _guard_decode(full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A request whose bytes do not parse is INVALID_ARGUMENT with a rich status (grpc.aio
    alone answers UNKNOWN with a traceback in the log). Unary requests only (every xpod call)."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    decode = handler.request_deserializer

    def guarded(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as err:  # DecodeError and friends
            return _Undecodable(err)

    def refuse(err: Exception) -> ApiError:
        return ApiError(
            Code.INVALID_ARGUMENT,
            "MALFORMED_REQUEST",
            f"{full_method}: the request is not a valid protobuf message: {str(err)[:200]}",
        )

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request, context):
            if request.__class__ is _Undecodable:
                await _abort(context, refuse(request.error))
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=guarded, response_serializer=handler.response_serializer
        )
    inner_stream = handler.unary_stream
    if inspect.isasyncgenfunction(inner_stream):

        async def stream(request, context):
            if request.__class__ is _Undecodable:
                await _abort(context, refuse(request.error))
            async for item in inner_stream(request, context):
                yield item

    else:  # a coroutine that writes with context.write (grpc.health.v1 Watch)

        async def stream(request, context):
            if request.__class__ is _Undecodable:
                await _abort(context, refuse(request.error))
            return await inner_stream(request, context)

    return grpc.unary_stream_rpc_method_handler(
        stream, request_deserializer=guarded, response_serializer=handler.response_serializer
    )


class _Registrar:
    """Stands in for the server while the generated ``add_*_to_server`` functions register
    their handlers, and wraps each handler once (the decode guard, then the metrics, so those
    count the guard's INVALID_ARGUMENT): interceptors would run again on every call."""

    def __init__(self, server: grpc.aio.Server, wraps: list[Callable]) -> None:
        self._server = server
        self._wraps = wraps

    def wrap(self, full_method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        for w in self._wraps:
            handler = w(full_method, handler)
        return handler

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service, {m: self.wrap(f"/{service}/{m}", h) for m, h in handlers.items()}
        )

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(g, self) for g in generic_handlers))


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, registrar: _Registrar) -> None:
        self._inner = inner
        self._registrar = registrar
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method not in self._cache:
            self._cache[method] = self._registrar.wrap(method, self._inner.service(handler_call_details))
        return self._cache[method]


class RunningServer:
    """A started ``grpc.aio`` server on its own event-loop thread; ``stop`` is synchronous."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: Any,
        port: int,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        pool: concurrent.futures.ThreadPoolExecutor,
        frontends: Any = None,
        cleanup: Callable[[], None] | None = None,
        relay_server: asyncio.AbstractServer | None = None,
    ) -> None:
        self.server = server
        self._relay_server = relay_server
        self.frontends = frontends  # scheduler.frontend.FrontEnds, or None
        self._cleanup = cleanup
        self.health = health_servicer
        self.port = port
        self._loop = loop
        self._thread = thread
        self._pool = pool
        self._stopped = False

    def set_serving(self, serving: bool, names: tuple[str, ...] = SERVICE_NAMES) -> None:
        """What the health service says for ``names`` (a replica without its store: NOT_SERVING)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        if self._stopped:
            return

        async def apply() -> None:
            for name in names:
                await self.health.set(name, status)

        asyncio.run_coroutine_threadsafe(apply(), self._loop).result(timeout=10)

    def stop(self, grace_s: float = 2.0) -> None:
        """Probes see NOT_SERVING, then the port closes (calls in flight get ``grace_s``). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.frontends is not None:
            # probes reach the front ends: they see NOT_SERVING before the port closes
            try:
                asyncio.run_coroutine_threadsafe(self.health.enter_graceful_shutdown(), self._loop).result(timeout=10)
            except Exception:  # a wedged loop: stopping matters more than the probes
                pass
            # then the front ends, so no new call reaches a front end whose relay closes
            self.frontends.stop(grace_s)

        async def shutdown() -> None:
            await self.health.enter_graceful_shutdown()
            if self._relay_server is not None:
                self._relay_server.close()
            await self.server.stop(grace_s)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=grace_s + 30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            # blocking calls still on the pool end on their own (their streams see is_active() false)
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._cleanup is not None:
                self._cleanup()


def build_server(
    api: SchedulerApi,
    authenticator: Authenticator,
    listen: str,
    *,
    tls: TlsFiles | None = None,
    max_workers: int = 64,
    max_message_bytes: int = 4 * 1024 * 1024,
    frontends: int = 0,
) -> RunningServer:
    """Create and start the gRPC server on ``listen`` (``host:port``, port 0 = any free one).

    ``max_workers`` threads run the blocking API calls (everything but SubmitJob): every open
    Watch stream holds one; at most ``max_workers // 2`` streams are open at once (more are
    RESOURCE_EXHAUSTED with RetryInfo), the rest serve unary calls. ``frontends`` extra
    processes listen on the same address and relay to this one (``scheduler.frontend``).
    Raises OSError when it cannot listen, RuntimeError when a front end cannot start.
    """
    relay_dir = _socket_dir() if frontends > 0 else None
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="xpod-grpc")
    thread = threading.Thread(target=_run_loop, args=(loop,), name="xpod-grpc-loop", daemon=True)
    thread.start()
    try:
        server, health_servicer, port, (relay_server, reserved) = asyncio.run_coroutine_threadsafe(
            _start(api, authenticator, listen, tls, max_workers, max_message_bytes, pool, loop, relay_dir), loop
        ).result(timeout=60)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        pool.shutdown(wait=False)
        if relay_dir is not None:
            shutil.rmtree(relay_dir, ignore_errors=True)
        raise
    fronts = None
    cleanup = None
    if relay_dir is not None:
        from xpod.scheduler.frontend import FrontEnds

        def cleanup(reserved=reserved, relay_dir=relay_dir) -> None:
            reserved.close()
            shutil.rmtree(relay_dir, ignore_errors=True)

        host = listen.rsplit(":", 1)[0]
        fronts = FrontEnds(
            frontends,
            f"{host}:{port}",
            os.path.join(relay_dir, "relay.sock"),
            os.path.join(relay_dir, "grpc.sock"),
            tls,
            max_message_bytes,
        )
    running = RunningServer(server, health_servicer, port, loop, thread, pool, fronts, cleanup, relay_server)
    if fronts is not None:
        try:
            fronts.start()
        except BaseException:
            running.stop(0)
            raise
    return running


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _start(
    api: SchedulerApi,
    authenticator: Authenticator,
    listen: str,
    tls: TlsFiles | None,
    max_workers: int,
    max_message_bytes: int,
    pool: concurrent.futures.ThreadPoolExecutor,
    loop: asyncio.AbstractEventLoop,
    relay_dir: str | None = None,
) -> tuple[grpc.aio.Server, Any, int, tuple[asyncio.AbstractServer | None, socket.socket | None]]:
    # grpc_server_* metrics when the API has ServiceMetrics attached (scheduler.grpc_metrics)
    metrics_wrapper = getattr(api.metrics, "grpc_aio_wrapper", None)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # gRPC sets SO_REUSEPORT by default, which lets a second server listen on a port in
            # use and take part of its connections; front ends set it themselves (_reserve_port)
            ("grpc.so_reuseport", 0),
        ],
    )
    # at most half the pool threads serve long-lived streams (Watch*), the rest unary calls
    streams = threading.BoundedSemaphore(max(1, max_workers // 2))
    waiter = _LoopWaiter(loop)
    registrar = _Registrar(server, [_guard_decode] + ([metrics_wrapper()] if metrics_wrapper is not None else []))
    jobs = JobServicer(api, authenticator, streams, pool, waiter)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(jobs, registrar)
    node_service_pb2_grpc.add_NodeServiceServicer_to_server(
        NodeServicer(api, authenticator, streams, pool, waiter), registrar
    )
    cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(
        ClusterServicer(api, authenticator, streams, pool, waiter), registrar
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    for name in ("",) + SERVICE_NAMES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # what reflection.enable_server_reflection does for an aio server, through the registrar
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection_aio.ReflectionServicer(SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME)), registrar
    )
    reserved = None
    if relay_dir is not None:
        # the front ends listen on the address and this process on private sockets only, so
        # gRPC's per-call work runs in the front ends; this socket holds the port for them
        reserved = _reserve_port(listen)
        port = reserved.getsockname()[1]
    elif tls is None:
        port = server.add_insecure_port(listen)
    else:
        from xpod.scheduler.frontend import server_credentials

        port = server.add_secure_port(listen, server_credentials(tls.cert, tls.key, tls.client_ca))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    relay_server = None
    try:
        if relay_dir is not None:
            from xpod.scheduler.frontend import RELAYED_METHOD, RelayEndpoint

            # front ends proxy every other call to this same server over a private Unix socket
            if server.add_insecure_port(f"unix:{os.path.join(relay_dir, 'grpc.sock')}") == 0:
                raise OSError(f"cannot listen on a Unix socket in {relay_dir}")
            submit = registrar.wrap(
                RELAYED_METHOD,
                grpc.unary_unary_rpc_method_handler(
                    jobs.SubmitJob,
                    request_deserializer=job_service_pb2.SubmitJobRequest.FromString,
                    response_serializer=job_service_pb2.SubmitJobResponse.SerializeToString,
                ),
            )
            relay_server = await asyncio.start_unix_server(
                RelayEndpoint(submit).serve, os.path.join(relay_dir, "relay.sock")
            )
        await server.start()
    except BaseException:
        if reserved is not None:
            reserved.close()  # it holds the port
        raise
    if _trace.ENABLED:
        _TRACE_TASKS.add(loop.create_task(_trace_loop_lag()))  # the loop keeps tasks only weakly
    return server, health_servicer, port, (relay_server, reserved)


_TRACE_TASKS: set = set()


def _socket_dir() -> str:
    """A new directory only this user can enter (mkdtemp: mode 0700) for the front ends' Unix
    sockets: in the temp directory, or in /tmp when that one's path is too long for a socket
    address (107 bytes on Linux; long TMPDIRs are common in CI)."""
    path = tempfile.mkdtemp(prefix="xpod-server-")
    if len(os.path.join(path, "relay.sock").encode()) > 107 and os.path.isdir("/tmp"):
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="xpod-server-", dir="/tmp")
    _sweep_stale_socket_dirs(os.path.dirname(path), keep=path)
    return path


def _sweep_stale_socket_dirs(parent: str, keep: str) -> None:
    """Remove the socket directories of servers that are gone: when a server and its front
    ends are killed together (``kill -9`` of the process group) nobody else removes them. A
    directory is stale when its relay socket refuses connections (nothing listens there);
    only this user's, only the two socket files, then the directory if it is empty."""
    import glob

    for path in glob.glob(os.path.join(parent, "xpod-server-*")):
        relay = os.path.join(path, "relay.sock")
        if path == keep or not os.path.exists(relay):
            continue
        try:
            if os.stat(path).st_uid != os.getuid():
                continue
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(relay)
                continue  # a live server's
            except ConnectionRefusedError:
                pass
            finally:
                probe.close()
            for name in ("relay.sock", "grpc.sock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
            os.rmdir(path)
        except OSError:  # another server sweeping too, or not ours to touch
            continue


def _reserve_port(listen: str) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on ``listen`` (port 0: a free one): holds the
    port for the front ends, which listen on it with SO_REUSEPORT too (gRPC sets it); a TCP
    connection only ever reaches a listening socket. Raises OSError when the address is taken
    or not this host's."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, ValueError) as err:
        raise OSError(f"cannot resolve host {host!r}: {err}") from None
    family, _, _, _, address = infos[0]
    if address[1] != 0:
        # SO_REUSEPORT would let this bind join another server's listeners on the port (gRPC
        # sets it on every listener): a plain bind fails when anything listens there
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are no obstacle
            probe.bind(address)
        finally:
            probe.close()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


async def _trace_loop_lag(period_s: float = 0.005) -> None:
    # debug timeline only: how late the loop wakes for a short timer (a blocked loop)
    while True:
        t = time.monotonic()
        await asyncio.sleep(period_s)
        lag_s = time.monotonic() - t - period_s
        if lag_s > 0.002:
            _trace.add("lag", t, lag_s)
