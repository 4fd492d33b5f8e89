"""The scheduler service in process: one method per RPC of ``xpod.v1`` (JobService,
NodeService, ClusterService), over the durable store and the scheduler core.

(The core's ``Scheduler`` facade is ``scheduler.core``, reached through ``scheduler.core_bridge``;
``scheduler.service`` is a thin gRPC adapter over ``SchedulerApi``; most tests call this class
directly.)

Every method takes the caller's ``Principal`` first and raises ``ApiError`` (a status code, an
UPPER_SNAKE reason, one line of message, metadata) for anything the caller can cause.

Contracts:

* ``submit_job`` returns only once the job is on disk (the store's group commit). The same
  ``request_id`` with the same document returns the same job (``created=False``); with another
  document it is ALREADY_EXISTS. A malformed document is INVALID_ARGUMENT naming the field; a
  job that can never fit this cluster is FAILED_PRECONDITION; a job that does not fit *now*
  is accepted, QUEUED, with a pending reason.
* A scheduling thread runs the core's cycle (every ``cycle_interval_s``, sooner after a
  submission but at most every ``min_cycle_gap_s``) and persists what it decided (bindings,
  evictions, changes of pending reason) as events before agents or watchers can see them.
* After a restart the service rebuilds everything from the store: every acknowledged job with
  its state and allocations, registered nodes, and the event log (``watch_jobs`` resumes from
  a revision).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import enum
import hashlib
import json
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Protocol, Sequence

from xpod.scheduler.auth import OPEN_PRINCIPAL, Call, Principal, Role
from xpod.scheduler.store import (
    AllocationRecord,
    EventRecord,
    EventType,
    GroupCommitStore,
    JobRecord,
    JobState,
    JobUpdate,
    NodeWrite,
    NotLeader,
    PendingReasonRecord,
    RequestIdConflict,
    StaleUpdate,
    StoreClosed,
    StoreOverloaded,
    StoreUnavailable,
    SubmitResult,
    SubmitWrite,
    UpdateResult,
    open_store,
)


# store.spec_hash's canonical form, as one reusable encoder (json.dumps builds one per call)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


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
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # UPPER_SNAKE, google.rpc.ErrorInfo.reason
        self.message = message
        self.metadata = dict(metadata or {})  # lowerCamelCase keys, ErrorInfo.metadata
        self.field = field  # the offending field path, for BadRequest.field_violations
        self.retry_after_s = retry_after_s  # RetryInfo.retry_delay when set
        if field is not None:
            self.metadata.setdefault("field", field)


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


# --- the seam to the scheduler core -----------------------------------------------------------


class SpecInvalid(Exception):
    """Raised by a ``Placer`` for a bad job document: ``field`` is the dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class DeviceView:
    node: str
    index: int
    vendor: str
    model: str
    memory_total_bytes: int = 0
    health: str = "ok"  # xpod.hal.Health value
    simulated: bool = False  # a simulated device (sim backend or simulated pod)

    @property
    def id(self) -> str:
        return f"{self.node}/{self.index}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NodeView:
    name: str
    devices: tuple[DeviceView, ...]
    labels: tuple[tuple[str, str], ...] = ()  # sorted pairs; "supernode" and "failure_domain" reach the core
    ready: bool = True
    last_heartbeat_s: float = 0.0
    cpu_milli: int = 0  # host CPU jobs may request, thousandths of a core
    memory_bytes: int = 0  # host memory jobs may request

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": [d.to_json() for d in self.devices],
            "labels": dict(self.labels),
            "ready": self.ready,
            "last_heartbeat_s": self.last_heartbeat_s,
            "cpu_milli": self.cpu_milli,
            "memory_bytes": self.memory_bytes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "NodeView":
        return cls(
            name=d["name"],
            devices=tuple(DeviceView(**dev) for dev in d["devices"]),
            labels=tuple(sorted(d.get("labels", {}).items())),
            ready=bool(d.get("ready", True)),
            last_heartbeat_s=float(d.get("last_heartbeat_s", 0.0)),
            cpu_milli=int(d.get("cpu_milli", 0)),
            memory_bytes=int(d.get("memory_bytes", 0)),
        )


@dataclasses.dataclass(frozen=True)
class CycleOutcome:
    """What one scheduling cycle decided."""

    bindings: dict[str, tuple[AllocationRecord, ...]]  # job id -> tasks bound in this cycle
    evictions: dict[str, str]  # job id -> why its allocation was taken back
    pending: dict[str, PendingReasonRecord]  # job id -> why it still waits
    seconds: float = 0.0  # the core's own time for the cycle
    eviction_reasons: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # job id -> service_metrics.EVICTION_REASONS word
    preemption_attempts: int = 0  # pending jobs the core tried to preempt or reclaim for (with eligible victims)
    # job id -> seconds the core spent searching a placement for it this cycle (per-attempt histogram)
    attempt_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ParsedJob:
    """A job document after validation: the envelope fields the service needs, plus the core's
    own parsed object (opaque here)."""

    kind: str
    name: str
    queue: str
    core: Any


class Placer(Protocol):
    """What the service needs from the scheduler core (``scheduler.core_bridge`` adapts the
    real one). Called under the service's placer lock, except ``parse`` and ``never_fits``, which
    must be safe to call at any time from any thread (submissions do not wait for a cycle)."""

    def parse(self, document: dict[str, Any]) -> ParsedJob:
        """Validate a job document; raise ``SpecInvalid(field, message)``."""

    def never_fits(self, job: ParsedJob) -> PendingReasonRecord | None:
        """A reason if the job cannot fit this cluster even when it is empty."""

    def add_node(self, node: NodeView) -> None: ...

    def remove_node(self, name: str) -> None: ...

    def set_device_health(self, node: str, index: int, health: str) -> None: ...

    def add_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        """A QUEUED job enters the core's queue."""

    def restore_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        """A job that holds ``job.allocations`` (after a restart) is bound again in the core."""

    def remove_job(self, job_id: str) -> None:
        """Forget a job (cancelled or finished) and free what it held. Idempotent."""

    def cycle(self, now_s: float) -> CycleOutcome: ...


# --- API values -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobView:
    """A job as the API shows it: the stored record plus live facts."""

    record: JobRecord
    queue_position: int  # 1-based among the QUEUED jobs of its queue, 0 otherwise
    pending: PendingReasonRecord | None  # the latest reason (the stored one changes only with its code)

    def to_json(self) -> dict[str, Any]:
        d = self.record.to_json()
        d.pop("seq")
        d.pop("spec_hash")
        d["queue_position"] = self.queue_position
        d["pending_reason"] = self.pending.to_json() if self.pending else None
        return d


@dataclasses.dataclass(frozen=True)
class Explanation:
    job: JobView
    numbers: dict[str, float]
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Assignment:
    job: JobRecord
    allocations: tuple[AllocationRecord, ...]  # the job's tasks on this node; empty when stopping
    run: bool  # start when True, stop when False


class TaskState(str, enum.Enum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


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


BOUND_STATES = (JobState.SCHEDULED, JobState.RUNNING)
# Pending reasons that only say "wait" (the core's ReasonCode names): not written to the event log.
WAIT_REASONS = frozenset({"UNSCHEDULABLE", "WAITING_BEHIND", "NOT_CONSIDERED"})


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
        out = self._api._end_submission(self, result)
        assert out is not None
        return out

    def result_error(self, err: BaseException) -> ApiError | None:
        """The ApiError for an exception ``future`` raised (None: not one the caller caused)."""
        return self._api._submit_error(err, self.request_id)

    def abandon(self) -> None:
        """The caller stopped waiting; the write may still commit (a retry with the same
        request id finds it). Idempotent."""
        if not self._ended:
            self._ended = True
            self._api._end_submission(self, None)


@dataclasses.dataclass(frozen=True)
class Recovered:
    """Every stored job as of ``revision`` and the parsed form of the unfinished ones (a
    follower's mirror): what a new leader would otherwise read and parse from the store."""

    jobs: tuple[JobRecord, ...]
    parsed: dict[str, ParsedJob]  # job id -> parsed spec (missing ones are parsed again)
    revision: int


class SchedulerApi:
    """The service. ``start()`` launches the scheduling thread; ``close()`` stops it and the store."""

    def __init__(
        self,
        store: GroupCommitStore | str,  # a store, or where one is (open_store: a path or a URL)
        placer: Placer,
        *,
        nodes: Sequence[NodeView] = (),
        cluster_name: str = "xpod",
        clock: Callable[[], float] = time.time,
        cycle_interval_s: float = 0.5,
        min_cycle_gap_s: float = 0.25,
        limits: Limits = Limits(),
        metrics: Any = None,
        node_timeout_s: float | None = None,  # heartbeats missing this long -> NotReady (scheduler.liveness)
        recovered: "Recovered | None" = None,  # the jobs as of a revision, instead of reading them from the store
    ) -> None:
        self._clock = clock
        self._placer = placer
        self._limits = limits
        self._cycle_interval_s = cycle_interval_s
        self._min_cycle_gap_s = min_cycle_gap_s
        self.cluster_name = cluster_name
        self.metrics = metrics  # service_metrics.ServiceMetrics-like hooks, or None
        self._lock = threading.RLock()  # guards the in-memory mirror below
        self._changed = threading.Condition(self._lock)  # notified after each commit
        self._placer_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight_submissions = 0
        self._jobs: dict[str, JobRecord] = {}
        self._parsed: dict[str, ParsedJob] = {}
        self._live_pending: dict[str, PendingReasonRecord] = {}
        self._new_jobs: list[str] = []  # committed, not yet handed to the core
        self._nodes: dict[str, NodeView] = {}
        self._queued_seqs: dict[str, list[int]] = {}  # queue -> sorted seqs of its QUEUED jobs
        self._submitted_s: dict[str, float] = {}  # QUEUED, never placed -> submit time (queue-wait metric)
        self._task_states: dict[str, dict[str, TaskState]] = {}  # job -> node -> last report
        self._last_revision = 0
        # set on a follower replica (scheduler.replica): every write and agent call raises it
        self.read_only_error: Callable[[], ApiError] | None = None
        self.cycles = 0
        self.loop_errors = 0  # cycles that raised (the loop goes on after a pause)
        from .liveness import Liveness

        self.liveness = Liveness(self, node_timeout_s)  # node timeouts and the restart policy
        if isinstance(store, GroupCommitStore):
            self._store = store
            store._on_commit = self._on_commit  # the mirror must see every commit
        else:
            self._store = open_store(store, on_commit=self._on_commit)
        try:
            self._recover(nodes, recovered)
        except BaseException:
            self._store.close()
            raise

    # --- lifecycle ---

    def catch_up(self) -> None:
        """Bring a follower replica's mirror up to the store: the events above its revision (as
        the leader's commits would have), then the registered nodes. Never schedules."""
        while True:
            events = self._store.events_since(self._last_revision, limit=2000)
            if not events:
                break
            results: list[Any] = []
            for ev in events:
                if ev.type is EventType.SUBMITTED and ev.job.id not in self._jobs:
                    results.append(SubmitResult(ev.job, True, ev))
                else:
                    results.append(UpdateResult(ev.job, ev))
            self._on_commit(results)
            with self._lock:
                self._new_jobs.clear()  # handed to the core by the leader only
                for ev in events:
                    if ev.job.state is not JobState.QUEUED:
                        self._live_pending.pop(ev.job.id, None)
            if len(events) < 2000:
                break
        self.refresh_nodes()

    def recovered_state(self) -> "Recovered":
        """This API's jobs as of its revision (a follower replica's mirror, handed to the
        leader it becomes, so the new leader needs no second read and parse of every job)."""
        with self._lock:
            return Recovered(tuple(self._jobs.values()), dict(self._parsed), self._last_revision)

    def _recover(self, cluster_nodes: Sequence[NodeView], recovered: "Recovered | None" = None) -> None:
        # the revision first: a follower replica reads while the leader writes, and tails the
        # events above this revision, so a job committed during the load below is never missed
        # (one loaded already is replayed to the same end state)
        revision = recovered.revision if recovered is not None else self._store.last_revision()
        for node in cluster_nodes:
            self._nodes[node.name] = node
        for doc in self._store.load_nodes():
            node = NodeView.from_json(doc)
            self._nodes[node.name] = node
        with self._placer_lock:
            for node in self._nodes.values():
                self._placer.add_node(node)
            jobs = recovered.jobs if recovered is not None else self._store.load_jobs()
            known = recovered.parsed if recovered is not None else {}
            for job in sorted(jobs, key=lambda j: j.seq) if recovered is not None else jobs:
                self._index(None, job)
                self._jobs[job.id] = job
                if job.state.terminal:
                    continue
                parsed = known.get(job.id)
                if parsed is None:
                    parsed = self._placer.parse(job.spec)  # it was accepted once, so it parses again
                self._parsed[job.id] = parsed
                if job.state in BOUND_STATES and job.allocations:
                    self._placer.restore_job(job, parsed)
                else:
                    self._placer.add_job(job, parsed)
        self._last_revision = revision

    def start(self) -> "SchedulerApi":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="xpod-scheduling", daemon=True)
            self._thread.start()
            self.liveness.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._changed:
            self._changed.notify_all()
        close_placer = getattr(self._placer, "close", None)
        if close_placer is not None:
            close_placer()
        self._store.close()

    @property
    def store(self) -> GroupCommitStore:
        return self._store

    @property
    def last_revision(self) -> int:
        return self._last_revision

    def _on_commit(self, results: list[Any]) -> None:
        # Runs on the store's writer thread, in commit order.
        with self._changed:
            for r in results:
                if isinstance(r, SubmitResult):
                    if r.created:
                        self._index(None, r.job)
                        self._jobs[r.job.id] = r.job
                        self._new_jobs.append(r.job.id)
                        self._last_revision = max(self._last_revision, r.event.revision)
                elif isinstance(r, UpdateResult):
                    self._index(self._jobs.get(r.job.id), r.job)
                    self._jobs[r.job.id] = r.job
                    self._last_revision = max(self._last_revision, r.event.revision)
            self._changed.notify_all()

    def _index(self, old: JobRecord | None, new: JobRecord) -> None:
        """Keep ``_queued_seqs`` current (caller holds the lock): queue positions in O(log n)."""
        was = old is not None and old.state is JobState.QUEUED
        now = new.state is JobState.QUEUED
        if old is None and now:
            self._submitted_s[new.id] = new.create_time_s
        elif not now:
            self._submitted_s.pop(new.id, None)  # placed, cancelled or failed: no longer waiting
        if was and not now:
            seqs = self._queued_seqs.get(old.queue, [])
            i = bisect.bisect_left(seqs, old.seq)
            if i < len(seqs) and seqs[i] == old.seq:
                del seqs[i]
        elif now and not was:
            bisect.insort(self._queued_seqs.setdefault(new.queue, []), new.seq)

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

    def _job(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(
                Code.NOT_FOUND, "JOB_NOT_FOUND", f"no job {job_id[:128]!r}", metadata={"jobId": job_id[:128]}
            )
        return job

    def _view(self, job: JobRecord) -> JobView:
        with self._lock:
            position = 0
            pending = None
            if job.state is JobState.QUEUED:
                position = 1 + bisect.bisect_left(self._queued_seqs.get(job.queue, []), job.seq)
                pending = self._live_pending.get(job.id, job.pending)
                if pending is not None:
                    # the core orders by priority and fair share, not only by arrival
                    core_position = dict(pending.metadata).get("queuePosition")
                    if core_position and core_position.isdigit():
                        position = int(core_position)
        return JobView(job, position, pending)

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
            raise ApiError(
                Code.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; retry", retry_after_s=1.0
            ) from None
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

    def refresh_nodes(self) -> None:
        """Take the stored nodes into the mirror (a follower replica, after the leader wrote them)."""
        nodes = [NodeView.from_json(doc) for doc in self._store.load_nodes()]
        with self._lock:
            for node in nodes:
                self._nodes[node.name] = node

    def _submit_write(self, write: Any) -> concurrent.futures.Future:
        self._leader_only()
        try:
            return self._store.submit(write)
        except StoreOverloaded as err:
            raise self._shed(str(err)) from None
        except StoreClosed:
            raise ApiError(
                Code.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; retry", retry_after_s=1.0
            ) from None

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
            return ApiError(Code.UNAVAILABLE, "SHUTTING_DOWN", "the server is shutting down; retry", retry_after_s=1.0)
        if isinstance(err, (NotLeader, StoreUnavailable)):
            return _store_lost(err)
        return None

    def begin_submit(self, principal: Principal, request_id: str, document: Any) -> "Submission":
        """The first half of ``submit_job``: check the caller and the document and queue the
        write; never waits. The caller waits on ``.future`` (a concurrent future: from a thread,
        or an event loop without a thread per call), then calls ``.finish(result)`` exactly
        once, or ``.abandon()`` when it stops waiting (deadline, cancel). Raises ``ApiError``
        like ``submit_job``."""
        self._authorize(principal, Call.SUBMIT_JOB)
        if not isinstance(request_id, str) or len(request_id) > self._limits.max_request_id_chars:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "INVALID_REQUEST_ID",
                f"request_id must be a string of at most {self._limits.max_request_id_chars} characters",
                field="request_id",
            )
        if not request_id:
            request_id = f"server-{uuid.uuid4()}"  # no key: the client opted out of idempotency
        if not isinstance(document, dict):
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_SPEC", "job must be a mapping (kind, metadata, spec)", field="job"
            )
        try:
            # the same canonical form as store.spec_hash, so the hash is computed from it once
            canonical = _CANONICAL.encode(document)
        except (TypeError, ValueError) as err:
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_SPEC", f"job is not plain JSON: {err}", field="job"
            ) from None
        if len(canonical) > self._limits.max_document_bytes:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "SPEC_TOO_LARGE",
                f"job document is {len(canonical)} bytes; the limit is {self._limits.max_document_bytes}",
                field="job",
                metadata={"bytes": str(len(canonical)), "limitBytes": str(self._limits.max_document_bytes)},
            )
        # parse and never_fits are safe beside a running cycle (Placer contract): no lock, so
        # submissions are not held up by scheduling.
        try:
            parsed = self._placer.parse(document)
        except SpecInvalid as err:
            raise ApiError(Code.INVALID_ARGUMENT, "INVALID_SPEC", str(err), field=err.field) from None
        self._authorize(principal, Call.SUBMIT_JOB, parsed.queue)
        never = self._placer.never_fits(parsed)
        if never is not None:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                never.reason,
                f"job can never fit this cluster: {never.message}",
                metadata=dict(never.metadata),
            )
        with self._lock:
            if self._inflight_submissions >= self._limits.max_inflight_submissions:
                raise self._shed(f"{self._inflight_submissions} submissions in flight")
            self._inflight_submissions += 1
        try:
            digest = hashlib.sha256(canonical.encode()).hexdigest()  # == store.spec_hash(document)
            write = SubmitWrite(request_id, digest, parsed.queue, parsed.kind, parsed.name, document, self._clock())
            fut = self._submit_write(write)
        except BaseException:
            with self._lock:
                self._inflight_submissions -= 1
            raise
        return Submission(self, request_id, parsed, fut)

    def _end_submission(self, submission: "Submission", result: SubmitResult | None) -> tuple[JobView, bool] | None:
        with self._lock:
            self._inflight_submissions -= 1
            if result is None:
                return None
            if result.created:
                self._parsed[result.job.id] = submission.parsed
            current = self._jobs.get(result.job.id, result.job)
        if result.created:
            self._wake.set()
            if self.metrics is not None:
                self.metrics.submitted(submission.parsed.queue)
        return self._view(current), result.created

    def get_job(self, principal: Principal, job_id: str) -> tuple[JobView, list[EventRecord]]:
        self._authorize(principal, Call.GET_JOB)
        job = self._job(job_id)
        self._authorize(principal, Call.GET_JOB, job.queue)
        events = self._store.events_since(0, job_id=job.id, limit=100_000)[-self._limits.max_events_per_job :]
        return self._view(job), events

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
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "INVALID_PAGE_SIZE",
                f"page_size must be 0..{self._limits.max_page_size}, got {page_size}",
                field="page_size",
            )
        size = page_size or self._limits.default_page_size
        after = 0
        if page_token:
            digits = page_token.removeprefix("seq:")
            if not page_token.startswith("seq:") or not digits.isdigit():
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "INVALID_PAGE_TOKEN",
                    "page_token is not one this server issued",
                    field="page_token",
                )
            after = int(digits)
        wanted = set(states)
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.seq)
        out: list[JobRecord] = []
        for j in jobs:
            if j.seq <= after:
                continue
            if queue and j.queue != queue:
                continue
            if not principal.all_queues and j.queue not in principal.queues:
                continue
            if wanted and j.state not in wanted:
                continue
            out.append(j)
            if len(out) > size:
                break
        next_token = ""
        if len(out) > size:
            out = out[:size]
            next_token = f"seq:{out[-1].seq}"
        return [self._view(j) for j in out], next_token

    def cancel_job(self, principal: Principal, job_id: str, *, timeout_s: float | None = None) -> JobView:
        """Cancel a queued or bound job (frees its devices). FAILED_PRECONDITION once it ended."""
        self._authorize(principal, Call.CANCEL_JOB)
        while True:
            job = self._job(job_id)
            self._authorize(principal, Call.CANCEL_JOB, job.queue)
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
                result: UpdateResult = self._wait(self._submit_write(update), timeout_s)
            except StaleUpdate:
                continue  # the scheduler changed it meanwhile: decide again on the new state
            break
        with self._placer_lock:
            self._placer.remove_job(job.id)
        self._forget(job.id)
        self._wake.set()
        if self.metrics is not None:
            self.metrics.finished(job.queue, job.kind, JobState.CANCELLED.value)
        return self._view(result.job)

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._parsed.pop(job_id, None)
            self._live_pending.pop(job_id, None)
            self._task_states.pop(job_id, None)

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
            self._authorize(principal, Call.WATCH_JOBS, self._job(job_id).queue)
        if from_revision < 0:
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_REVISION", "from_revision must be >= 0", field="from_revision"
            )
        return self._watch(principal, from_revision, queue, job_id, is_active, poll_s)

    def _watch(self, principal, revision, queue, job_id, is_active, poll_s) -> Iterator[EventRecord]:
        while is_active() and not self._stop.is_set():
            events = self._store.events_since(revision, job_id=job_id or None, limit=500)
            for ev in events:
                revision = ev.revision
                if queue and ev.job.queue != queue:
                    continue
                if not principal.all_queues and ev.job.queue not in principal.queues:
                    continue
                yield ev
            if len(events) == 500:
                continue
            with self._changed:
                if self._last_revision <= revision and not self._stop.is_set():
                    self._changed.wait(timeout=poll_s)

    def explain_job(self, principal: Principal, job_id: str) -> Explanation:
        self._authorize(principal, Call.EXPLAIN_JOB)
        job = self._job(job_id)
        self._authorize(principal, Call.EXPLAIN_JOB, job.queue)
        view = self._view(job)
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

    def register_node(self, principal: Principal, node: NodeView, *, timeout_s: float | None = None) -> NodeView:
        """Add or replace a node (durable). Jobs bound to a replaced node are evicted by the core."""
        self._authorize(principal, Call.REGISTER_NODE)
        self._leader_only()
        if not node.name or len(node.name) > 253 or "/" in node.name:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "INVALID_NODE",
                "node.name must be 1..253 characters without '/'",
                field="node.name",
            )
        indices = [d.index for d in node.devices]
        if len(set(indices)) != len(indices) or any(i < 0 for i in indices):
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "INVALID_NODE",
                "node.devices: indices must be distinct and >= 0",
                field="node.devices",
            )
        if sorted(indices) != list(range(len(indices))):
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_NODE", "node.devices: indices must be 0..N-1", field="node.devices"
            )
        if node.cpu_milli < 0 or node.memory_bytes < 0 or any(d.memory_total_bytes < 0 for d in node.devices):
            raise ApiError(
                Code.INVALID_ARGUMENT, "INVALID_NODE", "node: cpu_milli and memory sizes must be >= 0", field="node"
            )
        from xpod.hal.device import Health

        for d in node.devices:
            if d.health not in {h.value for h in Health}:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "INVALID_HEALTH",
                    f"node.devices[{d.index}].health {d.health!r} is not one of {', '.join(h.value for h in Health)}",
                    field="node.devices.health",
                )
            if not d.model or not d.vendor:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "INVALID_NODE",
                    f"node.devices[{d.index}]: vendor and model are required",
                    field="node.devices.model",
                )
        node = dataclasses.replace(
            node,
            devices=tuple(dataclasses.replace(d, node=node.name) for d in sorted(node.devices, key=lambda d: d.index)),
            ready=True,
            last_heartbeat_s=self._clock(),
        )
        self._wait(self._submit_write(NodeWrite(node.name, node.to_json(), self._clock())), timeout_s)
        with self._placer_lock:
            if node.name in self._nodes:
                self._placer.remove_node(node.name)
            self._placer.add_node(node)
        with self._lock:
            self._nodes[node.name] = node
        self._wake.set()
        return node

    def heartbeat(self, principal: Principal, node_name: str, health: dict[int, str]) -> float:
        """Record liveness and device health; returns the seconds until the next heartbeat is due."""
        self._authorize(principal, Call.HEARTBEAT)
        self._leader_only()
        with self._lock:
            node = self._nodes.get(node_name)
        if node is None:
            raise ApiError(
                Code.NOT_FOUND,
                "NODE_NOT_FOUND",
                f"no node {node_name[:253]!r}; call RegisterNode first",
                metadata={"node": node_name[:253]},
            )
        by_index = {d.index: d for d in node.devices}
        from xpod.hal.device import Health

        changed = []
        for index, word in health.items():
            if index not in by_index:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "UNKNOWN_DEVICE",
                    f"node {node_name} has no device {index}",
                    field="devices.index",
                )
            if word not in {h.value for h in Health}:
                raise ApiError(
                    Code.INVALID_ARGUMENT,
                    "INVALID_HEALTH",
                    f"health {word!r} is not one of {', '.join(h.value for h in Health)}",
                    field="devices.health",
                )
            if by_index[index].health != word:
                changed.append((index, word))
        if changed:
            for index, word in changed:
                if word in ("alarm", "critical"):  # serving replicas there move alone (scheduler.liveness)
                    self.liveness.device_unhealthy(node_name, index, word)
            with self._placer_lock:
                for index, word in changed:
                    self._placer.set_device_health(node_name, index, word)
        devices = tuple(dataclasses.replace(d, health=health.get(d.index, d.health)) for d in node.devices)
        with self._lock:
            self._nodes[node_name] = dataclasses.replace(node, devices=devices, last_heartbeat_s=self._clock())
        if changed:
            self._wake.set()
        return 10.0

    def watch_assignments(
        self, principal: Principal, node_name: str, *, is_active: Callable[[], bool] = lambda: True, poll_s: float = 0.5
    ) -> Iterator[Assignment]:
        """The jobs bound to this node now (run=True), then every start and stop."""
        self._authorize(principal, Call.WATCH_ASSIGNMENTS)
        self._leader_only()
        with self._lock:
            if node_name not in self._nodes:
                raise ApiError(
                    Code.NOT_FOUND,
                    "NODE_NOT_FOUND",
                    f"no node {node_name[:253]!r}; call RegisterNode first",
                    metadata={"node": node_name[:253]},
                )
            revision = self._last_revision
            current = [j for j in self._jobs.values() if j.state in BOUND_STATES]
        return self._assignments(node_name, revision, current, is_active, poll_s)

    def _assignments(self, node_name, revision, current, is_active, poll_s) -> Iterator[Assignment]:
        # job -> task indices on this node already announced: a change of the set (a serving
        # replica replaced alone, or bound again) is announced, so the agent stops or starts just it
        running: dict[str, frozenset[int]] = {}
        for job in sorted(current, key=lambda j: j.seq):
            mine = tuple(a for a in job.allocations if a.node == node_name)
            if mine:
                running[job.id] = frozenset(a.task for a in mine)
                yield Assignment(job, mine, True)
        while is_active() and not self._stop.is_set():
            events = self._store.events_since(revision, limit=500)
            for ev in events:
                revision = ev.revision
                job = ev.job
                mine = tuple(a for a in job.allocations if a.node == node_name)
                bound = job.state in BOUND_STATES
                if mine and bound and running.get(job.id) != frozenset(a.task for a in mine):
                    running[job.id] = frozenset(a.task for a in mine)
                    yield Assignment(job, mine, True)
                elif job.id in running and (not mine or not bound):
                    del running[job.id]
                    yield Assignment(job, (), False)
            if len(events) == 500:
                continue
            with self._changed:
                if self._last_revision <= revision and not self._stop.is_set():
                    self._changed.wait(timeout=poll_s)

    def report_task_status(
        self,
        principal: Principal,
        job_id: str,
        node_name: str,
        state: TaskState,
        message: str = "",
        exit_code: int = 0,
        *,
        timeout_s: float | None = None,
        failed_tasks: tuple[int, ...] = (),
    ) -> JobView:
        """An agent reports its part of a job. RUNNING once every node runs; FAILED when any
        node failed; SUCCEEDED when every node succeeded. ``failed_tasks`` (with FAILED) names
        the failed tasks on the node, so a serving job's other replicas there keep running."""
        self._authorize(principal, Call.REPORT_TASK_STATUS)
        self._leader_only()
        job = self._job(job_id)
        nodes = {a.node for a in job.allocations}
        if job.state not in BOUND_STATES or node_name not in nodes:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "NOT_ASSIGNED",
                f"job {job.id} is {job.state.value} and not bound to node {node_name[:253]!r}",
                metadata={"jobId": job.id, "node": node_name[:253]},
            )
        with self._lock:
            states = self._task_states.setdefault(job.id, {})
            states[node_name] = state
            snapshot = dict(states)
        if (
            state is TaskState.FAILED
            and self.liveness.task_failed(job, node_name, exit_code, message, failed_tasks) is not None
        ):
            return self._view(self._job(job_id))  # requeued whole or failed, per the job's restart policy
        new_state: JobState | None = None
        if state is TaskState.FAILED:
            new_state, event, text = (
                JobState.FAILED,
                EventType.FAILED,
                f"node {node_name}: exit code {exit_code}: {message}".strip(),
            )
        elif all(snapshot.get(n) is TaskState.SUCCEEDED for n in nodes):
            new_state, event, text = JobState.SUCCEEDED, EventType.SUCCEEDED, message or "every task succeeded"
        elif job.state is JobState.SCHEDULED and all(
            snapshot.get(n) in (TaskState.RUNNING, TaskState.SUCCEEDED) for n in nodes
        ):
            new_state, event, text = JobState.RUNNING, EventType.RUNNING, "every task is running"
        if new_state is None:
            return self._view(job)
        allocations = () if new_state.terminal else job.allocations
        update = JobUpdate(
            job.id, new_state, None, allocations, event, text, self._clock(), expect_revision=job.revision
        )
        try:
            result: UpdateResult = self._wait(self._submit_write(update), timeout_s)
        except StaleUpdate as err:
            return self._view(err.current)
        if new_state.terminal:
            with self._placer_lock:
                self._placer.remove_job(job.id)
            self._forget(job.id)
            self._wake.set()
            if self.metrics is not None:
                self.metrics.finished(job.queue, job.kind, new_state.value)
        return self._view(result.job)

    # --- ClusterService ---

    def _usage(self) -> dict[str, tuple[int, list[str]]]:
        usage: dict[str, tuple[int, list[str]]] = {}
        with self._lock:
            bound = [j for j in self._jobs.values() if j.state in BOUND_STATES]
        for job in bound:
            for a in job.allocations:
                for dev in a.devices:
                    milli, ids = usage.get(dev, (0, []))
                    usage[dev] = (milli + a.milli_per_device, ids if job.id in ids else ids + [job.id])
        return usage

    def get_cluster(self, principal: Principal) -> dict[str, Any]:
        self._authorize(principal, Call.GET_CLUSTER)
        with self._lock:
            nodes = list(self._nodes.values())
            states: dict[str, int] = {}
            for j in self._jobs.values():
                states[j.state.value] = states.get(j.state.value, 0) + 1
        by_model: dict[str, int] = {}
        for n in nodes:
            for d in n.devices:
                by_model[d.model] = by_model.get(d.model, 0) + 1
        usage = self._usage()
        return {
            "name": self.cluster_name,
            "nodes": len(nodes),
            "devices": sum(len(n.devices) for n in nodes),
            "devices_by_model": by_model,
            "allocated_devices": sum(1 for milli, _ in usage.values() if milli > 0),
            "jobs_by_state": states,
        }

    def list_nodes(self, principal: Principal) -> list[NodeView]:
        self._authorize(principal, Call.LIST_NODES)
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.name)

    def list_devices(self, principal: Principal, node: str = "") -> list[tuple[DeviceView, int, list[str]]]:
        """(device, allocated milli, job ids) for every device, or one node's."""
        self._authorize(principal, Call.LIST_DEVICES)
        with self._lock:
            if node and node not in self._nodes:
                raise ApiError(
                    Code.NOT_FOUND, "NODE_NOT_FOUND", f"no node {node[:253]!r}", metadata={"node": node[:253]}
                )
            nodes = [self._nodes[node]] if node else sorted(self._nodes.values(), key=lambda n: n.name)
        usage = self._usage()
        out = []
        for n in nodes:
            for d in n.devices:
                milli, ids = usage.get(d.id, (0, []))
                out.append((d, milli, ids))
        return out

    # --- the scheduling loop ---

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._cycle_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            started = time.perf_counter()
            try:
                self.schedule_once()
            except StoreClosed:
                return
            except Exception as err:  # a bug or a dead core process: say so, keep serving, retry
                self.loop_errors += 1
                print(f"xpod server: scheduling cycle failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                self._stop.wait(1.0)
                continue
            # A cycle holds the GIL for its whole length (pure Python over every pending job):
            # under a flood of submissions, space cycles so scheduling takes at most about a
            # quarter of the time and the API keeps answering.
            self._stop.wait(max(self._min_cycle_gap_s, 3 * (time.perf_counter() - started)))

    def schedule_once(self) -> CycleOutcome:
        """One cycle: hand new jobs to the core, run its cycle, persist what it decided.
        Public so tests can drive the loop deterministically (without ``start()``)."""
        with self._placer_lock:
            with self._lock:
                new = [(jid, self._jobs[jid], self._parsed.get(jid)) for jid in self._new_jobs]
                self._new_jobs.clear()
            for jid, job, parsed in new:
                if job.state is JobState.QUEUED:
                    if parsed is None:  # committed by a racing thread before its parse was recorded
                        parsed = self._placer.parse(job.spec)
                        with self._lock:
                            self._parsed[jid] = parsed
                    self._placer.add_job(job, parsed)
            outcome = self._placer.cycle(self._clock())
            self.cycles += 1
            first: dict[str, tuple[str, str, float]] = {}
            updates = self._decisions(outcome, first)
            futures = [self._store.submit(u, background=True) for u in updates]
        # Wait for the decisions outside the lock: cancels and agents' reports go on meanwhile.
        stale: list[str] = []
        for u, f in zip(updates, futures):
            try:
                f.result()
            except (StaleUpdate, KeyError):
                stale.append(u.job_id)
        with self._placer_lock:
            for jid in stale:
                # Cancelled (or finished) while the cycle ran: the core must let go of it.
                with self._lock:
                    job = self._jobs.get(jid)
                if job is not None and job.state.terminal:
                    self._placer.remove_job(jid)
        if self.metrics is not None:
            self.metrics.cycle(outcome, outcome.seconds, self)
            placed = getattr(self.metrics, "placed", None)
            if placed is not None:
                for jid, (queue, kind, wait_s) in first.items():
                    if jid not in stale:
                        placed(queue, kind, wait_s)
        return outcome

    def _decisions(
        self, outcome: CycleOutcome, first: dict[str, tuple[str, str, float]] | None = None
    ) -> list[JobUpdate]:
        """The store updates for a cycle's outcome; ``first`` receives, for each job placed for
        the first time, (queue, kind, seconds since submission)."""
        updates: list[JobUpdate] = []
        now = self._clock()
        # The lock is taken per job, not for the whole outcome: SubmitJob takes it on the event
        # loop, and a cycle that placed hundreds of jobs would otherwise stall every call for
        # as long as this loop runs. Each update is conditional (expect_revision / expect_states),
        # so a change that slips in between is caught by the store (StaleUpdate).
        for jid, why in outcome.evictions.items():
            with self._lock:
                job = self._jobs.get(jid)
            if job is None or job.state not in BOUND_STATES:
                continue
            updates.append(JobUpdate(jid, JobState.QUEUED, None, (), EventType.EVICTED, why, now, job.revision))
        evicted = set(outcome.evictions)
        for jid, allocations in outcome.bindings.items():
            with self._lock:
                job = self._jobs.get(jid)
                submitted_s = self._submitted_s.get(jid)
            if job is None or job.state.terminal:
                continue
            held = () if jid in evicted or job.state not in BOUND_STATES else job.allocations
            merged = held + tuple(allocations)
            where = ", ".join(sorted({a.node for a in allocations}))
            text = (
                f"bound {len(allocations)} task(s) to {where}"
                if not held
                else f"bound {len(allocations)} more task(s) to {where}"
            )
            if jid in evicted:
                # evicted and placed again in one cycle: applies right after its EVICTED event,
                # unless something else (a cancel) got in between
                updates.append(
                    JobUpdate(
                        jid, JobState.SCHEDULED, None, merged, EventType.SCHEDULED, text, now, None, (JobState.QUEUED,)
                    )
                )
            else:
                state = job.state if job.state in BOUND_STATES else JobState.SCHEDULED
                updates.append(JobUpdate(jid, state, None, merged, EventType.SCHEDULED, text, now, job.revision))
                if first is not None and submitted_s is not None and job.state is JobState.QUEUED:
                    first[jid] = (job.queue, job.kind, now - submitted_s)
        for jid, reason in outcome.pending.items():
            with self._lock:
                job = self._jobs.get(jid)
                if job is None or job.state is not JobState.QUEUED or jid in outcome.bindings or jid in evicted:
                    continue
                self._live_pending[jid] = reason
            # Waiting for resources or for the jobs ahead is the normal state of a queue and
            # changes every cycle: it is shown live (Get, List, Explain), not logged. A reason
            # that needs someone to act is logged, once per change of code (not Volcano's
            # x78789 repeats).
            if reason.reason in WAIT_REASONS:
                continue
            if job.pending is None or job.pending.reason != reason.reason:
                updates.append(
                    JobUpdate(jid, JobState.QUEUED, reason, (), EventType.PENDING, reason.message, now, job.revision)
                )
        for jid in outcome.bindings:
            with self._lock:
                self._live_pending.pop(jid, None)
        return updates

    # --- metrics helpers ---

    def pending_counts(self) -> dict[tuple[str, str], int]:
        """(queue, reason) -> number of QUEUED jobs, for the pending-jobs gauge."""
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for j in self._jobs.values():
                if j.state is JobState.QUEUED:
                    p = self._live_pending.get(j.id, j.pending)
                    key = (j.queue, p.reason if p else "NEW")
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def job_queue(self, job_id: str) -> str | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job.queue if job is not None else None

    def running_counts(self) -> dict[tuple[str, str], int]:
        """(queue, kind) -> jobs holding devices (SCHEDULED or RUNNING)."""
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for j in self._jobs.values():
                if j.state in BOUND_STATES:
                    counts[(j.queue, j.kind)] = counts.get((j.queue, j.kind), 0) + 1
        return counts

    def node_counts(self) -> dict[str, int]:
        """{"ready": n, "not_ready": m} (both always present)."""
        with self._lock:
            ready = sum(1 for n in self._nodes.values() if n.ready)
            total = len(self._nodes)
        return {"ready": ready, "not_ready": total - ready}

    def largest_free_blocks(self) -> dict[tuple[str, str], int]:
        """(model, level) -> the most free devices of that model on one node ("node") and in one
        super-node ("supernode"; a node without a ``supernode`` label is its own), i.e. the
        biggest single-model gang that fits now. Free = on a ready node, schedulable health, no
        share allocated. The same facts the core's snapshot is built from, read from the API's
        mirror so it also works when the core runs in a child process; O(devices + allocations)."""
        from xpod.hal.device import Health

        usage = self._usage()
        with self._lock:
            nodes = list(self._nodes.values())
        per_node: dict[tuple[str, str], int] = {}  # (model, node) -> free
        per_super: dict[tuple[str, str], int] = {}  # (model, supernode) -> free
        models: set[str] = set()
        for n in nodes:
            supernode = dict(n.labels).get("supernode") or n.name
            for d in n.devices:
                models.add(d.model)
                if not n.ready or not Health(d.health).schedulable or usage.get(d.id, (0, []))[0] > 0:
                    continue
                per_node[(d.model, n.name)] = per_node.get((d.model, n.name), 0) + 1
                per_super[(d.model, supernode)] = per_super.get((d.model, supernode), 0) + 1
        out = {(m, level): 0 for m in models for level in ("node", "supernode")}
        for (m, _), c in per_node.items():
            out[(m, "node")] = max(out[(m, "node")], c)
        for (m, _), c in per_super.items():
            out[(m, "supernode")] = max(out[(m, "supernode")], c)
        return out

    def device_counts(self) -> dict[tuple[str, str], int]:
        """(vendor, state) -> devices, state in free, allocated, unhealthy."""
        from xpod.hal.device import Health

        usage = self._usage()
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            nodes = list(self._nodes.values())
        for n in nodes:
            for d in n.devices:
                if not Health(d.health).schedulable:
                    state = "unhealthy"
                elif usage.get(d.id, (0, []))[0] > 0:
                    state = "allocated"
                else:
                    state = "free"
                counts[(d.vendor, state)] = counts.get((d.vendor, state), 0) + 1
        return counts


__all__ = [
    "ApiError",
    "Assignment",
    "Code",
    "CycleOutcome",
    "DeviceView",
    "Explanation",
    "JobView",
    "Limits",
    "NodeView",
    "OPEN_PRINCIPAL",
    "ParsedJob",
    "Placer",
    "SchedulerApi",
    "SpecInvalid",
    "TaskState",
]
