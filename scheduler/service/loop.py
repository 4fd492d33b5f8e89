"""``SchedulingLoop``: new jobs -> the core -> its decisions -> store writes.

A thread runs the core's cycle every ``cycle_interval_s`` (sooner after ``wake()``) and stores
what it decided as events before agents or watchers see it. A pending reason that only says
"wait" (``WAIT_REASONS``) is shown live, not logged; one that needs someone to act is logged once
per change of code. A job resized in place (``CycleOutcome.resizes``) keeps its state and its
released tasks leave its allocations; a gang's resize restarts it (counted in ``restarts`` and
``resizes``, the event says ``restart (resize, R)``) but never fails the job and spends nothing of
``max_restarts``. While no node is ready, a waiting job says it waits for the agents.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable

from xpod.scheduler.store import EventType, JobState, JobUpdate, PendingReasonRecord, StaleUpdate, StoreClosed

from xpod.scheduler.contract import LoadReport, load_metric, role_spans

from .core_link import CoreLink, CycleOutcome
from .errors import ApiError, Code, not_found
from .jobs import BOUND_STATES, JobBook
from .nodes import NodeRegistry

#: pending reasons (the core's ReasonCode names) that only say "wait": not written to the event log
WAIT_REASONS = frozenset({"UNSCHEDULABLE", "WAITING_BEHIND", "NOT_CONSIDERED", "WAITING_FOR_AGENTS"})


class SchedulingLoop:
    def __init__(
        self,
        jobs: JobBook,
        nodes: NodeRegistry,
        core: CoreLink,
        clock: Callable[[], float],
        *,
        cycle_interval_s: float = 0.5,
        min_cycle_gap_s: float = 0.25,
        metrics: Any = None,
    ) -> None:
        self._jobs = jobs
        self._nodes = nodes
        self._core = core
        self._clock = clock
        self.cycle_interval_s = cycle_interval_s
        self.min_cycle_gap_s = min_cycle_gap_s
        self.metrics = metrics
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0
        self.errors = 0  # cycles that raised (the loop goes on after a pause)
        self.autoscale: dict[str, Any] = {}  # the last cycle's ``CycleOutcome.autoscale`` (describe, metrics)

    def wake(self) -> None:
        self._wake.set()

    def start(self, stop: threading.Event) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(stop,), name="xpod-scheduling", daemon=True)
            self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(timeout=self.cycle_interval_s)
            self._wake.clear()
            if stop.is_set():
                return
            started = time.perf_counter()
            try:
                self.schedule_once()
            except StoreClosed:
                return
            except Exception as err:  # a bug or a dead core process: say so, keep serving, retry
                self.errors += 1
                print(f"xpod server: scheduling cycle failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                stop.wait(1.0)
                continue
            # A cycle holds the GIL for its whole length when the core runs in this process:
            # under a flood of submissions, space cycles so scheduling takes at most about a
            # quarter of the time and the API keeps answering.
            stop.wait(max(self.min_cycle_gap_s, 3 * (time.perf_counter() - started)))

    def schedule_once(self) -> CycleOutcome:
        """One cycle: hand new jobs to the core, run its cycle, persist what it decided. Public so
        tests drive the loop deterministically (without ``start()``)."""
        with self._core.atomic():
            for job, parsed in self._jobs.take_new():
                if job.state is JobState.QUEUED and parsed is not None:
                    for core_job in parsed.core_jobs(job.id, job.create_time_s):
                        self._core.add_job(core_job)
            outcome = self._core.cycle(self._clock())
            self.cycles += 1
            self.autoscale = outcome.autoscale
            first: dict[str, tuple[str, str, float]] = {}
            updates = self._decisions(outcome, first)
            futures = [self._jobs.update(u, background=True) for u in updates]
        # Wait for the decisions outside the lock: cancels and agents' reports go on meanwhile.
        stale: list[str] = []
        for u, f in zip(updates, futures):
            try:
                f.result()
            except (StaleUpdate, KeyError):
                stale.append(u.job_id)
        with self._core.atomic():
            for jid in stale:
                # cancelled (or finished) while the cycle ran: the core must let go of it
                job = self._jobs.get(jid)
                if job is not None and job.state.terminal:
                    self._core.remove_job(jid)
        if self.metrics is not None:
            self.metrics.cycle(outcome, outcome.seconds, self._jobs)
            for jid, (queue, kind, wait_s) in first.items():
                if jid not in stale:
                    self.metrics.placed(queue, kind, wait_s)
        return outcome

    def autoscale_of(self, job_id: str) -> tuple[dict[str, float], list[str]]:
        """A serving job's autoscaling as of the last cycle, as ``explain_job`` numbers and a line
        (nothing for a job without ``autoscale``, or before its first cycle); a job with roles:
        a line per autoscaled role (``role decode: autoscale: ...``), its numbers named
        ``ROLE.demand``, ``ROLE.desiredReplicas``, ...)."""
        st = self.autoscale.get(job_id)
        if st is None:
            return self._roles_autoscale_of(job_id)
        return self._one_autoscale(st)

    def _roles_autoscale_of(self, job_id: str) -> tuple[dict[str, float], list[str]]:
        """A job with roles: each autoscaled role's numbers under ``ROLE.`` and its line."""
        numbers: dict[str, float] = {}
        lines: list[str] = []
        for core_id, st in sorted(self.autoscale.items()):
            parent, _, role = core_id.rpartition("/")
            if parent != job_id:
                continue
            more, text = self._one_autoscale(st)
            numbers.update({f"{role}.{k}": v for k, v in more.items()})
            lines.extend(f"role {role}: {line}" for line in text)
        return numbers, lines

    @staticmethod
    def _one_autoscale(st: Any) -> tuple[dict[str, float], list[str]]:
        numbers = {
            "targetPerReplica": st.target_per_replica,
            "desiredReplicas": float(st.desired_replicas),
            "runningReplicas": float(st.running_replicas),
            "minReplicas": float(st.min_replicas),
            "maxReplicas": float(st.max_replicas),
            "headroom": st.headroom,
        }
        budget = ""
        if st.allowed_short is not None:
            numbers["shortIntervals"] = float(st.short_intervals)
            numbers["allowedShortIntervals"] = float(st.allowed_short)
            budget = f"; error budget: {st.short_intervals} of {st.allowed_short} allowed short interval(s) spent"
        demand = "nothing reported yet"
        if st.demand is not None:
            numbers["demand"] = st.demand
            demand = f"{st.demand:g} {st.metric}"
        return numbers, [
            f"autoscale: demand {demand} at a target of {st.target_per_replica:g} per replica: "
            f"{st.desired_replicas} replica(s) wanted, {st.running_replicas} placed "
            f"(min {st.min_replicas}, max {st.max_replicas}), provisioned for {st.headroom:.2f} x the load{budget}"
        ]

    def report_load(self, report: LoadReport) -> int:
        """One serving replica's load, for its job's autoscaling (the core's ``report_load``);
        returns the replicas the job (its role's, for a job with roles) wants. ``ApiError``:
        NOT_FOUND for an unknown job, role (a job with roles names the reporting replica's role;
        a job without none) or a replica it does not run, FAILED_PRECONDITION without ``spec.autoscale`` or when the job is
        not bound to the node, INVALID_ARGUMENT for a load that is no finite number >= 0; nothing
        is recorded then."""
        job = self._jobs.get(report.job_id)
        if job is None:
            raise not_found("job", report.job_id)
        meta = {"jobId": job.id}
        spec = job.spec.get("spec", {})
        scope, core_id, field = spec, job.id, "spec.autoscale"
        names = [s.name for s in role_spans(spec)]
        if names or report.role:
            if report.role not in names:
                why = (
                    f"job {job.id} has no role {report.role[:64]!r} (its roles: {', '.join(names)})"
                    if names
                    else f"job {job.id} has no roles: report without one"
                )
                raise ApiError(Code.NOT_FOUND, "ROLE_NOT_FOUND", why, field="role", metadata=meta)
            i = names.index(report.role)
            scope, core_id, field = spec["roles"][i], f"{job.id}/{report.role}", f"spec.roles[{i}].autoscale"
        if load_metric(job.kind, scope) is None:
            why = f"job {job.id} has no {field}: it takes no load"
            raise ApiError(Code.FAILED_PRECONDITION, "NO_AUTOSCALE", why, metadata=meta)
        if job.state not in BOUND_STATES or report.node not in {a.node for a in job.allocations}:
            why = f"job {job.id} is {job.state.value} and not bound to node {report.node[:253]!r}"
            raise ApiError(Code.FAILED_PRECONDITION, "NOT_ASSIGNED", why, metadata={**meta, "node": report.node[:253]})
        refused, why, desired = self._core.report_load(core_id, report.replica, report.value)
        if refused == "not_found":
            raise ApiError(Code.NOT_FOUND, "REPLICA_NOT_FOUND", why, field="replica", metadata=meta)
        if refused:
            raise ApiError(Code.INVALID_ARGUMENT, "INVALID_LOAD", why, field="value", metadata=meta)
        return desired

    def _resized(self, job: Any, r: Any, tasks: int, bound: str = "") -> tuple[str, int | None, int | None]:
        """The event text, new restart count and new resize count of a job resized to ``tasks``
        tasks (a resize restarts a gang but spends none of its ``max_restarts``)."""
        text = f"{r.reason} ({tasks} task(s) now" + (f"; {bound})" if bound else ")")
        if not r.restart:
            return text, None, None
        return f"restart (resize, {job.resizes + 1}): {text}", job.restarts + 1, job.resizes + 1

    def _decisions(self, outcome: CycleOutcome, first: dict[str, tuple[str, str, float]]) -> list[JobUpdate]:
        """The store updates for a cycle's outcome; ``first`` receives, for each job placed for
        the first time, (queue, kind, seconds since submission). Each update is conditional
        (expect_revision / expect_states), so a change that slips in is caught by the store."""
        updates: list[JobUpdate] = []
        now = self._clock()
        for jid, why in outcome.evictions.items():
            job = self._jobs.get(jid)
            if job is None or job.state not in BOUND_STATES:
                continue
            updates.append(JobUpdate(jid, JobState.QUEUED, None, (), EventType.EVICTED, why, now, job.revision))
        evicted = set(outcome.evictions)
        for jid, r in outcome.resizes.items():
            job = self._jobs.get(jid)
            if jid in outcome.bindings or jid in evicted or job is None or job.state not in BOUND_STATES:
                continue  # a regrow's new tasks come with its bindings, below
            kept = tuple(a for a in job.allocations if a.task not in r.released)
            text, restarts, resizes = self._resized(job, r, len(kept))
            updates.append(
                JobUpdate(jid, job.state, None, kept, EventType.EVICTED, text, now, job.revision, (), restarts, resizes)
            )
        for jid, allocations in outcome.bindings.items():
            job = self._jobs.get(jid)
            if job is None or job.state.terminal:
                continue
            submitted_s = self._jobs.submitted_s(jid)
            held = () if jid in evicted or job.state not in BOUND_STATES else job.allocations
            where = ", ".join(sorted({a.node for a in allocations}))
            text = f"bound {len(allocations)} {'more ' if held else ''}task(s) to {where}"
            if jid in evicted:
                # evicted and placed again in one cycle: applies right after its EVICTED event,
                # unless something else (a cancel) got in between
                updates.append(
                    JobUpdate(
                        jid, JobState.SCHEDULED, None, allocations, EventType.SCHEDULED, text, now, None,
                        (JobState.QUEUED,),
                    )
                )  # fmt: skip
                continue
            state = job.state if job.state in BOUND_STATES else JobState.SCHEDULED
            restarts = resizes = None
            resized = outcome.resizes.get(jid)
            if resized is not None and held:
                held = tuple(a for a in held if a.task not in resized.released)
                text, restarts, resizes = self._resized(job, resized, len(held) + len(allocations), text)
            updates.append(
                JobUpdate(
                    jid, state, None, held + allocations, EventType.SCHEDULED, text, now, job.revision, (), restarts,
                    resizes,
                )
            )  # fmt: skip
            if submitted_s is not None and job.state is JobState.QUEUED:
                first[jid] = (job.queue, job.kind, now - submitted_s)
        agents = self._nodes.waiting_for_agents() if outcome.pending else None
        for jid, reason in outcome.pending.items():
            if jid in outcome.bindings or jid in evicted:
                continue
            if agents is not None and reason.reason in ("UNSCHEDULABLE", "NEVER_FITS"):
                reason = PendingReasonRecord("WAITING_FOR_AGENTS", agents, reason.metadata)
            job = self._jobs.get(jid)
            if job is None or not self._jobs.set_pending(jid, reason) or reason.reason in WAIT_REASONS:
                continue
            if job.pending is None or job.pending.reason != reason.reason:
                updates.append(
                    JobUpdate(jid, JobState.QUEUED, reason, (), EventType.PENDING, reason.message, now, job.revision)
                )
        return updates
