"""``JobBook``: the sole owner of the service's job state.

It holds, under one lock, the committed job records (a mirror of the store, updated by the
store's ``on_commit`` in commit order), each live job's parsed document, the queue index (queue
positions in O(log n)), the live pending reasons (shown, not logged, while they only say "wait")
and the agents' task reports. Nobody else keeps a copy: the API, the scheduling loop and
liveness read and change jobs only through its public methods, and every change of a job is a
store write whose commit updates the book.

Listeners (``listen``) see every committed batch after the book does, in commit order, on the
store's writer thread: the agents' assignment streams are fed that way (``service.assignments``).
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterable, Iterator

from xpod.scheduler.contract import JobKind, TaskFieldError, TaskState
from xpod.scheduler.store import (
    CANONICAL_JSON,
    Compacted,
    EventRecord,
    EventType,
    JobRecord,
    JobState,
    JobUpdate,
    PendingReasonRecord,
    Store,
    SubmitResult,
    SubmitWrite,
    UpdateResult,
)

from .admission import ParsedJob

BOUND_STATES = (JobState.SCHEDULED, JobState.RUNNING)


@dataclasses.dataclass(frozen=True)
class Recovered:
    """Every job as of ``revision`` and the parsed form of the live ones: a follower's book,
    which the new leader starts from instead of reading and parsing every job again."""

    jobs: tuple[JobRecord, ...]
    parsed: dict[str, ParsedJob]
    revision: int


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


class JobBook:
    """See the module docstring. Thread-safe."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified after each commit
        self._jobs: dict[str, JobRecord] = {}
        self._parsed: dict[str, ParsedJob] = {}  # live jobs only
        self._parsing: dict[str, ParsedJob] = {}  # request id -> parse of a submission not committed yet
        self._pending: dict[str, PendingReasonRecord] = {}  # live reasons of QUEUED jobs
        self._queued_seqs: dict[str, list[int]] = {}  # queue -> sorted seqs of its QUEUED jobs
        self._submitted_s: dict[str, float] = {}  # QUEUED, never placed -> submit time (queue-wait metric)
        # live jobs of the store that no longer pass admission's checks: (job, why), failed at start
        self.unparsable: list[tuple[JobRecord, str]] = []
        self._queues: set[str] = set()  # every queue a job names (the cap on queues counts them)
        self._reports: dict[str, dict[str, TaskState]] = {}  # job -> node -> last report
        self._new: list[str] = []  # committed, not yet handed to the core
        self._listeners: list[Callable[[list[Any]], None]] = []
        self.last_revision = 0
        store.on_commit = self._on_commit

    def load(self, parse: Callable[[dict], ParsedJob], recovered: "Recovered | None" = None) -> list[JobRecord]:
        """Fill the book (at start) from the store, or from a follower's ``recovered`` mirror;
        returns the live jobs, each parsed once (or taken parsed from the mirror)."""
        # the revision first: a follower reads while the leader writes, and replays the events
        # above it, so a job committed during the load is never missed (one loaded already is
        # replayed to the same end state)
        revision = recovered.revision if recovered is not None else self._store.last_revision()
        jobs = sorted(recovered.jobs, key=lambda j: j.seq) if recovered is not None else self._store.load_jobs()
        known = recovered.parsed if recovered is not None else {}
        live = []
        with self._lock:
            for job in jobs:
                self._index(None, job)
                self._jobs[job.id] = job
                if not job.state.terminal:
                    # it was accepted once; a stricter server (reserved env variables, queue
                    # names) may refuse it now: it is failed at start, never half-loaded
                    try:
                        self._parsed[job.id] = known.get(job.id) or parse(job.spec)
                    except TaskFieldError as err:
                        self.unparsable.append((job, str(err)))
                        continue
                    live.append(job)
            self.last_revision = revision
        return live

    def recovered(self) -> "Recovered":
        """The book as of its revision: what a follower hands the leader it becomes."""
        with self._lock:
            return Recovered(tuple(self._jobs.values()), dict(self._parsed), self.last_revision)

    def replay(self, events: list[EventRecord], parse: Callable[[dict], ParsedJob]) -> None:
        """A follower's book follows the store's event log (the leader's commits), as if they
        were its own; nothing is handed to a core (a follower never schedules)."""
        results: list[Any] = []
        for ev in events:
            if ev.type is EventType.SUBMITTED and self.get(ev.job.id) is None:
                results.append(SubmitResult(ev.job, True, ev))
            else:
                results.append(UpdateResult(ev.job, ev))
        self._on_commit(results)
        with self._lock:
            for jid in self._new:
                if jid not in self._parsed and not self._jobs[jid].state.terminal:
                    self._parsed[jid] = parse(self._jobs[jid].spec)
            self._new.clear()

    def listen(self, listener: Callable[[list[Any]], None]) -> None:
        self._listeners.append(listener)

    def _on_commit(self, results: list[Any]) -> None:
        # on the store's writer thread, in commit order
        with self._changed:
            for r in results:
                if isinstance(r, SubmitResult):
                    parsed = self._parsing.pop(r.job.request_id, None)
                    if r.created:
                        self._index(None, r.job)
                        self._jobs[r.job.id] = r.job
                        if parsed is not None:
                            self._parsed[r.job.id] = parsed
                        self._new.append(r.job.id)
                        self.last_revision = max(self.last_revision, r.event.revision)
                elif isinstance(r, Compacted):  # retention: the records now read without their spec
                    for job in r.jobs:
                        if job.id in self._jobs:
                            self._jobs[job.id] = job
                elif isinstance(r, UpdateResult):
                    self._index(self._jobs.get(r.job.id), r.job)
                    self._jobs[r.job.id] = r.job
                    self.last_revision = max(self.last_revision, r.event.revision)
                    if r.job.state.terminal:
                        self._parsed.pop(r.job.id, None)
                        self._pending.pop(r.job.id, None)
                        self._reports.pop(r.job.id, None)
                    elif r.job.state is not JobState.QUEUED:
                        self._pending.pop(r.job.id, None)
            self._changed.notify_all()
        for listener in self._listeners:
            listener(results)

    def queue_names(self) -> set[str]:
        """Every queue a job of the book names (a copy)."""
        with self._lock:
            return set(self._queues)

    def pending_count(self, queue: str) -> int:
        """QUEUED jobs of ``queue``."""
        with self._lock:
            return len(self._queued_seqs.get(queue, ()))

    def _index(self, old: JobRecord | None, new: JobRecord) -> None:
        self._queues.add(new.queue)
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

    # --- writes ---

    def submit(self, write: SubmitWrite, parsed: ParsedJob) -> concurrent.futures.Future:
        """Queue a new job's write; the book knows its parse from the moment it commits."""
        with self._lock:
            self._parsing[write.request_id] = parsed
        try:
            return self._store.submit(write)
        except BaseException:
            self.submission_ended(write.request_id)
            raise

    def submission_ended(self, request_id: str) -> None:
        """The caller stopped waiting for a submission that failed (its parse is not needed)."""
        with self._lock:
            self._parsing.pop(request_id, None)

    def update(self, update: JobUpdate, *, background: bool = False) -> concurrent.futures.Future:
        """Queue a change of a job; its future gives the ``UpdateResult`` or raises
        ``StaleUpdate`` (the job changed since ``update.expect_revision``)."""
        return self._store.submit(update, background=background)

    # --- reads ---

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def parsed(self, job_id: str) -> ParsedJob | None:
        with self._lock:
            return self._parsed.get(job_id)

    def view(self, job: JobRecord) -> JobView:
        with self._lock:
            position = 0
            pending = None
            if job.state is JobState.QUEUED:
                position = 1 + bisect.bisect_left(self._queued_seqs.get(job.queue, []), job.seq)
                pending = self._pending.get(job.id, job.pending)
                if pending is not None:
                    # the core orders by priority and fair share, not only by arrival
                    core_position = dict(pending.metadata).get("queuePosition")
                    if core_position and core_position.isdigit():
                        position = int(core_position)
        return JobView(job, position, pending)

    def in_order(self, after_seq: int = 0) -> list[JobRecord]:
        """Every job submitted after ``after_seq``, in submission order."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sorted((j for j in jobs if j.seq > after_seq), key=lambda j: j.seq)

    def page(
        self, after_seq: int, size: int, max_bytes: int, wanted: Callable[[JobRecord], bool]
    ) -> tuple[list[JobView], str]:
        """Up to ``size`` jobs after ``after_seq`` that ``wanted`` accepts, in submission order,
        and the token of the next page ("" at the end: ``seq:N``, the last seq given). A page
        ends before its specs pass ``max_bytes`` (gRPC's 4 MiB message limit), never empty."""
        out: list[JobRecord] = []
        page_bytes = 0
        full = False
        for j in self.in_order(after_seq):
            if not wanted(j):
                continue
            page_bytes += len(CANONICAL_JSON.encode(j.spec)) + 512
            if len(out) == size or (out and page_bytes > max_bytes):
                full = True
                break
            out.append(j)
        return [self.view(j) for j in out], f"seq:{out[-1].seq}" if full and out else ""

    def explain(
        self, job: JobRecord, more_numbers: dict[str, float] | None = None, more_lines: list[str] | None = None
    ) -> Explanation:
        """Why ``job`` is where it is, as lines and the numbers behind them (and ``more_*``: what
        other owners know of it, e.g. ``SchedulingLoop.autoscale_of``)."""
        view = self.view(job)
        numbers: dict[str, float] = {}
        lines = [f"job {job.id} ({job.kind} {job.name!r}) in queue {job.queue!r} is {job.state.value}"]
        if view.pending is not None:
            for k, v in view.pending.metadata:
                with contextlib.suppress(ValueError):
                    numbers[k] = float(v)
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
        numbers.update(more_numbers or {})
        lines.extend(more_lines or ())
        return Explanation(view, numbers, tuple(lines))

    def watch(
        self,
        revision: int,
        job_id: str,
        wanted: Callable[[JobRecord], bool],
        active: Callable[[], bool],
        batch: int,
        poll_s: float,
    ) -> Iterator[EventRecord]:
        """Every stored event after ``revision`` (of ``job_id`` when set) whose job ``wanted``
        accepts, then new ones as they commit, while ``active()``. It reads ``batch`` events at a
        time: a stream holds at most one batch (each with its job's spec, up to 256 KB) while its
        consumer reads, so a consumer that stops reading pins little (25 stalled watches over
        the whole log took 3.6 GB)."""
        while active():
            events = self._store.events_since(revision, job_id=job_id or None, limit=batch)
            for ev in events:
                revision = ev.revision
                if wanted(ev.job):
                    yield ev
            if len(events) < batch and active():
                self.wait_for_change(revision, poll_s)

    def bound(self, node: str | None = None, device: str | None = None) -> list[JobRecord]:
        """Bound jobs (on ``node``, on ``device``), in submission order."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.state in BOUND_STATES]
        if node is not None:
            jobs = [j for j in jobs if any(a.node == node for a in j.allocations)]
        if device is not None:
            jobs = [j for j in jobs if any(device in a.devices for a in j.allocations)]
        return sorted(jobs, key=lambda j: j.seq)

    def finished_before(self, cutoff_s: float, limit: int) -> list[str]:
        """Up to ``limit`` finished jobs that ended before ``cutoff_s`` (unix seconds) and
        still have their spec (not compacted yet), oldest first: what retention compacts."""
        with self._lock:
            done = [j for j in self._jobs.values() if j.state.terminal and j.update_time_s < cutoff_s and j.spec]
        done.sort(key=lambda j: j.update_time_s)
        return [j.id for j in done[:limit]]

    def stored_bytes(self, queue: str) -> int:
        """The bytes of job specs ``queue`` has stored (``Store.stored_bytes``)."""
        return self._store.stored_bytes(queue)

    def wait_for_change(self, revision: int, timeout_s: float) -> None:
        """Return once a commit past ``revision`` exists, or after ``timeout_s``."""
        with self._changed:
            if self.last_revision <= revision:
                self._changed.wait(timeout=timeout_s)

    def wake_waiters(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # --- live facts ---

    def take_new(self) -> list[tuple[JobRecord, ParsedJob | None]]:
        """Jobs committed since the last call, with their parse (for the core's queue)."""
        with self._lock:
            new, self._new = self._new, []
            return [(self._jobs[jid], self._parsed.get(jid)) for jid in new]

    def set_pending(self, job_id: str, reason: PendingReasonRecord) -> bool:
        """The live reason of a QUEUED job; False when it is no longer queued."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED:
                return False
            self._pending[job_id] = reason
            return True

    def submitted_s(self, job_id: str) -> float | None:
        """When a job that was never placed was submitted (None: placed before, or gone)."""
        with self._lock:
            return self._submitted_s.get(job_id)

    def report(self, job_id: str, node: str, state: TaskState) -> dict[str, TaskState]:
        """Record an agent's report; returns every node's last report for the job."""
        with self._lock:
            states = self._reports.setdefault(job_id, {})
            states[node] = state
            return dict(states)

    def drop_reports(self, job_id: str, nodes: Iterable[str] | None = None) -> None:
        with self._lock:
            if nodes is None:
                self._reports.pop(job_id, None)
            elif job_id in self._reports:
                for n in nodes:
                    self._reports[job_id].pop(n, None)

    # --- for metrics and the cluster calls ---

    def usage(self) -> dict[str, tuple[int, list[str]]]:
        """Device id -> (allocated milli, ids of the jobs holding it)."""
        usage: dict[str, tuple[int, list[str]]] = {}
        for job in self.bound():
            for a in job.allocations:
                for dev in a.devices:
                    milli, ids = usage.get(dev, (0, []))
                    usage[dev] = (milli + a.milli_per_device, ids if job.id in ids else ids + [job.id])
        return usage

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(collections.Counter(j.state.value for j in self._jobs.values()))

    def pending_counts(self) -> dict[tuple[str, str], int]:
        """(queue, reason) -> number of QUEUED jobs."""
        with self._lock:
            queued = [
                (j, self._pending.get(j.id, j.pending)) for j in self._jobs.values() if j.state is JobState.QUEUED
            ]
        return dict(collections.Counter((j.queue, p.reason if p else "NEW") for j, p in queued))

    def running_counts(self) -> dict[tuple[str, str], int]:
        """(queue, kind) -> jobs holding devices (SCHEDULED or RUNNING)."""
        return dict(collections.Counter((j.queue, j.kind) for j in self.bound()))

    def degraded_counts(self) -> dict[str, int]:
        """Queue -> bound serving jobs running below their min replicas (lost replicas released
        alone and not bound again yet)."""
        with self._lock:
            serving = [(j, self._parsed.get(j.id)) for j in self._jobs.values() if j.state in BOUND_STATES]
        return dict(
            collections.Counter(
                j.queue
                for j, p in serving
                if p is not None and p.kind is JobKind.SERVING and 0 < len(j.allocations) < p.core.min_required
            )
        )
