"""``Submissions``: the submit path, from a caller's document to a queued durable write.

Every refusal is an ``ApiError`` naming the field (``begin`` checks in order: request id,
document, queue rights, this cluster's bounds, the in-flight cap, the core's verdict). "Can
never fit" is FAILED_PRECONDITION while any node exists; with none yet the job waits.

``begin`` never waits: a job shape the core has not judged yet is judged on the one admission
thread, and the write queued after it (a wedged store must not wedge admission). The caller
waits on ``Submission.future`` (a thread, or an event loop without a thread per call), then
calls ``finish(result)`` exactly once, or ``abandon()`` when it stops waiting.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import re
import threading
import uuid
from typing import TYPE_CHECKING, Any, Callable

from xpod.scheduler.store import CANONICAL_JSON, StoreClosed, StoreOverloaded, SubmitResult, SubmitWrite

from .admission import Admission, ParsedJob, SpecInvalid, parse_document, problems
from .auth import Call, Principal, Role, authorize
from .errors import ApiError, Code, invalid, shutting_down, store_error
from .jobs import JobBook, JobView
from .nodes import NodeRegistry
from .queues import OPEN_QUEUES, Queues

if TYPE_CHECKING:
    from .api import Limits

_INT64 = 2**63


#: in canonical JSON, what a number too big for 64 bits looks like (19+ digits, or an exponent)
_BIG_NUMBER = re.compile(r"\d{19}|\d[eE]")


def _overflowing(value: Any, canonical: str) -> str | None:
    """The path of the first number that does not fit a signed 64-bit integer, or None.
    ``canonical``: the document's canonical JSON (no NaN, no infinity), looked at first."""
    if not _BIG_NUMBER.search(canonical):
        return None
    stack = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        elif (isinstance(v, int) and not -_INT64 <= v < _INT64) or (v != v or abs(v) >= 2.0**63):
            return where or "job"
    return None


def _chain_write(admitted: concurrent.futures.Future, out: concurrent.futures.Future) -> None:
    """Resolve ``out`` with the write ``admitted`` queued (its outcome, once it commits), or with
    the admission's error; a cancelled admission (the server closing) is a shutdown."""

    def settle(source: concurrent.futures.Future) -> None:
        # InvalidStateError: the caller cancelled ``out``; nobody waits for the outcome
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if source.cancelled():
                out.set_exception(shutting_down())
            elif source.exception() is not None:
                out.set_exception(source.exception())  # type: ignore[arg-type]
            else:
                out.set_result(source.result())

    if admitted.cancelled() or admitted.exception() is not None:
        settle(admitted)
    else:
        admitted.result().add_done_callback(settle)


class Submission:
    """A submission whose write is queued (``Submissions.begin``)."""

    __slots__ = ("_owner", "request_id", "parsed", "future", "_ended")

    def __init__(self, owner: "Submissions", request_id: str, parsed: ParsedJob, future: concurrent.futures.Future):
        self._owner = owner
        self.request_id = request_id
        self.parsed = parsed
        self.future = future  # resolves once the write committed (SubmitResult) or failed
        self._ended = False

    def finish(self, result: SubmitResult) -> tuple[JobView, bool]:
        """(job, created) for the committed ``result`` (``future.result()``)."""
        if self._ended:
            raise RuntimeError("submission already ended")
        self._ended = True
        return self._owner._end(self, result)

    @staticmethod
    def result_error(err: BaseException) -> ApiError | None:
        """The ApiError for an exception ``future`` raised (None: not one the caller caused)."""
        return store_error(err)

    def abandon(self) -> None:
        """The caller stopped waiting; the write may still commit (a retry with the same
        request id finds it). Idempotent."""
        if not self._ended:
            self._ended = True
            self._owner._end(self, None)


class Submissions:
    """See the module docstring. ``on_created(parsed)`` runs for each job a submission created."""

    def __init__(
        self,
        jobs: JobBook,
        nodes: NodeRegistry,
        admission: Admission,
        limits: "Limits",
        clock: Callable[[], float],
        guard: Callable[[], None],
        on_created: Callable[[ParsedJob], None],
        on_shed: Callable[[], None],
        queues: Queues = OPEN_QUEUES,
    ) -> None:
        self._jobs = jobs
        self._queues = queues  # which queues a job may name, and their limits (service.queues)
        self._nodes = nodes
        self._admission = admission
        self._limits = limits
        self._clock = clock
        self._guard = guard  # raises when this replica may not write (a follower)
        self._on_created = on_created
        self._on_shed = on_shed
        self._lock = threading.Lock()
        self.inflight = 0
        # one thread answers submissions whose job shape the core has not judged yet
        self.admitting = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xpod-admission")

    def most_tasks(self) -> int:
        """The most tasks one job may have: ``max_tasks_per_node`` for each node this server
        knows (declared or registered; at least one)."""
        return max(1, self._nodes.size()) * self._limits.max_tasks_per_node

    def queue(self, write: Callable[[], concurrent.futures.Future]) -> concurrent.futures.Future:
        """Queue a store write: refused on a follower, shed when the store's queue is full."""
        self._guard()
        try:
            return write()
        except StoreOverloaded as err:
            raise self.shed(str(err)) from None
        except StoreClosed:
            raise shutting_down() from None

    def shed(self, why: str) -> ApiError:
        self._on_shed()
        after = self._limits.retry_after_s
        return ApiError(
            Code.RESOURCE_EXHAUSTED,
            "SERVER_OVERLOADED",
            f"the server is shedding load ({why}); retry after {after:g} s with the same request id",
            retry_after_s=after,
        )

    def begin(self, principal: Principal, request_id: Any, document: Any) -> Submission:
        authorize(principal, Call.SUBMIT_JOB)
        self._guard()
        limits = self._limits
        if not isinstance(request_id, str) or len(request_id) > limits.max_request_id_chars:
            raise invalid(
                "INVALID_REQUEST_ID",
                f"request_id must be a string of at most {limits.max_request_id_chars} characters",
                "request_id",
            )
        if not request_id:
            request_id = f"server-{uuid.uuid4()}"  # no key: the client opted out of idempotency
        elif principal.role is not Role.ADMIN:
            # idempotency keys are per tenant: one submitter cannot squat (or probe) another's
            request_id = f"{principal.name}/{request_id}"
        if not isinstance(document, dict):
            raise invalid("INVALID_SPEC", "job must be a mapping (kind, metadata, spec)", "job")
        try:
            canonical = CANONICAL_JSON.encode(document)  # store.spec_hash's form, hashed once here
        except (TypeError, ValueError) as err:
            raise invalid("INVALID_SPEC", f"job is not plain JSON: {err}", "job") from None
        if len(canonical) > limits.max_document_bytes:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "SPEC_TOO_LARGE",
                f"job document is {len(canonical)} bytes; the limit is {limits.max_document_bytes}",
                field="job",
                metadata={"bytes": str(len(canonical)), "limitBytes": str(limits.max_document_bytes)},
            )
        overflow = _overflowing(document, canonical)
        if overflow is not None:
            raise invalid("NUMBER_OUT_OF_RANGE", f"{overflow}: numbers must fit in 64 bits", overflow)
        found = problems(document, self._nodes.models)
        if found:
            message = f"{len(found)} problem(s) in the job: " + "; ".join(m for _, m in found)
            raise ApiError(Code.INVALID_ARGUMENT, "INVALID_SPEC", message, field=found[0][0], violations=tuple(found))
        try:
            parsed = parse_document(document)
        except SpecInvalid as err:
            raise invalid("INVALID_SPEC", str(err), err.field) from None
        authorize(principal, Call.SUBMIT_JOB, parsed.queue)
        self._bounded(parsed, len(canonical))
        digest = hashlib.sha256(canonical.encode()).hexdigest()  # == store.spec_hash(document)
        write = SubmitWrite(request_id, digest, parsed.queue, parsed.kind.value, parsed.name, document, self._clock())
        with self._lock:
            if self.inflight >= limits.max_inflight_submissions:
                raise self.shed(f"{self.inflight} submissions in flight")
            self.inflight += 1
        try:
            if self._admission.cached(parsed) is not None:
                fut = self._admit_then_queue(parsed, write)
            else:  # the core answers once per shape; not on the caller's thread (an event loop)
                fut = concurrent.futures.Future()
                admitted = self.queue(lambda: self.admitting.submit(self._admit_then_queue, parsed, write))
                admitted.add_done_callback(lambda done: _chain_write(done, fut))
        except BaseException:
            with self._lock:
                self.inflight -= 1
            raise
        return Submission(self, request_id, parsed, fut)

    def _bounded(self, parsed: ParsedJob, document_bytes: int) -> None:
        """Refuse work no cluster of this size could hold, a queue the server does not accept,
        and a queue whose backlog or storage is full (``Queues.check``); before anything is
        written."""
        most = self.most_tasks()
        if parsed.core.tasks > most:
            nodes = max(1, self._nodes.size())
            field = "spec.replicas" if parsed.kind.value == "ServingJob" else "spec.tasks"
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "TOO_MANY_TASKS",
                f"{field}: {parsed.core.tasks} tasks; this cluster ({nodes} node(s)) holds at most {most}",
                field=field,
                metadata={"tasks": str(parsed.core.tasks), "clusterMaxTasks": str(most)},
            )
        self._queues.check(
            parsed.queue,
            self._limits,
            known=self._jobs.queue_names(),
            pending=self._jobs.pending_count(parsed.queue),
            stored_bytes=self._jobs.stored_bytes(parsed.queue),
            document_bytes=document_bytes,
        )

    def _admit_then_queue(self, parsed: ParsedJob, write: SubmitWrite) -> concurrent.futures.Future:
        """The core's verdict, then the write queued (not waited for)."""
        try:
            never = self._admission.admit(parsed)
        except SpecInvalid as err:
            raise invalid("INVALID_SPEC", str(err), err.field) from None
        if never is not None and self._nodes.size():  # with no node yet, it waits
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "EXCEEDS_CLUSTER_CAPACITY",
                f"job can never fit this cluster: {never.message}",
                metadata=dict(never.metadata),
            )
        return self.queue(lambda: self._jobs.submit(write, parsed))

    def _end(self, submission: Submission, result: SubmitResult | None) -> tuple[JobView, bool]:
        with self._lock:
            self.inflight -= 1
        if result is None:
            self._jobs.submission_ended(submission.request_id)
            return None  # type: ignore[return-value]
        if result.created:
            self._on_created(submission.parsed)
        return self._jobs.view(self._jobs.get(result.job.id) or result.job), result.created
