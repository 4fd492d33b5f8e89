"""The mutable allocation state a cycle works on, and the Statement that changes it.

A ``Snapshot`` holds, per node, the CPU and memory left and each device's free milli and
memory, plus the bindings of every running job. Actions never mutate it directly: they open a
``Statement``, place or evict tentatively through it, and either ``commit()`` (the changes
stay) or ``discard()`` (every change is undone in reverse order). A gang is committed only
when it is whole.

Indexes kept current on every change (so a cycle over 10,000 queued jobs stays fast):
``free_whole[model][node]`` = healthy devices of that model with all 1000 milli free.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable

from .model import MILLI, Binding, DeviceHealth, Job, Node


@dataclasses.dataclass
class NodeState:
    node: Node
    cpu_left: int
    memory_left: int
    free_milli: list[int]  # per device
    free_memory: list[int]  # per device
    healthy: list[bool]  # per device
    schedulable: bool = True  # False once the node is being removed / cordoned


@dataclasses.dataclass(frozen=True)
class RunningJob:
    job: Job
    bindings: tuple[Binding, ...]
    start_time: float

    @property
    def expected_end(self) -> float | None:
        d = self.job.expected_duration_seconds
        return None if d is None else self.start_time + d


class Snapshot:
    """Allocation state of the cluster. Not thread-safe; one cycle at a time."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.running: dict[str, RunningJob] = {}
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
        self._partial_bucket_of: dict[tuple[str, str], int] = {}
        self._cpu_order: list[str] | None = None
        # one device per model, for capability matching (memory, TFLOPS) without a node scan
        self.model_example: dict[str, object] = {}
        # device totals per model (healthy), for "can never fit" checks
        self.model_total: dict[str, int] = defaultdict(int)
        # what the empty cluster offers per domain (the actions' "can never fit" checks), kept
        # until the inventory changes: nodes added or removed, device health changed
        self.empty_cache: dict = {}
        for n in nodes:
            self.add_node(n)

    # ------------------------------------------------------------------------------ nodes
    def add_node(self, node: Node) -> None:
        if node.name in self.nodes:
            raise ValueError(f"node {node.name!r} already in the snapshot")
        devs = node.devices
        self._cpu_order = None
        self.empty_cache.clear()
        self.nodes[node.name] = NodeState(
            node=node,
            cpu_left=node.cpu_milli,
            memory_left=node.memory_bytes,
            free_milli=[MILLI] * len(devs),
            free_memory=[d.memory_bytes for d in devs],
            healthy=[True] * len(devs),
        )
        for d in devs:
            self.model_total[d.model] += 1
        self._reindex(node.name)

    def remove_node(self, name: str) -> list[str]:
        """Drop a node; returns the ids of running jobs that had tasks on it (now evicted)."""
        hit = [jid for jid, rj in self.running.items() if any(b.node == name for b in rj.bindings)]
        for jid in hit:
            self.release(jid)
        st = self.nodes.pop(name)
        self._cpu_order = None
        self.empty_cache.clear()
        for d in st.node.devices:
            old = self.free_whole[d.model].pop(name, None)
            if old is not None:
                self.buckets[d.model][old].discard(name)
                self.free_total[d.model] -= old
            self.partial[d.model].discard(name)
            b = self._partial_bucket_of.pop((d.model, name), None)
            if b is not None:
                self.partial_buckets[d.model][b].discard(name)
        self._recount_totals()
        return hit

    def set_device_health(self, node: str, index: int, health: DeviceHealth) -> list[str]:
        """Mark a device; an unhealthy device evicts the jobs using it (returned)."""
        st = self.nodes[node]
        st.healthy[index] = health is DeviceHealth.HEALTHY
        self.empty_cache.clear()
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
        self._recount_totals()
        return hit

    def _recount_totals(self) -> None:
        self.model_total = defaultdict(int)
        for st in self.nodes.values():
            for d, ok in zip(st.node.devices, st.healthy):
                if ok:
                    self.model_total[d.model] += 1

    def _reindex(self, name: str) -> None:
        st = self.nodes[name]
        counts: dict[str, int] = {}
        partial: dict[str, int] = {}  # model -> largest free milli on a partly used device, -1 none
        for d, free, ok in zip(st.node.devices, st.free_milli, st.healthy):
            counts.setdefault(d.model, 0)
            partial.setdefault(d.model, -1)
            if ok and free == MILLI:
                counts[d.model] += 1
            elif ok and 0 < free < MILLI and free > partial[d.model]:
                partial[d.model] = free
        for model, best in partial.items():
            old_b = self._partial_bucket_of.pop((model, name), None)
            if old_b is not None:
                self.partial_buckets[model][old_b].discard(name)
            if best > 0:
                self.partial[model].add(name)
                b = best // 100
                self.partial_buckets[model][b].add(name)
                self._partial_bucket_of[(model, name)] = b
            else:
                self.partial[model].discard(name)
        for d in st.node.devices:
            self.model_example.setdefault(d.model, d)
        for model, c in counts.items():
            old = self.free_whole[model].get(name)
            if old != c:
                if old is not None:
                    self.buckets[model][old].discard(name)
                self.buckets[model][c].add(name)
                self.free_whole[model][name] = c
                self.free_total[model] += c - (old or 0)

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
        """Node names for CPU-only tasks: nodes without accelerators first (a CPU task there
        strands no device), then by name. Cached until nodes are added or removed."""
        if self._cpu_order is None:
            self._cpu_order = sorted(self.nodes, key=lambda n: (bool(self.nodes[n].node.devices), n))
        return self._cpu_order

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
            if not st.healthy[i] or st.free_milli[i] < m or st.free_memory[i] < dmem[(n, i)]:
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
        out: dict[str, float] = defaultdict(float)
        for rj in self.running.values():
            out[rj.job.queue] += sum(len(b.device_indices) * b.milli / MILLI for b in rj.bindings)
        return out


class Statement:
    """Tentative changes to a snapshot: ``bind``/``evict`` now, then ``commit`` or ``discard``.

    Discard undoes every operation in reverse order, leaving the snapshot exactly as it was.
    After commit or discard the statement is closed and further calls raise.
    """

    def __init__(self, snap: Snapshot, now: float) -> None:
        self.snap = snap
        self.now = now
        self._ops: list[tuple[str, object]] = []
        self._pending: dict[str, list[Binding]] = {}
        self.evicted: list[RunningJob] = []
        self._open = True

    def bind(self, job: Job, b: Binding) -> None:
        assert self._open, "statement closed"
        self.snap.apply(b, +1)
        self._pending.setdefault(job.id, []).append(b)
        self._ops.append(("bind", (job, b)))

    def evict(self, job_id: str) -> RunningJob:
        assert self._open, "statement closed"
        rj = self.snap.release(job_id)
        self.evicted.append(rj)
        self._ops.append(("evict", rj))
        return rj

    def bindings_of(self, job_id: str) -> list[Binding]:
        return list(self._pending.get(job_id, ()))

    def unbind_job(self, job_id: str) -> None:
        """Undo this statement's tentative bindings of one job (a gang that did not close)."""
        keep = []
        for op in reversed(self._ops):
            kind, payload = op
            if kind == "bind" and payload[0].id == job_id:  # type: ignore[index]
                self.snap.apply(payload[1], -1)  # type: ignore[index]
            else:
                keep.append(op)
        self._ops = list(reversed(keep))
        self._pending.pop(job_id, None)

    def commit(self, jobs: dict[str, Job]) -> list[Binding]:
        """Make the changes permanent; the bound jobs become running. Returns the bindings."""
        assert self._open, "statement closed"
        out = []
        for jid, bs in self._pending.items():
            prev = self.snap.running.get(jid)
            all_b = (prev.bindings if prev else ()) + tuple(bs)
            self.snap.running[jid] = RunningJob(jobs[jid], all_b, prev.start_time if prev else self.now)
            out.extend(bs)
        self._open = False
        return out

    def discard(self) -> None:
        assert self._open, "statement closed"
        for kind, payload in reversed(self._ops):
            if kind == "bind":
                self.snap.apply(payload[1], -1)  # type: ignore[index]
            else:
                rj: RunningJob = payload  # type: ignore[assignment]
                for b in rj.bindings:
                    self.snap.apply(b, +1)
                self.snap.running[rj.job.id] = rj
        self._ops.clear()
        self._pending.clear()
        self.evicted.clear()
        self._open = False
