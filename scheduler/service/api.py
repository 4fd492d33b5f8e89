"""The scheduler service in process: one method per RPC of ``xpod.v1`` (JobService, NodeService,
ClusterService), and nothing else. Each checks the caller (``auth.authorize``) and the request's
shape, then hands over to the owner (``Submissions``, ``JobBook``, ``NodeRegistry``,
``Liveness``, ``MoeLoops``, ``SchedulingLoop``, ``CoreLink``). ``scheduler.grpc`` is a thin
adapter over this class; most tests call it directly. Every method takes the caller's
``Principal`` first and raises ``ApiError`` for anything the caller can cause.

``submit_job`` returns once the job is durable; the same ``request_id`` with the same document
returns the same job (``created=False``), with another ALREADY_EXISTS. A job that does not fit
*now* is QUEUED with a pending reason (also while nodes still wait for their agents). After a
restart everything is rebuilt from the store: jobs, registered nodes (ready, with a full node
timeout to heartbeat) and the event log (``watch_jobs`` resumes from a revision).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from xpod.hal.device import Health
from xpod.scheduler.contract import LoadReport, MoeLoadReport, MoePlanAnswer, NodeRecord, TaskReport, TaskState
from xpod.scheduler.store import EventRecord, EventType, JobRecord, JobState, JobUpdate, StaleUpdate, Store, open_store

from .admission import TASKS_PER_NODE, Admission, parse_document
from .assignments import Assignment, AssignmentHub, Subscription
from .auth import OPEN_PRINCIPAL, Call, Principal, authorize, authorize_nodes
from .core_link import CoreLink
from .errors import ERROR_DOMAIN, ApiError, Code, invalid, not_found, store_errors, wait
from .jobs import BOUND_STATES, Explanation, JobBook, JobView, Recovered
from .liveness import Liveness
from .loop import SchedulingLoop
from .moe import MoeLoops, moe_of
from .nodes import NodeRegistry, NodeState, check_records
from .queues import OPEN_QUEUES, Queues
from .retention import DEFAULT_RETENTION_S, Retention
from .submit import Submission, Submissions


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
    max_stored_bytes_per_queue: int = 1 << 30  # spec bytes a queue keeps stored (finished ones leave with retention)
    max_page_bytes: int = 2 * 1024 * 1024  # ListJobs pages end before this many bytes of specs
    watch_batch: int = 16  # events a WatchJobs stream reads (and holds) at a time
    max_watches_per_caller: int = 4  # WatchJobs streams one principal may hold open


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
        retention_s: float | None = DEFAULT_RETENTION_S,  # finished jobs compacted this long after (None: kept)
        queues: Queues = OPEN_QUEUES,  # the queues it accepts and their limits (service.queues)
    ) -> None:
        """``cluster``: a loaded ``hal.cluster.Cluster`` whose nodes are known (``unknown`` until
        their agents register) and whose name the cluster calls show."""
        self._clock = clock
        self.limits = limits
        self.cluster_name = cluster.name if cluster is not None else "xpod"
        self.metrics = metrics  # service.metrics.ServiceMetrics-like hooks, or None
        self._stop = threading.Event()
        # set on a follower replica (service.replica): every write and agent call raises it
        self.read_only_error: Callable[[], ApiError] | None = None
        self.store = open_store(store, holder="xpod server") if isinstance(store, str) else store
        self.core = core
        try:
            declared = ()
            if cluster is not None:
                from xpod.scheduler.core.from_cluster import nodes_from_cluster

                declared = tuple(nodes_from_cluster(cluster))
            self.jobs = JobBook(self.store)
            self.hub = AssignmentHub(self.jobs)
            admission = Admission(core.admit)
            self.nodes = NodeRegistry(self.store, core, clock, declared, on_inventory=admission.forget)
            self.loop = SchedulingLoop(
                self.jobs, self.nodes, core, clock, cycle_interval_s=cycle_interval_s, min_cycle_gap_s=min_cycle_gap_s
            )
            self.submissions = Submissions(
                self.jobs, self.nodes, admission, limits, clock, self._leader_only, self._created, self._shed, queues
            )
            self.liveness = Liveness(
                self.nodes, self.jobs, core, clock, self.loop.wake, None, node_timeout_s, self.submissions.queue
            )
            self.moe = MoeLoops(self.store, self.jobs.get, clock)
            self.retention = Retention(self.jobs, self.store, clock, retention_s)
            most = self.submissions.most_tasks()
            with core.atomic():
                for job in self.jobs.load(parse_document, recovered):
                    parsed = self.jobs.parsed(job.id)
                    assert parsed is not None
                    if parsed.core.tasks > most:  # stored before the bound: never to the core
                        self.jobs.unparsable.append(
                            (job, f"{parsed.core.tasks} tasks; this cluster holds at most {most}")
                        )
                    else:
                        for core_job in parsed.core_jobs(job.id, job.create_time_s):
                            if job.state in BOUND_STATES and job.allocations:
                                core.restore_job(core_job, job.allocations, job.update_time_s)
                            else:
                                core.add_job(core_job)
        except BaseException:
            core.close()
            self.store.close()
            raise
        if metrics is not None:
            metrics.attach(self)

    def attach_metrics(self, metrics: Any) -> None:
        self.metrics = self.loop.metrics = self.liveness.metrics = metrics

    def _created(self, parsed: Any) -> None:
        self.loop.wake()
        if self.metrics is not None:
            self.metrics.submitted(parsed.queue)

    def _shed(self) -> None:
        if self.metrics is not None:
            self.metrics.shed()

    # --- lifecycle ---

    def start(self) -> "SchedulerApi":
        # the stored live jobs this server's checks refuse (``JobBook.unparsable``) fail with the
        # reason, so a restart never hangs on (nor half-loads) a job it would not accept
        while self.jobs.unparsable and self.read_only_error is None:
            job, why = self.jobs.unparsable.pop()
            text = f"refused at restart: {why}"[:1000]
            update = JobUpdate(job.id, JobState.FAILED, None, (), EventType.FAILED, text, self._clock())
            with contextlib.suppress(ApiError, StaleUpdate):  # another replica or a later start fails it
                wait(self.submissions.queue(lambda: self.jobs.update(update)), 30.0)
        self.loop.start(self._stop)
        self.liveness.start(self._stop)
        self.moe.start(self._stop, lambda: self.read_only_error is None)
        self.retention.start(self._stop, lambda: self.read_only_error is None)
        return self

    def close(self) -> None:
        self._stop.set()
        self.liveness.stop()
        self.loop.join(timeout_s=10)
        self.moe.join(timeout_s=10)
        self.retention.join(timeout_s=10)
        self.jobs.wake_waiters()
        self.submissions.admitting.shutdown(wait=False, cancel_futures=True)
        self.core.close()
        self.store.close()

    @property
    def last_revision(self) -> int:
        return self.jobs.last_revision

    def schedule_once(self):
        """One scheduling cycle now (tests drive the loop with it)."""
        return self.loop.schedule_once()

    def catch_up(self) -> None:
        """Bring a follower up to the store: the events since its revision, the nodes."""
        while True:
            events = self.store.events_since(self.jobs.last_revision, limit=2000)
            self.jobs.replay(events, parse_document)
            if len(events) < 2000:
                break
        self.nodes.refresh()

    # --- helpers ---

    def _leader_only(self) -> None:
        if self.read_only_error is not None:
            raise self.read_only_error()

    def _node_call(self, principal: Principal, call: Call, nodes: Sequence[str], field: str) -> None:
        """Checks of every node call: the caller's role and nodes, this replica leads, the count."""
        authorize(principal, call)
        self._leader_only()
        if len(nodes) > self.limits.max_nodes_per_call:
            raise invalid(
                "TOO_MANY_ITEMS",
                f"{field}: {len(nodes)} items; at most {self.limits.max_nodes_per_call} per call",
                field,
            )
        authorize_nodes(principal, call, nodes, field)

    def _visible_job(self, principal: Principal, call: Call, job_id: str) -> JobRecord:
        """The job, when the caller may see its queue; NOT_FOUND alike whether it does not exist
        or sits in a queue the caller cannot see (the answer tells nothing of other tenants)."""
        authorize(principal, call)
        job = self.jobs.get(job_id)
        if job is None or not self._sees(principal, job):
            raise not_found("job", job_id)
        return job

    @staticmethod
    def _sees(principal: Principal, job: JobRecord | None, queue: str = "") -> bool:
        return (
            job is not None
            and (principal.all_queues or job.queue in principal.queues)
            and (not queue or job.queue == queue)
        )

    # --- JobService ---

    def submit_job(
        self, principal: Principal, request_id: str, document: Any, *, timeout_s: float | None = None
    ) -> tuple[JobView, bool]:
        """Accept a job document; see the module docstring. Returns (job, created)."""
        submission = self.begin_submit(principal, request_id, document)
        try:
            result = wait(submission.future, timeout_s)
        except BaseException:
            submission.abandon()
            raise
        return submission.finish(result)

    def begin_submit(self, principal: Principal, request_id: str, document: Any) -> Submission:
        """The first half of ``submit_job``, which never waits (``service.submit``)."""
        return self.submissions.begin(principal, request_id, document)

    def get_job(self, principal: Principal, job_id: str) -> tuple[JobView, list[EventRecord]]:
        job = self._visible_job(principal, Call.GET_JOB, job_id)
        events = self.store.events_since(0, job_id=job.id, limit=100_000)[-self.limits.max_events_per_job :]
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
        authorize(principal, Call.LIST_JOBS, queue or None)
        if page_size < 0 or page_size > self.limits.max_page_size:
            raise invalid(
                "INVALID_PAGE_SIZE", f"page_size must be 0..{self.limits.max_page_size}, got {page_size}", "page_size"
            )
        digits = page_token.removeprefix("seq:")
        if page_token and (not page_token.startswith("seq:") or not digits.isdigit()):
            raise invalid("INVALID_PAGE_TOKEN", "page_token is not one this server issued", "page_token")
        wanted = set(states)
        return self.jobs.page(
            int(digits) if page_token else 0,
            page_size or self.limits.default_page_size,
            self.limits.max_page_bytes,
            lambda j: self._sees(principal, j, queue) and (not wanted or j.state in wanted),
        )

    def cancel_job(self, principal: Principal, job_id: str, *, timeout_s: float | None = None) -> JobView:
        """Cancel a queued or bound job (frees its devices). FAILED_PRECONDITION once it ended."""
        authorize(principal, Call.CANCEL_JOB)
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
            text = f"cancelled by {principal.name}"
            update = JobUpdate(
                job.id, JobState.CANCELLED, None, (), EventType.CANCELLED, text, self._clock(), job.revision
            )
            try:
                result = wait(self.submissions.queue(lambda: self.jobs.update(update)), timeout_s)
            except StaleUpdate:
                continue  # the scheduler changed it meanwhile: decide again on the new state
            self.liveness.ended(job, JobState.CANCELLED)
            return self.jobs.view(result.job)

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
        authorize(principal, Call.WATCH_JOBS, queue or None)
        if job_id:
            self._visible_job(principal, Call.WATCH_JOBS, job_id)
        if from_revision < 0:
            raise invalid("INVALID_REVISION", "from_revision must be >= 0", "from_revision")
        return self.jobs.watch(
            from_revision,
            job_id,
            lambda j: self._sees(principal, j, queue),
            lambda: is_active() and not self._stop.is_set(),
            self.limits.watch_batch,
            poll_s,
        )

    def explain_job(self, principal: Principal, job_id: str) -> Explanation:
        job = self._visible_job(principal, Call.EXPLAIN_JOB, job_id)
        return self.jobs.explain(job, *self.loop.autoscale_of(job.id))

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

    # --- NodeService ---

    def register_nodes(
        self, principal: Principal, records: Sequence[NodeRecord], *, timeout_s: float | None = None
    ) -> list[NodeState]:
        """Add or replace nodes (durable); they are ready at once. Jobs bound to a replaced node
        are evicted by the core (its old agent is gone, and its tasks with it)."""
        self._node_call(principal, Call.REGISTER_NODES, [n.name for n in records], "nodes.name")
        check_records(records)
        with store_errors():
            states = self.nodes.register(records, timeout_s)
        self.loop.wake()
        return states

    def register_node(self, principal: Principal, record: NodeRecord, *, timeout_s: float | None = None) -> NodeState:
        """``register_nodes`` of one node."""
        return self.register_nodes(principal, [record], timeout_s=timeout_s)[0]

    def heartbeat(self, principal: Principal, health: dict[str, dict[int, Health]]) -> tuple[float, list[str]]:
        """Liveness and device health of several nodes (node -> device index -> health).
        Returns (seconds until the next heartbeat is due, the nodes this server does not know:
        their agent registers them again). Cheap: no store write, no core call."""
        self._node_call(principal, Call.HEARTBEAT, list(health), "nodes.node")
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
        self._node_call(principal, Call.WATCH_ASSIGNMENTS, nodes, "nodes")
        for name in nodes:
            if self.nodes.get(name) is None:
                raise not_found("node", name, "; call RegisterNodes first")
        return self.hub.subscribe(nodes, deliver)

    def report_tasks(
        self, principal: Principal, reports: Sequence[TaskReport], *, timeout_s: float | None = None
    ) -> list[JobView | ApiError]:
        """Agents' reports, one answer each (``Liveness.report_tasks``)."""
        self._node_call(principal, Call.REPORT_TASK_STATUS, [r.node for r in reports], "reports.node")
        return self.liveness.report_tasks(list(reports), timeout_s)

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

    def report_expert_loads(self, principal: Principal, report: MoeLoadReport) -> MoePlanAnswer:
        """One serving replica's expert loads (``service.moe``); the answer is the plan in force.
        NOT_FOUND: unknown job or replica; INVALID_ARGUMENT: loads of another shape than the job's
        ``spec.moe``; FAILED_PRECONDITION: no ``spec.moe``, or the job is not bound to the node."""
        self._node_call(principal, Call.REPORT_EXPERT_LOADS, [report.node], "node")
        return self.moe.report(report)

    def report_load(self, principal: Principal, report: LoadReport) -> int:
        """One serving replica's load (``SchedulingLoop.report_load``); the replicas its job wants."""
        self._node_call(principal, Call.REPORT_LOAD, [report.node], "node")
        return self.loop.report_load(report)

    # --- ClusterService ---

    def get_cluster(self, principal: Principal) -> dict[str, Any]:
        authorize(principal, Call.GET_CLUSTER)
        nodes = self.nodes.list()
        by_model: dict[str, int] = {}
        for n in nodes:
            for d in n.record.devices:
                by_model[d.model] = by_model.get(d.model, 0) + 1
        return {
            "name": self.cluster_name,
            "nodes": len(nodes),
            "devices": sum(by_model.values()),
            "devices_by_model": by_model,
            "allocated_devices": sum(1 for milli, _ in self.jobs.usage().values() if milli > 0),
            "jobs_by_state": self.jobs.state_counts(),
        }

    def list_nodes(self, principal: Principal) -> list[NodeState]:
        authorize(principal, Call.LIST_NODES)
        return self.nodes.list()

    def list_devices(self, principal: Principal, node: str = "") -> list[tuple[str, Any, int, list[str]]]:
        """(node, device, allocated milli, job ids) for every device, or one node's. Other
        tenants' job ids stay theirs; the allocation shows."""
        authorize(principal, Call.LIST_DEVICES)
        state = self.nodes.get(node) if node else None
        if node and state is None:
            raise not_found("node", node)
        usage = self.jobs.usage()
        if not principal.all_queues:
            usage = {
                d: (m, [i for i in ids if self._sees(principal, self.jobs.get(i))]) for d, (m, ids) in usage.items()
            }
        return [
            (n.record.name, d, *usage.get(f"{n.record.name}/{d.index}", (0, [])))
            for n in ([state] if state else self.nodes.list())
            for d in n.record.devices
        ]


__all__ = [
    "ERROR_DOMAIN",
    "ApiError",
    "Assignment",
    "Code",
    "Explanation",
    "JobView",
    "Limits",
    "OPEN_PRINCIPAL",
    "SchedulerApi",
    "Submission",
    "TaskReport",
    "TaskState",
]
