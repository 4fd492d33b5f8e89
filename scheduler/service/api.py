"""The scheduler service in process: one method per RPC of ``xpod.v1`` (JobService, NodeService,
ClusterService). It checks the caller and the request and delegates: jobs to the ``JobBook``,
nodes to the ``NodeRegistry``, the core to the one ``CoreLink``, node and task loss to
``Liveness``, the cycle to the ``SchedulingLoop``. ``scheduler.grpc`` is a thin adapter over this
class; most tests call it directly.

Every method takes the caller's ``Principal`` first and raises ``ApiError`` (a status code, an
UPPER_SNAKE reason, one line of message, metadata) for anything the caller can cause.

Contracts:

* ``submit_job`` returns only once the job is durable (the store's group commit). The same
  ``request_id`` with the same document returns the same job (``created=False``); with another
  document it is ALREADY_EXISTS. A malformed document is INVALID_ARGUMENT naming the field; a job
  that can never fit this cluster is FAILED_PRECONDITION; a job that does not fit *now* is
  accepted, QUEUED, with a pending reason. While nodes are missing their agents (or none has
  registered yet), a job the ready nodes cannot hold is accepted and waits for them.
* After a restart the service rebuilds everything from the store: every acknowledged job with
  its state and allocations, registered nodes (ready, with a full node timeout to heartbeat),
  and the event log (``watch_jobs`` resumes from a revision).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import hashlib
import re
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

from xpod.hal.device import Health
from xpod.scheduler.contract import MoeLoadReport, MoePlanAnswer, NodeRecord, TaskReport, TaskState
from xpod.scheduler.store import (
    CANONICAL_JSON,
    EventRecord,
    EventType,
    JobRecord,
    JobState,
    JobUpdate,
    RequestIdConflict,
    StaleUpdate,
    Store,
    NotLeader,
    StoreClosed,
    StoreOverloaded,
    StoreUnavailable,
    SubmitResult,
    SubmitWrite,
    open_store,
)

from .admission import TASKS_PER_NODE, Admission, ParsedJob, SpecInvalid, parse_document, problems
from .assignments import Assignment, AssignmentHub, Subscription
from .auth import OPEN_PRINCIPAL, Call, Principal, Role
from .core_link import CoreLink
from .jobs import BOUND_STATES, JobBook, JobView, Recovered
from .liveness import Liveness
from .loop import SchedulingLoop
from .moe import MoeLoops, MoeRefused, moe_of
from .nodes import NodeRegistry, NodeState
from .restarts import Loss


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


ERROR_DOMAIN = "xpod.io"


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


#: node names: what a host name may hold (no control characters reach terminals or metrics)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
_MAX_LABELS = 64
_MAX_LABEL_VALUE = 253


def _invalid(reason: str, message: str, field: str) -> ApiError:
    return ApiError(Code.INVALID_ARGUMENT, reason, message, field=field)


def _store_lost(err: Exception) -> ApiError:
    """A write this replica could not make durable (it lost the leader lease or the database):
    nothing was acknowledged, and the same request id is safe to retry on any replica."""
    reason = "NOT_LEADER" if isinstance(err, NotLeader) else "STORE_UNAVAILABLE"
    return ApiError(
        Code.UNAVAILABLE,
        reason,
        f"not written ({str(err)[:200]}); retry with the same request id (on another replica when there is one)",
        retry_after_s=0.5,
    )


def _shutting_down() -> ApiError:
    return ApiError(Code.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; retry", retry_after_s=1.0)


def _chain_write(admitted: concurrent.futures.Future, out: concurrent.futures.Future) -> None:
    """Resolve ``out`` with the write ``admitted`` queued (its outcome, once it commits), or with
    the admission's error; a cancelled admission (the server closing) is a shutdown."""

    def settle(source: concurrent.futures.Future) -> None:
        try:
            if source.cancelled():
                out.set_exception(_shutting_down())
            elif source.exception() is not None:
                out.set_exception(source.exception())  # type: ignore[arg-type]
            else:
                out.set_result(source.result())
        except concurrent.futures.InvalidStateError:
            pass  # the caller cancelled ``out``: nobody waits for the outcome

    if admitted.cancelled() or admitted.exception() is not None:
        settle(admitted)
    else:
        admitted.result().add_done_callback(settle)


_INT64 = 2**63


def _overflowing(value: Any, path: str = "job") -> str | None:
    """The path of the first number that does not fit a signed 64-bit integer (or is not
    finite), or None."""
    stack = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where != "job" else str(k), x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            continue
        elif isinstance(v, int):
            if not -_INT64 <= v < _INT64:
                return where
        elif isinstance(v, float) and (v != v or abs(v) >= 2.0**63):
            return where
    return None


def _not_found(what: str, name: str, hint: str = "") -> ApiError:
    key = "jobId" if what == "job" else "node"
    return ApiError(
        Code.NOT_FOUND, f"{what.upper()}_NOT_FOUND", f"no {what} {name[:253]!r}{hint}", metadata={key: name[:253]}
    )


@dataclasses.dataclass(frozen=True)
class Explanation:
    job: JobView
    numbers: dict[str, float]
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Guards against hostile or runaway input; each refusal names the limit."""

    max_document_bytes: int = 256 * 1024  # canonical JSON of a job document
    max_request_id_chars: int = 128
    max_inflight_submissions: int = 4096  # past this, RESOURCE_EXHAUSTED with RetryInfo
    retry_after_s: float = 0.2
    max_page_size: int = 1000
    default_page_size: int = 100
    max_events_per_job: int = 200  # returned by get_job (newest kept)
    max_nodes_per_call: int = 1000  # RegisterNodes, Heartbeat, WatchAssignments, ReportTaskStatus
    max_queues: int = 64  # queues in all, the auto-created ones included (metrics label sets stay bounded)
    max_tasks_per_node: int = TASKS_PER_NODE  # a job's tasks at most this times the cluster's nodes
    max_pending_per_queue: int = 10_000  # queued (not yet placed) jobs per queue: one tenant cannot fill the book
    max_page_bytes: int = 2 * 1024 * 1024  # ListJobs pages end before this many bytes of specs
    watch_batch: int = 16  # events a WatchJobs stream reads (and holds) at a time
    max_watches_per_caller: int = 4  # WatchJobs streams one principal may hold open


class Submission:
    """A submission whose write is queued (``SchedulerApi.begin_submit``)."""

    __slots__ = ("_api", "request_id", "parsed", "future", "_ended")

    def __init__(
        self, api: "SchedulerApi", request_id: str, parsed: ParsedJob, future: concurrent.futures.Future
    ) -> None:
        self._api = api
        self.request_id = request_id
        self.parsed = parsed
        self.future = future  # resolves once the write committed (SubmitResult) or failed
        self._ended = False

    def finish(self, result: SubmitResult) -> tuple[JobView, bool]:
        """(job, created) for the committed ``result`` (``future.result()``)."""
        if self._ended:
            raise RuntimeError("submission already ended")
        self._ended = True
        return self._api._end_submission(self, result)

    def result_error(self, err: BaseException) -> ApiError | None:
        """The ApiError for an exception ``future`` raised (None: not one the caller caused)."""
        return self._api._submit_error(err, self.request_id)

    def abandon(self) -> None:
        """The caller stopped waiting; the write may still commit (a retry with the same
        request id finds it). Idempotent."""
        if not self._ended:
            self._ended = True
            self._api._end_submission(self, None)


class SchedulerApi:
    """The service. ``start()`` launches the scheduling loop and liveness; ``close()`` stops
    them, the core and the store."""

    def __init__(
        self,
        store: Store | str,
        core: CoreLink,
        *,
        cluster: Any = None,
        clock: Callable[[], float] = time.time,
        cycle_interval_s: float = 0.5,
        min_cycle_gap_s: float = 0.25,
        limits: Limits = Limits(),
        metrics: Any = None,
        node_timeout_s: float | None = None,  # heartbeats missing this long -> NotReady (service.liveness)
        recovered: Recovered | None = None,  # a follower's book, instead of reading the store
    ) -> None:
        """``cluster``: a loaded ``hal.cluster.Cluster`` whose nodes are known (``unknown`` until
        their agents register) and whose name the cluster calls show."""
        self._clock = clock
        self._limits = limits
        self.cluster_name = cluster.name if cluster is not None else "xpod"
        self.metrics = metrics  # service.metrics.ServiceMetrics-like hooks, or None
        self._stop = threading.Event()
        # set on a follower replica (service.replica): every write and agent call raises it
        self.read_only_error: Callable[[], ApiError] | None = None
        self._lock = threading.Lock()  # the in-flight submission count
        self._inflight_submissions = 0
        self.store = open_store(store, holder="xpod server") if isinstance(store, str) else store
        self.core = core
        try:
            declared = ()
            if cluster is not None:
                from xpod.scheduler.core.from_cluster import nodes_from_cluster

                declared = tuple(nodes_from_cluster(cluster))
            self.jobs = JobBook(self.store)
            self.hub = AssignmentHub(self.jobs)
            self.admission = Admission(core.admit)
            self.nodes = NodeRegistry(self.store, core, clock, declared, on_inventory=self.admission.forget)
            self.loop = SchedulingLoop(
                self.jobs, self.nodes, core, clock, cycle_interval_s=cycle_interval_s, min_cycle_gap_s=min_cycle_gap_s
            )
            self.liveness = Liveness(self.nodes, self.jobs, core, clock, self.loop.wake, None, node_timeout_s)
            self.moe = MoeLoops(self.store, self.jobs.get, clock)
            with core.atomic():
                for job in self.jobs.load(parse_document, recovered):
                    parsed = self.jobs.parsed(job.id)
                    assert parsed is not None
                    if parsed.core.tasks > self._most_tasks():  # stored before the bound: never to the core
                        self.jobs.unparsable.append(
                            (job, f"{parsed.core.tasks} tasks; this cluster holds at most {self._most_tasks()}")
                        )
                        continue
                    core_job = parsed.core_job(job.id, job.create_time_s)
                    if job.state in BOUND_STATES and job.allocations:
                        core.restore_job(core_job, job.allocations, job.update_time_s)
                    else:
                        core.add_job(core_job)
        except BaseException:
            core.close()
            self.store.close()
            raise
        # one pool thread answers submissions whose job shape the core has not judged yet
        self._admitting = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xpod-admission")
        if metrics is not None:
            metrics.attach(self)

    def attach_metrics(self, metrics: Any) -> None:
        self.metrics = self.loop.metrics = self.liveness.metrics = metrics

    # --- lifecycle ---

    def start(self) -> "SchedulerApi":
        self._fail_unparsable()
        self.loop.start(self._stop)
        self.liveness.start(self._stop)
        self.moe.start(self._stop, lambda: self.read_only_error is None)
        return self

    def _fail_unparsable(self) -> None:
        """Fail the stored live jobs this server's checks refuse (``JobBook.unparsable``), with
        the reason, so a restart never hangs on (nor half-loads) a job it would not accept."""
        while self.jobs.unparsable and self.read_only_error is None:
            job, why = self.jobs.unparsable.pop()
            update = JobUpdate(
                job.id, JobState.FAILED, None, (), EventType.FAILED, f"refused at restart: {why}"[:1000], self._clock()
            )
            try:
                self._wait(self._queued(lambda: self.jobs.update(update)), 30.0)
            except (ApiError, StaleUpdate):
                pass  # another replica or a later start fails it

    def close(self) -> None:
        self._stop.set()
        self.liveness.stop()
        self.loop.join(timeout_s=10)
        self.moe.join(timeout_s=10)
        self.jobs.wake_waiters()
        self._admitting.shutdown(wait=False, cancel_futures=True)
        self.core.close()
        self.store.close()

    @property
    def limits(self) -> Limits:
        """The guards this service runs with."""
        return self._limits

    @property
    def last_revision(self) -> int:
        return self.jobs.last_revision

    def schedule_once(self):
        """One scheduling cycle now (tests drive the loop with it)."""
        return self.loop.schedule_once()

    # --- helpers ---

    def _authorize(self, principal: Principal, call: Call, queue: str | None = None) -> None:
        if not principal.may_call(call):
            raise ApiError(
                Code.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
                f"{principal.name} ({principal.role.value}) may not call {call.value}",
                metadata={"principal": principal.name, "role": principal.role.value, "call": call.value},
            )
        if queue is not None and principal.role is not Role.ADMIN and not principal.may_use_queue(queue):
            raise ApiError(
                Code.PERMISSION_DENIED,
                "QUEUE_NOT_ALLOWED",
                f"{principal.name} may not use queue {queue!r}",
                metadata={"principal": principal.name, "queue": queue},
            )

    def _speaks_for(self, principal: Principal, call: Call, nodes: Sequence[str], field: str) -> None:
        """A node call may name only the caller's nodes (``Principal.may_speak_for``)."""
        for name in nodes:
            if not principal.may_speak_for(name):
                raise ApiError(
                    Code.PERMISSION_DENIED,
                    "NODE_NOT_ALLOWED",
                    f"{principal.name} ({principal.role.value}) may not call {call.value} for node {name[:253]!r}",
                    metadata={"principal": principal.name, "node": name[:253], "call": call.value},
                    field=field,
                )

    def _job(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            raise _not_found("job", job_id)
        return job

    def _visible_job(self, principal: Principal, call: Call, job_id: str) -> JobRecord:
        """The job, when the caller may see its queue; NOT_FOUND alike whether it does not exist
        or sits in a queue the caller cannot see (the answer tells nothing of other tenants)."""
        self._authorize(principal, call)
        job = self.jobs.get(job_id)
        if job is None or not (principal.all_queues or job.queue in principal.queues):
            raise _not_found("job", job_id)
        return job

    def _wait(self, future: concurrent.futures.Future, timeout_s: float | None) -> Any:
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ApiError(
                Code.DEADLINE_EXCEEDED,
                "DEADLINE_EXCEEDED",
                "the deadline passed before the write was on disk; retry with the same request id",
            ) from None
        except StoreClosed:
            raise _shutting_down() from None
        except (NotLeader, StoreUnavailable) as err:
            raise _store_lost(err) from None

    def _shed(self, why: str) -> ApiError:
        if self.metrics is not None:
            self.metrics.shed()
        return ApiError(
            Code.RESOURCE_EXHAUSTED,
            "SERVER_OVERLOADED",
            f"the server is shedding load ({why}); retry after {self._limits.retry_after_s:g} s with the same request id",
            retry_after_s=self._limits.retry_after_s,
        )

    def _leader_only(self) -> None:
        if self.read_only_error is not None:
            raise self.read_only_error()

    def catch_up(self) -> None:
        """Bring a follower up to the store: the events since its revision, the nodes."""
        while True:
            events = self.store.events_since(self.jobs.last_revision, limit=2000)
            self.jobs.replay(events, parse_document)
            if len(events) < 2000:
                break
        self.nodes.refresh()

    def _queued(self, queue: Callable[[], concurrent.futures.Future]) -> concurrent.futures.Future:
        self._leader_only()
        try:
            return queue()
        except StoreOverloaded as err:
            raise self._shed(str(err)) from None
        except StoreClosed:
            raise _shutting_down() from None

    def _too_many(self, items: Sequence[Any], field: str) -> None:
        if len(items) > self._limits.max_nodes_per_call:
            raise _invalid(
                "TOO_MANY_ITEMS",
                f"{field}: {len(items)} items; at most {self._limits.max_nodes_per_call} per call",
                field,
            )

    # --- JobService ---

    def submit_job(
        self, principal: Principal, request_id: str, document: Any, *, timeout_s: float | None = None
    ) -> tuple[JobView, bool]:
        """Accept a job document; see the module docstring. Returns (job, created)."""
        submission = self.begin_submit(principal, request_id, document)
        try:
            result = self._wait(submission.future, timeout_s)
        except BaseException as err:
            submission.abandon()
            api_err = self._submit_error(err, submission.request_id)
            if api_err is not None:
                raise api_err from None
            raise
        return submission.finish(result)

    def _submit_error(self, err: BaseException, request_id: str) -> ApiError | None:
        if isinstance(err, ApiError):
            return err
        if isinstance(err, RequestIdConflict):
            return ApiError(
                Code.ALREADY_EXISTS,
                "REQUEST_ID_REUSED",
                str(err),
                field="request_id",
                metadata={"jobId": err.existing.id, "requestId": request_id},
            )
        if isinstance(err, StoreClosed):
            return _shutting_down()
        if isinstance(err, (NotLeader, StoreUnavailable)):
            return _store_lost(err)
        return None

    def begin_submit(self, principal: Principal, request_id: str, document: Any) -> Submission:
        """The first half of ``submit_job``: check the caller and the document and queue the
        write; never waits (a job shape the core has not judged yet is judged on a thread of its
        own, and the write queued after). The caller waits on ``.future`` (a concurrent future:
        from a thread, or an event loop without a thread per call), then calls
        ``.finish(result)`` exactly once, or ``.abandon()`` when it stops waiting (deadline,
        cancel). Raises ``ApiError`` like ``submit_job``."""
        self._authorize(principal, Call.SUBMIT_JOB)
        self._leader_only()
        if not isinstance(request_id, str) or len(request_id) > self._limits.max_request_id_chars:
            raise _invalid(
                "INVALID_REQUEST_ID",
                f"request_id must be a string of at most {self._limits.max_request_id_chars} characters",
                "request_id",
            )
        if not request_id:
            request_id = f"server-{uuid.uuid4()}"  # no key: the client opted out of idempotency
        elif principal.role is not Role.ADMIN:
            # idempotency keys are per tenant: one submitter cannot squat (or probe) another's
            request_id = f"{principal.name}/{request_id}"
        if not isinstance(document, dict):
            raise _invalid("INVALID_SPEC", "job must be a mapping (kind, metadata, spec)", "job")
        try:
            canonical = CANONICAL_JSON.encode(document)  # store.spec_hash's form, hashed once here
        except (TypeError, ValueError) as err:
            raise _invalid("INVALID_SPEC", f"job is not plain JSON: {err}", "job") from None
        if len(canonical) > self._limits.max_document_bytes:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "SPEC_TOO_LARGE",
                f"job document is {len(canonical)} bytes; the limit is {self._limits.max_document_bytes}",
                field="job",
                metadata={"bytes": str(len(canonical)), "limitBytes": str(self._limits.max_document_bytes)},
            )
        overflow = _overflowing(document)
        if overflow is not None:
            raise _invalid("NUMBER_OUT_OF_RANGE", f"{overflow}: numbers must fit in 64 bits", overflow)
        found = problems(document, self.nodes.models)
        if found:
            message = f"{len(found)} problem(s) in the job: " + "; ".join(m for _, m in found)
            raise ApiError(Code.INVALID_ARGUMENT, "INVALID_SPEC", message, field=found[0][0], violations=tuple(found))
        try:
            parsed = parse_document(document)
        except SpecInvalid as err:
            raise _invalid("INVALID_SPEC", str(err), err.field) from None
        self._authorize(principal, Call.SUBMIT_JOB, parsed.queue)
        self._bounded(parsed)
        digest = hashlib.sha256(canonical.encode()).hexdigest()  # == store.spec_hash(document)
        write = SubmitWrite(request_id, digest, parsed.queue, parsed.kind.value, parsed.name, document, self._clock())
        with self._lock:
            if self._inflight_submissions >= self._limits.max_inflight_submissions:
                raise self._shed(f"{self._inflight_submissions} submissions in flight")
            self._inflight_submissions += 1
        try:
            if self.admission.cached(parsed) is not None:
                self._admit(parsed)
                fut = self._queued(lambda: self.jobs.submit(write, parsed))
            else:  # the core answers once per shape; not on the caller's thread (an event loop)
                fut = concurrent.futures.Future()
                admitted = self._queued(lambda: self._admitting.submit(self._admit_then_queue, parsed, write))
                admitted.add_done_callback(lambda done: _chain_write(done, fut))
        except BaseException:
            with self._lock:
                self._inflight_submissions -= 1
            raise
        return Submission(self, request_id, parsed, fut)

    def _most_tasks(self) -> int:
        """The most tasks one job may have: ``max_tasks_per_node`` for each node this server
        knows (declared or registered; at least one)."""
        return max(1, sum(self.nodes.counts().values())) * self._limits.max_tasks_per_node

    def _bounded(self, parsed: ParsedJob) -> None:
        """Refuse work no cluster of this size could hold, a queue past the limit on queues, and
        a queue whose backlog is full; before anything is written."""
        most = self._most_tasks()
        if parsed.core.tasks > most:
            nodes = max(1, sum(self.nodes.counts().values()))
            serving = parsed.kind.value == "ServingJob"
            field = "spec.replicas" if serving else "spec.tasks"
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "TOO_MANY_TASKS",
                f"{field}: {parsed.core.tasks} tasks; this cluster ({nodes} node(s)) holds at most {most}",
                field=field,
                metadata={"tasks": str(parsed.core.tasks), "clusterMaxTasks": str(most)},
            )
        known = self.jobs.queue_names() | {"default"}
        if parsed.queue not in known:
            if len(known) >= self._limits.max_queues:
                raise ApiError(
                    Code.FAILED_PRECONDITION,
                    "TOO_MANY_QUEUES",
                    f"spec.queue: {parsed.queue!r} would be queue number {self._limits.max_queues + 1}; "
                    f"the server allows {self._limits.max_queues} (use an existing queue or ask an admin)",
                    field="spec.queue",
                    metadata={"queue": parsed.queue, "maxQueues": str(self._limits.max_queues)},
                )
        pending = self.jobs.pending_count(parsed.queue)
        if pending >= self._limits.max_pending_per_queue:
            raise ApiError(
                Code.RESOURCE_EXHAUSTED,
                "QUEUE_FULL",
                f"queue {parsed.queue!r} has {pending} queued jobs, its limit; wait for some to start or cancel some",
                metadata={"queue": parsed.queue, "limit": str(self._limits.max_pending_per_queue)},
                retry_after_s=5.0,
            )

    def _admit(self, parsed: ParsedJob) -> None:
        try:
            never = self.admission.admit(parsed)
        except SpecInvalid as err:
            raise _invalid("INVALID_SPEC", str(err), err.field) from None
        if never is not None and sum(self.nodes.counts().values()):  # with no node yet, it waits
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "EXCEEDS_CLUSTER_CAPACITY",
                f"job can never fit this cluster: {never.message}",
                metadata=dict(never.metadata),
            )

    def _admit_then_queue(self, parsed: ParsedJob, write: SubmitWrite) -> concurrent.futures.Future:
        """On the admission thread: the core's verdict, then the write queued, not waited for
        (a wedged store must not wedge admission, nor keep the process from exiting)."""
        self._admit(parsed)
        return self._queued(lambda: self.jobs.submit(write, parsed))

    def _end_submission(self, submission: Submission, result: SubmitResult | None) -> tuple[JobView, bool]:
        with self._lock:
            self._inflight_submissions -= 1
        if result is None:
            self.jobs.submission_ended(submission.request_id)
            return None  # type: ignore[return-value]
        if result.created:
            self.loop.wake()
            if self.metrics is not None:
                self.metrics.submitted(submission.parsed.queue)
        return self.jobs.view(self.jobs.get(result.job.id) or result.job), result.created

    def get_job(self, principal: Principal, job_id: str) -> tuple[JobView, list[EventRecord]]:
        job = self._visible_job(principal, Call.GET_JOB, job_id)
        events = self.store.events_since(0, job_id=job.id, limit=100_000)[-self._limits.max_events_per_job :]
        return self.jobs.view(job), events

    def list_jobs(
        self,
        principal: Principal,
        *,
        queue: str = "",
        states: Sequence[JobState] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[JobView], str]:
        """Jobs in submission order; ``page_token`` is opaque (``seq:N``, the last seq seen)."""
        self._authorize(principal, Call.LIST_JOBS, queue or None)
        if page_size < 0 or page_size > self._limits.max_page_size:
            raise _invalid(
                "INVALID_PAGE_SIZE", f"page_size must be 0..{self._limits.max_page_size}, got {page_size}", "page_size"
            )
        size = page_size or self._limits.default_page_size
        after = 0
        if page_token:
            digits = page_token.removeprefix("seq:")
            if not page_token.startswith("seq:") or not digits.isdigit():
                raise _invalid("INVALID_PAGE_TOKEN", "page_token is not one this server issued", "page_token")
            after = int(digits)
        wanted = set(states)
        out: list[JobRecord] = []
        page_bytes = 0
        full = False
        for j in self.jobs.in_order(after):
            if (queue and j.queue != queue) or (not principal.all_queues and j.queue not in principal.queues):
                continue
            if wanted and j.state not in wanted:
                continue
            if len(out) == size:
                full = True
                break
            # a page ends before its specs pass max_page_bytes (gRPC's 4 MiB message limit), never empty
            page_bytes += len(CANONICAL_JSON.encode(j.spec)) + 512
            if out and page_bytes > self._limits.max_page_bytes:
                full = True
                break
            out.append(j)
        next_token = f"seq:{out[-1].seq}" if full and out else ""
        return [self.jobs.view(j) for j in out], next_token

    def cancel_job(self, principal: Principal, job_id: str, *, timeout_s: float | None = None) -> JobView:
        """Cancel a queued or bound job (frees its devices). FAILED_PRECONDITION once it ended."""
        self._authorize(principal, Call.CANCEL_JOB)
        self._leader_only()
        while True:
            job = self._visible_job(principal, Call.CANCEL_JOB, job_id)
            if job.state.terminal:
                raise ApiError(
                    Code.FAILED_PRECONDITION,
                    "JOB_ALREADY_ENDED",
                    f"job {job.id} already ended ({job.state.value})",
                    metadata={"jobId": job.id, "state": job.state.value},
                )
            update = JobUpdate(
                job.id,
                JobState.CANCELLED,
                None,
                (),
                EventType.CANCELLED,
                f"cancelled by {principal.name}",
                self._clock(),
                expect_revision=job.revision,
            )
            try:
                result = self._wait(self._queued(lambda: self.jobs.update(update)), timeout_s)
            except StaleUpdate:
                continue  # the scheduler changed it meanwhile: decide again on the new state
            break
        self._ended(job, JobState.CANCELLED)
        return self.jobs.view(result.job)

    def _ended(self, job: JobRecord, state: JobState) -> None:
        self.core.remove_job(job.id)
        self.loop.wake()
        if self.metrics is not None:
            self.metrics.finished(job.queue, job.kind, state.value)

    def watch_jobs(
        self,
        principal: Principal,
        *,
        from_revision: int = 0,
        queue: str = "",
        job_id: str = "",
        is_active: Callable[[], bool] = lambda: True,
        poll_s: float = 0.5,
    ) -> Iterator[EventRecord]:
        """Every event after ``from_revision`` the caller may see, then new ones, until
        ``is_active()`` turns false or the service closes. Checks happen before the first event."""
        self._authorize(principal, Call.WATCH_JOBS, queue or None)
        if job_id:
            self._visible_job(principal, Call.WATCH_JOBS, job_id)
        if from_revision < 0:
            raise _invalid("INVALID_REVISION", "from_revision must be >= 0", "from_revision")
        return self._watch(principal, from_revision, queue, job_id, is_active, poll_s)

    def _watch(self, principal, revision, queue, job_id, is_active, poll_s) -> Iterator[EventRecord]:
        # a small batch: a stream holds at most one batch of events (each with its job's spec, up to
        # max_document_bytes) while its consumer reads, so a consumer that stops reading pins
        # about WATCH_BATCH x 256 KB, not the whole log (25 stalled watches took 3.6 GB)
        batch = self._limits.watch_batch
        while is_active() and not self._stop.is_set():
            events = self.store.events_since(revision, job_id=job_id or None, limit=batch)
            for ev in events:
                revision = ev.revision
                if queue and ev.job.queue != queue:
                    continue
                if not principal.all_queues and ev.job.queue not in principal.queues:
                    continue
                yield ev
            if len(events) < batch and not self._stop.is_set():
                self.jobs.wait_for_change(revision, poll_s)

    def explain_job(self, principal: Principal, job_id: str) -> Explanation:
        job = self._visible_job(principal, Call.EXPLAIN_JOB, job_id)
        view = self.jobs.view(job)
        numbers: dict[str, float] = {}
        lines = [f"job {job.id} ({job.kind} {job.name!r}) in queue {job.queue!r} is {job.state.value}"]
        if view.pending is not None:
            for k, v in view.pending.metadata:
                try:
                    numbers[k] = float(v)
                except ValueError:
                    pass
            lines.append(f"{view.pending.reason}: {view.pending.message}")
        if view.queue_position:
            numbers["queuePosition"] = float(view.queue_position)
            lines.append(f"position {view.queue_position} among the queued jobs of queue {job.queue!r}")
        by_node: dict[str, list[str]] = {}
        for a in job.allocations:
            by_node.setdefault(a.node, []).extend(a.devices)
        for node, devices in by_node.items():
            lines.append(f"holds {len(devices)} device(s) on {node}: {', '.join(devices)}")
        if job.message:
            lines.append(job.message)
        return Explanation(view, numbers, tuple(lines))

    # --- NodeService ---

    def register_nodes(
        self, principal: Principal, records: Sequence[NodeRecord], *, timeout_s: float | None = None
    ) -> list[NodeState]:
        """Add or replace nodes (durable); they are ready at once. Jobs bound to a replaced node
        are evicted by the core (its old agent is gone, and its tasks with it)."""
        self._authorize(principal, Call.REGISTER_NODES)
        self._leader_only()
        self._too_many(records, "nodes")
        self._speaks_for(principal, Call.REGISTER_NODES, [n.name for n in records], "nodes.name")
        for i, node in enumerate(records):
            where = f"nodes[{i}]"
            if not _NODE_NAME.match(node.name):
                raise _invalid(
                    "INVALID_NODE",
                    f"{where}.name {node.name[:64]!r} must be 1..253 of A-Z a-z 0-9 . _ - (starting with a letter or digit)",
                    f"{where}.name",
                )
            if len(node.labels) > _MAX_LABELS:
                raise _invalid("INVALID_NODE", f"{where}.labels: at most {_MAX_LABELS} labels", f"{where}.labels")
            for key, value in node.labels:
                if not _LABEL_KEY.match(key) or len(value) > _MAX_LABEL_VALUE or not value.isprintable():
                    raise _invalid(
                        "INVALID_NODE",
                        f"{where}.labels: {key[:64]!r}={value[:64]!r}: keys are 1..253 of A-Z a-z 0-9 . _ / -, "
                        f"values at most {_MAX_LABEL_VALUE} printable characters",
                        f"{where}.labels",
                    )
            for d in node.devices:
                for text in (d.vendor, d.model):
                    if len(text) > 253 or not text.isprintable():
                        raise _invalid(
                            "INVALID_NODE",
                            f"{where}.devices[{d.index}]: vendor and model are at most 253 printable characters",
                            f"{where}.devices.model",
                        )
            if [d.index for d in node.devices] != list(range(len(node.devices))):
                raise _invalid("INVALID_NODE", f"{where}.devices: indices must be 0..N-1 in order", f"{where}.devices")
            if node.cpu_milli < 0 or node.memory_bytes < 0 or any(d.memory_total_bytes < 0 for d in node.devices):
                raise _invalid("INVALID_NODE", f"{where}: cpu_milli and memory sizes must be >= 0", where)
            for d in node.devices:
                if not d.model or not d.vendor:
                    raise _invalid(
                        "INVALID_NODE",
                        f"{where}.devices[{d.index}]: vendor and model are required",
                        f"{where}.devices.model",
                    )
        if len({n.name for n in records}) != len(records):
            raise _invalid("INVALID_NODE", "nodes: a name appears twice", "nodes")
        try:
            states = self.nodes.register(records, timeout_s)
        except concurrent.futures.TimeoutError:
            raise ApiError(Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the deadline passed; retry") from None
        except StoreClosed:
            raise _shutting_down() from None
        except (NotLeader, StoreUnavailable) as err:
            raise _store_lost(err) from None
        self.loop.wake()
        return states

    def register_node(self, principal: Principal, record: NodeRecord, *, timeout_s: float | None = None) -> NodeState:
        """``register_nodes`` of one node."""
        return self.register_nodes(principal, [record], timeout_s=timeout_s)[0]

    def heartbeat(self, principal: Principal, health: dict[str, dict[int, Health]]) -> tuple[float, list[str]]:
        """Liveness and device health of several nodes (node -> device index -> health).
        Returns (seconds until the next heartbeat is due, the nodes this server does not know:
        their agent registers them again). Cheap: no store write, no core call."""
        self._authorize(principal, Call.HEARTBEAT)
        self._leader_only()
        self._too_many(list(health), "nodes")
        self._speaks_for(principal, Call.HEARTBEAT, list(health), "nodes.node")
        unknown, changed = self.nodes.beat(health)
        if changed:
            self.liveness.health_changed(changed)
        return self.liveness.heartbeat_interval_s, unknown

    def watch_assignments(
        self, principal: Principal, nodes: Sequence[str], deliver: Callable[[list[Assignment]], None]
    ) -> tuple[Subscription, list[Assignment]]:
        """Serve ``nodes``' assignments through ``deliver`` (called on the store's writer thread
        with each commit's news; it must only hand them over): returns the subscription
        (``close()`` it) and what runs on the nodes now."""
        self._authorize(principal, Call.WATCH_ASSIGNMENTS)
        self._leader_only()
        self._too_many(nodes, "nodes")
        self._speaks_for(principal, Call.WATCH_ASSIGNMENTS, nodes, "nodes")
        for name in nodes:
            if self.nodes.get(name) is None:
                raise _not_found("node", name, "; call RegisterNodes first")
        return self.hub.subscribe(nodes, deliver)

    def report_tasks(
        self, principal: Principal, reports: Sequence[TaskReport], *, timeout_s: float | None = None
    ) -> list[JobView | ApiError]:
        """Agents' reports, one answer each (the job, or why the report was refused). A job is
        RUNNING once every node runs it, FAILED (per its restart policy) when a node's task
        failed, SUCCEEDED when every node succeeded. ``failed_tasks`` names the failed tasks on
        a node, so a serving job's other replicas there keep running."""
        self._authorize(principal, Call.REPORT_TASK_STATUS)
        self._leader_only()
        self._too_many(reports, "reports")
        self._speaks_for(principal, Call.REPORT_TASK_STATUS, [r.node for r in reports], "reports.node")
        out: list[Any] = []
        for r in reports:
            try:
                out.append(self._report(r))
            except ApiError as err:
                out.append(err)
        for i, item in enumerate(out):
            if isinstance(item, tuple):  # (job, new state, its write)
                job, state, future = item
                try:
                    result = self._wait(future, timeout_s)
                except StaleUpdate as err:
                    out[i] = self.jobs.view(err.current)
                    continue
                except ApiError as err:
                    out[i] = err
                    continue
                if state.terminal:
                    self._ended(job, state)
                out[i] = self.jobs.view(result.job)
        return out

    def report_task_status(
        self,
        principal: Principal,
        job_id: str,
        node: str,
        state: TaskState,
        message: str = "",
        exit_code: int = 0,
        *,
        failed_tasks: tuple[int, ...] = (),
        timeout_s: float | None = None,
    ) -> JobView:
        """``report_tasks`` of one report; its refusal raised."""
        report = TaskReport(job_id, node, state, message, exit_code, tuple(failed_tasks))
        [answer] = self.report_tasks(principal, [report], timeout_s=timeout_s)
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def _report(self, r: TaskReport) -> Any:
        job = self._job(r.job_id)
        if job.state not in BOUND_STATES or r.node not in {a.node for a in job.allocations}:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "NOT_ASSIGNED",
                f"job {job.id} is {job.state.value} and not bound to node {r.node[:253]!r}",
                metadata={"jobId": job.id, "node": r.node[:253]},
            )
        reports = self.jobs.report(job.id, r.node, r.state)
        nodes = {a.node for a in job.allocations}
        text = f"task on node {r.node} exited with code {r.exit_code}" + (f": {r.message}" if r.message else "")
        if r.state is TaskState.FAILED and self.liveness.lose(
            job.id, Loss(text, r.node, None, frozenset(r.failed_tasks))
        ):
            return self.jobs.view(self._job(job.id))  # requeued whole or failed, per the job's restart policy
        if r.state is TaskState.FAILED:
            state, event, text = (
                JobState.FAILED,
                EventType.FAILED,
                f"node {r.node}: exit code {r.exit_code}: {r.message}".strip(),
            )
        elif all(reports.get(n) is TaskState.SUCCEEDED for n in nodes):
            state, event, text = JobState.SUCCEEDED, EventType.SUCCEEDED, r.message or "every task succeeded"
        elif job.state is JobState.SCHEDULED and all(
            reports.get(n) in (TaskState.RUNNING, TaskState.SUCCEEDED) for n in nodes
        ):
            state, event, text = JobState.RUNNING, EventType.RUNNING, "every task is running"
        else:
            return self.jobs.view(job)
        allocations = () if state.terminal else job.allocations
        update = JobUpdate(job.id, state, None, allocations, event, text, self._clock(), expect_revision=job.revision)
        return job, state, self._queued(lambda: self.jobs.update(update))

    def report_expert_loads(self, principal: Principal, report: MoeLoadReport) -> MoePlanAnswer:
        """One serving replica's expert loads (``service.moe``); the answer is the plan in force.
        NOT_FOUND: unknown job or replica; INVALID_ARGUMENT: loads of another shape than the job's
        ``spec.moe``; FAILED_PRECONDITION: no ``spec.moe``, or the job is not bound to the node."""
        self._authorize(principal, Call.REPORT_EXPERT_LOADS)
        self._speaks_for(principal, Call.REPORT_EXPERT_LOADS, [report.node], "node")
        self._leader_only()
        try:
            return self.moe.report(report)
        except MoeRefused as err:
            code = {"not_found": Code.NOT_FOUND, "invalid": Code.INVALID_ARGUMENT}.get(
                err.kind, Code.FAILED_PRECONDITION
            )
            raise ApiError(
                code, err.reason, err.message, field=err.field, metadata={"jobId": report.job_id[:253]}
            ) from None

    def moe_history(self, principal: Principal, job_id: str) -> list[Any]:
        """The closed windows of a job's live MoE loop, oldest first (``runtime.moe.live.LiveEntry``,
        from the store: a follower answers too). FAILED_PRECONDITION for a job without ``spec.moe``."""
        job = self._visible_job(principal, Call.GET_MOE_HISTORY, job_id)
        if moe_of(job) is None:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "NO_MOE",
                f"job {job.id} has no spec.moe: it has no live MoE loop",
                metadata={"jobId": job.id},
            )
        return self.moe.history(job)

    # --- ClusterService ---

    def get_cluster(self, principal: Principal) -> dict[str, Any]:
        self._authorize(principal, Call.GET_CLUSTER)
        nodes = self.nodes.list()
        by_model: dict[str, int] = {}
        for n in nodes:
            for d in n.record.devices:
                by_model[d.model] = by_model.get(d.model, 0) + 1
        return {
            "name": self.cluster_name,
            "nodes": len(nodes),
            "devices": sum(len(n.record.devices) for n in nodes),
            "devices_by_model": by_model,
            "allocated_devices": sum(1 for milli, _ in self.jobs.usage().values() if milli > 0),
            "jobs_by_state": self.jobs.state_counts(),
        }

    def list_nodes(self, principal: Principal) -> list[NodeState]:
        self._authorize(principal, Call.LIST_NODES)
        return self.nodes.list()

    def list_devices(self, principal: Principal, node: str = "") -> list[tuple[str, Any, int, list[str]]]:
        """(node, device, allocated milli, job ids) for every device, or one node's."""
        self._authorize(principal, Call.LIST_DEVICES)
        if node:
            state = self.nodes.get(node)
            if state is None:
                raise _not_found("node", node)
            nodes = [state]
        else:
            nodes = self.nodes.list()
        usage = self.jobs.usage()
        if not principal.all_queues:  # other tenants' job ids stay theirs; the allocation shows
            usage = {dev: (milli, [i for i in ids if self._sees(principal, i)]) for dev, (milli, ids) in usage.items()}
        return [
            (n.record.name, d, *usage.get(f"{n.record.name}/{d.index}", (0, [])))
            for n in nodes
            for d in n.record.devices
        ]

    def _sees(self, principal: Principal, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.queue in principal.queues


__all__ = [
    "ApiError",
    "Assignment",
    "Code",
    "Explanation",
    "JobView",
    "Limits",
    "OPEN_PRINCIPAL",
    "SchedulerApi",
    "TaskReport",
    "TaskState",
]
