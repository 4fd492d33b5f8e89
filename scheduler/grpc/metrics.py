"""gRPC server metrics under go-grpc-prometheus's names (research/ecosystem.md 1.4), declared
by ``service.metrics.GrpcCounters``: ``grpc_server_started_total``, ``grpc_server_handled_total``
(by status code name, as go-grpc-prometheus writes them) and ``grpc_server_handling_seconds``.

``wrap_aio_handler`` wraps a ``grpc.aio`` handler once, when it is registered: nothing runs per
call but the counting. A stream (``Watch*``) counts when it ends: OK, its abort's code, UNKNOWN
for a raised exception, CANCELLED or DEADLINE_EXCEEDED when the client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from typing import Any, Callable, Iterator

import grpc


def _handler_parts(handler: grpc.RpcMethodHandler) -> tuple[Callable, str, Callable]:
    """(behaviour, grpc_type label, handler factory) of a method handler, by its streaming shape."""
    if handler.unary_unary is not None:
        return handler.unary_unary, "unary", grpc.unary_unary_rpc_method_handler
    if handler.unary_stream is not None:
        return handler.unary_stream, "server_stream", grpc.unary_stream_rpc_method_handler
    if handler.stream_unary is not None:
        return handler.stream_unary, "client_stream", grpc.stream_unary_rpc_method_handler
    return handler.stream_stream, "bidi_stream", grpc.stream_stream_rpc_method_handler


def _split(full_method: str) -> tuple[str, str]:
    """``/xpod.v1.JobService/SubmitJob`` -> (``xpod.v1.JobService``, ``SubmitJob``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _code_name(context: Any, default: grpc.StatusCode) -> str:
    code = None
    try:
        code = context.code()  # set by abort / set_code; None when the handler set nothing
    except Exception:  # pragma: no cover - grpc versions without ServicerContext.code()
        code = None
    if code is None:
        code = default
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


# The client's own deadline fires first and cancels the stream a moment before the server's
# copy of the deadline (it started counting when the request arrived): a cancel that close to
# the deadline is the deadline.
_DEADLINE_SLACK_S = 0.25


def _cancelled_code(context: Any) -> str:
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= _DEADLINE_SLACK_S
    return (grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED).name


def wrap_aio_handler(m: Any, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` of ``/pkg.Service/Method`` (a ``grpc.aio`` coroutine or async generator)
    counted in ``m`` (``GrpcCounters``). A call the client cancels, or whose deadline passes,
    ends the handler with ``asyncio.CancelledError``: counted CANCELLED or DEADLINE_EXCEEDED."""
    service, method = _split(full_method)
    inner, kind, factory = _handler_parts(handler)
    if not (inspect.iscoroutinefunction(inner) or inspect.isasyncgenfunction(inner)):
        return handler  # a plain function runs on grpc's migration pool: not counted
    # the label children once per method, not per call
    started = m.started.labels(kind, service, method)
    seconds = m.handling_seconds.labels(kind, service, method)
    handled: dict[str, Any] = {}

    @contextlib.contextmanager
    def counted(context: Any) -> Iterator[None]:
        started.inc()
        t0 = time.perf_counter()
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):  # the client went away or its deadline passed
            code = _cancelled_code(context)
            raise
        except BaseException:
            code = _code_name(context, grpc.StatusCode.UNKNOWN)
            raise
        else:
            code = _code_name(context, grpc.StatusCode.OK)
        finally:
            child = handled.get(code)
            if child is None:
                child = handled[code] = m.handled.labels(kind, service, method, code)
            child.inc()
            seconds.observe(time.perf_counter() - t0)

    if not inspect.isasyncgenfunction(inner):  # unary, or a stream written with context.write

        async def behavior(request_or_iterator, context):
            with counted(context):
                return await inner(request_or_iterator, context)

    else:

        async def behavior(request_or_iterator, context):
            with counted(context):
                async for item in inner(request_or_iterator, context):
                    yield item

    return factory(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


__all__ = ["wrap_aio_handler"]
