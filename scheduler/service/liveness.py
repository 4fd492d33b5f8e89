"""Liveness: what the service does when a node or a task goes away (the restart policy,
``service.restarts.decide``, applied on a timer over the ``NodeRegistry`` and ``JobBook``).

* A ready node silent for longer than ``node_timeout_s`` (default 10 s, ``XPOD_NODE_TIMEOUT_S``)
  is NotReady within ``node_timeout_s + check_interval_s``: its jobs go through the restart
  policy first, then it leaves placement; heartbeats again bring it back at the next check.
* A busy server does not declare healthy nodes dead: heartbeats are stamped on arrival, and when
  the timer itself wakes late (a stalled process) every node gets a full timeout from then.
  Agents heartbeat every ``node_timeout_s / 5``.
* ``lose(job, loss)``: lost serving replicas are released alone, or the job is requeued whole
  (one restart spent, a stored count), or it fails; its devices are released in the same step,
  under the core link's lock, so no path leaves an allocation behind.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable

from xpod.hal.device import Health
from xpod.hal.errors import XpodError
from xpod.scheduler.contract import JobKind, TaskReport, TaskState, role_spans
from xpod.scheduler.store import EventType, JobRecord, JobState, JobUpdate, StaleUpdate, StoreClosed

from .errors import ApiError, Code, not_found, wait

from .core_link import CoreLink
from .jobs import BOUND_STATES, JobBook, JobView
from .nodes import NodeRegistry
from .restarts import Action, Decision, Loss, decide

DEFAULT_NODE_TIMEOUT_S = 10.0
NODE_TIMEOUT_ENV = "XPOD_NODE_TIMEOUT_S"


def node_timeout_from_env(default: float = DEFAULT_NODE_TIMEOUT_S) -> float:
    """``XPOD_NODE_TIMEOUT_S`` when set (a positive number of seconds), else ``default``."""
    text = os.environ.get(NODE_TIMEOUT_ENV)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise XpodError(f"{NODE_TIMEOUT_ENV}={text!r}: expected a positive number of seconds (e.g. 10)")
    return value


class Liveness:
    """See the module docstring. ``check()`` is the whole timeout mechanism; ``start()`` only
    calls it periodically."""

    def __init__(
        self,
        nodes: NodeRegistry,
        jobs: JobBook,
        core: CoreLink,
        clock: Callable[[], float],
        wake: Callable[[], None],
        metrics: Any = None,
        node_timeout_s: float | None = None,
        write: Callable[[Callable[[], Any]], Any] = lambda queue: queue(),
    ) -> None:
        self._nodes = nodes
        self._write = write  # queues a store write (refused on a follower, shed when full)
        self._jobs = jobs
        self._core = core
        self._clock = clock
        self._wake = wake  # the scheduling loop: something was freed or requeued
        self.metrics = metrics
        self.node_timeout_s = node_timeout_from_env() if node_timeout_s is None else float(node_timeout_s)
        self.heartbeat_interval_s = self.node_timeout_s / 5
        # often enough that NotReady comes at most ~10% after the timeout
        self.check_interval_s = min(1.0, self.node_timeout_s / 10)
        self._grace_from_s = clock()  # no node times out before a full timeout from here
        self._thread: threading.Thread | None = None
        self._health: list[tuple[str, int, Health]] = []  # changes heartbeats reported, not applied yet
        self._health_lock = threading.Lock()
        self._due = threading.Event()  # wakes the timer early (health changes)

    def start(self, stop: threading.Event) -> None:
        if self._thread is None:
            # agents can reach the server only once it serves: count their grace from here
            self._grace_from_s = self._clock()
            self._thread = threading.Thread(target=self._loop, args=(stop,), name="xpod-liveness", daemon=True)
            self._thread.start()

    def _loop(self, stop: threading.Event) -> None:
        due = time.monotonic() + self.check_interval_s
        while not stop.is_set():
            woken = self._due.wait(max(0.0, due - time.monotonic()))
            self._due.clear()
            if stop.is_set():
                return
            if not woken:
                late_s = time.monotonic() - due
                due = time.monotonic() + self.check_interval_s
                if late_s > max(1.0, self.check_interval_s):
                    self._grace_from_s = self._clock()  # the process stalled: heartbeats may be queued
            try:
                self.check()
            except StoreClosed:
                return
            except XpodError as err:  # SHUTTING_DOWN and the like while the server stops
                if stop.is_set():
                    return
                raise err

    def stop(self) -> None:
        self._due.set()

    def health_changed(self, changes: list[tuple[str, int, Health]]) -> None:
        """Heartbeats reported these changes of device health: applied by the next check (the
        timer's thread, woken now), never on the heartbeat's own path."""
        with self._health_lock:
            self._health.extend(changes)
        self._due.set()

    def check(self) -> list[str]:
        """Apply reported health changes; mark timed-out nodes NotReady and recovered ones ready.
        Returns the nodes newly NotReady."""
        with self._health_lock:
            changes, self._health = self._health, []
        if changes:
            self._device_health(changes)
        lost = []
        for name, silent_s in self._nodes.silent(self.node_timeout_s, self._grace_from_s):
            why = f"node {name} NotReady: no heartbeat for {silent_s:.1f} s"
            with self._core.atomic():
                for job in self._jobs.bound(node=name):
                    if self.lose(job.id, Loss(why, node=name)) is not None:
                        self._count_eviction(job.queue, "node_not_ready")
                if self._nodes.set_not_ready(name):
                    lost.append(name)
        if self._nodes.recover(self.node_timeout_s) or lost:
            self._wake()
        return lost

    def _device_health(self, changes: list[tuple[str, int, Health]]) -> None:
        """Heartbeats reported these health changes: serving replicas on a device turned alarm
        or critical are replaced alone (when enough others run), then the core learns the health
        (it evicts whole what still runs on an unhealthy device)."""
        for node, index, health in changes:
            if health.schedulable:
                continue
            device = f"{node}/{index}"
            for job in self._jobs.bound(device=device):
                if job.kind != JobKind.SERVING.value:
                    continue
                loss = Loss(f"device {device} {health.value}", node=node, device=device, replace_only=True)
                if self.lose(job.id, loss) is not None:
                    self._count_eviction(job.queue, "device_unhealthy")
        self._nodes.apply_health(changes)
        self._wake()

    def lose(self, job_id: str, loss: Loss) -> Decision | None:
        """Apply the restart policy to a bound job after ``loss``; None when it is no longer
        bound (someone else decided) or there was nothing to do."""
        while True:
            job = self._jobs.get(job_id)
            parsed = self._jobs.parsed(job_id)
            if job is None or job.state not in BOUND_STATES or parsed is None:
                return None
            # a job with roles: the replicas of its roles with replicas are replaced alone
            roles = role_spans(job.spec.get("spec", {})) if parsed.roles else ()
            serving = parsed.kind is JobKind.SERVING
            d = decide(job, loss, parsed.task.max_restarts, serving, parsed.core.replica_tasks, roles)
            if d.action is Action.NONE:
                return None
            now = self._clock()
            with self._core.atomic():
                state, kept, event = {
                    Action.REPLACE: (job.state, d.kept, EventType.EVICTED),
                    Action.REQUEUE: (JobState.QUEUED, (), EventType.EVICTED),
                }.get(d.action, (JobState.FAILED, (), EventType.FAILED))
                restarts = None if d.action is Action.FAIL else d.restarts
                update = JobUpdate(job.id, state, None, kept, event, d.message, now, job.revision, (), restarts)
                try:
                    result = self._jobs.update(update).result()
                except StaleUpdate:
                    continue  # it changed meanwhile (cancelled, finished, evicted): decide again
                if d.action is Action.REPLACE:
                    released = self._core.release_tasks(job.id, list(d.lost_tasks), loss.why)
                    if sorted(released) != list(d.lost_tasks):  # pragma: no cover - the core and the store disagree
                        loss = dataclasses.replace(loss, tasks=frozenset(), node=None, device=None)
                        continue
                    self._jobs.drop_reports(job.id, {a.node for a in job.allocations if a not in d.kept})
                else:
                    self._core.remove_job(job.id)  # releases its devices in the core
                    if d.action is Action.REQUEUE:
                        for core_job in parsed.core_jobs(job.id, result.job.create_time_s):
                            self._core.add_job(core_job)
                    self._jobs.drop_reports(job.id)
            if d.action is Action.FAIL and self.metrics is not None:
                self.metrics.finished(job.queue, job.kind, JobState.FAILED.value)
            self._wake()
            return d

    def ended(self, job: JobRecord, state: JobState) -> None:
        """A job ended (cancelled, succeeded, failed): the core lets go of it."""
        self._core.remove_job(job.id)
        self._wake()
        if self.metrics is not None:
            self.metrics.finished(job.queue, job.kind, state.value)

    def report_tasks(self, reports: list[TaskReport], timeout_s: float | None) -> list[JobView | ApiError]:
        """Agents' reports, one answer each (the job, or why the report was refused). A job is
        RUNNING once every node runs it, FAILED (per its restart policy) when a node's task
        failed, SUCCEEDED when every node succeeded. ``failed_tasks`` names the failed tasks on
        a node, so a serving job's other replicas there keep running."""
        out: list[Any] = []
        for r in reports:
            try:
                out.append(self._report(r))
            except ApiError as err:
                out.append(err)
        for i, item in enumerate(out):
            if isinstance(item, tuple):  # (job, new state, its write), waited for after all are queued
                job, state, future = item
                try:
                    out[i] = self._jobs.view(wait(future, timeout_s).job)
                except StaleUpdate as err:
                    out[i] = self._jobs.view(err.current)
                    continue
                except ApiError as err:
                    out[i] = err
                    continue
                if state.terminal:
                    self.ended(job, state)
        return out

    def _report(self, r: TaskReport) -> Any:
        job = self._jobs.get(r.job_id)
        if job is None:
            raise not_found("job", r.job_id)
        nodes = {a.node for a in job.allocations}
        if job.state not in BOUND_STATES or r.node not in nodes:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "NOT_ASSIGNED",
                f"job {job.id} is {job.state.value} and not bound to node {r.node[:253]!r}",
                metadata={"jobId": job.id, "node": r.node[:253]},
            )
        reports = self._jobs.report(job.id, r.node, r.state)
        if r.state is TaskState.FAILED:
            text = f"task on node {r.node} exited with code {r.exit_code}" + (f": {r.message}" if r.message else "")
            if self.lose(job.id, Loss(text, r.node, None, frozenset(r.failed_tasks))):
                return self._jobs.view(self._jobs.get(job.id) or job)  # requeued or failed, per its policy
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
            return self._jobs.view(job)
        allocations = () if state.terminal else job.allocations
        update = JobUpdate(job.id, state, None, allocations, event, text, self._clock(), job.revision)
        return job, state, self._write(lambda: self._jobs.update(update))

    def _count_eviction(self, queue: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.evicted(queue, reason)
