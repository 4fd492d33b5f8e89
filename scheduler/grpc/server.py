"""The gRPC server: ``build_server`` starts ``xpod.v1`` (``servicers``) over a ``SchedulerApi``.

It adds grpc.health.v1 (the whole server and each service by name) and server reflection, so
grpcurl and friends work without the .proto files. The server is ``grpc.aio`` on an event loop
of its own thread (see ``servicers`` for which calls run on the loop and which on the bounded
thread pool); callers see a plain synchronous ``RunningServer``. A request whose bytes do not
parse is INVALID_ARGUMENT with a rich status; with ``frontends`` extra processes serve the same
address and relay to this one (``frontends``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import os
import shutil
import socket
import tempfile
import threading
from typing import Any, Callable

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from xpod.proto.xpod.v1 import (
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
)
from xpod.scheduler.service.api import ApiError, Code, SchedulerApi

from .auth import Authenticator
from .metrics import wrap_aio_handler
from .servicers import (
    DEFAULT_STREAM_BOUNDS,
    ClusterServicer,
    JobServicer,
    NodeServicer,
    StreamBounds,
    _abort,
    _LoopWaiter,
)

SERVICE_NAMES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    node_service_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    cluster_service_pb2.DESCRIPTOR.services_by_name["ClusterService"].full_name,
)

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

    async def refuse(request: _Undecodable, context: Any) -> None:
        message = f"{full_method}: the request is not a valid protobuf message: {str(request.error)[:200]}"
        await _abort(context, ApiError(Code.INVALID_ARGUMENT, "MALFORMED_REQUEST", message))

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request, context):
            if request.__class__ is _Undecodable:
                await refuse(request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=guarded, response_serializer=handler.response_serializer
        )
    inner_stream = handler.unary_stream
    if inspect.isasyncgenfunction(inner_stream):

        async def stream(request, context):
            if request.__class__ is _Undecodable:
                await refuse(request, context)
            async for item in inner_stream(request, context):
                yield item

    else:  # a coroutine that writes with context.write (grpc.health.v1 Watch)

        async def stream(request, context):
            if request.__class__ is _Undecodable:
                await refuse(request, context)
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
        self.frontends = frontends  # scheduler.grpc.frontends.FrontEnds, or None
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
            with contextlib.suppress(Exception):  # a wedged loop: stopping matters more than the probes
                asyncio.run_coroutine_threadsafe(self.health.enter_graceful_shutdown(), self._loop).result(timeout=10)
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
    stream_bounds: StreamBounds = DEFAULT_STREAM_BOUNDS,
) -> RunningServer:
    """Create and start the gRPC server on ``listen`` (``host:port``, port 0 = any free one).

    ``max_workers`` threads run the blocking API calls (``servicers``): every open WatchJobs
    stream holds one; at most ``max_workers // 2`` of those are open at once (more are
    RESOURCE_EXHAUSTED with RetryInfo), the rest serve unary calls; agents' assignment streams
    hold none. ``frontends`` extra processes listen on the same address and relay to this one
    (``scheduler.grpc.frontends``). ``stream_bounds``: what a WatchJobs stream holds for a consumer
    that falls behind, and how long it may stall before it is ended (``servicers.StreamBounds``).
    Raises OSError when it cannot listen, RuntimeError when a front end cannot start.
    """
    relay_dir = _socket_dir() if frontends > 0 else None
    loop = asyncio.new_event_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="xpod-grpc")
    thread = threading.Thread(target=_run_loop, args=(loop,), name="xpod-grpc-loop", daemon=True)
    thread.start()
    try:
        server, health_servicer, port, (relay_server, reserved) = asyncio.run_coroutine_threadsafe(
            _start(
                api, authenticator, listen, tls, max_workers, max_message_bytes, pool, loop, relay_dir, stream_bounds
            ),
            loop,
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
        from xpod.scheduler.grpc.frontends import FrontEnds

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
    stream_bounds: StreamBounds = DEFAULT_STREAM_BOUNDS,
) -> tuple[grpc.aio.Server, Any, int, tuple[asyncio.AbstractServer | None, socket.socket | None]]:
    # grpc_server_* metrics when the API has ServiceMetrics attached (scheduler.grpc.metrics)
    counters = getattr(api.metrics, "grpc", None)
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
    wraps: list[Callable] = [_guard_decode]
    if counters is not None:
        wraps.append(lambda method, handler: wrap_aio_handler(counters, method, handler))
    registrar = _Registrar(server, wraps)
    jobs = JobServicer(api, authenticator, streams, pool, waiter, stream_bounds)
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
        from xpod.scheduler.grpc.frontends import server_credentials

        port = server.add_secure_port(listen, server_credentials(tls.cert, tls.key, tls.client_ca))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    relay_server = None
    try:
        if relay_dir is not None:
            from xpod.scheduler.grpc.frontends import RELAYED_METHOD, RelayEndpoint

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
    return server, health_servicer, port, (relay_server, reserved)


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
