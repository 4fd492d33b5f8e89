"""The mutable allocation state a cycle works on, and the Statement that changes it.

A ``Snapshot`` holds, per node, the CPU and memory left and each device's free milli and
memory, plus the bindings of every running job. Actions never mutate it directly: they open a
``Statement``, change it tentatively through its operations, and either ``commit()`` (the
changes stay) or ``discard()`` (every operation is undone, in reverse order). A gang is
committed only when it is whole.

Statement operations: ``bind`` and ``evict`` (a placement and its victims), ``restore`` (give
back a victim the placement turned out not to need), ``release_tasks`` and ``give_back`` (the
same for some tasks of a running job: an elastic gang shrunk), ``on_discard`` (a plugin's undo, such as
``unreserve``), and three look-aheads that a statement
may hold only to be discarded: ``assume_ended`` (a running job's resources counted free, as
at its expected end), ``mask`` (devices made unselectable) and ``close`` (nodes closed to
placement). The facade's own events (a job finished, a node added or removed, a device's
health, a node's readiness) change the snapshot through its methods, outside any cycle.

A device is *usable* (``NodeState.usable``) when it is healthy, its node is ready and no
look-ahead masks it; only usable devices count as free in the indexes. Health alone decides
what the empty cluster offers (``model_total``, the "can never fit" checks): a node that is
present but not ready (its agent has not registered yet) still counts there.

Indexes kept current on every change (so a cycle over 10,000 queued jobs stays fast):
``free_whole[model][node]`` = usable devices of that model with all 1000 milli free.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable

import numpy as np

from xpod.hal.device import Health

from .model import MILLI, Binding, Device, Job, Node


#: the key of ``Snapshot.empty_cache`` under which ``actions.reservation`` keeps its walks
RESERVATIONS_CACHE = "reservations"


@dataclasses.dataclass
class NodeState:
    node: Node
    cpu_left: int
    memory_left: int
    free_milli: list[int]  # per device
    free_memory: list[int]  # per device
    healthy: list[bool]  # per device: its reported health allows new work
    schedulable: bool = True  # False while a look-ahead closes the node (``Statement.close``)
    # per device: healthy, node ready and not masked by a look-ahead; what placement may take
    usable: list[bool] = dataclasses.field(default_factory=list)
    ready: bool = True  # False: present (e.g. in the cluster file) but its agent has not registered
    not_ready_reason: str = ""  # why it is not ready, for pending reasons ("waiting for agents")
    masked: frozenset[int] = frozenset()  # device indices a look-ahead made unselectable
    row: int = -1  # the node's number in the snapshot, never reused (plugins index arrays by it)
    # the model of every device when they are all of one (most nodes): the indexes' fast path
    one_model: str | None = None

    def trial_copy(self) -> "NodeState":
        """A copy whose free counts a caller may change to simulate placements (the lists of
        free milli and memory are copied, the rest shared)."""
        return dataclasses.replace(self, free_milli=list(self.free_milli), free_memory=list(self.free_memory))


@dataclasses.dataclass(frozen=True)
class RunningJob:
    job: Job
    bindings: tuple[Binding, ...]
    start_time: float

    @property
    def expected_end(self) -> float | None:
        d = self.job.expected_duration_seconds
        return None if d is None else self.start_time + d


class RunningJobs(dict):
    """job id -> ``RunningJob``, with indexes kept current on every change so a cycle never
    walks every running job: the device milli each queue uses, each queue's jobs, and (when
    ``order_key`` is set) each queue's jobs in the queue order's priority, lowest first
    (``below``: the jobs preempt may consider)."""

    def __init__(self) -> None:
        super().__init__()
        self.milli_by_queue: dict[str, int] = defaultdict(int)
        self.by_queue: dict[str, dict[str, RunningJob]] = defaultdict(dict)
        # queue -> priority class value -> running jobs of that class (``any_below``)
        self.classes: dict[str, Counter] = defaultdict(Counter)
        # the ids of the jobs changed (started, replaced, removed), oldest first, for readers
        # that follow the running jobs without walking them (``changes_since``); trimmed
        self._log: list[str] = []
        self._log_start = 0  # the sequence number of _log[0]
        self.watch = None  # told the value before each change (a cycle's PlacedTasks)
        # job -> a priority key whose order between two jobs never changes with time (the
        # scheduler sets it from its Priority plugin); None: no priority index
        self.order_key: Callable[[Job], float] | None = None
        self._ordered: dict[str, list[tuple[float, str]]] = defaultdict(list)
        # (log_seq, the expected ends sorted) as last computed: valid while no job changed
        self._ends: tuple[int, list[tuple[float, str]]] | None = None

    def below(self, queue: str, key: float) -> list[RunningJob]:
        """The queue's running jobs whose ``order_key`` is below ``key`` (all of the queue's
        without an ``order_key``)."""
        if self.order_key is None:
            return list(self.by_queue.get(queue, {}).values())
        ordered = self._ordered.get(queue, [])
        cut = bisect.bisect_left(ordered, (key, ""))
        jobs = self.by_queue[queue]
        return [jobs[jid] for _, jid in ordered[:cut]]

    def any_below(self, priority: int, queue: str | None = None, other_than: str | None = None) -> bool:
        """Whether a running job of ``queue`` (None: of any queue but ``other_than``) has a
        priority below ``priority``; O(queues x classes)."""
        if queue is not None:
            return any(n and p < priority for p, n in self.classes.get(queue, {}).items())
        return any(n and p < priority for q, c in self.classes.items() if q != other_than for p, n in c.items())

    @property
    def log_seq(self) -> int:
        """The sequence number the next change gets (``changes_since`` from here: none)."""
        return self._log_start + len(self._log)

    def changes_since(self, seq: int) -> list[str] | None:
        """The ids of the jobs changed since ``log_seq`` was ``seq`` (repeats possible, oldest
        first); None when that part of the log is trimmed (the caller walks the jobs)."""
        if seq < self._log_start:
            return None
        return self._log[seq - self._log_start :]

    def _logged(self, job_id: str) -> None:
        log = self._log
        log.append(job_id)
        if len(log) > max(4096, 2 * len(self)):  # bounded by the running jobs, O(1) amortised
            drop = len(log) // 2
            del log[:drop]
            self._log_start += drop

    def ends(self) -> list[tuple[float, str]]:
        """(expected end, job id) of the running jobs that have one, earliest first; computed
        once per state of the running jobs (callers must not change the list)."""
        if self._ends is None or self._ends[0] != self.log_seq:
            self._ends = (
                self.log_seq,
                sorted((rj.expected_end, rj.job.id) for rj in self.values() if rj.expected_end is not None),
            )
        return self._ends[1]

    def _index(self, rj: RunningJob, sign: int) -> None:
        q, jid = rj.job.queue, rj.job.id
        self.classes[q][rj.job.priority] += sign
        if sign > 0:
            self.by_queue[q][jid] = rj
            if self.order_key is not None:
                bisect.insort(self._ordered[q], (self.order_key(rj.job), jid))
            return
        self.by_queue[q].pop(jid, None)
        if self.order_key is not None:
            ordered = self._ordered[q]
            i = bisect.bisect_left(ordered, (self.order_key(rj.job), jid))
            if i < len(ordered) and ordered[i][1] == jid:
                del ordered[i]

    def _count(self, rj: RunningJob, sign: int) -> None:
        self.milli_by_queue[rj.job.queue] += sign * sum(len(b.device_indices) * b.milli for b in rj.bindings)

    def __setitem__(self, job_id: str, rj: RunningJob) -> None:
        old = self.get(job_id)
        if self.watch is not None:
            self.watch.before_change(job_id, old)
        if old is not None:
            self._count(old, -1)
            self._index(old, -1)
        super().__setitem__(job_id, rj)
        self._count(rj, +1)
        self._index(rj, +1)
        self._logged(job_id)

    def __delitem__(self, job_id: str) -> None:
        if self.watch is not None:
            self.watch.before_change(job_id, self[job_id])
        self._count(self[job_id], -1)
        self._index(self[job_id], -1)
        super().__delitem__(job_id)
        self._logged(job_id)

    _MISSING = object()

    def pop(self, job_id: str, default=_MISSING):
        if job_id not in self:
            if default is RunningJobs._MISSING:
                raise KeyError(job_id)
            return default
        rj = self[job_id]
        del self[job_id]
        return rj

    def __reduce__(self):
        # copies and pickles carry the indexes as they are: rebuilding them would call
        # ``order_key`` on a scheduler that is itself still being copied
        # and the change log's position, so that a follower (Attained) copied along reads no
        # change as "none": the copy's log starts empty at the source's sequence number
        return (
            _rebuilt_running,
            (dict(self), dict(self.milli_by_queue), dict(self._ordered), self.order_key, self.log_seq),
        )

    def __deepcopy__(self, memo: dict) -> "RunningJobs":
        import copy

        new = RunningJobs()
        memo[id(self)] = new
        args = copy.deepcopy(self.__reduce__()[1], memo)
        _fill_running(new, *args)
        return new

    def _refuse(self, *args, **kwargs):
        raise TypeError("RunningJobs changes one job at a time (item assignment, del, pop)")

    clear = popitem = setdefault = update = __ior__ = _refuse


def _rebuilt_running(items, milli, ordered, order_key, log_seq=0) -> RunningJobs:
    new = RunningJobs()
    _fill_running(new, items, milli, ordered, order_key, log_seq)
    return new


def _fill_running(new: RunningJobs, items: dict, milli: dict, ordered: dict, order_key, log_seq: int = 0) -> None:
    for jid, rj in items.items():
        dict.__setitem__(new, jid, rj)
        new.by_queue[rj.job.queue][jid] = rj
        new.classes[rj.job.queue][rj.job.priority] += 1
    new.milli_by_queue.update(milli)
    new._ordered.update({q: list(v) for q, v in ordered.items()})
    new.order_key = order_key
    new._log_start = log_seq


class Snapshot:
    """Allocation state of the cluster. Not thread-safe; one cycle at a time."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.running: RunningJobs = RunningJobs()
        self.free_whole: dict[str, dict[str, int]] = defaultdict(dict)
        # buckets[model][count] = nodes with exactly `count` whole free devices of the model
        self.buckets: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        # free_total[model] = sum of free_whole[model] (fail-fast checks for big gangs)
        self.free_total: dict[str, int] = defaultdict(int)
        # partial[model] = nodes with a healthy device of the model partly used (fractional);
        # partial_buckets[model][b] = those whose largest partly-free device has b*100 to
        # b*100+99 milli free (best-fit walks for fractional requests without a node scan)
        self.partial: dict[str, set[str]] = defaultdict(set)
        self.partial_buckets: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        # partial_bucket_of[model][node] = the bucket of partial_buckets the node is in
        self.partial_bucket_of: dict[str, dict[str, int]] = defaultdict(dict)
        self._cpu_order: list[str] | None = None
        self._name_order: list[str] | None = None
        # one device per model, for capability matching (memory, TFLOPS) without a node scan
        self.model_example: dict[str, Device] = {}
        # device totals per model (healthy), for "can never fit" checks
        self.model_total: dict[str, int] = defaultdict(int)
        # what the empty cluster offers per domain (the actions' "can never fit" checks), kept
        # until the inventory changes: nodes added or removed, device health changed (and under
        # ``RESERVATIONS_CACHE`` the heads' reservation walks, dropped when a node's readiness
        # changes too)
        self.empty_cache: dict = {}
        # bumped whenever the inventory changes (nodes, health): caches of what the empty
        # cluster offers compare it
        self.inventory_version = 0
        # topology level -> nodes that name a domain at it (``has_level``)
        self.level_nodes: dict[str, int] = defaultdict(int)
        self._rows = 0  # the next node's row
        self._vectors: NodeVectors | None = None  # numpy mirrors, once asked for (``vectors``)
        self._watchers: list[set[str]] = []  # ``watch`` sets
        for n in nodes:
            self.add_node(n)

    # ------------------------------------------------------------------------------ nodes
    def add_node(self, node: Node, ready: bool = True, not_ready_reason: str = "") -> None:
        """Add a node; ``ready=False``: present (it counts for what the cluster could ever
        offer) but nothing is placed on it until ``set_node_ready``."""
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already in the snapshot")
        devs = node.devices
        self._cpu_order = None
        self._name_order = None
        if self._vectors is not None:
            self._vectors.name_rows = None
        self.empty_cache.clear()
        self.inventory_version += 1
        self.nodes[node.name] = NodeState(
            node=node,
            cpu_left=node.cpu_milli,
            memory_left=node.memory_bytes,
            free_milli=[MILLI] * len(devs),
            free_memory=[d.memory_bytes for d in devs],
            healthy=[True] * len(devs),
            usable=[ready] * len(devs),
            ready=ready,
            not_ready_reason="" if ready else not_ready_reason,
            row=self._rows,
            one_model=devs[0].model if devs and all(d.model == devs[0].model for d in devs) else None,
        )
        self._rows += 1
        for d in devs:
            self.model_total[d.model] += 1
            self.model_example.setdefault(d.model, d)
        for level in node.domains:
            self.level_nodes[level] += 1
        self._reindex(node.name)

    def watch(self) -> set[str]:
        """A set the snapshot adds a node's name to whenever the node's free resources,
        usability or presence change: a plugin that keeps its own arrays over nodes (numpy
        scores) drains it before reading them, instead of reading every node each time."""
        seen: set[str] = set(self.nodes)
        self._watchers.append(seen)
        return seen

    def has_level(self, level: str) -> bool:
        """Whether some node names a domain at this topology level (a super-node, a rack)."""
        return self.level_nodes.get(level, 0) > 0

    def set_node_ready(self, name: str, ready: bool, reason: str = "") -> None:
        """Open a present node to placement (its agent registered) or close it (``reason``
        says why, for pending reasons). Running jobs on it are not touched."""
        st = self.nodes[name]
        st.ready = ready
        st.not_ready_reason = "" if ready else reason
        self._refresh_usable(st)
        self.empty_cache.pop(RESERVATIONS_CACHE, None)  # kept placements ahead assumed this node's state
        self._cpu_order = None
        self._name_order = None
        if self._vectors is not None:
            self._vectors.name_rows = None
        self._reindex(name)

    def not_ready(self) -> dict[str, int]:
        """reason -> present nodes not ready for it."""
        out: dict[str, int] = defaultdict(int)
        for st in self.nodes.values():
            if not st.ready:
                out[st.not_ready_reason or "not ready"] += 1
        return dict(out)

    def _refresh_usable(self, st: NodeState) -> None:
        masked = st.masked
        st.usable = [st.ready and h and i not in masked for i, h in enumerate(st.healthy)]

    def remove_node(self, name: str) -> list[str]:
        """Drop a node; returns the ids of running jobs that had tasks on it (now evicted)."""
        hit = [jid for jid, rj in self.running.items() if any(b.node == name for b in rj.bindings)]
        for jid in hit:
            self.release(jid)
        st = self.nodes.pop(name)
        for seen in self._watchers:
            seen.add(name)
        if self._vectors is not None:
            self._vectors.drop(st)
        for level in st.node.domains:
            self.level_nodes[level] -= 1
        self._cpu_order = None
        self._name_order = None
        if self._vectors is not None:
            self._vectors.name_rows = None
        self.empty_cache.clear()
        self.inventory_version += 1
        for d in st.node.devices:
            old = self.free_whole[d.model].pop(name, None)
            if old is not None:
                self.buckets[d.model][old].discard(name)
                self.free_total[d.model] -= old
            self.partial[d.model].discard(name)
            b = self.partial_bucket_of[d.model].pop(name, None)
            if b is not None:
                self.partial_buckets[d.model][b].discard(name)
        for d, ok in zip(st.node.devices, st.healthy):
            if ok:
                self._count_healthy(d.model, -1)
        return hit

    def set_device_health(self, node: str, index: int, health: Health) -> list[str]:
        """Mark a device; one whose health is not ``schedulable`` (alarm, critical) takes no
        new work and evicts the jobs using it (returned)."""
        st = self.nodes[node]
        if st.healthy[index] != health.schedulable:
            self._count_healthy(st.node.devices[index].model, 1 if health.schedulable else -1)
        st.healthy[index] = health.schedulable
        self._refresh_usable(st)
        self.empty_cache.clear()
        self.inventory_version += 1
        hit = []
        if not st.healthy[index]:
            hit = [
                jid
                for jid, rj in self.running.items()
                if any(b.node == node and index in b.device_indices for b in rj.bindings)
            ]
            for jid in hit:
                self.release(jid)
        self._reindex(node)
        return hit

    def _count_healthy(self, model: str, delta: int) -> None:
        """``model_total`` (healthy devices of present nodes) by ``delta``, in O(1): a pod's
        worth of nodes registering one by one must not recount the pod each time."""
        left = self.model_total[model] + delta
        if left:
            self.model_total[model] = left
        else:
            del self.model_total[model]

    def _reindex(self, name: str) -> None:
        for seen in self._watchers:
            seen.add(name)
        st = self.nodes[name]
        counts: dict[str, int] = {}
        partial: dict[str, int] = {}  # model -> largest free milli on a partly used device, -1 none
        if st.one_model is not None:  # the same counts, without a dict look-up per device
            c, best = 0, -1
            for free, ok in zip(st.free_milli, st.usable):
                if ok:
                    if free == MILLI:
                        c += 1
                    elif 0 < free < MILLI and free > best:
                        best = free
            counts[st.one_model] = c
            partial[st.one_model] = best
        else:
            for d, free, ok in zip(st.node.devices, st.free_milli, st.usable):
                counts.setdefault(d.model, 0)
                partial.setdefault(d.model, -1)
                if ok and free == MILLI:
                    counts[d.model] += 1
                elif ok and 0 < free < MILLI and free > partial[d.model]:
                    partial[d.model] = free
        for model, best in partial.items():
            old_b = self.partial_bucket_of[model].pop(name, None)
            if old_b is not None:
                self.partial_buckets[model][old_b].discard(name)
            if best > 0:
                self.partial[model].add(name)
                b = best // 100
                self.partial_buckets[model][b].add(name)
                self.partial_bucket_of[model][name] = b
            else:
                self.partial[model].discard(name)
        for model, c in counts.items():
            old = self.free_whole[model].get(name)
            if old != c:
                if old is not None:
                    self.buckets[model][old].discard(name)
                self.buckets[model][c].add(name)
                self.free_whole[model][name] = c
                self.free_total[model] += c - (old or 0)
        if self._vectors is not None:
            self._vectors.update(st, counts, partial)

    def vectors(self) -> "NodeVectors":
        """numpy mirrors of the free indexes by node row (kept current from the first call on:
        scored placement reads candidates from them)."""
        if self._vectors is None:
            self._vectors = NodeVectors(self)
        return self._vectors

    # -------------------------------------------------------------------------- bindings
    def apply(self, b: Binding, sign: int) -> None:
        """Take (sign=+1) or give back (sign=-1) the resources of one binding."""
        st = self.nodes[b.node]
        st.cpu_left -= sign * b.cpu_milli
        st.memory_left -= sign * b.memory_bytes
        for i in b.device_indices:
            st.free_milli[i] -= sign * b.milli
            st.free_memory[i] -= sign * b.device_memory_bytes
            if sign > 0 and (st.free_milli[i] < 0 or st.free_memory[i] < 0):
                raise AssertionError(f"over-allocation of {b.node} device {i} by {b.job_id}")
        if sign > 0 and (st.cpu_left < 0 or st.memory_left < 0):
            raise AssertionError(f"over-allocation of {b.node} cpu/memory by {b.job_id}")
        self._reindex(b.node)

    def cpu_order(self) -> list[str]:
        """Ready node names for CPU-only tasks: nodes without accelerators first (a CPU task
        there strands no device), then by name. Cached until nodes are added, removed, or
        change readiness."""
        if self._cpu_order is None:
            self._cpu_order = sorted(
                (n for n, st in self.nodes.items() if st.ready), key=lambda n: (bool(self.nodes[n].node.devices), n)
            )
        return self._cpu_order

    def name_order(self) -> list[str]:
        """Ready node names in name order. Cached until nodes are added, removed, or change
        readiness."""
        if self._name_order is None:
            self._name_order = sorted(n for n, st in self.nodes.items() if st.ready)
        return self._name_order

    # ------------------------------------------------------------ look-aheads (Statement)
    def _mask(self, name: str, indices: frozenset[int]) -> None:
        st = self.nodes[name]
        st.masked = indices
        self._refresh_usable(st)
        self._reindex(name)

    def can_apply(self, bindings) -> bool:
        """Whether these bindings (together) fit in what is free now."""
        cpu: dict[str, int] = defaultdict(int)
        mem: dict[str, int] = defaultdict(int)
        dev: dict[tuple[str, int], int] = defaultdict(int)
        dmem: dict[tuple[str, int], int] = defaultdict(int)
        for b in bindings:
            if b.node not in self.nodes:
                return False
            cpu[b.node] += b.cpu_milli
            mem[b.node] += b.memory_bytes
            for i in b.device_indices:
                dev[(b.node, i)] += b.milli
                dmem[(b.node, i)] += b.device_memory_bytes
        for n, c in cpu.items():
            st = self.nodes[n]
            if st.cpu_left < c or st.memory_left < mem[n]:
                return False
        for (n, i), m in dev.items():
            st = self.nodes[n]
            if not st.usable[i] or st.free_milli[i] < m or st.free_memory[i] < dmem[(n, i)]:
                return False
        return True

    def release(self, job_id: str) -> RunningJob:
        rj = self.running.pop(job_id)
        for b in rj.bindings:
            self.apply(b, -1)
        return rj

    def release_tasks(self, job_id: str, tasks: Iterable[int]) -> tuple[Binding, ...]:
        """Give back the bindings of these tasks only; the job keeps running with the rest
        (a serving job losing some replicas). Returns the released bindings. A job left with
        no binding is no longer running."""
        rj = self.running[job_id]
        drop = set(tasks)
        gone = tuple(b for b in rj.bindings if b.task in drop)
        for b in gone:
            self.apply(b, -1)
        kept = tuple(b for b in rj.bindings if b.task not in drop)
        if kept:
            self.running[job_id] = dataclasses.replace(rj, bindings=kept)
        else:
            del self.running[job_id]
        return gone

    def free_devices(self, model: str | None = None) -> int:
        return sum(sum(v.values()) for m, v in self.free_whole.items() if model is None or m == model)

    def used_devices_by_queue(self) -> dict[str, float]:
        return {q: m / MILLI for q, m in self.running.milli_by_queue.items() if m}


class NodeVectors:
    """The free indexes as numpy vectors over node rows (``NodeState.row``), per device model:
    ``free[model][row]`` = usable whole free devices, ``partial[model][row]`` = the node's
    ``partial_buckets`` bucket (-1: no partly free device); ``states[row]`` the node (None
    once removed); ``name_rows`` the rows of ready nodes in name order. Kept current by the
    snapshot once built (``Snapshot.vectors``); what a scored placement filters with."""

    def __init__(self, snap: "Snapshot") -> None:
        self.snap = snap
        self.size = max(16, snap._rows)
        self.states: list[NodeState | None] = [None] * self.size
        self.free: dict[str, np.ndarray] = {}
        self.partial: dict[str, np.ndarray] = {}
        self.name_rows: np.ndarray | None = None
        for st in snap.nodes.values():
            self.states[st.row] = st
        for m, per in snap.free_whole.items():
            arr = self._vector(self.free, m, 0)
            for name, c in per.items():
                arr[snap.nodes[name].row] = c
        for m, per in snap.partial_bucket_of.items():
            arr = self._vector(self.partial, m, -1)
            for name, b in per.items():
                arr[snap.nodes[name].row] = b

    def _vector(self, table: dict[str, np.ndarray], model: str, fill: int) -> np.ndarray:
        arr = table.get(model)
        if arr is None:
            arr = table[model] = np.full(self.size, fill, dtype=np.int64)
        return arr

    def _grow(self, row: int) -> None:
        if row < self.size:
            return
        size = max(row + 1, 2 * self.size)
        self.states.extend([None] * (size - self.size))
        for table, fill in ((self.free, 0), (self.partial, -1)):
            for m, arr in table.items():
                table[m] = np.concatenate([arr, np.full(size - self.size, fill, dtype=np.int64)])
        self.size = size

    def update(self, st: NodeState, counts: dict[str, int], partial: dict[str, int]) -> None:
        self._grow(st.row)
        self.states[st.row] = st
        for m, c in counts.items():
            self._vector(self.free, m, 0)[st.row] = c
        for m, best in partial.items():
            self._vector(self.partial, m, -1)[st.row] = best // 100 if best > 0 else -1

    def drop(self, st: NodeState) -> None:
        self.states[st.row] = None
        for arr in self.free.values():
            arr[st.row] = 0
        for arr in self.partial.values():
            arr[st.row] = -1
        self.name_rows = None

    def rows_by_name(self) -> np.ndarray:
        if self.name_rows is None:
            nodes = self.snap.nodes
            self.name_rows = np.array([nodes[n].row for n in self.snap.name_order()], dtype=np.int64)
        return self.name_rows


#: statement operations that only look ahead: undone by ``discard``, refused by ``commit``
_LOOK_AHEAD = frozenset({"assume_ended", "mask", "close"})


class Statement:
    """Tentative changes to a snapshot, then ``commit`` or ``discard`` (see the module docstring).

    Discard undoes every operation in reverse order, leaving the snapshot exactly as it was.
    After commit or discard the statement is closed and further calls raise. Statements may
    nest: an inner one opened while an outer one is open (a look-ahead masking devices while
    placements commit beside them) commits or discards its own operations only.
    """

    def __init__(self, snap: Snapshot, now: float) -> None:
        self.snap = snap
        self.now = now
        self._ops: list[tuple[str, Any]] = []
        self._pending: dict[str, list[Binding]] = {}
        self.evicted: list[RunningJob] = []
        self._open = True

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("statement closed: it was committed or discarded already")

    # -------------------------------------------------------------------- placements
    def bind(self, job: Job, b: Binding) -> None:
        """Take the resources of one binding of ``job``; it runs once committed."""
        self._check_open()
        self.snap.apply(b, +1)
        self._pending.setdefault(job.id, []).append(b)
        self._ops.append(("bind", (job, b)))

    def evict(self, job_id: str) -> RunningJob:
        """Release a running job whole (a victim); it is listed in ``evicted``."""
        self._check_open()
        rj = self.snap.release(job_id)
        self.evicted.append(rj)
        self._ops.append(("evict", rj))
        return rj

    def restore(self, rj: RunningJob) -> None:
        """Give back a victim this statement evicted (the placement turned out not to need it):
        it runs again where it ran, and leaves ``evicted``. Its resources must be free."""
        self._check_open()
        if rj not in self.evicted:
            raise ValueError(f"job {rj.job.id} was not evicted by this statement")
        for b in rj.bindings:
            self.snap.apply(b, +1)
        self.snap.running[rj.job.id] = rj
        self.evicted.remove(rj)
        self._ops.append(("restore", rj))

    def release_tasks(self, job_id: str, tasks: Iterable[int]) -> tuple[Binding, ...]:
        """Release these tasks of a running job (an elastic gang shrunk, batch tasks taken);
        the job keeps running with the rest. Returns the released bindings."""
        self._check_open()
        rj = self.snap.running[job_id]
        gone = self.snap.release_tasks(job_id, tasks)
        self._ops.append(("shrink", (rj, gone)))
        return gone

    def give_back(self, rj: RunningJob, b: Binding) -> None:
        """Run task ``b`` of ``rj`` (as it ran before this statement released it with
        ``release_tasks``) again where it ran: the placement turned out not to need it. Its
        resources must be free."""
        self._check_open()
        self.snap.apply(b, +1)
        now = self.snap.running.get(rj.job.id)
        kept = now.bindings if now is not None else ()
        self.snap.running[rj.job.id] = dataclasses.replace(
            rj, bindings=tuple(sorted(kept + (b,), key=lambda x: x.task))
        )
        self._ops.append(("give_back", (rj.job.id, b)))

    def on_discard(self, job_id: str, undo: Callable[[], None]) -> None:
        """Run ``undo`` if the statement is discarded (in reverse order with the other
        operations) or ``job_id``'s bindings are undone (``unbind_job``): a plugin's
        ``unreserve``. Nothing on commit."""
        self._check_open()
        self._ops.append(("hook", (job_id, undo)))

    def bindings_of(self, job_id: str) -> list[Binding]:
        return list(self._pending.get(job_id, ()))

    def unbind_job(self, job_id: str) -> None:
        """Undo this statement's tentative bindings of one job (a gang that did not close)."""
        self._check_open()
        keep = []
        for op in reversed(self._ops):
            kind, payload = op
            if kind == "bind" and payload[0].id == job_id:
                self.snap.apply(payload[1], -1)
            elif kind == "hook" and payload[0] == job_id:
                payload[1]()
            else:
                keep.append(op)
        self._ops = list(reversed(keep))
        self._pending.pop(job_id, None)

    # -------------------------------------------------------------------- look-aheads
    def assume_ended(self, job_id: str) -> RunningJob:
        """Count a running job's resources free, as they will be once it ends (the job stays
        running). A look-ahead: the statement can only be discarded."""
        self._check_open()
        rj = self.snap.running[job_id]
        for b in rj.bindings:
            if b.node in self.snap.nodes:
                self.snap.apply(b, -1)
        self._ops.append(("assume_ended", rj))
        return rj

    def mask(self, devices: Iterable[tuple[str, int]]) -> None:
        """Make these (node, device index) devices unselectable. A look-ahead."""
        self._check_open()
        by_node: dict[str, set[int]] = defaultdict(set)
        for name, i in devices:
            if name in self.snap.nodes:
                by_node[name].add(i)
        for name, idx in by_node.items():
            st = self.snap.nodes[name]
            before = st.masked
            self.snap._mask(name, before | idx)
            self._ops.append(("mask", (name, before)))

    def close(self, names: Iterable[str]) -> None:
        """Close these nodes to placement (a reservation's domain, for instance). A look-ahead."""
        self._check_open()
        for name in names:
            st = self.snap.nodes.get(name)
            if st is not None and st.schedulable:
                st.schedulable = False
                self._ops.append(("close", st))

    # ------------------------------------------------------------------------ end
    def commit(self, jobs: dict[str, Job]) -> list[Binding]:
        """Make the changes permanent; the bound jobs become running. Returns the bindings."""
        self._check_open()
        ahead = sorted({kind for kind, _ in self._ops if kind in _LOOK_AHEAD})
        if ahead:
            raise RuntimeError(f"a statement holding look-aheads ({', '.join(ahead)}) is discarded, never committed")
        out = []
        for jid, bs in self._pending.items():
            prev = self.snap.running.get(jid)
            all_b = (prev.bindings if prev else ()) + tuple(bs)
            self.snap.running[jid] = RunningJob(jobs[jid], all_b, prev.start_time if prev else self.now)
            out.extend(bs)
        self._open = False
        return out

    def discard(self) -> None:
        """Undo every operation in reverse order."""
        self._check_open()
        snap = self.snap
        for kind, payload in reversed(self._ops):
            if kind == "bind":
                snap.apply(payload[1], -1)
            elif kind == "evict":
                for b in payload.bindings:
                    snap.apply(b, +1)
                snap.running[payload.job.id] = payload
            elif kind == "restore":
                snap.release(payload.job.id)
            elif kind == "shrink":
                rj, gone = payload
                for b in gone:
                    snap.apply(b, +1)
                snap.running[rj.job.id] = rj
            elif kind == "give_back":
                snap.release_tasks(payload[0], [payload[1].task])
            elif kind == "assume_ended":
                for b in payload.bindings:
                    if b.node in snap.nodes:
                        snap.apply(b, +1)
            elif kind == "mask":
                name, before = payload
                snap._mask(name, before)
            elif kind == "close":
                payload.schedulable = True
            elif kind == "hook":
                payload[1]()
            else:  # pragma: no cover - every kind appended above is undone here
                raise AssertionError(f"unknown statement operation {kind!r}")
        self._ops.clear()
        self._pending.clear()
        self.evicted.clear()
        self._open = False
