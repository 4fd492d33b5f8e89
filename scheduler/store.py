"""The scheduler's durable store: jobs, their event log and registered nodes in SQLite (WAL).

Contract:

* A write is *acknowledged* when its future resolves: by then the transaction holding it has
  committed with ``synchronous=FULL`` (the WAL is fsync'd), so a ``kill -9`` of the server at
  any later moment keeps it.
* One writer thread owns the write connection and *group-commits*: it takes every write queued
  while the previous transaction was committing and applies them in one transaction, so
  durability costs one fsync per batch, not per job.
* Submissions are idempotent by ``request_id`` (a UNIQUE column): the same key with the same
  document (same ``spec_hash``) returns the stored job with ``created=False``; the same key with
  another document fails that one submission with ``RequestIdConflict``; the batch goes on.
* Every change of a job appends one event; its revision (an INTEGER PRIMARY KEY, strictly
  increasing in commit order) is also stored on the job, so ``events_since(rev)`` resumes a
  watch exactly.
* The schema carries a version (``PRAGMA user_version``); ``MIGRATIONS`` brings an older file up
  to date on open, in one transaction per step. A file from a newer xpod is refused.

The writer calls ``on_commit(results)`` after each commit and before resolving the futures, in
commit order, so an in-memory mirror (``scheduler.api``) never sees two batches out of order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import hashlib
import json
import collections
import sqlite3
import threading
import time
from typing import Any, Callable, Sequence

from xpod.hal.errors import XpodError
from xpod.scheduler import trace as _trace


class JobState(str, enum.Enum):
    """A job's life (mirrors ``xpod.v1.JobState``)."""

    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventType(str, enum.Enum):
    """What happened to a job (mirrors ``xpod.v1.JobEventType``)."""

    SUBMITTED = "SUBMITTED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EVICTED = "EVICTED"
    PENDING = "PENDING"


@dataclasses.dataclass(frozen=True)
class PendingReasonRecord:
    reason: str  # UPPER_SNAKE reason code from the scheduler core
    message: str  # one line with the numbers
    metadata: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "PendingReasonRecord | None":
        if not d:
            return None
        return cls(d["reason"], d["message"], tuple(sorted((str(k), str(v)) for k, v in d.get("metadata", {}).items())))


@dataclasses.dataclass(frozen=True)
class AllocationRecord:
    """What one task of a job holds on one node (enough to bind it again after a restart)."""

    node: str  # node name
    devices: tuple[str, ...]  # device ids on that node ("n01/3")
    milli_per_device: int = 1000  # thousandths of each device held
    task: int = 0  # task index within the job
    cpu_milli: int = 0  # host CPU held, thousandths of a core
    memory_bytes: int = 0  # host memory held
    device_memory_bytes: int = 0  # memory slice per device (fractional devices)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "devices": list(self.devices),
            "milli_per_device": self.milli_per_device,
            "task": self.task,
            "cpu_milli": self.cpu_milli,
            "memory_bytes": self.memory_bytes,
            "device_memory_bytes": self.device_memory_bytes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AllocationRecord":
        return cls(
            d["node"],
            tuple(d["devices"]),
            int(d.get("milli_per_device", 1000)),
            int(d.get("task", 0)),
            int(d.get("cpu_milli", 0)),
            int(d.get("memory_bytes", 0)),
            int(d.get("device_memory_bytes", 0)),
        )


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """One job as stored. Values, never mutated: a change is a new record plus an event."""

    id: str  # server-assigned ("job-12"), never reused
    seq: int  # submission order (also the FIFO tie-break the core sees)
    request_id: str  # the client's idempotency key
    spec_hash: str  # sha256 of the canonical JSON of ``spec``
    queue: str
    kind: str  # TrainingJob | ServingJob | BatchJob
    name: str
    spec: dict[str, Any] = dataclasses.field(compare=False)  # the accepted job document
    state: JobState = JobState.QUEUED
    pending: PendingReasonRecord | None = None
    allocations: tuple[AllocationRecord, ...] = ()
    create_time_s: float = 0.0  # unix seconds
    update_time_s: float = 0.0
    revision: int = 0  # revision of the last event that changed it
    message: str = ""  # why it ended

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "request_id": self.request_id,
            "spec_hash": self.spec_hash,
            "queue": self.queue,
            "kind": self.kind,
            "name": self.name,
            "spec": self.spec,
            "state": self.state.value,
            "pending_reason": self.pending.to_json() if self.pending else None,
            "allocations": [a.to_json() for a in self.allocations],
            "create_time_s": self.create_time_s,
            "update_time_s": self.update_time_s,
            "revision": self.revision,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "JobRecord":
        return cls(
            id=d["id"],
            seq=int(d["seq"]),
            request_id=d["request_id"],
            spec_hash=d["spec_hash"],
            queue=d["queue"],
            kind=d["kind"],
            name=d["name"],
            spec=d["spec"],
            state=JobState(d["state"]),
            pending=PendingReasonRecord.from_json(d.get("pending_reason")),
            allocations=tuple(AllocationRecord.from_json(a) for a in d.get("allocations", [])),
            create_time_s=float(d["create_time_s"]),
            update_time_s=float(d["update_time_s"]),
            revision=int(d["revision"]),
            message=d.get("message", ""),
        )


@dataclasses.dataclass(frozen=True)
class EventRecord:
    revision: int  # strictly increasing over the store, in commit order
    job_id: str
    type: EventType
    time_s: float
    message: str
    job: JobRecord  # the job right after the event


def spec_hash(document: dict[str, Any]) -> str:
    """The idempotency fingerprint of a job document: sha256 of its canonical JSON."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# json.dumps with separators builds a new encoder per call; the writer serialises every change
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class StoreError(XpodError):
    """The database file cannot be used (newer schema, not a database, unwritable)."""


class RequestIdConflict(Exception):
    """A submission reused a request_id with another document (the API maps it to ALREADY_EXISTS)."""

    def __init__(self, existing: JobRecord) -> None:
        super().__init__(
            f"request_id {existing.request_id!r} was already used for job {existing.id} with a different job document"
        )
        self.existing = existing


class StoreOverloaded(Exception):
    """The write queue is full: the caller should shed the request and retry later."""


class StoreClosed(Exception):
    """The store was closed; no write is accepted."""


# --- writes -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubmitWrite:
    """Insert a new job (or find the one with this request_id)."""

    request_id: str
    spec_hash: str
    queue: str
    kind: str
    name: str
    spec: dict[str, Any]
    time_s: float


@dataclasses.dataclass(frozen=True)
class SubmitResult:
    job: JobRecord
    created: bool  # False: an earlier submission with the same request_id and document
    event: EventRecord | None  # the SUBMITTED event when created


@dataclasses.dataclass(frozen=True)
class JobUpdate:
    """Replace a job's mutable fields and append one event.

    ``expect_revision`` (when not None) makes the update conditional: it fails with
    ``StaleUpdate`` if the stored job changed since (the API re-reads and decides again).
    ``expect_states`` (when not empty) likewise requires the stored state to be one of them.
    """

    job_id: str
    state: JobState
    pending: PendingReasonRecord | None
    allocations: tuple[AllocationRecord, ...]
    event: EventType
    message: str
    time_s: float
    expect_revision: int | None = None
    expect_states: tuple[JobState, ...] = ()


class StaleUpdate(Exception):
    def __init__(self, current: JobRecord) -> None:
        super().__init__(f"job {current.id} changed (now at revision {current.revision})")
        self.current = current


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    job: JobRecord
    event: EventRecord


@dataclasses.dataclass(frozen=True)
class NodeWrite:
    """Insert or replace a registered node (``doc`` is the API's JSON of the node)."""

    name: str
    doc: dict[str, Any]
    time_s: float
    remove: bool = False


Write = SubmitWrite | JobUpdate | NodeWrite


class NotLeader(Exception):
    """A write was refused because this store's fencing token is no longer the lease's: another
    replica took over. Nothing of the batch was written; the caller steps down."""


class StoreUnavailable(Exception):
    """The database cannot be reached (connection lost, server down). Nothing of the batch is
    acknowledged; the store refuses writes until its owner reopens it."""


# --- schema -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step of the schema, written once per dialect side by side, so no step can exist for
    one database and not the other (both carry the same version numbers)."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


SCHEMA_VERSION = 3

MIGRATIONS: dict[int, Migration] = {
    # version 1: jobs and their event log.
    1: Migration(
        sqlite=(
            """CREATE TABLE jobs (
                   seq INTEGER PRIMARY KEY,
                   id TEXT NOT NULL UNIQUE,
                   request_id TEXT NOT NULL UNIQUE,
                   doc TEXT NOT NULL
               )""",
            """CREATE TABLE events (
                   revision INTEGER PRIMARY KEY AUTOINCREMENT,
                   job_id TEXT NOT NULL,
                   type TEXT NOT NULL,
                   time_s REAL NOT NULL,
                   message TEXT NOT NULL,
                   job TEXT NOT NULL
               )""",
        ),
        postgresql=(
            """CREATE TABLE jobs (
                   seq BIGINT PRIMARY KEY,
                   id TEXT NOT NULL UNIQUE,
                   request_id TEXT NOT NULL UNIQUE,
                   doc TEXT NOT NULL
               )""",
            """CREATE TABLE events (
                   revision BIGINT PRIMARY KEY,
                   job_id TEXT NOT NULL,
                   type TEXT NOT NULL,
                   time_s DOUBLE PRECISION NOT NULL,
                   message TEXT NOT NULL,
                   job TEXT NOT NULL
               )""",
        ),
    ),
    # version 2: registered nodes survive a restart; events found per job without a scan.
    2: Migration(
        sqlite=(
            """CREATE TABLE nodes (
                   name TEXT PRIMARY KEY,
                   doc TEXT NOT NULL,
                   update_time_s REAL NOT NULL
               )""",
            "CREATE INDEX events_by_job ON events (job_id, revision)",
        ),
        postgresql=(
            """CREATE TABLE nodes (
                   name TEXT PRIMARY KEY,
                   doc TEXT NOT NULL,
                   update_time_s DOUBLE PRECISION NOT NULL
               )""",
            "CREATE INDEX events_by_job ON events (job_id, revision)",
        ),
    ),
    # version 3: the leader lease of replicas sharing one database (scheduler.store_postgres).
    # A SQLite file has one server (the file is locked); the table is there so both schemas
    # stay one.
    3: Migration(
        sqlite=(
            """CREATE TABLE leases (
                   name TEXT PRIMARY KEY,
                   holder TEXT NOT NULL,
                   address TEXT NOT NULL,
                   token INTEGER NOT NULL,
                   expires_at_s REAL NOT NULL
               )""",
        ),
        postgresql=(
            """CREATE TABLE leases (
                   name TEXT PRIMARY KEY,
                   holder TEXT NOT NULL,
                   address TEXT NOT NULL,
                   token BIGINT NOT NULL,
                   expires_at_s DOUBLE PRECISION NOT NULL
               )""",
        ),
    ),
}


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def newer_schema_error(where: str, found: int) -> StoreError:
    return StoreError(
        f"{where}: schema version {found} is newer than this xpod supports ({SCHEMA_VERSION}); upgrade xpod"
    )


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the file to ``target``; returns the version found. Each step is one transaction."""
    try:
        found = conn.execute("PRAGMA user_version").fetchall()[0][0]
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path}: not an xpod database ({err}); pass another --db path") from None
    if found > SCHEMA_VERSION:
        raise newer_schema_error(path, found)
    for version in range(found + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].sqlite:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


# --- the store --------------------------------------------------------------------------------


@dataclasses.dataclass
class _Txn:
    """What one batch changes, applied to the writer's view only once it committed."""

    next_seq: int
    next_revision: int
    jobs: dict[str, JobRecord] = dataclasses.field(default_factory=dict)
    by_request: dict[str, str] = dataclasses.field(default_factory=dict)
    # rows written with one executemany per statement at the end of the batch (in this order,
    # so a job inserted and updated in the same batch is inserted first)
    event_rows: list[tuple] = dataclasses.field(default_factory=list)
    job_inserts: list[tuple] = dataclasses.field(default_factory=list)
    job_updates: list[tuple] = dataclasses.field(default_factory=list)
    # node writes in order: (name, doc JSON, time) to upsert, or (name, None, time) to delete
    node_writes: list[tuple[str, str | None, float]] = dataclasses.field(default_factory=list)


def _evolve(job: JobRecord, **changes: Any) -> JobRecord:
    """``dataclasses.replace`` for a JobRecord without running ``__init__`` field by field
    (several times cheaper; the writer does it for every change of every job)."""
    new = object.__new__(JobRecord)
    d = new.__dict__
    d.update(job.__dict__)
    d.update(changes)
    return new


@dataclasses.dataclass(frozen=True)
class _Pending:
    write: Write
    future: concurrent.futures.Future


def _event_record(row: Sequence[Any]) -> EventRecord:
    return EventRecord(
        int(row[0]), row[1], EventType(row[2]), float(row[3]), row[4], JobRecord.from_json(json.loads(row[5]))
    )


class GroupCommitStore:
    """The store contract (module docstring) over one database: one group-committing writer
    thread, two lanes, the writer's own view of committed jobs. Thread-safe.

    A database implements the hooks below (``_begin``, ``_flush``, ``_commit``, ``_rollback``,
    ``_select_job_doc``, ``_after_batch``, ``_close_connections``; ``_cursor``, and the
    statements ``_flush`` runs in its parameter style) and the reads
    (``load_jobs``, ``load_nodes``, ``last_revision``, ``events_since``); the batching, the
    idempotency and the revisions are here once. ``Store`` is SQLite, ``PostgresStore``
    (``scheduler.store_postgres``) PostgreSQL.

    ``max_queued_writes`` bounds the writes waiting for the writer; past it ``submit`` raises
    ``StoreOverloaded`` at once (the service turns that into RESOURCE_EXHAUSTED + RetryInfo).
    ``max_batch`` bounds one transaction.
    """

    dialect = ""  # "sqlite" | "postgresql"
    # Errors of a batch that refuse one write and let the batch go on (they raise before the
    # write changed anything).
    _REFUSALS = (RequestIdConflict, StaleUpdate, KeyError)

    def _init_writer(
        self,
        display: str,
        on_commit: Callable[[list[Any]], None] | None,
        next_seq: int,
        next_revision: int,
        by_request: dict[str, str],
        *,
        max_queued_writes: int,
        max_batch: int,
        max_background_per_batch: int,
        max_background_beside_front: int,
    ) -> None:
        """Set up the writer's state (after the database is open and migrated) and start it."""
        self.path = display  # the file or the URL with its password masked: for messages
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._next_seq = next_seq
        self._next_revision = next_revision
        # The writer's own view of committed jobs: request ids and current records, so a write
        # needs no read-back (filled as jobs are written; older ones are read on first use).
        self._by_request = by_request
        self._current: dict[str, JobRecord] = {}
        self._spec_json: dict[str, str] = {}
        # Two lanes: writes a caller waits on (submissions, cancels) go first; background writes
        # (a scheduling cycle's decisions, possibly thousands) fill each batch after them, at
        # most ``max_background_per_batch``, so a big cycle never delays an acknowledgement by
        # more than one bounded transaction. A batch that carries waiting callers' writes takes
        # only ``max_background_beside_front`` of them: measured with XPOD_TRACE, a batch with
        # 64 decisions took ~9 ms against ~0.8 ms for one without, and every submission in it
        # waited; with 8, six A/B pairs of bench/service_submit.py in turns had the lower p99
        # (README "Scheduler service"). Decisions still go at >= 8 per commit under load, and
        # 64 at a time whenever no caller is waiting.
        self._max_queued = max_queued_writes
        self._max_background = max_background_per_batch
        self._max_background_beside_front = min(max_background_beside_front, max_background_per_batch)
        self._lanes: tuple[collections.deque[_Pending], collections.deque[_Pending]] = (
            collections.deque(),
            collections.deque(),
        )
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._closed = False
        self.batches_committed = 0  # for tests and the benchmark: how well group commit works
        self.writes_committed = 0
        self._trace_lanes = (0, 0)  # debug timeline only (XPOD_TRACE)
        self._thread = threading.Thread(target=self._writer, name="xpod-store-writer", daemon=True)
        self._thread.start()

    # writes

    def submit(self, write: Write, *, background: bool = False) -> concurrent.futures.Future:
        """Queue one write; the future resolves after its transaction committed (or fails).
        ``background`` writes yield to the others (see the lanes above)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise StoreClosed(self.path)
            lane = self._lanes[1 if background else 0]
            if not background and len(lane) >= self._max_queued:
                raise StoreOverloaded(f"{self._max_queued} writes queued")
            lane.append(_Pending(write, fut))
            self._ready.notify()
        return fut

    def write(self, write: Write, timeout_s: float | None = None) -> Any:
        """``submit`` and wait: returns the result or raises the write's error."""
        return self.submit(write).result(timeout=timeout_s)

    def write_many(self, writes: Sequence[Write], timeout_s: float | None = None) -> list[Any]:
        """Queue several writes (they usually share a transaction) and wait for all."""
        futures = [self.submit(w) for w in writes]
        return [f.result(timeout=timeout_s) for f in futures]

    def _writer(self) -> None:
        front, back = self._lanes
        while True:
            with self._ready:
                while not front and not back and not self._stopping:
                    self._ready.wait()
                if not front and not back:
                    return  # stopping, and everything queued is written
                batch = [front.popleft() for _ in range(min(len(front), self._max_batch))]
                n_front = len(batch)
                cap = self._max_background_beside_front if batch else self._max_background
                room = max(0, min(cap, self._max_batch - len(batch)))
                batch += [back.popleft() for _ in range(min(len(back), room))]
            if _trace.ENABLED:
                self._trace_lanes = (n_front, len(batch) - n_front)
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Pending]) -> None:
        txn = _Txn(self._next_seq, self._next_revision)
        outcomes: list[Any] = []
        tracing = _trace.ENABLED
        if tracing:
            t_pop = time.monotonic()
        try:
            self._begin()
            if tracing:
                t_begin = time.monotonic()
            for p in batch:
                # A refused write (conflict, stale, unknown job) raises before it writes
                # anything, so the rest of the batch goes on without savepoints.
                try:
                    outcomes.append(self._apply(p.write, txn))
                except self._REFUSALS as err:
                    outcomes.append(err)
            self._flush(txn)
            if tracing:
                t_applied = time.monotonic()
            self._commit()
            if tracing:
                t_committed = time.monotonic()
        except BaseException as err:  # disk full, I/O error, lost lease: nothing of this batch is acknowledged
            err = self._rollback(err)
            for p in batch:
                p.future.set_exception(err if isinstance(err, Exception) else RuntimeError(str(err)))
            return
        self._next_seq = txn.next_seq
        self._next_revision = txn.next_revision
        for job_id, job in txn.jobs.items():
            if job.state.terminal:  # never written again: read back from disk if ever needed
                self._current.pop(job_id, None)
                self._spec_json.pop(job_id, None)
            else:
                self._current[job_id] = job
        self._by_request.update(txn.by_request)
        self.batches_committed += 1
        self.writes_committed += len(batch)
        if self._on_commit is not None:
            self._on_commit([o for o in outcomes if not isinstance(o, Exception)])
        if tracing:
            t_mirrored = time.monotonic()
        for p, outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)
        if tracing:
            _trace.add(
                "batch", t_pop, t_begin, t_applied, t_committed, t_mirrored, time.monotonic(), *self._trace_lanes
            )
        self._after_batch()  # after the acknowledgements: this batch never waits for it

    def _lookup(self, txn: "_Txn", job_id: str) -> JobRecord | None:
        job = txn.jobs.get(job_id) or self._current.get(job_id)
        if job is None:
            doc = self._select_job_doc(job_id)
            if doc is not None:
                job = JobRecord.from_json(json.loads(doc))
        return job

    def _doc(self, job: JobRecord) -> str:
        # The spec never changes after submission: serialise it once per job.
        spec = self._spec_json.get(job.id)
        if spec is None:
            spec = self._spec_json[job.id] = _COMPACT.encode(job.spec)
        d = job.to_json()
        del d["spec"]
        return _COMPACT.encode(d)[:-1] + ',"spec":' + spec + "}"

    def _apply(self, w: Write, txn: "_Txn") -> Any:
        if isinstance(w, SubmitWrite):
            existing_id = txn.by_request.get(w.request_id) or self._by_request.get(w.request_id)
            if existing_id is not None:
                existing = self._lookup(txn, existing_id)
                assert existing is not None
                if existing.spec_hash != w.spec_hash:
                    raise RequestIdConflict(existing)
                return SubmitResult(existing, False, None)
            seq = txn.next_seq
            txn.next_seq += 1
            job = JobRecord(
                id=f"job-{seq}",
                seq=seq,
                request_id=w.request_id,
                spec_hash=w.spec_hash,
                queue=w.queue,
                kind=w.kind,
                name=w.name,
                spec=w.spec,
                create_time_s=w.time_s,
                update_time_s=w.time_s,
                revision=self._next_rev(txn),
            )
            event, doc = self._append_event(txn, job, EventType.SUBMITTED, "accepted", w.time_s)
            txn.job_inserts.append((seq, job.id, job.request_id, doc))
            txn.by_request[w.request_id] = job.id
            return SubmitResult(job, True, event)
        if isinstance(w, JobUpdate):
            current = self._lookup(txn, w.job_id)
            if current is None:
                raise KeyError(w.job_id)
            if w.expect_revision is not None and current.revision != w.expect_revision:
                raise StaleUpdate(current)
            if w.expect_states and current.state not in w.expect_states:
                raise StaleUpdate(current)
            job = _evolve(
                current,
                state=w.state,
                pending=w.pending,
                allocations=w.allocations,
                update_time_s=w.time_s,
                message=w.message if w.state.terminal else current.message,
                revision=self._next_rev(txn),
            )
            event, doc = self._append_event(txn, job, w.event, w.message, w.time_s)
            txn.job_updates.append((doc, job.id))
            return UpdateResult(job, event)
        if isinstance(w, NodeWrite):
            txn.node_writes.append((w.name, None if w.remove else json.dumps(w.doc), w.time_s))
            return w
        raise TypeError(f"unknown write {w!r}")

    @staticmethod
    def _next_rev(txn: "_Txn") -> int:
        # Revisions are assigned here (the only writer) so the stored snapshot carries its own
        # revision: event.job.revision == event.revision.
        revision = txn.next_revision
        txn.next_revision += 1
        return revision

    def _append_event(
        self, txn: "_Txn", job: JobRecord, type_: EventType, message: str, time_s: float
    ) -> tuple[EventRecord, str]:
        """Queue the event row for ``job`` (which already carries the event's revision)."""
        doc = self._doc(job)
        txn.event_rows.append((job.revision, job.id, type_.value, time_s, message, doc))
        txn.jobs[job.id] = job
        return EventRecord(job.revision, job.id, type_, time_s, message, job), doc

    # the database's part

    def _begin(self) -> None:
        raise NotImplementedError

    # the statements of a batch, in the database's parameter style (``?`` or ``%s``)
    _INSERT_EVENTS = "INSERT INTO events (revision, job_id, type, time_s, message, job) VALUES (?, ?, ?, ?, ?, ?)"
    _INSERT_JOBS = "INSERT INTO jobs (seq, id, request_id, doc) VALUES (?, ?, ?, ?)"
    _UPDATE_JOBS = "UPDATE jobs SET doc = ? WHERE id = ?"
    _DELETE_NODE = "DELETE FROM nodes WHERE name = ?"
    _UPSERT_NODE = "INSERT OR REPLACE INTO nodes (name, doc, update_time_s) VALUES (?, ?, ?)"

    def _cursor(self) -> Any:
        """What the writer executes the batch on (inside the open transaction)."""
        raise NotImplementedError

    def _flush(self, txn: _Txn) -> None:
        """Write the batch's rows: events, then job inserts, job updates, node writes."""
        cur = self._cursor()
        if txn.event_rows:
            cur.executemany(self._INSERT_EVENTS, txn.event_rows)
        if txn.job_inserts:
            cur.executemany(self._INSERT_JOBS, txn.job_inserts)
        if txn.job_updates:
            cur.executemany(self._UPDATE_JOBS, txn.job_updates)
        for name, doc, time_s in txn.node_writes:
            if doc is None:
                cur.execute(self._DELETE_NODE, (name,))
            else:
                cur.execute(self._UPSERT_NODE, (name, doc, time_s))

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self, err: BaseException) -> BaseException:
        """Undo the open transaction after ``err``; returns the error the batch's callers get."""
        raise NotImplementedError

    def _select_job_doc(self, job_id: str) -> str | None:
        """The stored document of ``job_id`` (writer thread, inside the batch's transaction)."""
        raise NotImplementedError

    def _after_batch(self) -> None:
        """Housekeeping after a batch was acknowledged (SQLite: the writer's checkpoint)."""

    def _close_connections(self) -> None:
        raise NotImplementedError

    # reads (any thread)

    def load_jobs(self) -> list[JobRecord]:
        """Every stored job, in submission order."""
        raise NotImplementedError

    def load_nodes(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def last_revision(self) -> int:
        raise NotImplementedError

    def events_since(self, revision: int, *, job_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """Events with a revision above ``revision``, oldest first, at most ``limit``."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish queued writes, stop the writer, close connections. Idempotent."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            self._ready.notify()
        self._thread.join()
        self._close_connections()

    def __enter__(self) -> "GroupCommitStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store(GroupCommitStore):
    """SQLite (WAL, ``synchronous=FULL``): the embedded default, one server per file."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        on_commit: Callable[[list[Any]], None] | None = None,
        max_queued_writes: int = 20_000,
        max_batch: int = 2_000,
        max_background_per_batch: int = 64,
        max_background_beside_front: int = 8,
        checkpoint_interval_s: float = 0.5,
        wal_restart_frames: int = 2000,
    ) -> None:
        try:
            self._conn = _connect(path)
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
        except sqlite3.Error as err:
            raise StoreError(f"{path}: cannot open the database: {err}; pass a writable --db path") from None
        if mode.lower() != "wal":
            raise StoreError(f"{path}: SQLite refused WAL mode (got {mode}); put --db on a local filesystem")
        # FULL: the WAL is fsync'd at every commit, so an acknowledged write survives a crash of
        # the machine, not only of the process.
        self._conn.execute("PRAGMA synchronous = FULL")
        self.schema_version_found = migrate(self._conn, path)
        # fetchall, never fetchone: an unfinished statement keeps its read snapshot open, which
        # both shows stale data and stops the WAL from being checkpointed.
        row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchall()[0]
        next_seq = int(row[0]) + 1
        row = self._conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchall()[0]
        next_revision = int(row[0]) + 1
        by_request = dict(self._conn.execute("SELECT request_id, id FROM jobs").fetchall())
        self._read_local = threading.local()
        # Checkpoints (copying the WAL back into the database file, with its own fsync) run on
        # a thread of their own, not inside a commit: SQLite's automatic checkpoint would run in
        # whichever commit crosses 1000 WAL pages, which then takes several times longer (a
        # latency spike for every submission in that batch). PASSIVE never blocks the writer.
        # But the WAL only starts over from its beginning when a write finds it completely
        # checkpointed, which a checkpointer racing a busy writer never achieves: once the
        # background pass has copied most of a WAL over ``wal_restart_frames``, the writer runs a
        # short PASSIVE pass of its own between two batches (only the last few frames are left to
        # copy), and its next transaction restarts the WAL. Without that the WAL grows for as
        # long as submissions keep coming.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")  # a WAL that grew is cut back
        self._checkpoint_interval_s = checkpoint_interval_s
        self._wal_restart_frames = wal_restart_frames
        self._wal_frames = 0  # the WAL's length in frames at the last background pass
        self._checkpoint_stop = threading.Event()
        self.checkpoints = 0
        self.writer_checkpoints = 0
        self._init_writer(
            path,
            on_commit,
            next_seq,
            next_revision,
            by_request,
            max_queued_writes=max_queued_writes,
            max_batch=max_batch,
            max_background_per_batch=max_background_per_batch,
            max_background_beside_front=max_background_beside_front,
        )
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="xpod-store-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = _connect(self.path)
        try:
            while not self._checkpoint_stop.wait(self._checkpoint_interval_s):
                try:
                    _, self._wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    self.checkpoints += 1
                except sqlite3.Error:  # busy or I/O trouble: the next round tries again
                    pass
        finally:
            conn.close()

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _cursor(self) -> sqlite3.Connection:
        return self._conn

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self, err: BaseException) -> BaseException:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return err

    def _select_job_doc(self, job_id: str) -> str | None:
        rows = self._conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchall()
        return rows[0][0] if rows else None

    def _after_batch(self) -> None:
        if self._wal_frames > self._wal_restart_frames:
            self._wal_frames = 0
            try:
                t_ck = time.monotonic()
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.writer_checkpoints += 1
                if _trace.ENABLED:
                    _trace.add("wckpt", t_ck, time.monotonic())
            except sqlite3.Error:  # busy: the background pass goes on, and this comes back
                pass

    # reads (any thread; WAL readers never block the writer)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._read_local.conn = conn
        return conn

    def load_jobs(self) -> list[JobRecord]:
        rows = self._reader().execute("SELECT doc FROM jobs ORDER BY seq").fetchall()
        return [JobRecord.from_json(json.loads(r[0])) for r in rows]

    def load_nodes(self) -> list[dict[str, Any]]:
        rows = self._reader().execute("SELECT doc FROM nodes ORDER BY name").fetchall()
        return [json.loads(r[0]) for r in rows]

    def last_revision(self) -> int:
        row = self._reader().execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchall()[0]
        return int(row[0])

    def events_since(self, revision: int, *, job_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        if job_id is None:
            rows = (
                self._reader()
                .execute(
                    "SELECT revision, job_id, type, time_s, message, job FROM events WHERE revision > ? ORDER BY revision LIMIT ?",
                    (revision, limit),
                )
                .fetchall()
            )
        else:
            rows = (
                self._reader()
                .execute(
                    "SELECT revision, job_id, type, time_s, message, job FROM events WHERE job_id = ? AND revision > ? "
                    "ORDER BY revision LIMIT ?",
                    (job_id, revision, limit),
                )
                .fetchall()
            )
        return [_event_record(r) for r in rows]

    def _close_connections(self) -> None:
        self._checkpoint_stop.set()
        self._checkpointer.join()
        self._conn.close()
        conn = getattr(self._read_local, "conn", None)
        if conn is not None:
            conn.close()


def open_store(location: str, **kwargs: Any) -> GroupCommitStore:
    """The store at ``location``: ``sqlite:///path``, a bare path (SQLite), or
    ``postgresql://user[:password]@host[:port]/db`` (``scheduler.store_postgres``).
    Raises ``StoreError`` with one line naming the location (password masked)."""
    if location.startswith(("postgresql://", "postgres://")):
        from xpod.scheduler.store_postgres import PostgresStore

        return PostgresStore(location, **kwargs)
    if location.startswith("sqlite://"):
        path = location[len("sqlite://") :]
        if not path.startswith("/") or path == "/":
            raise StoreError(f"{location}: a SQLite store URL is sqlite:///absolute/path; pass one or a bare --db path")
        return Store(path, **kwargs)
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(
            f"--store {scheme}://...: unknown store kind {scheme!r}; use sqlite:///PATH or postgresql://..."
        )
    return Store(location, **kwargs)
