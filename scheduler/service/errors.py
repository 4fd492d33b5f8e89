"""What the service answers a caller when it refuses: ``ApiError`` (a gRPC status code, an
UPPER_SNAKE reason, one line of message, metadata), raised by the api and by the owners alike,
and the one mapping of the store's failures onto it (``store_error``, ``wait``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
from typing import Any, Iterator

from xpod.scheduler.store import NotLeader, RequestIdConflict, StoreClosed, StoreUnavailable

ERROR_DOMAIN = "xpod.io"
DEADLINE = "the deadline passed before the write was on disk; retry with the same request id"


class Code(str, enum.Enum):
    """The gRPC status codes the API uses (names match ``grpc.StatusCode``)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"


class ApiError(Exception):
    """A refusal the caller caused or can retry. ``str(err)`` is the one-line message."""

    def __init__(
        self,
        code: Code,
        reason: str,
        message: str,
        *,
        metadata: dict[str, str] | None = None,
        field: str | None = None,
        retry_after_s: float | None = None,
        violations: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # UPPER_SNAKE, google.rpc.ErrorInfo.reason
        self.message = message
        self.metadata = dict(metadata or {})  # lowerCamelCase keys, ErrorInfo.metadata
        self.field = field  # the offending field path, for BadRequest.field_violations
        self.retry_after_s = retry_after_s  # RetryInfo.retry_delay when set
        # (field, message) of every problem, for BadRequest.field_violations (else ``field`` alone)
        self.violations = violations or ((field, message),) if field is not None else violations
        if field is not None:
            self.metadata.setdefault("field", field)


def invalid(reason: str, message: str, field: str) -> ApiError:
    return ApiError(Code.INVALID_ARGUMENT, reason, message, field=field)


def not_found(what: str, name: str, hint: str = "") -> ApiError:
    key = "jobId" if what == "job" else "node"
    return ApiError(
        Code.NOT_FOUND, f"{what.upper()}_NOT_FOUND", f"no {what} {name[:253]!r}{hint}", metadata={key: name[:253]}
    )


def deadline_passed() -> ApiError:
    return ApiError(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", DEADLINE)


def shutting_down() -> ApiError:
    return ApiError(Code.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; retry", retry_after_s=1.0)


def store_error(err: BaseException) -> ApiError | None:
    """The ApiError for a failure of a store write (or of waiting for one); None for anything
    else (``StaleUpdate``, a bug), which the caller handles or lets fly."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, RequestIdConflict):
        return ApiError(
            Code.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
            str(err),
            field="request_id",
            metadata={"jobId": err.existing.id, "requestId": err.existing.request_id},
        )
    if isinstance(err, StoreClosed):
        return shutting_down()
    if isinstance(err, concurrent.futures.TimeoutError):
        return deadline_passed()
    if isinstance(err, (NotLeader, StoreUnavailable)):
        # this replica lost the leader lease or the database: nothing was acknowledged
        return ApiError(
            Code.UNAVAILABLE,
            "NOT_LEADER" if isinstance(err, NotLeader) else "STORE_UNAVAILABLE",
            f"not written ({str(err)[:200]}); retry with the same request id (on another replica when there is one)",
            retry_after_s=0.5,
        )
    return None


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Raise the store's failures inside as ``ApiError`` (``store_error``)."""
    try:
        yield
    except BaseException as err:
        mapped = store_error(err)
        if mapped is None:
            raise
        raise mapped from None


def wait(future: concurrent.futures.Future, timeout_s: float | None) -> Any:
    """``future.result(timeout_s)`` with the store's failures raised as ``ApiError``."""
    with store_errors():
        return future.result(timeout=timeout_s)
