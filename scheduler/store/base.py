"""The group-committing writer both databases share (``GroupCommitStore``): the contract of
``scheduler.store`` written once (batching, two lanes, request-id idempotency, revisions, the
writer's own view of committed jobs); a database adds its transactions and reads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import threading
from typing import Any, Callable, Sequence

from . import (
    CompactJobs,
    Compacted,
    EventRecord,
    EventType,
    JobRecord,
    JobUpdate,
    MoeWindowWrite,
    NodeWrite,
    RequestIdConflict,
    StaleUpdate,
    StoreClosed,
    StoreOverloaded,
    SubmitResult,
    SubmitWrite,
    UpdateResult,
    Write,
)

# json.dumps with separators builds a new encoder per call; the writer serialises every change
_COMPACT = json.JSONEncoder(separators=(",", ":"))


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
    moe_rows: list[tuple[str, int, float, str]] = dataclasses.field(default_factory=list)
    spec_inserts: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (job id, spec JSON)
    # retention: (job id, its revision) whose older events go, and the job ids whose spec goes
    event_deletes: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    spec_deletes: list[tuple[str]] = dataclasses.field(default_factory=list)
    stored_delta: dict[str, int] = dataclasses.field(default_factory=dict)  # queue -> spec bytes added


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


def _job_record(doc: str, spec: str | None, specs: dict[str, Any] | None = None) -> JobRecord:
    """A job from its stored row (no spec) and its ``specs`` row (None once retention dropped
    it: the spec reads as ``{}``). ``specs`` caches parsed specs by job id within one read."""
    d = json.loads(doc)
    if spec is None:
        d["spec"] = {}
    elif specs is None:
        d["spec"] = json.loads(spec)
    else:
        parsed = specs.get(d["id"])
        if parsed is None:
            parsed = specs[d["id"]] = json.loads(spec)
        d["spec"] = parsed
    return JobRecord.from_json(d)


def _event_records(rows: Sequence[Sequence[Any]]) -> list[EventRecord]:
    """Rows of ``GroupCommitStore._SELECT_EVENTS*`` as records; a job's spec is parsed once."""
    specs: dict[str, Any] = {}
    return [
        EventRecord(int(r[0]), r[1], EventType(r[2]), float(r[3]), r[4], _job_record(r[5], r[6], specs)) for r in rows
    ]


class GroupCommitStore:
    """The store contract (``scheduler.store``) over one database: one group-committing writer
    thread, two lanes, the writer's own view of committed jobs. Thread-safe. A database (SQLite,
    PostgreSQL) adds the hooks below (``_begin`` ... ``_close_connections``, ``_query``) and its
    SQL's style (``_sql``, ``_QUEUE_OF_DOC``); batching, idempotency and revisions are here once.
    Past ``max_queued_writes`` waiting writes ``submit`` raises ``StoreOverloaded`` at once;
    ``max_batch`` bounds one transaction."""

    dialect = ""  # "sqlite" | "postgresql"
    _QUEUE_OF_DOC = ""  # SQL: the queue of a job row ``j``
    # Errors of a batch that refuse one write and let the batch go on (they raise before the
    # write changed anything).
    _REFUSALS = (RequestIdConflict, StaleUpdate, KeyError)

    def _init_writer(
        self,
        display: str,
        on_commit: Callable[[list[Any]], None] | None,
        read: Callable[[str], list[tuple]],
        *,
        max_queued_writes: int,
        max_batch: int,
        max_background_per_batch: int,
        max_background_beside_front: int,
    ) -> None:
        """Read the writer's state with ``read`` (after the database is open and migrated) and
        start it. Reads use ``fetchall``, never ``fetchone``: an unfinished SQLite statement keeps
        its read snapshot open, which shows stale data and stops the WAL's checkpoints."""
        next_seq = int(read("SELECT COALESCE(MAX(seq), 0) FROM jobs")[0][0]) + 1
        next_revision = int(read("SELECT COALESCE(MAX(revision), 0) FROM events")[0][0]) + 1
        by_request = dict(read("SELECT request_id, id FROM jobs"))
        stored = read(
            f"SELECT {self._QUEUE_OF_DOC}, SUM(length(s.spec)) FROM specs s JOIN jobs j ON j.id = s.job_id GROUP BY 1"
        )
        self.path = display  # the file or the URL with its password masked: for messages
        self.on_commit = on_commit
        # told (on the writer thread) when a batch could not be written for the database's sake
        # (read-only, full, I/O): the server turns its health NOT_SERVING
        self.on_failure: Callable[[Exception], None] | None = None
        self._max_batch = max_batch
        self._next_seq = next_seq
        self._next_revision = next_revision
        # The writer's own view of committed jobs: request ids and current records, so a write
        # needs no read-back (filled as jobs are written; older ones are read on first use).
        self._by_request = by_request
        self._current: dict[str, JobRecord] = {}
        # the bytes of specs stored per queue (``stored_bytes``): kept by the writer, read by anyone
        self._stored_bytes: dict[str, int] = {q: int(n) for q, n in stored}
        # Two lanes: writes a caller waits on (submissions, cancels) go first; background writes
        # (a scheduling cycle's decisions, possibly thousands) fill each batch after them, at
        # most ``max_background_per_batch``, so a big cycle never delays an acknowledgement by
        # more than one bounded transaction. A batch that carries waiting callers' writes takes
        # only ``max_background_beside_front`` of them: measured with a debug timeline, a batch with
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
                cap = self._max_background_beside_front if batch else self._max_background
                room = max(0, min(cap, self._max_batch - len(batch)))
                batch += [back.popleft() for _ in range(min(len(back), room))]
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[_Pending]) -> None:
        txn = _Txn(self._next_seq, self._next_revision)
        outcomes: list[Any] = []
        try:
            self._begin()
            for p in batch:
                # A refused write (conflict, stale, unknown job) raises before it writes
                # anything, so the rest of the batch goes on without savepoints.
                try:
                    outcomes.append(self._apply(p.write, txn))
                except self._REFUSALS as err:
                    outcomes.append(err)
            self._flush(txn)
            self._commit()
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
            else:
                self._current[job_id] = job
        self._by_request.update(txn.by_request)
        for queue, delta in txn.stored_delta.items():
            self._stored_bytes[queue] = self._stored_bytes.get(queue, 0) + delta
        self.batches_committed += 1
        self.writes_committed += len(batch)
        if self.on_commit is not None:
            self.on_commit([o for o in outcomes if not isinstance(o, Exception)])
        for p, outcome in zip(batch, outcomes):
            if isinstance(outcome, Exception):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)
        self._after_batch()  # after the acknowledgements: this batch never waits for it

    def _lookup(self, txn: "_Txn", job_id: str) -> JobRecord | None:
        job = txn.jobs.get(job_id) or self._current.get(job_id)
        if job is None:
            row = self._select_job(job_id)
            if row is not None:
                job = _job_record(row[0], row[1])
        return job

    @staticmethod
    def _doc(job: JobRecord) -> str:
        # the job's row and each of its events: everything but the spec (stored once, in specs)
        d = job.to_json()
        del d["spec"]
        return _COMPACT.encode(d)

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
            spec = _COMPACT.encode(w.spec)
            txn.job_inserts.append((seq, job.id, job.request_id, doc))
            txn.spec_inserts.append((job.id, spec))
            txn.stored_delta[w.queue] = txn.stored_delta.get(w.queue, 0) + len(spec)
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
                restarts=current.restarts if w.restarts is None else w.restarts,
                resizes=current.resizes if w.resizes is None else w.resizes,
            )
            event, doc = self._append_event(txn, job, w.event, w.message, w.time_s)
            txn.job_updates.append((doc, job.id))
            return UpdateResult(job, event)
        if isinstance(w, MoeWindowWrite):
            current = self._lookup(txn, w.job_id)
            if current is None:
                raise KeyError(w.job_id)  # before anything of it is written (a refusal)
            txn.moe_rows.append((w.job_id, w.window, w.time_s, _COMPACT.encode(w.doc)))
            if not w.event:
                return None
            # The job itself does not change: its revision stays, so a conditional update of it
            # (an agent's report, a cancel) never goes stale because a plan was published.
            revision = self._next_rev(txn)
            txn.event_rows.append(
                (revision, current.id, EventType.MOE_PLAN.value, w.time_s, w.event, self._doc(current))
            )
            txn.jobs[current.id] = current
            return UpdateResult(
                current, EventRecord(revision, current.id, EventType.MOE_PLAN, w.time_s, w.event, current)
            )
        if isinstance(w, CompactJobs):
            return self._compact(w, txn)
        if isinstance(w, NodeWrite):
            txn.node_writes.append((w.name, None if w.remove else json.dumps(w.doc), w.time_s))
            return w
        raise TypeError(f"unknown write {w!r}")

    def _compact(self, w: CompactJobs, txn: "_Txn") -> Compacted:
        # Finished jobs only: a live job keeps its spec and history. Each keeps its row and its
        # last event (so the newest revision, and with it the next one, survives a restart).
        done = []
        freed = 0
        for job_id in w.job_ids:
            job = self._lookup(txn, job_id)
            if job is None or not job.state.terminal or job_id in txn.jobs:
                continue
            size = self._spec_size(job_id)
            if size is not None:
                txn.spec_deletes.append((job_id,))
                txn.stored_delta[job.queue] = txn.stored_delta.get(job.queue, 0) - size
                freed += size
            txn.event_deletes.append((job_id, job.revision))
            done.append(_evolve(job, spec={}))
        return Compacted(tuple(done), freed)

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

    # the statements of a batch and the reads, written with ``?``; ``_sql`` gives the database's style
    _INSERT_EVENTS = "INSERT INTO events (revision, job_id, type, time_s, message, job) VALUES (?, ?, ?, ?, ?, ?)"
    _INSERT_JOBS = "INSERT INTO jobs (seq, id, request_id, doc) VALUES (?, ?, ?, ?)"
    _UPDATE_JOBS = "UPDATE jobs SET doc = ? WHERE id = ?"
    _DELETE_NODE = "DELETE FROM nodes WHERE name = ?"
    _UPSERT_NODE = "INSERT OR REPLACE INTO nodes (name, doc, update_time_s) VALUES (?, ?, ?)"
    _INSERT_MOE = "INSERT INTO moe_windows (job_id, window_index, time_s, doc) VALUES (?, ?, ?, ?)"
    _SELECT_MOE = "SELECT doc FROM moe_windows WHERE job_id = ? AND window_index > ? ORDER BY window_index LIMIT ?"
    _INSERT_SPECS = "INSERT INTO specs (job_id, spec) VALUES (?, ?)"
    _DELETE_SPECS = "DELETE FROM specs WHERE job_id = ?"
    _DELETE_EVENTS = "DELETE FROM events WHERE job_id = ? AND revision < ?"
    _SELECT_SPEC_SIZE = "SELECT length(spec) FROM specs WHERE job_id = ?"
    _SELECT_JOB = "SELECT j.doc, s.spec FROM jobs j LEFT JOIN specs s ON s.job_id = j.id WHERE j.id = ?"
    # reads: a job's row or event with its spec joined back (``_job_record``, ``_event_records``)
    _SELECT_JOBS = "SELECT j.doc, s.spec FROM jobs j LEFT JOIN specs s ON s.job_id = j.id ORDER BY j.seq"
    _SELECT_EVENTS = (
        "SELECT e.revision, e.job_id, e.type, e.time_s, e.message, e.job, s.spec FROM events e "
        "LEFT JOIN specs s ON s.job_id = e.job_id WHERE e.revision > ? ORDER BY e.revision LIMIT ?"
    )
    _SELECT_JOB_EVENTS = (
        "SELECT e.revision, e.job_id, e.type, e.time_s, e.message, e.job, s.spec FROM events e "
        "LEFT JOIN specs s ON s.job_id = e.job_id WHERE e.job_id = ? AND e.revision > ? ORDER BY e.revision LIMIT ?"
    )

    @staticmethod
    def _sql(statement: str) -> str:
        """``statement`` in the database's parameter style (PostgreSQL: ``%s``)."""
        return statement

    def _cursor(self) -> Any:
        """What the writer executes the batch on (inside the open transaction)."""
        raise NotImplementedError

    def _flush(self, txn: _Txn) -> None:
        """Write the batch's rows: events, then job inserts, job updates, node writes."""
        cur, sql = self._cursor(), self._sql
        for statement, rows in (
            (self._INSERT_EVENTS, txn.event_rows),
            (self._INSERT_JOBS, txn.job_inserts),
            (self._INSERT_SPECS, txn.spec_inserts),
            (self._UPDATE_JOBS, txn.job_updates),
            (self._INSERT_MOE, txn.moe_rows),
            (self._DELETE_EVENTS, txn.event_deletes),
            (self._DELETE_SPECS, txn.spec_deletes),
        ):
            if rows:
                cur.executemany(sql(statement), rows)
        for name, doc, time_s in txn.node_writes:
            if doc is None:
                cur.execute(sql(self._DELETE_NODE), (name,))
            else:
                cur.execute(sql(self._UPSERT_NODE), (name, doc, time_s))

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self, err: BaseException) -> BaseException:
        """Undo the open transaction after ``err``; returns the error the batch's callers get."""
        raise NotImplementedError

    def _select_job(self, job_id: str) -> tuple[str, str | None] | None:
        """The stored row of ``job_id`` and its spec (writer thread, inside the batch's transaction)."""
        rows = self._cursor().execute(self._sql(self._SELECT_JOB), (job_id,)).fetchall()
        return (rows[0][0], rows[0][1]) if rows else None

    def _spec_size(self, job_id: str) -> int | None:
        """The stored spec's length (ASCII JSON: bytes), None when it is gone (writer thread)."""
        rows = self._cursor().execute(self._sql(self._SELECT_SPEC_SIZE), (job_id,)).fetchall()
        return int(rows[0][0]) if rows else None

    def stored_bytes(self, queue: str) -> int:
        """The bytes of job specs stored for ``queue`` (finished jobs' specs leave with
        retention, ``CompactJobs``): what the per-queue storage limit counts. Any thread."""
        return self._stored_bytes.get(queue, 0)

    def _after_batch(self) -> None:
        """Housekeeping after a batch was acknowledged (SQLite: the writer's checkpoint)."""

    def _close_connections(self) -> None:
        raise NotImplementedError

    # reads (any thread)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of a read (``sql`` written with ``?``), on a reader connection of this thread."""
        raise NotImplementedError

    def load_jobs(self) -> list[JobRecord]:
        """Every stored job, in submission order."""
        return [_job_record(doc, spec) for doc, spec in self._query(self._SELECT_JOBS)]

    def load_nodes(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._query("SELECT doc FROM nodes ORDER BY name")]

    def last_revision(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(revision), 0) FROM events")[0][0])

    def events_since(self, revision: int, *, job_id: str | None = None, limit: int = 1000) -> list[EventRecord]:
        """Events with a revision above ``revision`` (of ``job_id``), oldest first, at most ``limit``."""
        if job_id is None:
            return _event_records(self._query(self._SELECT_EVENTS, (revision, limit)))
        return _event_records(self._query(self._SELECT_JOB_EVENTS, (job_id, revision, limit)))

    def moe_windows(self, job_id: str, *, after: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """A job's MoE windows above index ``after``, oldest first."""
        return [json.loads(r[0]) for r in self._query(self._SELECT_MOE, (job_id, after, limit))]

    def set_holder_address(self, address: str) -> None:
        """Say where the process using the store serves (SQLite names it to a second process)."""

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
