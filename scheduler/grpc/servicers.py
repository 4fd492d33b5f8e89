"""The ``xpod.v1`` servicers: each RPC authenticates the bearer token, converts the request,
calls the in-process API with the call's remaining deadline, and converts the answer; an
``ApiError`` becomes a rich ``google.rpc.Status`` (``convert.status_for``).

``SubmitJob``, ``Heartbeat`` and ``WatchAssignments`` run on the event loop and never wait on a
thread (a submission awaits its group commit; an assignment stream awaits the hub's news, so a
thousand agents' streams hold no thread). Every other call runs on the bounded pool; a
``WatchJobs`` stream holds a stream slot and a pool thread, and its bounded send buffer
(``StreamBounds``) ends a consumer that stops reading with RESOURCE_EXHAUSTED ``WATCH_BEHIND``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import threading
from typing import Any, Callable

import grpc
from grpc_status import rpc_status

from xpod.proto.xpod.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
)
from xpod.scheduler.contract import LoadReport, MoeLoadReport, TaskState
from xpod.scheduler.service.api import ApiError, Code, Limits, SchedulerApi, Submission, TaskReport
from xpod.scheduler.service.auth import Principal, Role
from xpod.scheduler.service.errors import deadline_passed

from .auth import Authenticator, bearer, narrow_to_certificate, peer_names
from .convert import (
    STATE_FROM_PB,
    assignment_pb,
    device_pb,
    event_pb,
    health_from_pb,
    node_from_pb,
    node_pb,
    pending_pb,
    status_for,
    struct_to_dict,
    view_pb,
)

_TASK_FROM_PB = {
    node_service_pb2.TASK_STATE_RUNNING: TaskState.RUNNING,
    node_service_pb2.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    node_service_pb2.TASK_STATE_FAILED: TaskState.FAILED,
}
# Streams end at the client's cancel; this bounds how long a deadline-less unary call waits.
_DEFAULT_TIMEOUT_S = 60.0
# assignments per stream message: a first batch for a thousand nodes stays well under 4 MiB
_ASSIGNMENTS_PER_MESSAGE = 256
# commits' news an assignment stream holds for an agent that stopped reading (then it is ended)
_MAX_ASSIGNMENT_BATCHES = 1024
_BEHIND = object()


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

    def __getattr__(self, name: str) -> Any:  # invocation_metadata, time_remaining, auth_context, peer
        return getattr(self._context, name)

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


@dataclasses.dataclass(frozen=True)
class StreamBounds:
    """What one WatchJobs stream may hold for a consumer that reads slower than events come.

    Events wait in the stream's send buffer (at most ``max_messages`` and ``max_bytes``; one
    message always fits) while gRPC's transport holds what the client's flow-control window
    took. A consumer that falls behind, the buffer full with no message taken for ``stall_s``,
    is ended with RESOURCE_EXHAUSTED ``WATCH_BEHIND``: its slot and memory are freed at once,
    and it resumes with ``from_revision`` = the revision of the last event it received (every
    event up to the one the server was writing reaches it before the status)."""

    max_messages: int = 64
    max_bytes: int = 1024 * 1024
    stall_s: float = 10.0


DEFAULT_STREAM_BOUNDS = StreamBounds()


class _SendBuffer:
    """A stream's bounded send buffer (``StreamBounds``): ``put`` queues a message for the
    writer task, which sends them in order with ``context.write`` (it waits while the client's
    flow-control window is full). Event-loop only."""

    def __init__(self, context: grpc.aio.ServicerContext, bounds: StreamBounds) -> None:
        self._context = context
        self._bounds = bounds
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._ready = asyncio.Event()
        self.last_put_revision = 0  # the newest event handed to the buffer
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _full(self) -> bool:
        return bool(self._items) and (
            len(self._items) >= self._bounds.max_messages or self._bytes >= self._bounds.max_bytes
        )

    async def put(self, message: Any) -> bool:
        """Queue ``message``; False when the buffer stayed full for ``stall_s`` (or the writer
        stopped): the consumer fell behind and the stream should end."""
        if self._full():
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), self._bounds.stall_s)
            except asyncio.TimeoutError:
                return False
        if self._writer.done():
            return False
        size = message.ByteSize()
        self._items.append((message, size))
        self._bytes += size
        revision = getattr(getattr(message, "event", None), "revision", 0)
        if revision:
            self.last_put_revision = revision
        self._ready.set()
        return True

    async def _write_loop(self) -> None:
        while True:
            await self._ready.wait()
            while self._items:
                message, size = self._items[0]
                await self._context.write(message)
                self._items.popleft()
                self._bytes -= size
                if not self._full():
                    self._room.set()
            self._ready.clear()  # no await since the loop found the deque empty: nothing raced in
            self._room.set()

    def behind_error(self) -> ApiError:
        b = self._bounds
        return ApiError(
            Code.RESOURCE_EXHAUSTED,
            "WATCH_BEHIND",
            f"this watch fell behind: its send buffer ({len(self._items)} events, {self._bytes} bytes; "
            f"at most {b.max_messages} events or {b.max_bytes} bytes) took no event for {b.stall_s:g} s, "
            "so the server ended it; watch again with from_revision set to the revision of the last "
            "event you received",
            metadata={
                "bufferedEvents": str(len(self._items)),
                "maxEvents": str(b.max_messages),
                "maxBytes": str(b.max_bytes),
                "stallSeconds": f"{b.stall_s:g}",
                "lastQueuedRevision": str(self.last_put_revision),
            },
            retry_after_s=0.0,
        )

    def close(self) -> None:
        """Stop the writer and drop what it holds (the stream is over)."""
        if self._writer.done() and not self._writer.cancelled():
            self._writer.exception()  # a write the ended call refused: retrieved, not logged as lost
        self._writer.cancel()
        self._items.clear()
        self._bytes = 0


class _StreamHold:
    """What one watch stream holds (its slot, its caller's count, the generator a pool thread
    advances, its send buffer), freed once by ``release``: at the end, or before a stalled
    consumer's status waits in the transport."""

    __slots__ = ("_servicer", "call", "owner", "gen", "step", "buffer", "_released")

    def __init__(self, servicer: Any, call: _CallContext) -> None:
        self._servicer = servicer
        self.call = call
        self.owner: str | None = None
        self.gen: Any = None
        self.step: concurrent.futures.Future | None = None
        self.buffer: _SendBuffer | None = None
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.call.active = False  # the generator's is_active() loop ends at its next poll
        if self.buffer is not None:
            self.buffer.close()
        streams = self._servicer.streams
        if self.owner is not None:
            self._servicer._release_watch(self.owner)
        if self.gen is None:
            streams.release()
        elif self.step is not None and not self.step.done():
            # still inside next() on a pool thread: close it there once it returns
            self.step.add_done_callback(lambda _f, g=self.gen: _close_stream(g, streams))
        else:
            _close_stream(self.gen, streams)


def _rpc(method: Callable) -> Callable:
    """Authenticate, run, and turn ApiError into a rich status. ``async def`` methods run on
    the event loop; plain methods run on the server's thread pool; generator methods (the
    Watch streams) are driven item by item on the pool and hold a stream slot."""

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def native(self, request, context):
            try:
                return await method(self, request, context, self._principal(context))
            except ApiError as err:
                await _abort(context, err)

        return native

    if inspect.isasyncgenfunction(method):  # a stream served on the event loop (no thread)

        @functools.wraps(method)
        async def native_stream(self, request, context):
            try:
                async for item in method(self, request, context, self._principal(context)):
                    yield item
            except ApiError as err:
                await _abort(context, err)

        return native_stream

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context):
            # Each open stream holds a stream slot, and a pool thread while it reads the log:
            # past the limit, refuse with RetryInfo rather than let streams starve unary calls.
            if not self.streams.acquire(blocking=False):
                err = ApiError(
                    Code.RESOURCE_EXHAUSTED,
                    "TOO_MANY_STREAMS",
                    "too many open watch streams on this server; retry later",
                    retry_after_s=5.0,
                )
                await _abort(context, err)
            held = _StreamHold(self, _CallContext(context))
            try:
                principal = self._principal(held.call)
                held.owner = self._hold_watch(principal)
                gen = held.gen = method(self, request, held.call, principal)
                buffer = held.buffer = _SendBuffer(context, self.stream_bounds)
                while True:
                    held.step = self.pool.submit(next, gen, _END)
                    item = await asyncio.wrap_future(held.step)
                    held.step = None
                    if item is _END:
                        break
                    if not await buffer.put(item):
                        # The status waits behind what the transport holds (the client reads
                        # it after those events), so free everything first; a client that
                        # never reads again keeps only gRPC's flow-control window.
                        err = buffer.behind_error()
                        held.release()
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(_abort(context, err), self.stream_bounds.stall_s)
                        return
            except ApiError as err:
                await _abort(context, err)
            finally:
                held.release()

        return stream

    @functools.wraps(method)
    async def unary(self, request, context):
        call = _CallContext(context)
        try:
            principal = self._principal(call)
            return await asyncio.get_running_loop().run_in_executor(self.pool, method, self, request, call, principal)
        except ApiError as err:
            await _abort(context, err)
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

    def wait(self, cf: concurrent.futures.Future) -> asyncio.Future:
        af = self._loop.create_future()

        # uses its argument, never ``cf`` from this scope: cf -> callback -> cf would be a
        # reference cycle per call, i.e. work for the cyclic GC (whose full passes stall the loop)
        def resolved(done: concurrent.futures.Future) -> None:
            with self._lock:
                first = not self._ready
                self._ready.append((af, done))
            if first:
                with contextlib.suppress(RuntimeError):  # the loop closed (server stopped): nobody waits any more
                    self._loop.call_soon_threadsafe(self._drain)

        cf.add_done_callback(resolved)
        return af

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
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
        stream_bounds: StreamBounds = DEFAULT_STREAM_BOUNDS,
    ) -> None:
        self.api = api
        self.auth = authenticator
        self.stream_bounds = stream_bounds  # what a WatchJobs stream holds for a slow consumer
        self.streams = streams or threading.BoundedSemaphore(16)  # shared by every servicer of a server
        self.pool = pool  # runs the blocking API calls (shared by every servicer of a server)
        self.waiter = waiter  # awaits store commits on the loop
        self._watch_lock = threading.Lock()
        self._watches: dict[str, int] = {}  # principal name -> open WatchJobs streams

    def _hold_watch(self, principal: Principal) -> str | None:
        """Count a watch stream against its caller: one tenant holding every stream slot would
        leave the others none. Returns the key to release."""
        limit = getattr(self.api, "limits", Limits()).max_watches_per_caller
        if principal.role is Role.ADMIN:
            return None  # the operator's own tools are trusted; the server's slot limit still holds
        with self._watch_lock:
            held = self._watches.get(principal.name, 0)
            if held >= limit:
                raise ApiError(
                    Code.RESOURCE_EXHAUSTED,
                    "TOO_MANY_WATCHES",
                    f"{principal.name} already holds {held} watch streams, the limit per caller; close one",
                    metadata={"principal": principal.name, "limit": str(limit)},
                    retry_after_s=5.0,
                )
            self._watches[principal.name] = held + 1
        return principal.name

    def _release_watch(self, name: str) -> None:
        with self._watch_lock:
            left = self._watches.get(name, 1) - 1
            if left > 0:
                self._watches[name] = left
            else:
                self._watches.pop(name, None)

    def _principal(self, context: Any) -> Principal:
        return narrow_to_certificate(self.auth.authenticate(bearer(context)), peer_names(context))

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
        document = struct_to_dict(request.job) if request.HasField("job") else None
        submission: Submission = self.api.begin_submit(principal, request.request_id, document)
        waiting = self.waiter.wait(submission.future)
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
        view, created = submission.finish(result)
        same = created or view.record.request_id == submission.request_id
        return job_service_pb2.SubmitJobResponse(job=view_pb(view, request.job if same else None), created=created)

    @_rpc
    def GetJob(self, request, context, principal):
        view, events = self.api.get_job(principal, request.job_id)
        return job_service_pb2.GetJobResponse(job=view_pb(view), events=[event_pb(e) for e in events])

    @_rpc
    def ListJobs(self, request, context, principal):
        bad = [s for s in request.states if s not in STATE_FROM_PB]
        if bad:
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_STATE", f"states: {bad[0]} is not a job state", field="states"
            )
        states = [STATE_FROM_PB[s] for s in request.states]
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
        return job_service_pb2.ExplainJobResponse(
            job=view_pb(ex.job),
            queue_position=ex.job.queue_position,
            numbers=ex.numbers,
            lines=list(ex.lines),
            pending_reason=pending_pb(ex.job.pending),
        )

    @_rpc
    def GetMoeHistory(self, request, context, principal):
        out = job_service_pb2.GetMoeHistoryResponse()
        for e in self.api.moe_history(principal, request.job_id):
            d = e.to_json(with_plan=False)  # the entry's names are the message's, but for these
            d.update(time_seconds=d.pop("time_s"), has_balance_before=e.balance_before is not None)
            d["balance_before"] = e.balance_before or 0.0
            out.windows.add(**d)
        return out


class NodeServicer(_Base, node_service_pb2_grpc.NodeServiceServicer):
    @_rpc
    def RegisterNodes(self, request, context, principal):
        records = [node_from_pb(n, f"nodes[{i}]") for i, n in enumerate(request.nodes)]
        states = self.api.register_nodes(principal, records, timeout_s=self._timeout(context))
        return node_service_pb2.RegisterNodesResponse(
            nodes=[node_pb(s) for s in states], heartbeat_interval_seconds=self.api.liveness.heartbeat_interval_s
        )

    @_rpc
    async def Heartbeat(self, request, context, principal):
        # on the event loop: stamps a time and compares health, never waits (service.nodes)
        health = {
            n.node: {d.index: health_from_pb(d.health, "nodes.devices.health") for d in n.devices}
            for n in request.nodes
        }
        interval, unknown = self.api.heartbeat(principal, health)
        return node_service_pb2.HeartbeatResponse(interval_seconds=interval, unknown_nodes=unknown)

    @_rpc
    async def WatchAssignments(self, request, context, principal):
        # on the event loop, no thread per stream: the hub pushes each commit's news for these
        # nodes into this queue (service.assignments). The queue is bounded: an agent that stops
        # reading gets no more news past _MAX_ASSIGNMENT_BATCHES, then ASSIGNMENTS_BEHIND when it
        # reads again, and reconnects (its first batch is every current assignment).
        loop = asyncio.get_running_loop()
        news: asyncio.Queue = asyncio.Queue()

        def offer(batch) -> None:
            if news.qsize() < _MAX_ASSIGNMENT_BATCHES:
                news.put_nowait(batch)
            elif news.qsize() == _MAX_ASSIGNMENT_BATCHES:
                news.put_nowait(_BEHIND)  # once: everything after it is dropped

        def deliver(batch) -> None:
            loop.call_soon_threadsafe(offer, batch)

        subscription, batch = self.api.watch_assignments(principal, list(request.nodes), deliver)
        try:
            while True:
                for i in range(0, len(batch), _ASSIGNMENTS_PER_MESSAGE):
                    yield node_service_pb2.WatchAssignmentsResponse(
                        assignments=[assignment_pb(a) for a in batch[i : i + _ASSIGNMENTS_PER_MESSAGE]]
                    )
                batch = await news.get()
                if batch is _BEHIND:
                    raise ApiError(
                        Code.RESOURCE_EXHAUSTED,
                        "ASSIGNMENTS_BEHIND",
                        f"this assignment stream fell {_MAX_ASSIGNMENT_BATCHES} commits behind and was ended; "
                        "watch again: the first batch carries every current assignment",
                        retry_after_s=0.0,
                    )
        finally:
            subscription.close()

    @_rpc
    def ReportTaskStatus(self, request, context, principal):
        reports = []
        for r in request.reports:
            state = _TASK_FROM_PB.get(r.state)
            if state is None:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "INVALID_TASK_STATE",
                    "reports.state must be RUNNING, SUCCEEDED or FAILED",
                    field="reports.state",
                )
            reports.append(TaskReport(r.job_id, r.node, state, r.message, r.exit_code, tuple(r.failed_tasks)))
        answers = self.api.report_tasks(principal, reports, timeout_s=self._timeout(context))
        out = node_service_pb2.ReportTaskStatusResponse()
        for a in answers:
            if isinstance(a, ApiError):
                out.answers.add(refused_reason=a.reason, refused_message=a.message)
            else:
                out.answers.add(job=view_pb(a))
        return out

    @_rpc
    def ReportExpertLoads(self, request, context, principal):
        report = MoeLoadReport(
            request.job_id,
            request.node,
            request.replica,
            request.layers,
            request.experts,
            tuple(request.counts),
            request.known_plan_revision,
        )
        answer = self.api.report_expert_loads(principal, report)
        return node_service_pb2.ReportExpertLoadsResponse(
            plan_revision=answer.revision, plan_json=answer.plan_json, sglang_json=answer.sglang_json
        )

    @_rpc
    def ReportLoad(self, request, context, principal):
        report = LoadReport(request.job_id, request.node, request.replica, request.value, request.role)
        return node_service_pb2.ReportLoadResponse(desired_replicas=self.api.report_load(principal, report))


def _expire(waiting: asyncio.Future) -> None:
    if not waiting.done():
        waiting.set_exception(deadline_passed())


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
        return cluster_service_pb2.ListDevicesResponse(devices=[device_pb(*row) for row in rows])
