"""Node liveness and restart policy: what the scheduler does when a node or a task goes away.

``Liveness`` runs beside ``SchedulerApi`` (one per API, its own thread, the API's injected
clock). Contracts:

* A node an agent registered (``last_heartbeat_s > 0``) whose heartbeats stop for longer than
  ``node_timeout_s`` (default 10 s, ``XPOD_NODE_TIMEOUT_S`` or the API's ``node_timeout_s``) is
  marked NotReady within ``node_timeout_s + check_interval_s``: ``ready`` turns false, it leaves
  placement (the core forgets it, so nothing new lands there) and every job bound to it goes
  through the restart policy. A node only a cluster file declared (no agent ever heartbeated
  it) is static and never times out. After a restart of the scheduler every node gets a full
  ``node_timeout_s`` from the restart before it can time out (agents need time to reconnect).
* A NotReady node whose heartbeats resume is Ready again and back in placement.
* Restart policy (``spec.restart.max_restarts``, see ``scheduler.taskspec``): a job that lost a
  node or whose task failed is requeued *whole* (a training gang restarts all its tasks) while
  it has restarts left, except a serving job of which at least one replica keeps serving
  (``replicas: {min, max}``; a fixed ``replicas: N`` has min N): only the lost replicas (on
  the lost node, on the bad device, or the failed tasks the agent names, which may share a
  node with healthy ones) are released and placed again by the next cycle (elsewhere when the
  node is NotReady), the other replicas keep running untouched, their agents see no change,
  and the job keeps its state (RUNNING) even below its min replicas: degraded, which the
  event says (``restart K/N: replica R replaced: node X NotReady: ...``; a replica of several
  tasks, ``tasks_per_replica``, reads ``replica R (tasks T, U)``) until the cycle binds
  the lost ones again. A serving job that loses every replica restarts whole. Each
  restart is an EVICTED event whose message starts with ``restart K/N:``, which is also how
  restarts are counted (from the durable event log, so the count survives a scheduler
  restart). With none left the job FAILS with the reason. Either way its devices are released
  in the same step: no path leaves an allocation behind.

Unhealthy devices: ``SchedulerApi.heartbeat`` calls ``device_unhealthy`` first (serving
replicas on the device are replaced alone, each counted as a ``device_unhealthy`` eviction),
then passes health to the core, which takes an alarm/critical device out of placement
(evicting whole what still ran there) until a heartbeat reports it healthy again.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import TYPE_CHECKING, Any

from .core.model import JobKind
from .store import EventType, JobRecord, JobState, JobUpdate, StaleUpdate, StoreClosed
from .taskspec import TaskFieldError, parse_task_fields

if TYPE_CHECKING:  # pragma: no cover
    from .api import SchedulerApi

DEFAULT_NODE_TIMEOUT_S = 10.0
NODE_TIMEOUT_ENV = "XPOD_NODE_TIMEOUT_S"
RESTART_PREFIX = "restart "
_BOUND = (JobState.SCHEDULED, JobState.RUNNING)


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
        from xpod.hal.errors import XpodError

        raise XpodError(f"{NODE_TIMEOUT_ENV}={text!r}: expected a positive number of seconds (e.g. 10)")
    return value


@dataclasses.dataclass(frozen=True)
class RestartDecision:
    """What the policy did with one job."""

    job_id: str
    restarted: bool  # True: requeued whole; False: failed
    message: str  # the event's message


def restarts_used(events: list[Any]) -> int:
    """Restarts already spent: EVICTED events written by this policy."""
    return sum(1 for e in events if e.type is EventType.EVICTED and e.message.startswith(RESTART_PREFIX))


def max_restarts_of(job: JobRecord) -> int:
    """The job's restart budget (-1 = unlimited). A stored job was validated at submission."""
    spec = job.spec.get("spec", {}) if isinstance(job.spec, dict) else {}
    try:
        return parse_task_fields(job.kind, spec).max_restarts
    except TaskFieldError:  # accepted by an older server that did not know the keys
        return 0


def replica_names(tasks: list[int], size: int = 1) -> str:
    """How an event names the replicas of lost ``tasks`` (task t is replica t // size):
    ``replica 1``, ``replicas 0, 2``; with several tasks per replica their tasks follow,
    ``replica 0 (tasks 0, 1)``."""
    replicas = sorted({t // size for t in tasks})
    text = "replica" + ("s " if len(replicas) > 1 else " ") + ", ".join(map(str, replicas))
    if size > 1:
        text += f" (task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, sorted(tasks)))})"
    return text


class Liveness:
    """Node timeouts and the restart policy over one ``SchedulerApi`` (see the module docstring).
    ``check()`` is the whole mechanism; ``start()`` only calls it periodically."""

    def __init__(
        self, api: "SchedulerApi", node_timeout_s: float | None = None, check_interval_s: float | None = None
    ) -> None:
        self.api = api
        self.node_timeout_s = node_timeout_from_env() if node_timeout_s is None else float(node_timeout_s)
        # Check often enough that NotReady comes at most ~10% after the timeout.
        self.check_interval_s = check_interval_s if check_interval_s is not None else min(1.0, self.node_timeout_s / 10)
        self._started_s = api._clock()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one check or restart decision at a time
        self.not_ready_events = 0  # nodes marked NotReady since start (for metrics and tests)

    def start(self) -> None:
        if self._thread is None:
            # agents can reach the server only once it serves: count their grace from here
            self._started_s = self.api._clock()
            self._thread = threading.Thread(target=self._loop, name="xpod-liveness", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        stop = self.api._stop
        while not stop.wait(self.check_interval_s):
            try:
                self.check()
            except StoreClosed:
                return

    def check(self, now_s: float | None = None) -> list[str]:
        """Mark timed-out nodes NotReady and recovered ones Ready; returns the nodes newly NotReady."""
        api = self.api
        now = api._clock() if now_s is None else now_s
        lost: list[str] = []
        with self._lock:
            with api._lock:
                nodes = list(api._nodes.values())
            for node in nodes:
                if node.last_heartbeat_s <= 0:
                    continue  # declared by the cluster file only: no agent, nothing to time out
                silent_s = now - max(node.last_heartbeat_s, self._started_s)
                if node.ready and silent_s > self.node_timeout_s:
                    self._not_ready(node.name, f"node {node.name} NotReady: no heartbeat for {silent_s:.1f} s")
                    lost.append(node.name)
                elif not node.ready and now - node.last_heartbeat_s <= self.node_timeout_s:
                    self._ready(node.name)
        return lost

    def _not_ready(self, name: str, why: str) -> None:
        api = self.api
        with api._lock:
            node = api._nodes.get(name)
            if node is None or not node.ready:
                return
            api._nodes[name] = dataclasses.replace(node, ready=False)
            bound = [j for j in api._jobs.values() if j.state in _BOUND and any(a.node == name for a in j.allocations)]
        self.not_ready_events += 1
        for job in sorted(bound, key=lambda j: j.seq):
            decision = self._decide(job.id, why, node=name)
            evicted = getattr(api.metrics, "evicted", None)
            if decision is not None and evicted is not None:
                evicted(job.queue, "node_not_ready")  # requeued or failed: either way it lost its devices
        with api._placer_lock:
            api._placer.remove_node(name)  # nothing new lands there while it is NotReady
        api._wake.set()

    def _ready(self, name: str) -> None:
        api = self.api
        with api._placer_lock:
            with api._lock:
                node = api._nodes.get(name)
                if node is None or node.ready:
                    return
                node = dataclasses.replace(node, ready=True)
                api._nodes[name] = node
            api._placer.add_node(node)
        api._wake.set()

    def degraded_counts(self) -> dict[str, int]:
        """Queue -> bound serving jobs running below their min replicas (lost replicas were
        released alone and are not bound again yet): the degraded state, as a metric."""
        api = self.api
        out: dict[str, int] = {}
        with api._lock:
            for job in api._jobs.values():
                parsed = api._parsed.get(job.id)
                if (
                    job.state in _BOUND
                    and parsed is not None
                    and parsed.core.kind is JobKind.SERVING
                    and 0 < len(job.allocations) < parsed.core.min_required
                ):
                    out[job.queue] = out.get(job.queue, 0) + 1
        return out

    def task_failed(
        self, job: JobRecord, node: str, exit_code: int, message: str, tasks: tuple[int, ...] = ()
    ) -> RestartDecision | None:
        """An agent reported a failed task of ``job`` on ``node`` (``tasks``: which ones; empty:
        every task there): replace those serving replicas alone, or requeue or fail per policy."""
        text = f"task on node {node} exited with code {exit_code}" + (f": {message}" if message else "")
        with self._lock:
            return self._decide(job.id, text, node=node, tasks=frozenset(tasks))

    def device_unhealthy(self, node: str, index: int, health: str) -> list[RestartDecision]:
        """A heartbeat reports ``node``/``index`` alarm or critical: serving replicas on it are
        replaced alone (as for a lost node) when enough others run. Everything else on it is
        left to the core, which evicts it whole when the health reaches it."""
        api = self.api
        device = f"{node}/{index}"
        with api._lock:
            bound = [
                j
                for j in api._jobs.values()
                if j.state in _BOUND and j.kind == "ServingJob" and any(device in a.devices for a in j.allocations)
            ]
        out = []
        evicted = getattr(api.metrics, "evicted", None)
        with self._lock:
            for job in sorted(bound, key=lambda j: j.seq):
                d = self._decide(job.id, f"device {device} {health}", node=node, device=device, replace_only=True)
                if d is not None:
                    out.append(d)
                    if evicted is not None:
                        evicted(job.queue, "device_unhealthy")  # as the node path counts a replacement
        return out

    def _decide(
        self,
        job_id: str,
        why: str,
        node: str | None = None,
        device: str | None = None,
        replace_only: bool = False,
        tasks: frozenset[int] = frozenset(),
    ) -> RestartDecision | None:
        """Replace the serving replicas on ``node`` (on ``device`` when given), or requeue the
        job whole, or fail it; None when it is no longer bound (someone else decided), or when
        ``replace_only`` and the replicas cannot be replaced alone."""
        api = self.api
        while True:
            with api._lock:
                job = api._jobs.get(job_id)
                parsed = api._parsed.get(job_id)
            if job is None or job.state not in _BOUND:
                return None
            budget = max_restarts_of(job)
            used = restarts_used(api._store.events_since(0, job_id=job.id, limit=100_000))
            now = api._clock()
            hit = [
                a.node == node and (device is None or device in a.devices) and (not tasks or a.task in tasks)
                for a in job.allocations
            ]
            size = parsed.core.replica_tasks if parsed is not None and parsed.core.kind is JobKind.SERVING else 1
            if size > 1:  # a replica of several tasks goes whole: the rest of it cannot serve alone
                gone = {a.task // size for a, h in zip(job.allocations, hit) if h}
                hit = [h or a.task // size in gone for a, h in zip(job.allocations, hit)]
            lost = tuple(a for a, h in zip(job.allocations, hit) if h)
            kept = tuple(a for a, h in zip(job.allocations, hit) if not h)
            if (
                (budget < 0 or used < budget)
                and parsed is not None
                and parsed.core.kind is JobKind.SERVING
                and lost
                # at least one replica keeps serving; below min replicas the job stays RUNNING
                # (degraded, said by the event) until the next cycles bind the lost ones again
                and kept
            ):
                replaced = self._replace(job, lost, kept, used, budget, why, now, size)
                if replaced is None:
                    continue  # it changed meanwhile: decide again
                if replaced.restarted:
                    return replaced
                # the core could not release them alone (it disagrees about the job): whole
            if replace_only:
                return None
            if (budget < 0 or used < budget) and parsed is not None:
                total = "unlimited" if budget < 0 else str(budget)
                message = f"{RESTART_PREFIX}{used + 1}/{total}: {why}"
                update = JobUpdate(
                    job.id, JobState.QUEUED, None, (), EventType.EVICTED, message, now, expect_revision=job.revision
                )
            else:
                message = f"{why}; no restarts left (max_restarts {budget})"
                update = JobUpdate(
                    job.id, JobState.FAILED, None, (), EventType.FAILED, message, now, expect_revision=job.revision
                )
            try:
                result = api._wait(api._submit_write(update), None)
            except StaleUpdate:
                continue  # it changed meanwhile (cancelled, finished, evicted): decide again
            break
        with api._placer_lock:
            api._placer.remove_job(job.id)  # releases its devices in the core
            if update.state is JobState.QUEUED:
                api._placer.add_job(result.job, parsed)
        with api._lock:
            api._task_states.pop(job.id, None)
        if update.state is JobState.FAILED:
            api._forget(job.id)
            if api.metrics is not None:
                api.metrics.finished(job.queue, job.kind, JobState.FAILED.value)
        api._wake.set()
        return RestartDecision(job.id, update.state is JobState.QUEUED, message)

    def _replace(
        self, job: JobRecord, lost: tuple, kept: tuple, used: int, budget: int, why: str, now: float, size: int = 1
    ) -> RestartDecision | None:
        """Serving: drop the lost replicas' allocations (the job keeps its state and the rest)
        and release them alone in the core; the next cycle binds them again. None: the job
        changed meanwhile (decide again). ``restarted`` False: the core refused (whole restart).
        ``size``: tasks per replica (the event names replicas, and their tasks when size > 1)."""
        api = self.api
        tasks = sorted(a.task for a in lost)
        total = "unlimited" if budget < 0 else str(budget)
        names = replica_names(tasks, size)
        message = f"{RESTART_PREFIX}{used + 1}/{total}: {names} replaced: {why}"
        # Under the placer lock: no cycle runs between the core's release and the store's
        # write, so a cycle never binds the replica again before the store has dropped it.
        with api._placer_lock:
            update = JobUpdate(
                job.id, job.state, None, kept, EventType.EVICTED, message, now, expect_revision=job.revision
            )
            try:
                api._wait(api._submit_write(update), None)
            except StaleUpdate:
                return None
            released = api._placer.release_tasks(job.id, tasks, why)
        if sorted(released) != tasks:  # pragma: no cover - the core and the store disagree
            return RestartDecision(job.id, False, message)
        with api._lock:
            states = api._task_states.get(job.id)
            for a in lost:
                if states is not None:
                    states.pop(a.node, None)
        api._wake.set()
        return RestartDecision(job.id, True, message)
