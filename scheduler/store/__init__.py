"""The scheduler's durable store: the interface every implementation honours, and its values.

``open_store(target)`` opens one: a file path is SQLite (``store.sqlite``, the default; one server
per file, locked). What an implementation promises (a PostgreSQL one shared by several servers
keeps the same promises):

* A write is *acknowledged* when its future resolves: by then the transaction holding it is
  durable (on disk, fsync'd), so a crash of the server at any later moment keeps it.
* Writes are *group-committed*: every write queued while the previous transaction committed
  goes into the next one (one durable commit per batch, not per job). Callers waiting on a
  write (``background=False``) go first; ``background`` writes (a scheduling cycle's decisions)
  fill each batch behind them, so a big cycle never delays an acknowledgement by more than one
  bounded transaction. Past ``max_queued_writes`` waiting writes, ``submit`` raises
  ``StoreOverloaded`` at once.
* Submissions are idempotent by ``request_id``: the same key with the same document
  (``spec_hash``) returns the stored job (``created=False``); with another document that one
  write fails with ``RequestIdConflict`` and the batch goes on.
* Every change of a job appends one event whose *revision* strictly increases in commit order
  and is also stored on the job (``event.job.revision == event.revision``; a ``MOE_PLAN``
  event changes no job and leaves its revision), so
  ``events_since(rev)`` resumes a watch exactly. ``JobUpdate`` may be conditional
  (``expect_revision``, ``expect_states``): ``StaleUpdate`` carries the current job.
* ``on_commit(results)`` (set before the first write) is called after each commit and before the
  futures resolve, in commit order, from one thread: an in-memory mirror (``service.jobs``)
  never sees two batches out of order.
* A job's spec is stored once (not in its events); ``events_since`` and ``load_jobs`` join it
  back. ``CompactJobs`` (retention) drops a finished job's spec and all its events but the last;
  ``stored_bytes(queue)`` counts the specs a queue still has stored.
* Registered nodes are stored as their ``NodeRecord`` JSON (``NodeWrite``), read back by
  ``load_nodes``. Task states are not stored: agents report every task again whenever they
  reconnect, so a restarted (or newly leading) server has them within one heartbeat.
* Values crossing the interface are the frozen records below and plain JSON: no driver types.

Two implementations share the group-committing writer (``store.base``): SQLite
(``store.sqlite``: one server per file, the file locked) and PostgreSQL (``store.postgres``:
several replicas, one leader fenced by a lease token; ``NotLeader`` and ``StoreUnavailable``
are how a replica learns it must step down). Both use one schema (``store.schema``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import enum
import hashlib
import json
from typing import Any, Callable, Protocol, Sequence

from xpod.hal.errors import XpodError


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
    MOE_PLAN = "MOE_PLAN"  # the live MoE loop published a plan (``service.moe``); state unchanged


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
        d = self.__dict__.copy()  # the fields, in order
        d["devices"] = list(self.devices)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AllocationRecord":
        d = d.copy()  # missing keys: the defaults
        d["devices"] = tuple(d["devices"])
        return cls(**d)


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
    restarts: int = 0  # restarts (``service.restarts``): stored, never re-counted from events
    resizes: int = 0  # of ``restarts``, those an elastic resize caused: not spent from ``max_restarts``

    def to_json(self) -> dict[str, Any]:
        """The fields by name (``pending`` as ``pending_reason``), values as JSON."""
        d = self.__dict__.copy()
        pending = d.pop("pending")
        d["state"] = self.state.value
        d["pending_reason"] = pending.to_json() if pending else None
        d["allocations"] = [a.to_json() for a in self.allocations]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "JobRecord":
        """``to_json``'s dict as a record (keys a row of an older version lacks: the defaults)."""
        d = dict(d)
        d["state"] = JobState(d["state"])
        d["pending"] = PendingReasonRecord.from_json(d.pop("pending_reason", None))
        d["allocations"] = tuple(AllocationRecord.from_json(a) for a in d.get("allocations", ()))
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class EventRecord:
    revision: int  # strictly increasing over the store, in commit order
    job_id: str
    type: EventType
    time_s: float
    message: str
    job: JobRecord  # the job right after the event


#: the canonical JSON of a job document (sorted keys, compact, ASCII): what ``spec_hash`` hashes
CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def spec_hash(document: dict[str, Any]) -> str:
    """The idempotency fingerprint of a job document: sha256 of its canonical JSON."""
    return hashlib.sha256(CANONICAL_JSON.encode(document).encode()).hexdigest()


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


class NotLeader(Exception):
    """A write was refused because this store's fencing token is no longer the lease's: another
    replica took over. Nothing of the batch was written; the caller steps down."""


class StoreUnavailable(Exception):
    """The database cannot be reached (connection lost, server down). Nothing of the batch is
    acknowledged; the store refuses writes until its owner reopens it."""


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
    restarts: int | None = None  # the job's new restart count (None: unchanged)
    resizes: int | None = None  # the job's new count of restarts a resize caused (None: unchanged)


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
    """Insert, replace (``doc``: ``contract.NodeRecord.to_json()``) or remove a registered node."""

    name: str
    doc: dict[str, Any]
    time_s: float
    remove: bool = False


@dataclasses.dataclass(frozen=True)
class MoeWindowWrite:
    """Store one closed window of a job's live MoE loop (``runtime.moe.live.LiveEntry`` JSON,
    with its plan when it published one). With ``event`` (one line) it also appends a
    ``MOE_PLAN`` event to the job, in the same transaction. The job does not change (the one
    event whose ``job.revision`` is below its own revision): a conditional update of the job
    never goes stale because a plan was published."""

    job_id: str
    window: int
    time_s: float
    doc: dict[str, Any]
    event: str = ""


@dataclasses.dataclass(frozen=True)
class CompactJobs:
    """Retention: drop the stored spec and every event but the last of each finished job named
    (live or unknown ones are skipped). The job's row stays (``xpod jobs`` still lists it, its
    request id still answers), its spec then reads as ``{}``; no event is appended and no
    revision changes. Results in ``Compacted``."""

    job_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Compacted:
    """The jobs ``CompactJobs`` compacted, as they now read (spec ``{}``), and the spec bytes freed."""

    jobs: tuple[JobRecord, ...]
    bytes_freed: int


Write = SubmitWrite | JobUpdate | NodeWrite | MoeWindowWrite | CompactJobs


class Store(Protocol):
    """What the service needs of a durable store (see the module docstring)."""

    path: str  # where it lives, for messages (a file path, a URL without its password)
    on_commit: Callable[[list[Any]], None] | None
    batches_committed: int  # transactions committed (how well group commit works)
    writes_committed: int

    def submit(self, write: Write, *, background: bool = False) -> concurrent.futures.Future:
        """Queue one write; the future resolves once its transaction is durable (or fails)."""

    def write(self, write: Write, timeout_s: float | None = None) -> Any:
        """``submit`` and wait: the result, or the write's error raised."""

    def write_many(self, writes: Sequence[Write], timeout_s: float | None = None) -> list[Any]:
        """Queue several writes (usually one transaction) and wait for all."""

    def load_jobs(self) -> list[JobRecord]:
        """Every stored job, in submission order."""

    def load_nodes(self) -> list[dict[str, Any]]:
        """Every registered node's ``NodeRecord`` JSON."""

    def last_revision(self) -> int: ...

    def events_since(self, revision: int, *, job_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """Events above ``revision`` (of one job when given), oldest first, at most ``limit``."""

    def moe_windows(self, job_id: str, *, after: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """A job's stored MoE windows (``MoeWindowWrite.doc``) above window ``after``, oldest first."""

    def stored_bytes(self, queue: str) -> int:
        """The bytes of job specs stored for ``queue`` (what a per-queue storage limit counts)."""

    def set_holder_address(self, address: str) -> None:
        """Say where the process holding the store serves (shown to a second one it refuses)."""

    def close(self) -> None:
        """Finish queued writes, then release everything. Idempotent."""


def open_store(location: str, *, holder: str = "xpod", **options: Any) -> Store:
    """The store at ``location``: ``sqlite:///path`` or a bare path (SQLite, locked for
    ``holder``, e.g. ``xpod server``), or ``postgresql://user[:password]@host[:port]/db``
    (``store.postgres``; shared by replicas, not locked). Raises ``StoreError`` (or
    ``store.lock.StateInUse``) with one line naming the location (password masked)."""
    if location.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(location, **options)
    if location.startswith("sqlite://"):
        path = location[len("sqlite://") :]
        if not path.startswith("/") or path == "/":
            raise StoreError(f"{location}: a SQLite store URL is sqlite:///absolute/path; pass one or a bare --db path")
        location = path
    elif "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(
            f"--store {scheme}://...: unknown store kind {scheme!r}; use sqlite:///PATH or postgresql://..."
        )
    from .sqlite import SqliteStore

    return SqliteStore(location, holder=holder, **options)
