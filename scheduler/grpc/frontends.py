"""Front-end processes: more than one core for gRPC's own per-call work.

A Python gRPC server does its per-call work (HTTP/2 framing, the call's completion-queue
events, the handler's coroutine) on one event-loop thread, which shares the GIL with the store
writer and the scheduling thread. Measured here (``bench/grpc_floor.py``): a bare ``grpc.aio``
handler that returns a constant costs the server about 180-240 µs of CPU per unary call, a
third of what ``xpod server`` spent per durable submission in one process, and that loop
thread is what a burst of submissions waits for.

``xpod server --frontends N`` starts N extra processes that listen on the server's address
(``SO_REUSEPORT``, which gRPC sets on Linux: the kernel spreads new connections over them; the
main process only holds the port with a bound socket that does not listen). A front end has
no state of its own:

* ``SubmitJob`` is relayed over a Unix socket to the main process in batches (one frame per
  event-loop turn, each way) as the request's bytes, its bearer token and its remaining
  deadline; the main process runs the very handler its own port runs (authentication, checks,
  the group commit, metrics) and sends back the response's bytes or the rich status. So a
  submission is acknowledged only after its commit, whichever process the client reached.
* Every other method (the Job, Node and Cluster services, health, reflection; unary and
  streams) is proxied as bytes over a second Unix socket to the main server itself, metadata
  (the token) and deadline included, and errors come back with their code, message and
  details. Rarely called, so the proxy's extra hop costs little.

Both sockets sit in a directory only this user can enter. A front end ends when the main
process does (``PR_SET_PDEATHSIG``, and the relay connection closing) and then removes the
sockets, which the dead main process cannot; the main process turns its health to NOT_SERVING,
stops its front ends, then itself, and starts a new front end when one dies.

This module is the front end's program (``python -m xpod.scheduler.grpc.frontends``) and the main
process's side of the relay (``RelayEndpoint``, ``FrontEnds``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import grpc

from xpod.scheduler.service.errors import DEADLINE

from .auth import PEER_NAMES_KEY, bearer, certificate_names

RELAYED_METHOD = "/xpod.v1.JobService/SubmitJob"
_FRAME = struct.Struct("!I")  # a frame: 4-byte big-endian length, then a pickled list
_PR_SET_PDEATHSIG = 1
# the signal a front end gets when the main process dies: not SIGTERM, which is the main's own
# orderly stop, because only an orphan removes the sockets (the main does it when it stops)
_PARENT_DIED = signal.SIGUSR1
# metadata a proxy must not copy: HTTP/2 pseudo-headers and what gRPC sets for each hop
_HOP_KEYS = frozenset({"user-agent", "content-type", "te", "host"})


def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS from PEM files; ``client_ca`` turns on mutual TLS (the main server's and the front
    ends' ports take the same)."""

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_server_credentials(
        [(read(key), read(cert))],
        root_certificates=read(client_ca) if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def method_kinds() -> dict[str, tuple[bool, bool]]:
    """Every method the main server serves: full name -> (client streaming, server streaming)."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from xpod.proto.xpod.v1 import cluster_service_pb2, job_service_pb2, node_service_pb2

    kinds: dict[str, tuple[bool, bool]] = {}
    for module in (job_service_pb2, node_service_pb2, cluster_service_pb2, health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kinds[f"/{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    return kinds


def _forwarded(context: Any) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata for the hop to the main server, and the DNS names of its client
    certificate (mutual TLS) as ``PEER_NAMES_KEY``, which the main server believes only from
    its Unix socket (``auth.peer_names``); a caller's own value of that key is dropped."""
    out = tuple(
        (k, v)
        for k, v in (context.invocation_metadata() or ())
        if not k.startswith((":", "grpc-")) and k not in _HOP_KEYS and k != PEER_NAMES_KEY
    )
    names = certificate_names(context.auth_context())
    return out + ((PEER_NAMES_KEY, ",".join(sorted(names))),) if names else out


async def _read_frame(reader: asyncio.StreamReader) -> list:
    (n,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    return pickle.loads(await reader.readexactly(n))


class _Batcher:
    """Collects items and writes them as one frame at the end of the current loop turn."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._items: list = []
        self._loop = asyncio.get_running_loop()

    def add(self, item: Any) -> None:
        if not self._items:
            self._loop.call_soon(self._flush)
        self._items.append(item)

    def _flush(self) -> None:
        items, self._items = self._items, []
        if self._writer.is_closing():
            return
        data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_FRAME.pack(len(data)) + data)


# --- the main process's side ------------------------------------------------------------------


class _RelayAbort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing


class _RelayContext:
    """What the SubmitJob handler and its wrappers use of a ``grpc.aio`` context, for a call
    relayed by a front end: the token, the remaining deadline, abort, the status code."""

    __slots__ = ("_metadata", "_deadline", "_code")

    def __init__(self, authorization: str | None, timeout_s: float | None) -> None:
        self._metadata = (("authorization", authorization),) if authorization is not None else ()
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort_with_status(self, status: Any) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        self._code = code
        raise _RelayAbort(code, details, tuple(trailing_metadata or ()))


class RelayEndpoint:
    """Serves front ends' relayed SubmitJob calls on the main server's event loop with
    ``handler``: the same wrapped method handler (decode guard, metrics) the port runs."""

    def __init__(self, handler: grpc.RpcMethodHandler) -> None:
        self._decode = handler.request_deserializer
        self._encode = handler.response_serializer
        self._call = handler.unary_unary
        self._tasks: set[asyncio.Task] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        replies = _Batcher(writer)
        loop = asyncio.get_running_loop()
        try:
            while True:
                for item in await _read_frame(reader):
                    task = loop.create_task(self._one(item, replies))
                    self._tasks.add(task)  # the loop keeps tasks only weakly
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front end went away; its calls in flight still commit
        finally:
            writer.close()

    async def _one(self, item: tuple, replies: _Batcher) -> None:
        call_id, authorization, request, timeout_s = item
        context = _RelayContext(authorization, timeout_s)
        try:
            coro = self._call(self._decode(request), context)
            response = await (coro if timeout_s is None else asyncio.wait_for(coro, max(timeout_s, 0.001)))
            replies.add((call_id, None, self._encode(response), ()))
        except _RelayAbort as err:
            replies.add((call_id, err.code.name, err.details, err.trailing))
        except asyncio.TimeoutError:
            replies.add((call_id, "DEADLINE_EXCEEDED", DEADLINE, ()))
        except Exception as err:  # a bug: the caller still gets an answer, as grpc would give
            replies.add((call_id, "UNKNOWN", f"unexpected error: {type(err).__name__}: {err}", ()))


def _die_with_parent(parent_pid: int) -> bool:
    """``_PARENT_DIED`` to this process when the main process dies; False if it already has. Done by
    the front end itself after exec: code between fork and exec in a process with gRPC's
    threads running can deadlock, so the server starts front ends without a preexec hook."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the relay connection closing ends it too
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _PARENT_DIED, 0, 0, 0)
    return os.getppid() == parent_pid


class FrontEnds:
    """Starts, watches and stops the front-end processes of one server (main process side)."""

    def __init__(
        self, count: int, listen: str, relay_path: str, upstream_path: str, tls: Any, max_message_bytes: int
    ) -> None:
        self.count = count
        self.relay_path = relay_path
        self.upstream_path = upstream_path
        self._argv = [sys.executable, "-m", "xpod.scheduler.grpc.frontends", "--parent-pid", str(os.getpid())]
        self._argv += ["--listen", listen, "--relay", relay_path, "--upstream", upstream_path]
        self._argv += ["--max-message-bytes", str(max_message_bytes)]
        if tls is not None:
            self._argv += ["--tls-cert", tls.cert, "--tls-key", tls.key] + (
                ["--tls-client-ca", tls.client_ca] if tls.client_ca else []
            )
        self._procs: list[subprocess.Popen | None] = [None] * count
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reaped = threading.Event()  # stop() has waited for every front end
        self.restarts = 0
        self._watcher: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start every front end and wait until each listens; raises RuntimeError if one cannot.

        The watcher thread forks every front end, the first ones included: PR_SET_PDEATHSIG
        fires when the thread that forked a child ends, and the watcher lives as long as the
        server while the caller's thread may not (``build_server`` called from a worker)."""
        outcome: list[BaseException | None] = []
        done = threading.Event()

        def run() -> None:
            try:
                self._start_all(timeout_s)
            except BaseException as err:  # handed to the caller below
                outcome.append(err)
                done.set()
                return
            outcome.append(None)
            done.set()
            self._watch()
            self._reaped.wait()  # this thread ending is a parent death to the front ends

        self._watcher = threading.Thread(target=run, name="xpod-frontends", daemon=True)
        self._watcher.start()
        done.wait()
        if outcome[0] is not None:
            raise outcome[0]

    def _start_all(self, timeout_s: float) -> None:
        launched = [self._launch() for _ in range(self.count)]  # they import gRPC side by side
        try:
            for i, proc in enumerate(launched):
                self._procs[i] = self._await_ready(proc, timeout_s)
        except BaseException:
            for proc in launched:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
            raise

    def _launch(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        return subprocess.Popen(self._argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)

    @staticmethod
    def _await_ready(proc: subprocess.Popen, timeout_s: float) -> subprocess.Popen:
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not ready or not ready[0].startswith("ready"):
            exited = None
            if ready and not ready[0]:  # the end of its output: it is exiting, say how
                with contextlib.suppress(subprocess.TimeoutExpired):
                    exited = proc.wait(timeout=5)
            proc.kill()
            proc.wait()
            proc.stdout.close()
            why = (ready[0].strip() if ready else "") or (
                f"exited with {exited}" if exited is not None else f"no answer in {timeout_s:.0f} s"
            )
            raise RuntimeError(f"front end did not start: {why}")
        return proc

    def _spawn(self, timeout_s: float) -> subprocess.Popen:
        return self._await_ready(self._launch(), timeout_s)

    def _watch(self) -> None:
        # a slot whose replacement could not start (out of processes or memory for a moment) is
        # tried again, later each time: the main process does not listen on the port itself
        retry_at_s = [0.0] * self.count
        backoff_s = [1.0] * self.count
        while not self._stopping.wait(0.5):
            for i, proc in enumerate(self._procs):
                if proc is not None and proc.poll() is None:
                    continue
                if proc is None and time.monotonic() < retry_at_s[i]:
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        return
                    if proc is not None:
                        print(
                            f"xpod server: front end {i} (pid {proc.pid}) exited with {proc.returncode}; starting another",
                            flush=True,
                        )
                        proc.stdout.close()  # else one pipe leaks per restart
                    try:
                        self._procs[i] = self._spawn(30.0)
                        self.restarts += 1
                        backoff_s[i] = 1.0
                    except (OSError, RuntimeError) as err:
                        print(f"xpod server: front end {i}: {err}; trying again in {backoff_s[i]:.0f} s", flush=True)
                        self._procs[i] = None
                        retry_at_s[i] = time.monotonic() + backoff_s[i]
                        backoff_s[i] = min(2 * backoff_s[i], 60.0)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM (each stops listening, ends its calls within ``grace_s``), then SIGKILL."""
        with self._lock:
            self._stopping.set()
        procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 5.0
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self._reaped.set()


# --- the front end's program ------------------------------------------------------------------


class _Relay:
    """The front end's end of the relay: SubmitJob calls out in batches, answers back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_lost: Callable[[], None]) -> None:
        self._reader = reader
        self._out = _Batcher(writer)
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self._on_lost = on_lost
        self._lost = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                for call_id, code, payload, trailing in await _read_frame(self._reader):
                    fut = self._waiting.pop(call_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result((code, payload, trailing))
        self._lost = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(
                    ("UNAVAILABLE", "the scheduler's main process went away; retry with the same request id", ())
                )
        self._waiting.clear()
        self._on_lost()

    async def submit_job(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if self._lost:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler's main process went away; retry")
        authorization = bearer(context)
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        self._out.add((call_id, authorization, request, context.time_remaining()))
        try:
            code, payload, trailing = await fut
        finally:
            self._waiting.pop(call_id, None)  # cancelled (deadline, client gone): drop its answer
        if code is None:
            return payload
        await context.abort(grpc.StatusCode[code], payload, trailing)


def _proxy_handlers(channel: grpc.aio.Channel, relay: _Relay) -> dict[str, grpc.RpcMethodHandler]:
    """Bytes-in, bytes-out handlers for every method: SubmitJob through the relay, the rest to
    the main server over ``channel`` with the caller's metadata and deadline."""

    async def abort(context, err: grpc.aio.AioRpcError) -> None:
        trailing = tuple(
            (k, v)
            for k, v in (err.trailing_metadata() or ())
            if not k.startswith("grpc-") or k == "grpc-status-details-bin"
        )
        await context.abort(err.code(), err.details() or "", trailing)

    def single_reply(call):  # unary-unary, and stream-unary (``request`` is then the iterator)
        async def handle(request, context):
            try:
                return await call(request, metadata=_forwarded(context), timeout=context.time_remaining())
            except grpc.aio.AioRpcError as err:
                await abort(context, err)

        return handle

    def streaming(call):
        async def handle(request, context):
            upstream = call(request, metadata=_forwarded(context), timeout=context.time_remaining())
            try:
                async for item in upstream:
                    yield item
            except grpc.aio.AioRpcError as err:
                await abort(context, err)
            finally:
                upstream.cancel()  # the client went away: so does the upstream call

        return handle

    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method, (client_streaming, server_streaming) in method_kinds().items():
        if method == RELAYED_METHOD:
            handlers[method] = grpc.unary_unary_rpc_method_handler(relay.submit_job)
        elif not client_streaming and not server_streaming:
            handlers[method] = grpc.unary_unary_rpc_method_handler(single_reply(channel.unary_unary(method)))
        elif not client_streaming:
            handlers[method] = grpc.unary_stream_rpc_method_handler(streaming(channel.unary_stream(method)))
        elif server_streaming:
            handlers[method] = grpc.stream_stream_rpc_method_handler(streaming(channel.stream_stream(method)))
        else:
            handlers[method] = grpc.stream_unary_rpc_method_handler(single_reply(channel.stream_unary(method)))
    return handlers


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)  # unknown: UNIMPLEMENTED, as the main server


async def _serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    # the main process died (PR_SET_PDEATHSIG), so it will not remove the sockets; the relay
    # closing alone does not say so (the main could live on and start another front end)
    orphaned: list[bool] = []

    def orphan() -> None:
        orphaned.append(True)
        stopped.set()

    reader, writer = await asyncio.open_unix_connection(args.relay)
    relay = _Relay(reader, writer, stopped.set)
    options = [
        ("grpc.max_receive_message_length", args.max_message_bytes),
        ("grpc.max_send_message_length", args.max_message_bytes),
    ]
    # No BDP probing upstream: a probing channel grows its flow-control window with the round
    # trip it measures, so for a client that stops reading a stream, this process would take
    # megabytes of it off the main server (more the slower the machine runs: 4-8 MB at load 16-19)
    # and hold them past the stream's bound (``servicers.StreamBounds``). A fixed window holds
    # one hop's worth over a Unix socket, where round trips are short.
    channel = grpc.aio.insecure_channel(f"unix:{args.upstream}", options=options + [("grpc.http2.bdp_probe", 0)])
    server = grpc.aio.server(
        options=options
        + [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers((_Generic(_proxy_handlers(channel, relay)),))
    if args.tls_cert:
        port = server.add_secure_port(args.listen, server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca))
    else:
        port = server.add_insecure_port(args.listen)
    if port == 0:
        print(f"cannot listen on {args.listen}", flush=True)
        return 1
    await server.start()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    # Ctrl-C reaches the whole process group: the main process stops its front ends in order
    # (health NOT_SERVING first), so a front end leaves SIGINT to it
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(_PARENT_DIED, orphan)
    import gc

    gc.freeze()  # the imports and the server: nothing for the cyclic GC to walk again
    print(f"ready {port}", flush=True)
    await stopped.wait()
    await server.stop(args.grace)
    await channel.close()
    writer.close()
    if orphaned:
        # the main process died without its stop (kill -9), which removes the sockets: nobody
        # else will. Only these two paths and then the directory if empty, never a tree.
        for path in (args.relay, args.upstream):
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(args.relay))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m xpod.scheduler.grpc.frontends",
        description="an xpod server front end (started by xpod server --frontends)",
    )
    ap.add_argument("--listen", required=True)
    ap.add_argument("--parent-pid", type=int, required=True, help="the main process (the front end ends with it)")
    ap.add_argument("--relay", required=True, help="Unix socket of the main process's SubmitJob relay")
    ap.add_argument("--upstream", required=True, help="Unix socket of the main process's gRPC server")
    ap.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--grace", type=float, default=2.0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    args = ap.parse_args(argv)
    if not _die_with_parent(args.parent_pid):
        print(f"front end: the main process {args.parent_pid} is gone", flush=True)
        return 1
    try:
        return asyncio.run(_serve(args))
    except (OSError, RuntimeError) as err:
        print(f"front end: {err}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
