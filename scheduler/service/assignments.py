"""``AssignmentHub``: each node's starts and stops, pushed to the stream that serves the node.

An agent process holds one stream for all its nodes (``subscribe(nodes)``). The hub listens to
the ``JobBook``'s commits (writer thread, commit order) and looks only at the nodes each changed
job touches: O(changes x nodes per job) per commit, however many streams are open. A node is
told ``run=True`` with the job's tasks there whenever that set changes or the gang restarts in
place (its ``restarts`` moved), and ``run=False`` once the job holds nothing there. A
subscription starts with every job bound to its nodes now, taken under the hub's lock so no
commit slips in between.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Iterable

from xpod.scheduler.store import AllocationRecord, JobRecord, SubmitResult, UpdateResult

from .jobs import BOUND_STATES, JobBook


@dataclasses.dataclass(frozen=True)
class Assignment:
    node: str
    job: JobRecord
    allocations: tuple[AllocationRecord, ...]  # the job's tasks on this node; empty when stopping
    run: bool  # start when True, stop when False


class Subscription:
    """One stream's nodes. ``deliver(batch)`` is called with each commit's assignments for
    them, on the store's writer thread: it must only hand them over (a queue), never block."""

    def __init__(self, hub: "AssignmentHub", nodes: frozenset[str], deliver: Callable[[list[Assignment]], None]):
        self._hub = hub
        self.nodes = nodes
        self.deliver = deliver
        # (node, job) -> what it was told (``_announced``)
        self.announced: dict[tuple[str, str], tuple[frozenset[int], Any]] = {}

    def close(self) -> None:
        self._hub._unsubscribe(self)


def _mine(job: JobRecord, node: str) -> tuple[AllocationRecord, ...]:
    if job.state not in BOUND_STATES:
        return ()
    return tuple(a for a in job.allocations if a.node == node)


def _announced(job: JobRecord, mine: tuple[AllocationRecord, ...]) -> tuple[frozenset[int], Any]:
    """What a node was told of a job: its tasks there and, for a gang (one world: training,
    batch), the restart count, whose change restarts the gang in place. A serving replica's
    world is its own: another replica's replacement is no news for it. A job with roles: also
    where every task runs, so that a role scaled on other nodes reaches the nodes of the other
    roles (their agents rewrite the job's ``XPOD_ROLES_FILE``)."""
    restarts = 0 if job.kind == "ServingJob" else job.restarts
    if isinstance(job.spec.get("spec"), dict) and "roles" in job.spec["spec"]:
        return frozenset(a.task for a in mine), (restarts, frozenset((a.task, a.node) for a in job.allocations))
    return frozenset(a.task for a in mine), restarts


class AssignmentHub:
    def __init__(self, jobs: JobBook) -> None:
        self._jobs = jobs
        self._lock = threading.Lock()
        self._by_node: dict[str, Subscription] = {}  # a node is served by one stream (the latest)
        self._job_nodes: dict[str, set[str]] = {}  # job -> subscribed nodes it was announced on
        jobs.listen(self._on_commit)

    def subscribe(
        self, nodes: Iterable[str], deliver: Callable[[list[Assignment]], None]
    ) -> tuple[Subscription, list[Assignment]]:
        """Serve ``nodes`` through ``deliver`` from now on (replacing an older stream of a
        node); returns the subscription (``close()`` it when the stream ends) and what runs on
        the nodes now."""
        sub = Subscription(self, frozenset(nodes), deliver)
        current = []
        with self._lock:
            for node in sub.nodes:
                old = self._by_node.get(node)
                if old is not None and old is not sub:
                    for key in [k for k in old.announced if k[0] == node]:
                        del old.announced[key]
                self._by_node[node] = sub
            for job in self._jobs.bound():
                for node in {a.node for a in job.allocations} & sub.nodes:
                    mine = _mine(job, node)
                    sub.announced[(node, job.id)] = _announced(job, mine)
                    self._job_nodes.setdefault(job.id, set()).add(node)
                    current.append(Assignment(node, job, mine, True))
        return sub, current

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            for node in sub.nodes:
                if self._by_node.get(node) is sub:
                    del self._by_node[node]

    def _on_commit(self, results: list[Any]) -> None:
        out: dict[int, tuple[Subscription, list[Assignment]]] = {}
        with self._lock:
            if not self._by_node:
                return
            for r in results:
                if not isinstance(r, (SubmitResult, UpdateResult)) or (isinstance(r, SubmitResult) and not r.created):
                    continue
                job = r.job
                nodes = {a.node for a in job.allocations} | self._job_nodes.get(job.id, set())
                for node in nodes:
                    sub = self._by_node.get(node)
                    if sub is None:
                        continue
                    key = (node, job.id)
                    mine = _mine(job, node)
                    tasks = _announced(job, mine)
                    if mine and sub.announced.get(key) != tasks:
                        sub.announced[key] = tasks
                        self._job_nodes.setdefault(job.id, set()).add(node)
                        out.setdefault(id(sub), (sub, []))[1].append(Assignment(node, job, mine, True))
                    elif not mine and key in sub.announced:
                        del sub.announced[key]
                        self._job_nodes.get(job.id, set()).discard(node)
                        out.setdefault(id(sub), (sub, []))[1].append(Assignment(node, job, (), False))
                if not self._job_nodes.get(job.id, True):
                    del self._job_nodes[job.id]
        for sub, batch in out.values():
            sub.deliver(batch)
