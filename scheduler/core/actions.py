"""Mechanism: what a cycle does, in order (enqueue, allocate, backfill, preempt, reclaim).

Actions read and change a ``Snapshot`` only through a ``Statement`` and ask the enabled
policies (``scheduler.policies``) how to order, filter and place. The ``Placer`` turns one job
into tentative bindings: a gang is bound task by task inside a statement and kept only when at
least its minimum is bound; otherwise every tentative binding is undone.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from typing import Iterable, Iterator

from . import ascend
from .model import MILLI, Binding, Eviction, Job, JobKind, NeverFits, PendingReason, ReasonCode, Within
from .policies import (
    CycleContext,
    DeviceSelector,
    GangRule,
    JobOrder,
    Policy,
    PriorityRule,
    QueueOrder,
    SpreadPolicy,
    TierRule,
    _slice_bytes,
)
from .estimates import Demand, Timeline, holds_without_end, releases_by_model, shared_by_model, shared_ends
from .snapshot import NodeState, Snapshot, Statement


class Placer:
    """Finds devices and nodes for a job's tasks with the enabled policies."""

    def __init__(self, policies: Iterable[Policy], ctx: CycleContext) -> None:
        pols = list(policies)
        self.ctx = ctx
        self.snap = ctx.snap
        self.selectors = [p for p in pols if isinstance(p, DeviceSelector)]
        self.gang = next((p for p in pols if isinstance(p, GangRule)), None)
        self.tier_rule = next((p for p in pols if isinstance(p, TierRule)), None)
        self.spread = any(isinstance(p, SpreadPolicy) for p in pols)
        self.ascend = next((p for p in pols if p.name == "ascend"), None)
        self._models_cache: dict = {}
        self.has_supernodes = any(st.node.supernode for st in self.snap.nodes.values())

    # ------------------------------------------------------------------------ one node
    def models_for(self, job: Job) -> list[str]:
        req = job.devices
        if req is None:
            return []
        key = (req.vendor, req.model, req.min_memory_bytes, req.min_bf16_tflops)
        hit = self._models_cache.get(key)
        if hit is None:
            hit = sorted(m for m, dev in self.snap.model_example.items() if req.matches(dev))
            self._models_cache[key] = hit
        return hit

    def select(self, job: Job, st: NodeState, within: Within | None = None) -> tuple[int, ...] | None:
        """Devices for one task of ``job`` on this node state, or None if it does not fit."""
        if not (st.schedulable and st.ready) or st.cpu_left < job.cpu_milli or st.memory_left < job.memory_bytes:
            return None
        if job.node_selector and not job.selects(st.node):
            return None
        req = job.devices
        if req is None:
            return ()
        devs = st.node.devices
        if req.fractional:
            for sel in self.selectors:
                got = sel.select(job, st, [], 1)
                if got is not NotImplemented:
                    return got
            for d in devs:  # first fit when no policy chooses
                i = d.index
                if (
                    st.usable[i]
                    and req.matches(d)
                    and st.free_milli[i] >= req.milli
                    and st.free_memory[i] >= _slice_bytes(job, d.memory_bytes)
                ):
                    return (i,)
            return None
        mask = [st.usable[d.index] and st.free_milli[d.index] == MILLI and req.matches(d) for d in devs]
        if sum(mask) < req.count:
            return None
        for sel in self.selectors:
            got = sel.select(job, st, mask, req.count)
            if got is not NotImplemented:
                return got
        if (within or job.within) is Within.HCCS_GROUP:
            groups: dict[int, list[int]] = defaultdict(list)
            for d in devs:
                if mask[d.index]:
                    groups[d.hccs_group if d.hccs_group is not None else d.index // 4].append(d.index)
            fitting = sorted((len(v), g) for g, v in groups.items() if len(v) >= req.count)
            return tuple(groups[fitting[0][1]][: req.count]) if fitting else None
        return tuple([d.index for d in devs if mask[d.index]][: req.count])

    def binding(self, job: Job, task: int, st: NodeState, idx: tuple[int, ...]) -> Binding:
        req = job.devices
        milli = req.milli if req else MILLI
        dev_mem = _slice_bytes(job, st.node.devices[idx[0]].memory_bytes) if idx and req and req.fractional else 0
        return Binding(job.id, task, st.node.name, idx, milli, job.cpu_milli, job.memory_bytes, dev_mem)

    def capacity(self, job: Job, st: NodeState, limit: int) -> int:
        """How many tasks of ``job`` fit on this node now (at most ``limit``)."""
        if limit <= 0:
            return 0
        req = job.devices
        if req is not None and not req.fractional and self._generic(job):
            # whole devices, no device rule: arithmetic instead of simulated selection
            if not (st.schedulable and st.ready) or (job.node_selector and not job.selects(st.node)):
                return 0
            free = sum(self.snap.free_whole.get(m, {}).get(st.node.name, 0) for m in self.models_for(job))
            n = min(limit, free // req.count)
            if job.cpu_milli:
                n = min(n, st.cpu_left // job.cpu_milli)
            if job.memory_bytes:
                n = min(n, st.memory_left // job.memory_bytes)
            return max(n, 0)
        view = st.trial_copy()
        n = 0
        while n < limit:
            idx = self.select(job, view)
            if idx is None:
                break
            n += 1
            view.cpu_left -= job.cpu_milli
            view.memory_left -= job.memory_bytes
            req = job.devices
            for i in idx:
                view.free_milli[i] -= req.milli
                view.free_memory[i] -= _slice_bytes(job, st.node.devices[i].memory_bytes) if req.fractional else 0
            if not idx and job.cpu_milli == 0 and job.memory_bytes == 0:
                return limit  # a task that needs nothing fits any number of times
        return n

    def _generic(self, job: Job) -> bool:
        """True when no device rule shapes this job's whole-device selection (capacity is then
        a division). Capability requests may match models with different rules: not generic."""
        if job.within is Within.HCCS_GROUP:
            return False
        models = self.models_for(job)
        if len(models) != 1:
            return False
        if self.ascend is not None and ascend.family(models[0]) is not None:
            return False
        return True  # the other selectors (fragmentation) only choose fractional devices

    def free_total(self, job: Job) -> int:
        return sum(self.snap.free_total.get(m, 0) for m in self.models_for(job))

    # ----------------------------------------------------------------------- node order
    def free_matching(self, st: NodeState, models: list[str]) -> int:
        return sum(self.snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models)

    def _bucket_walk(self, model: str, need_devices: int) -> Iterator[tuple[int, str]]:
        """(key, name) of nodes with at least ``need_devices`` whole free devices of ``model``,
        fullest first (emptiest with spread), by name inside a count."""
        return _lazy_walk(self.snap.buckets.get(model, {}), need_devices, self.spread)

    def ordered_nodes(self, job: Job, need_devices: int = 0) -> Iterator[NodeState]:
        """Candidate nodes, preferred first, lazily: whole-device requests walk the free-count
        buckets (several models merged), fractional requests walk the partly-used buckets first,
        CPU-only tasks walk a cached name order with device-less nodes first. No walk sorts
        the whole cluster for one task."""
        snap = self.snap
        models = self.models_for(job)
        req = job.devices
        if req is None:
            for name in snap.cpu_order():
                yield snap.nodes[name]
            return
        if not models:
            return
        if not req.fractional:
            if len(models) == 1:
                for _, name in self._bucket_walk(models[0], need_devices):
                    yield snap.nodes[name]
                return
            seen: set[str] = set()
            for _, name in heapq.merge(*(self._bucket_walk(m, need_devices) for m in models)):
                if name not in seen:
                    seen.add(name)
                    yield snap.nodes[name]
            return
        # fractional: partly used devices first, best fit (the buckets of each node's largest
        # partly-free device, from the request's size up), then nodes with whole free devices
        seen = set()
        walks = (_lazy_walk(snap.partial_buckets.get(m, {}), req.milli // 100, False) for m in models)
        for _, name in heapq.merge(*walks):
            if name not in seen:
                seen.add(name)
                yield snap.nodes[name]
        for _, name in heapq.merge(*(self._bucket_walk(m, 1) for m in models)):
            if name not in seen:
                seen.add(name)
                yield snap.nodes[name]

    # -------------------------------------------------------------------------- one job
    def min_tasks(self, job: Job) -> int:
        return self.gang.min_tasks(job) if self.gang else 1

    def tiers(self, job: Job) -> tuple[Within, ...]:
        if self.tier_rule:
            return self.tier_rule.tiers(job)
        if job.within is Within.NODE:
            return (Within.NODE,)
        if job.within is Within.SUPERNODE:
            return (Within.SUPERNODE,)
        return (Within.ANY,)

    def place(self, job: Job, stmt: Statement, want: int, need: int, first_task: int = 0) -> int:
        """Bind between ``need`` and ``want`` tasks of ``job`` through ``stmt``; returns how many
        were bound (0 = nothing bound, the statement unchanged)."""
        if want <= 0:
            return 0
        need = max(1, min(need, want))
        per_task = job.devices.count if job.devices and not job.devices.fractional else 0
        if per_task and self.free_total(job) < per_task * need:
            return 0  # not enough free devices of the model anywhere (every kind: no node walk)
        if job.kind is JobKind.SERVING:
            return self._place_replicas(job, stmt, want, need, first_task)
        if (
            job.sp_block
            and job.sp_block >= ascend.A3_DIES_PER_NODE
            and ascend.family(job.devices.model if job.devices else None) == "910c"
        ):
            return self._place_sp_blocks(job, stmt, want, first_task)
        has_supernodes = self.has_supernodes
        for tier in self.tiers(job):
            if tier is Within.SUPERNODE and not has_supernodes:
                continue
            if tier is Within.NODE:
                for st in self.ordered_nodes(job, per_task * need):
                    cap = self.capacity(job, st, want)
                    if cap >= need:
                        return self._bind_on(job, stmt, [(st, cap)], want, first_task)
                continue
            caps = []
            got = 0
            for st in self.ordered_nodes(job, per_task):
                cap = self.capacity(job, st, want)
                if cap > 0:
                    caps.append((st, cap))
                    got += cap
                    if tier is Within.ANY and got >= want:
                        break  # fullest-first prefix already holds the whole job
            if tier is Within.SUPERNODE:
                groups: dict[str, list] = defaultdict(list)
                for st, cap in caps:
                    if st.node.supernode is not None:
                        groups[st.node.supernode].append((st, cap))
                models = self.models_for(job)
                best = None
                for sn, members in groups.items():
                    total = sum(c for _, c in members)
                    if total < need:
                        continue
                    free = sum(self.free_matching(st, models) for st, _ in members)
                    key = (free, sn)  # best fit: the fullest super-node that still fits
                    if best is None or key < best[0]:
                        best = (key, members)
                if best is not None:
                    return self._bind_on(job, stmt, best[1], want, first_task)
                continue
            if sum(c for _, c in caps) >= need:
                return self._bind_on(job, stmt, caps, want, first_task)
        return 0

    def _bind_on(self, job: Job, stmt: Statement, caps: list, want: int, first_task: int) -> int:
        placed = 0
        for st, cap in caps:
            for _ in range(cap):
                if placed >= want:
                    return placed
                idx = self.select(job, st)
                if idx is None:
                    break
                stmt.bind(job, self.binding(job, first_task + placed, st, idx))
                placed += 1
        return placed

    def _place_replicas(self, job: Job, stmt: Statement, want: int, need: int, first_task: int) -> int:
        """Serving: one replica per step, each on one node, into the failure domain holding the
        fewest replicas of this job so far (spread), best fit inside it. Replicas of several
        tasks go through ``_place_multi_replicas``."""
        if job.replica_size > 1 or self.a3_replica(job):
            return self._place_multi_replicas(job, stmt, want, need)
        per_domain: dict[str, int] = defaultdict(int)
        running = self.snap.running.get(job.id)
        for b in running.bindings if running else ():
            per_domain[self.snap.nodes[b.node].node.domain if b.node in self.snap.nodes else b.node] += 1
        # replica numbers not in use: a replaced replica gets its own number back (the running
        # ones keep theirs), so numbers stay 0..tasks-1 and unique
        used = {b.task for b in running.bindings} if running else set()
        free_tasks = [t for t in range(first_task) if t not in used]
        free_tasks += [t for t in range(first_task, first_task + want + len(used)) if t not in used]
        need_dev = job.devices.count if job.devices and not job.devices.fractional else 0
        placed = 0
        while placed < want:
            best = None
            for rank, st in enumerate(self.ordered_nodes(job, need_dev)):
                key = (per_domain[st.node.domain], rank)
                if best is not None and key >= best[0]:
                    continue
                if self.select(job, st) is not None:
                    best = (key, st)
                    if key[0] == 0:
                        break  # an untouched failure domain: nothing later can beat it
            if best is None:
                break
            st = best[1]
            stmt.bind(job, self.binding(job, free_tasks[placed], st, self.select(job, st)))
            per_domain[st.node.domain] += 1
            placed += 1
        if placed < need:
            stmt.unbind_job(job.id)
            return 0
        return placed

    def _place_multi_replicas(self, job: Job, stmt: Statement, want: int, need: int) -> int:
        """Serving replicas of ``replica_tasks`` tasks each, placed whole, one replica per step:
        task ``t`` belongs to replica ``t // replica_tasks``; a replica's numbers are the lowest
        not running. Returns tasks bound (a multiple of the replica size; 0 = nothing bound,
        when fewer than the ``need`` tasks' replicas fit)."""
        size = job.replica_tasks
        snap = self.snap
        per_domain: dict[str, int] = defaultdict(int)  # failure domain -> replicas touching it
        per_sn: dict[str, int] = defaultdict(int)  # super-node -> replicas touching it
        running = snap.running.get(job.id)
        used: set[int] = set()
        domains: set[tuple[int, str]] = set()
        sns: set[tuple[int, str]] = set()
        for b in running.bindings if running else ():
            r = b.task // size
            used.add(r)
            st = snap.nodes.get(b.node)
            domains.add((r, st.node.domain if st else b.node))
            if st is not None and st.node.supernode is not None:
                sns.add((r, st.node.supernode))
        for _, d in domains:
            per_domain[d] += 1
        for _, sn in sns:
            per_sn[sn] += 1
        want_r, need_r = want // size, -(-need // size)
        free_r = [r for r in range(len(used) + want_r) if r not in used][:want_r]
        placed = 0
        for r in free_r:
            chosen = self._replica_nodes(job, per_domain, per_sn)
            if chosen is None:
                break
            tasks = iter(range(r * size, (r + 1) * size))
            for st, n in chosen:
                for _ in range(n):
                    idx = self.select(job, st)
                    if idx is None:  # pragma: no cover - capacity() said these tasks fit
                        raise AssertionError(f"{job.id}: replica {r} lost its place on {st.node.name}")
                    stmt.bind(job, self.binding(job, next(tasks), st, idx))
            for d in {st.node.domain for st, _ in chosen}:
                per_domain[d] += 1
            for sn in {st.node.supernode for st, _ in chosen} - {None}:
                per_sn[sn] += 1
            placed += 1
        if placed < need_r:
            stmt.unbind_job(job.id)
            return 0
        return placed * size

    def a3_replica(self, job: Job) -> bool:
        """An Ascend 910C replica of several 16-die tasks (or of one with ``sp_block: 16``): one
        logical super-pod inside one physical super-pod, with the super-pod's reserve nodes
        kept free."""
        req = job.devices
        return (
            job.kind is JobKind.SERVING
            and (job.replica_tasks > 1 or (job.sp_block or 0) >= ascend.A3_DIES_PER_NODE)
            and self.ascend is not None
            and self.has_supernodes
            and req is not None
            and not req.fractional
            and req.count == ascend.A3_DIES_PER_NODE
            and ascend.family(req.model) == "910c"
            and job.within is not Within.NODE  # then it never fits: two 16-die tasks on one node
        )

    def _replica_nodes(self, job: Job, per_domain: dict, per_sn: dict) -> list[tuple[NodeState, int]] | None:
        """Where one replica of ``job.replica_tasks`` tasks goes: [(node, tasks there)], or None.
        Tightest tier first (one node, then one super-node, then the cluster, as far as
        ``within`` allows); among domains of the tier, the one holding the fewest replicas of
        this job (spread), then best fit; inside a super-node or the cluster, nodes in the
        failure domains with the fewest replicas first, then the placer's node order."""
        size = job.replica_tasks
        req = job.devices
        per_task = req.count if req is not None and not req.fractional else 0
        caps = []  # (rank in the node order, node, tasks of this replica it can take)
        # the walk may stop early when the answer cannot change (a cluster of thousands of
        # nodes): no super-node tier to sum, and whole devices without device rules, so the
        # first node holding the whole replica in an untouched failure domain is the one-node
        # tier's choice, and, when no node could hold it (by the free-count buckets), enough
        # tasks on nodes of untouched domains are the cluster tier's first choices
        tiers = self.tiers(job)
        early = (
            per_task > 0
            and not self.a3_replica(job)
            and self._generic(job)
            and tiers[-1] is Within.ANY
            and not (self.has_supernodes and Within.SUPERNODE in tiers)
        )
        if early:
            buckets = self.snap.buckets.get(self.models_for(job)[0], {})
            one_node = max((c for c, names in buckets.items() if names), default=0) >= per_task * size
            untouched = 0
        for rank, st in enumerate(self.ordered_nodes(job, per_task)):
            cap = self.capacity(job, st, size)
            if cap > 0:
                caps.append((rank, st, cap))
                if early and per_domain.get(st.node.domain, 0) == 0:
                    untouched += cap
                    if cap >= size or (not one_node and untouched >= size):
                        break
        if self.a3_replica(job):
            reserve = self.ascend.reserve_nodes
            free_nodes: dict[str, list] = defaultdict(list)
            for rank, st, cap in caps:
                if st.node.supernode is not None and all(f == MILLI for f in st.free_milli):
                    free_nodes[st.node.supernode].append((rank, st, 1))
            best = None
            for sn, members in free_nodes.items():
                spare = len(members) - reserve
                if spare < size:
                    continue
                # spread first, then MindCluster's choice (superpod/frame.go): the smallest
                # remainder of the spare nodes modulo the block, then the fewest free nodes
                key = (per_sn[sn], spare % size, len(members), sn)
                if best is None or key < best[0]:
                    best = (key, members)
            return None if best is None else _fill(best[1], size, per_domain)
        models = self.models_for(job)
        for tier in tiers:
            if tier is Within.NODE:
                fits = [(per_domain[st.node.domain], rank, st) for rank, st, cap in caps if cap >= size]
                if fits:
                    return [(min(fits, key=lambda x: x[:2])[2], size)]
            elif tier is Within.SUPERNODE:
                groups: dict[str, list] = defaultdict(list)
                for c in caps:
                    if c[1].node.supernode is not None:
                        groups[c[1].node.supernode].append(c)
                best = None
                for sn, members in groups.items():
                    if sum(c[2] for c in members) < size:
                        continue
                    key = (per_sn[sn], sum(self.free_matching(st, models) for _, st, _ in members), sn)
                    if best is None or key < best[0]:
                        best = (key, members)
                if best is not None:
                    return _fill(best[1], size, per_domain)
            elif sum(c[2] for c in caps) >= size:
                return _fill(caps, size, per_domain)
        return None

    def _place_sp_blocks(self, job: Job, stmt: Statement, want: int, first_task: int) -> int:
        """Ascend 910C logical super-pods: each block of ``sp_block`` dies (sp_block/16 whole
        nodes) inside one physical super-pod, keeping ``reserve_nodes`` free nodes in it.
        Super-pods are tried as MindCluster does: smallest remainder of (free - reserve) modulo
        the block's node count first, then the fewest free nodes (best fit)."""
        reserve = self.ascend.reserve_nodes if self.ascend else 0
        nodes_per_block = job.sp_block // ascend.A3_DIES_PER_NODE
        blocks = want // nodes_per_block
        placed = 0
        for _ in range(blocks):
            free_by_sn: dict[str, list[NodeState]] = defaultdict(list)
            for st in self.snap.nodes.values():
                if st.node.supernode is None:
                    continue
                if self.capacity(job, st, 1) == 1 and all(f == MILLI for f in st.free_milli):
                    free_by_sn[st.node.supernode].append(st)
            best = None
            for sn, free_nodes in free_by_sn.items():
                spare = len(free_nodes) - reserve
                if spare < nodes_per_block:
                    continue
                key = (spare % nodes_per_block, len(free_nodes), sn)
                if best is None or key < best[0]:
                    best = (key, free_nodes)
            if best is None:
                stmt.unbind_job(job.id)
                return 0
            for st in sorted(best[1], key=lambda s: s.node.name)[:nodes_per_block]:
                stmt.bind(job, self.binding(job, first_task + placed, st, self.select(job, st)))
                placed += 1
        return placed


def _fill(members: list, size: int, per_domain: dict) -> list[tuple[NodeState, int]]:
    """Take ``size`` tasks from (rank, node, capacity) members: nodes in failure domains with
    the fewest replicas of the job first, then by rank (the placer's node order)."""
    out = []
    left = size
    for _, st, cap in sorted(members, key=lambda c: (per_domain[c[1].node.domain], c[0])):
        n = min(cap, left)
        out.append((st, n))
        left -= n
        if left == 0:
            return out
    raise AssertionError("members cannot hold the replica")  # pragma: no cover - callers sum capacities first


def _lazy_walk(buckets: dict, lowest: int, descending: bool) -> Iterator[tuple[int, str]]:
    """(key, name) over ``buckets`` (key -> set of node names) from ``lowest`` up (or from the
    top down), names in order inside a bucket. Lazy: a bucket's first name costs a ``min``, the
    rest of it is sorted only if the caller asks for more. The yielded keys sort ascending, so
    several walks merge with ``heapq.merge``."""
    for c in sorted((c for c in buckets if c >= lowest and buckets[c]), reverse=descending):
        names = buckets[c]
        first = min(names)
        key = -c if descending else c
        yield key, first
        for name in sorted(names):
            if name != first:
                yield key, name


# ------------------------------------------------------------------------------- the cycle


@dataclasses.dataclass
class CycleState:
    """Book-keeping shared by the actions of one cycle."""

    ctx: CycleContext
    placer: Placer
    pending: dict[str, Job]  # job id -> job still wanting tasks
    placed_tasks: dict[str, int]  # job id -> tasks running before this cycle
    job_order: JobOrder | None
    queue_order: QueueOrder | None
    enqueued: list[str] = dataclasses.field(default_factory=list)
    bindings: list[Binding] = dataclasses.field(default_factory=list)
    evictions: list[Eviction] = dataclasses.field(default_factory=list)
    failed: dict[str, ReasonCode] = dataclasses.field(default_factory=dict)
    heads: dict[str, str] = dataclasses.field(default_factory=dict)  # queue -> blocked head job id
    done: set = dataclasses.field(default_factory=set)
    decisions: int = 0
    queue_max_hit: set = dataclasses.field(default_factory=set)
    requeued: list[Job] = dataclasses.field(default_factory=list)
    preemption_attempts: int = 0  # _preempt_for calls that had eligible victims (metrics)
    behind_why: dict[str, str] = dataclasses.field(default_factory=dict)  # job id -> why backfill held it
    estimate_depth: int = 256  # queue positions per queue that get an estimated start (profile)
    backfill_ran: bool = False  # the backfill action ran: jobs on other devices may pass a head
    _keys: dict = dataclasses.field(default_factory=dict)

    def ordered_by_queue(self, ids: Iterable[str]) -> dict[str, list[Job]]:
        out: dict[str, list[Job]] = defaultdict(list)
        for jid in ids:
            job = self.pending[jid]
            out[job.queue].append(job)
        for jobs in out.values():
            jobs.sort(key=self.job_key)
        return out

    def effective(self, job: Job) -> float:
        """The job's priority as the queue order sees it now (with aging when the priority
        policy is enabled, else the priority class value); preemption compares these."""
        rule = self.job_order
        if isinstance(rule, PriorityRule):
            return rule.effective(job, self.ctx.now)
        return float(job.priority)

    def job_key(self, job: Job) -> tuple:
        """The job's order key, computed once per cycle (the clock does not move in a cycle)."""
        k = self._keys.get(job.id)
        if k is None:
            k = self.job_order.job_key(job, self.ctx.now) if self.job_order else (job.submit_time, job.id)
            self._keys[job.id] = k
        return k


def _devices_of(job: Job, tasks: int) -> float:
    return tasks * job.devices_per_task


def _try(cs: CycleState, job: Job, accept=None) -> bool:
    """Place as many of the job's remaining tasks as policies allow; commit if the gang closes
    (and ``accept(bindings)``, when given, agrees; otherwise the job is ``WaitingBehind``)."""
    snap = cs.ctx.snap
    already = cs.placed_tasks.get(job.id, 0)
    want = job.tasks - already
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    q = cs.ctx.queues.get(job.queue)
    if q is not None and q.max is not None:
        room = q.max - cs.ctx.queue_usage.get(job.queue, 0.0)
        per = job.devices_per_task
        if per > 0:
            fit = int(room / per + 1e-9)
            if fit < need:
                cs.failed[job.id] = ReasonCode.QUEUE_OVER_MAX
                cs.queue_max_hit.add(job.id)
                return False
            want = min(want, fit)
    stmt = Statement(snap, cs.ctx.now)
    got = cs.placer.place(job, stmt, want, need, first_task=already)
    if got < need:
        stmt.discard()
        cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
        return False
    if accept is not None and not accept(stmt.bindings_of(job.id)):
        stmt.discard()
        cs.failed[job.id] = ReasonCode.WAITING_BEHIND
        return False
    bound = stmt.commit({job.id: job})
    cs.bindings.extend(bound)
    cs.ctx.queue_usage[job.queue] = cs.ctx.queue_usage.get(job.queue, 0.0) + _devices_of(job, got)
    cs.placed_tasks[job.id] = already + got
    if already + got >= job.tasks:
        cs.done.add(job.id)
    cs.failed.pop(job.id, None)
    return True


def action_enqueue(cs: CycleState) -> None:
    """Admit pending jobs into the cycle: drop none, but mark jobs that can never fit (bigger
    than the empty cluster offers) so allocate does not waste time on them."""
    for jid, job in cs.pending.items():
        if jid in cs.done:
            continue
        if never_fits(cs, job):
            cs.failed[jid] = ReasonCode.NEVER_FITS
        else:
            cs.enqueued.append(jid)


def never_fits(cs: CycleState, job: Job) -> bool:
    """True when even the empty cluster (healthy devices only) could not hold the job: more
    devices than the cluster has, a task larger than any node, a gang or replica larger than
    any domain of its tier, or Ascend logical super-pods that the physical super-pods cannot
    hold beside their reserve nodes. Such a job never blocks its queue. Cached per shape until
    the inventory changes (``Snapshot.empty_cache``)."""
    req = job.devices
    if req is None:
        return False
    models = cs.placer.models_for(job)
    unit = _unit(job)
    if job.node_selector:
        total = _empty_block(cs, job, tuple(models), 1, Within.ANY)
    else:
        total = sum(cs.ctx.snap.model_total.get(m, 0) for m in models)
    if total < cs.placer.min_tasks(job) * unit:
        return True
    if req.fractional or cs.placed_tasks.get(job.id, 0):
        return False  # a partly running job's missing tasks are judged by allocate
    shape = (
        "never",
        req,
        job.kind,
        job.tasks,
        job.min_tasks,
        job.within,
        job.sp_block,
        job.replica_tasks,
        job.node_selector,
    )
    hit = cs.ctx.snap.empty_cache.get(shape)
    if hit is None:
        hit = cs.ctx.snap.empty_cache[shape] = _never_fits_shape(cs, job, models, unit)
    return hit


def _never_fits_shape(cs: CycleState, job: Job, models: list[str], unit: int) -> bool:
    """``never_fits`` beyond the device total, for a job shape (cached by the caller)."""
    req = job.devices
    key = tuple(models)
    if _empty_block(cs, job, key, unit, Within.NODE) < unit:
        return True  # one task's devices always sit on one node
    reserve = _reserve_devices(cs, job) // ascend.A3_DIES_PER_NODE
    if cs.placer.a3_replica(job):  # one replica in one super-pod beside its reserve
        return max((n - reserve for n in _empty_whole_nodes(cs, job, key).values()), default=0) < job.replica_tasks
    if (
        job.kind is not JobKind.SERVING
        and job.sp_block
        and job.sp_block >= ascend.A3_DIES_PER_NODE
        and ascend.family(req.model) == "910c"
    ):
        per_block = job.sp_block // ascend.A3_DIES_PER_NODE
        room = sum(max(0, n - reserve) // per_block for n in _empty_whole_nodes(cs, job, key).values())
        return room < job.tasks // per_block
    tier = _tier_of(cs, job)
    if tier is Within.ANY or tier is Within.HCCS_GROUP:
        return False
    need = unit * (job.replica_tasks if job.kind is JobKind.SERVING else cs.placer.min_tasks(job))
    return _empty_block(cs, job, key, unit, tier) < need


def _empty_per_node(snap: Snapshot, job: Job, models: tuple | list) -> dict[str, int]:
    """Node -> healthy devices of these models, on the nodes the job's selector admits (ready or
    not: what the empty cluster offers)."""
    return {
        name: sum(1 for d, h in zip(st.node.devices, st.healthy) if h and d.model in models)
        for name, st in snap.nodes.items()
        if not job.node_selector or job.selects(st.node)
    }


def _empty_block(cs: CycleState, job: Job, models: tuple, unit: int, tier: Within) -> int:
    """Healthy devices of these models in the largest domain of ``tier`` in the empty cluster,
    counted per node in whole tasks of ``unit`` devices, on the nodes the job's selector admits
    (cached until the inventory changes)."""
    snap = cs.ctx.snap
    key = ("block", models, unit, tier, job.node_selector)
    hit = snap.empty_cache.get(key)
    if hit is None:
        hit = snap.empty_cache[key] = _block(snap, _empty_per_node(snap, job, models), tier, unit)
    return hit


def _empty_whole_nodes(cs: CycleState, job: Job, models: tuple) -> dict[str, int]:
    """Super-node -> its nodes whose 16 dies of these models are all healthy (an Ascend 910C
    distributed task's node), cached until the inventory changes."""
    snap = cs.ctx.snap
    key = ("whole", models, job.node_selector)
    hit = snap.empty_cache.get(key)
    if hit is None:
        hit = defaultdict(int)
        for st in snap.nodes.values():
            if job.node_selector and not job.selects(st.node):
                continue
            ok = sum(1 for d, h in zip(st.node.devices, st.healthy) if h and d.model in models)
            if st.node.supernode is not None and ok >= ascend.A3_DIES_PER_NODE:
                hit[st.node.supernode] += 1
        snap.empty_cache[key] = hit
    return hit


def action_allocate(cs: CycleState) -> None:
    """Queues in fair-share order (DRF), jobs in priority order inside each; a queue stops at its
    first job that does not fit (that job keeps its place: the backfill action may still use the
    gap without delaying it)."""
    queues = cs.ordered_by_queue(
        j for j in cs.enqueued if j not in cs.done and cs.failed.get(j) is not ReasonCode.NEVER_FITS
    )
    pos = {q: 0 for q in queues}
    heap = [(_qkey(cs, q), q) for q in queues]
    heapq.heapify(heap)
    while heap:
        _, q = heapq.heappop(heap)
        jobs = queues[q]
        i = pos[q]
        if i >= len(jobs) or q in cs.heads:
            continue
        job = jobs[i]
        pos[q] = i + 1
        cs.decisions += 1
        if not _try(cs, job) and cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE:
            cs.heads[q] = job.id
        heapq.heappush(heap, (_qkey(cs, q), q))


def _qkey(cs: CycleState, q: str) -> float:
    return cs.queue_order.queue_key(q, cs.ctx) if cs.queue_order else 0.0


def action_backfill(cs: CycleState) -> None:
    """EASY backfill behind each blocked head (the first job of a queue that did not fit). The
    head holds a reservation (``reservation``): the time its devices are expected free, from
    the running jobs' expected ends, and the domain of its tier (one node, one super-node, the
    cluster) where they free up. A later job of the queue may start now only when it cannot
    delay the head:

    * it ends, by its ``expected_duration_seconds``, no later than the head's reserved start; or
    * it fits now off the reserved domain's nodes (any duration: the head's devices free up
      there whatever it does); or
    * it asks for none of the device models the head waits for (and, when the head needs CPU
      or memory, lands only on nodes without such devices); or
    * it fits beside the head's carve-out (``_head_carve``): the devices the head's own
      placement rules would take in its reserved domain at its start, found by placing the
      head on a copy of the state at that time (the running jobs that end by then released,
      the devices free now left to backfill when the head can do without them). The job may
      use any other device, the reserved domain's included, as long as it touches none of the
      carved devices and leaves the head's CPU and memory on their nodes.

    So a job without an expected duration never runs on the devices reserved for a head, and
    when the head's start is unknown (a running job it waits for has no expected duration)
    only jobs of the third kind go. The others wait with ``WaitingBehind`` and say why."""
    snap = cs.ctx.snap
    cs.backfill_ran = True
    queues = cs.ordered_by_queue(j for j in cs.enqueued if j not in cs.done and j not in cs.failed)
    for q, jobs in queues.items():
        head = cs.heads.get(q)
        if head is None:
            continue
        head_job = cs.pending[head]
        held = reservation(cs, head_job)
        shadow = held.start if held is not None else None
        # a reservation of the whole cluster leaves no node off it to try
        off = held is not None and len(held.nodes) < len(snap.nodes)
        head_models = set(cs.placer.models_for(head_job))
        # job shapes that did not fit since the last placement: the state is the same, so they
        # would not fit again (keeps a long queue behind a full cluster cheap)
        no_room: set = set()
        carve: list = []  # [Carve or None], computed when a job first needs it
        mask = _CarveMask(snap, cs.ctx.now)
        carve_tries = 0  # jobs tried beside the carve-out (MAX_CARVE_TRIES)
        try:
            for job in jobs:
                if job.id == head or job.id in cs.done:
                    continue
                cs.decisions += 1
                d = job.expected_duration_seconds
                shape = (
                    None
                    if cs.placed_tasks.get(job.id)
                    else (
                        job.devices,
                        job.cpu_milli,
                        job.memory_bytes,
                        job.kind,
                        job.tasks,
                        job.min_tasks,
                        job.within,
                        job.replica_tasks,
                        job.sp_block,
                    )
                )
                beside = None  # how it fared beside the head's carve-out: "failed", "capped"
                if shadow is not None and d is not None and cs.ctx.now + d <= shadow:
                    mask.off()  # a job that ends before the head starts may use its devices too
                    if ("in time", shape) in no_room:
                        cs.failed[job.id] = ReasonCode.UNSCHEDULABLE
                    elif _try(cs, job):
                        no_room.clear()
                    elif shape is not None:
                        no_room.add(("in time", shape))
                    continue
                if (
                    job.devices is not None
                    and head_job.devices is not None
                    and head_models.isdisjoint(cs.placer.models_for(job))
                ):
                    accept = None
                    if head_job.cpu_milli or head_job.memory_bytes:
                        accept = lambda bs: (
                            not any(dev.model in head_models for b in bs for dev in snap.nodes[b.node].node.devices)
                        )  # noqa: E731
                    if _try(cs, job, accept):
                        no_room.clear()
                        continue
                    if cs.failed.get(job.id) is not ReasonCode.WAITING_BEHIND:
                        continue
                else:
                    if off and ("off", shape) not in no_room:
                        if _try_off(cs, job, held.nodes):
                            no_room.clear()
                            continue
                        if shape is not None:
                            no_room.add(("off", shape))
                    if held is not None and job.devices is not None:
                        if not carve:
                            mask.off()
                            carve.append(_head_carve(cs, head_job, held))
                        if carve[0] is None:
                            pass
                        elif ("carve", shape) in no_room:
                            beside = "failed"  # the same shape did not fit beside it since
                        elif carve_tries >= MAX_CARVE_TRIES:
                            beside = "capped"
                        else:
                            carve_tries += 1
                            if _try_carved(cs, job, carve[0], mask):
                                no_room.clear()
                                continue
                            beside = "failed"
                            if shape is not None:
                                no_room.add(("carve", shape))
                cs.failed[job.id] = ReasonCode.WAITING_BEHIND
                elsewhere = ", and it does not fit off them now" if off else ""
                if beside == "failed":
                    elsewhere += f"; it does not fit beside the {carve[0].devices} devices kept for {head} either"
                elif beside == "capped":
                    elsewhere += f"; backfill beside the {carve[0].devices} devices kept for {head} already tried {MAX_CARVE_TRIES} jobs this cycle"
                if shadow is None and head_job.devices is None:
                    cs.behind_why[job.id] = (
                        f"the start of {head} cannot be estimated (it waits for CPU or memory), so nothing may go ahead of it"
                    )
                elif shadow is None:
                    cs.behind_why[job.id] = (
                        f"the start of {head} is unknown, as a job it waits for has no expected duration: only jobs on other devices may go ahead"
                    )
                elif d is None:
                    cs.behind_why[job.id] = (
                        f"it has no expected_duration_seconds, so it may not use the devices reserved for {head}{elsewhere}"
                    )
                else:
                    cs.behind_why[job.id] = (
                        f"it would end at {cs.ctx.now + d:.0f}, after {head}'s estimated start {shadow:.0f} on the devices reserved for it{elsewhere}"
                    )
        finally:
            mask.off()


@dataclasses.dataclass(frozen=True)
class Carve:
    """The devices (and CPU, memory) a blocked head takes at its reserved start, by its own
    placement rules: backfill jobs that outlast the start must leave them alone."""

    devices_by_node: dict[str, frozenset[int]]  # node -> device indices the head would take
    cpu_milli: dict[str, int]  # node -> CPU the head takes there
    memory_bytes: dict[str, int]  # node -> memory the head takes there
    released_cpu_milli: dict[str, int]  # node -> CPU the running jobs ending by then give back
    released_memory_bytes: dict[str, int]  # node -> memory they give back
    devices: int  # devices carved in all (for messages)


def _head_carve(cs: CycleState, head: Job, held: Reservation) -> Carve | None:
    """Place ``head`` on the state expected at its reserved start, in a look-ahead statement
    that is always discarded: the running jobs whose expected end is by then assumed ended,
    nodes off its reserved domain closed. The devices free now are masked on the first try, so
    the carve-out takes the devices that free up and leaves the free ones to backfill; if the
    head needs them, a second try allows them. None when the head wants no whole devices,
    keeps Ascend reserve nodes, or does not place (device rules finer than the reservation's
    counts): then nothing goes on its domain."""
    req = head.devices
    if req is None or req.fractional:
        return None
    if _reserve_devices(cs, head):
        # an Ascend logical super-pod also needs reserve nodes free beside its own: they are
        # no binding of it, so a carve-out of its devices would let backfill eat them
        return None
    snap = cs.ctx.snap
    already = cs.placed_tasks.get(head.id, 0)
    want = head.tasks - already
    need = max(1, cs.placer.min_tasks(head) - already) if cs.placer.gang else 1
    gone = [
        rj
        for rj in snap.running.values()
        if rj.expected_end is not None and rj.expected_end <= held.start and rj.job.id != head.id
    ]
    rel_cpu: dict[str, int] = defaultdict(int)
    rel_mem: dict[str, int] = defaultdict(int)
    free_now = [
        (n, i)
        for n in held.nodes
        if (st := snap.nodes.get(n)) is not None
        for i in range(len(st.node.devices))
        if st.usable[i] and st.free_milli[i] == MILLI
    ]
    found = None
    ahead = Statement(snap, cs.ctx.now)
    try:
        for rj in gone:
            ahead.assume_ended(rj.job.id)
            for b in rj.bindings:
                if b.node in snap.nodes:
                    rel_cpu[b.node] += b.cpu_milli
                    rel_mem[b.node] += b.memory_bytes
        ahead.close(n for n in snap.nodes if n not in held.nodes)
        for leave_free in (True, False):
            trial = Statement(snap, cs.ctx.now)
            try:
                if leave_free:
                    trial.mask(free_now)
                placed = Statement(snap, cs.ctx.now)
                try:
                    if cs.placer.place(head, placed, want, need, first_task=already) >= need:
                        found = placed.bindings_of(head.id)
                finally:
                    placed.discard()
            finally:
                trial.discard()
            if found or not free_now:
                break
    finally:
        ahead.discard()
    if not found:
        return None
    devs: dict[str, set] = defaultdict(set)
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    for b in found:
        devs[b.node].update(b.device_indices)
        cpu[b.node] += b.cpu_milli
        mem[b.node] += b.memory_bytes
    return Carve(
        {n: frozenset(v) for n, v in devs.items()},
        dict(cpu),
        dict(mem),
        dict(rel_cpu),
        dict(rel_mem),
        sum(map(len, devs.values())),
    )


#: jobs one queue's backfill tries beside its head's carve-out per cycle (each try may walk
#: every node: keeps a cycle bounded on big clusters; the others wait as WaitingBehind)
MAX_CARVE_TRIES = 128


class _CarveMask:
    """The head's carved devices made unselectable (a look-ahead statement masking them) while
    backfill tries jobs beside them, and selectable again for jobs that end before the head
    starts; always off after the queue."""

    def __init__(self, snap: Snapshot, now: float) -> None:
        self.snap = snap
        self.now = now
        self.ahead: Statement | None = None

    def on(self, carve: Carve) -> None:
        if self.ahead is None:
            self.ahead = Statement(self.snap, self.now)
            self.ahead.mask((n, i) for n, idx in carve.devices_by_node.items() for i in idx)

    def off(self) -> None:
        if self.ahead is not None:
            self.ahead.discard()
            self.ahead = None


def _try_carved(cs: CycleState, job: Job, carve: Carve, mask: _CarveMask) -> bool:
    """``_try`` with the head's carved devices unselectable (``mask`` on), accepted only when
    the head's CPU and memory on the carved nodes still fit at its start (what is left now
    plus what the running jobs ending by then give back)."""
    snap = cs.ctx.snap

    def leaves_head_room(_bindings) -> bool:
        for n in carve.devices_by_node:
            st = snap.nodes[n]
            if st.cpu_left + carve.released_cpu_milli.get(n, 0) < carve.cpu_milli.get(n, 0):
                return False
            if st.memory_left + carve.released_memory_bytes.get(n, 0) < carve.memory_bytes.get(n, 0):
                return False
        return True

    mask.on(carve)
    return _try(cs, job, leaves_head_room)


def _try_off(cs: CycleState, job: Job, nodes: frozenset[str]) -> bool:
    """``_try`` with these nodes (a head's reservation) closed to this one placement."""
    ahead = Statement(cs.ctx.snap, cs.ctx.now)
    ahead.close(nodes)
    try:
        return _try(cs, job)
    finally:
        ahead.discard()


def _victims(cs: CycleState, job: Job, reclaim: bool) -> list:
    """Running jobs whose eviction could help ``job``: whole gangs, lowest priority first, then
    the fewest devices, then the youngest. Preemption (same queue) takes only jobs of a lower
    effective priority (``CycleState.effective``: aged as the queue order ages, so a job that
    waited long enough may evict a younger job of a higher class, and never one the queue
    order puts ahead of it); reclaim (other queues over their share) ignores priority."""
    snap = cs.ctx.snap
    models = set(cs.placer.models_for(job))
    out = []
    usage = cs.ctx.queue_usage
    mine = cs.effective(job)
    bound_now = {b.job_id for b in cs.bindings}
    for rj in snap.running.values():
        v = rj.job
        if v.id in bound_now:
            continue  # placed by this very cycle: evicting it would only churn
        if reclaim:
            if v.queue == job.queue:
                continue
            q = cs.ctx.queues.get(v.queue)
            deserved = _deserved(cs, v.queue)
            guaranteed = q.guaranteed if q else 0.0
            if usage.get(v.queue, 0.0) <= max(deserved, guaranteed):
                continue
        else:
            if v.queue != job.queue or cs.effective(v) >= mine:
                continue
        if not cs.ctx.priority_preemptible.get(v.priority_class, True):
            continue
        if (
            models
            and not any(
                snap.nodes[b.node].node.devices[i].model in models
                for b in rj.bindings
                if b.node in snap.nodes
                for i in b.device_indices
            )
            and job.devices is not None
        ):
            continue
        out.append(rj)
    out.sort(key=lambda rj: (cs.effective(rj.job), rj.job.total_devices, -rj.start_time, rj.job.id))
    return out


def _deserved(cs: CycleState, queue: str) -> float:
    q = cs.ctx.queues.get(queue)
    if q is not None and q.deserved is not None:
        return q.deserved
    weights = {name: (qq.weight if qq else 1.0) for name, qq in cs.ctx.queues.items()}
    total_w = sum(weights.values()) or 1.0
    return cs.ctx.total_devices * weights.get(queue, 1.0) / total_w


def _preempt_for(cs: CycleState, job: Job, reclaim: bool) -> bool:
    snap = cs.ctx.snap
    victims = _victims(cs, job, reclaim)
    if not victims:
        return False
    cs.preemption_attempts += 1
    stmt = Statement(snap, cs.ctx.now)
    already = cs.placed_tasks.get(job.id, 0)
    need = max(1, cs.placer.min_tasks(job) - already) if cs.placer.gang else 1
    want = job.tasks - already
    evicted = []
    got = 0
    # one victim that suffices alone, lowest priority and smallest first
    for rj in victims[:MAX_SINGLE_VICTIM_TRIES]:
        one = Statement(snap, cs.ctx.now)
        one.evict(rj.job.id)
        if cs.placer.place(job, one, want, need, first_task=already) >= need:
            one.discard()
            evicted.append(stmt.evict(rj.job.id))
            got = cs.placer.place(job, stmt, want, need, first_task=already)
            break
        one.discard()
    if got < need:
        # otherwise evict in order until the job fits
        for rj in victims:
            if any(e.job.id == rj.job.id for e in evicted):
                continue
            evicted.append(stmt.evict(rj.job.id))
            got = cs.placer.place(job, stmt, want, need, first_task=already)
            if got >= need:
                break
            stmt.unbind_job(job.id)
            got = 0
    if got < need:
        stmt.discard()  # never evict for a job that would still not fit
        return False
    # fewest victims: give back every victim the preemptor turned out not to need
    for rj in list(reversed(evicted[:-1])):
        if snap.can_apply(rj.bindings):
            stmt.restore(rj)
            evicted.remove(rj)
    # the statement's own bindings: a replaced replica keeps its (lower) number
    cs.bindings.extend(stmt.commit({job.id: job}))
    cs.placed_tasks[job.id] = already + got
    if already + got >= job.tasks:
        cs.done.add(job.id)
    cs.failed.pop(job.id, None)
    cs.ctx.queue_usage[job.queue] = cs.ctx.queue_usage.get(job.queue, 0.0) + _devices_of(job, got)
    for rj in evicted:
        why = "reclaimed for queue" if reclaim else "preempted by"
        cs.evictions.append(
            Eviction(
                rj.job.id,
                f"{why} {job.queue if reclaim else job.id} (priority {_prio(cs, job)} vs {_prio(cs, rj.job)})",
                job.id,
            )
        )
        cs.ctx.queue_usage[rj.job.queue] = cs.ctx.queue_usage.get(rj.job.queue, 0.0) - _devices_of(
            rj.job, len(rj.bindings)
        )
        cs.requeued.append(rj.job)
    return True


def _prio(cs: CycleState, job: Job) -> str:
    """A job's priority for a message: the class value, and the aged value when aging moved it."""
    eff = cs.effective(job)
    return f"{job.priority}" if abs(eff - job.priority) < 0.05 else f"{job.priority}, aged {eff:.1f}"


#: victims tried one by one before evicting several (keeps preemption bounded on big clusters)
MAX_SINGLE_VICTIM_TRIES = 64
#: how many pending jobs one cycle tries to preempt or reclaim for (keeps a cycle bounded)
MAX_PREEMPTORS_PER_CYCLE = 16


def action_preempt(cs: CycleState) -> None:
    """For the highest-priority unschedulable jobs, evict lower-priority jobs of the same queue
    (whole gangs, fewest and lowest first) when that lets the job start now."""
    _preempt_like(cs, reclaim=False)


def action_reclaim(cs: CycleState) -> None:
    """A queue below its deserved share takes back devices from queues above theirs (never
    below a queue's guaranteed share)."""
    _preempt_like(cs, reclaim=True)


def _preempt_like(cs: CycleState, reclaim: bool) -> None:
    cands = [cs.pending[j] for j, code in cs.failed.items() if code is ReasonCode.UNSCHEDULABLE and j in cs.pending]
    cands.sort(key=cs.job_key)
    for job in cands[:MAX_PREEMPTORS_PER_CYCLE]:
        if reclaim and cs.ctx.queue_usage.get(job.queue, 0.0) >= _deserved(cs, job.queue):
            continue
        cs.decisions += 1
        if _preempt_for(cs, job, reclaim):
            for q, head in list(cs.heads.items()):
                if head == job.id:
                    del cs.heads[q]


ACTIONS = {
    "enqueue": action_enqueue,
    "allocate": action_allocate,
    "backfill": action_backfill,
    "preempt": action_preempt,
    "reclaim": action_reclaim,
}


# ------------------------------------------------------------------------- pending reasons


def largest_block(cs: CycleState, job: Job, tier: Within, empty: bool = False) -> int:
    """Free matching devices in the largest domain of ``tier`` (node, super-node, cluster)."""
    snap = cs.ctx.snap
    models = cs.placer.models_for(job)
    if empty:
        per_node = _empty_per_node(snap, job, models)
    else:
        per_node = {
            st.node.name: sum(snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models)
            for st in snap.nodes.values()
            if not job.node_selector or job.selects(st.node)
        }
    return _block(snap, per_node, tier, _unit(job))


def _unit(job: Job) -> int:
    """Devices one task takes whole on one node: a node's free devices count only in these
    units towards a block (a 16-die task cannot use 8 free dies on each of two nodes)."""
    req = job.devices
    return req.count if req is not None and not req.fractional else 1


def _block(snap: Snapshot, per_node: dict[str, int], tier: Within, unit: int = 1) -> int:
    if not per_node:
        return 0
    if tier is Within.NODE or tier is Within.HCCS_GROUP:
        return max(per_node.values())
    if tier is Within.SUPERNODE:
        sums: dict[str, int] = defaultdict(int)
        if unit == 1:
            for name, c in per_node.items():
                sums[snap.nodes[name].node.supernode or name] += c
        else:
            for name, c in per_node.items():
                sums[snap.nodes[name].node.supernode or name] += c // unit * unit
        return max(sums.values())
    return sum(per_node.values()) if unit == 1 else sum(c // unit * unit for c in per_node.values())


def _tier_of(cs: CycleState, job: Job) -> Within:
    """The domain the job's (remaining) tasks must fit in together, for reasons and estimates."""
    if job.sp_block and job.sp_block >= ascend.A3_DIES_PER_NODE:
        return Within.SUPERNODE
    if job.kind is JobKind.SERVING and job.replica_tasks > 1:
        # one replica's tasks together: an Ascend 910C replica is one logical super-pod
        return Within.SUPERNODE if cs.placer.a3_replica(job) else cs.placer.tiers(job)[-1]
    if job.kind is not JobKind.TRAINING or cs.placer.min_tasks(job) - cs.placed_tasks.get(job.id, 0) <= 1:
        return Within.NODE  # one task (a replica, a batch task) always sits on one node
    tiers = cs.placer.tiers(job)
    return tiers[-1]


def _reserve_devices(cs: CycleState, job: Job) -> int:
    """Dies an Ascend super-pod keeps free beside a logical super-pod (sp_block jobs, 910C
    multi-task replicas): ``reserve_nodes`` whole nodes; 0 for other jobs."""
    if cs.placer.ascend is None:
        return 0
    if (job.sp_block and job.sp_block >= ascend.A3_DIES_PER_NODE) or cs.placer.a3_replica(job):
        return cs.placer.ascend.reserve_nodes * ascend.A3_DIES_PER_NODE
    return 0


@dataclasses.dataclass(frozen=True)
class Reservation:
    """When and where a waiting job is expected to fit: at ``start`` in the domain of its tier
    (one node, one super-node or the cluster) made of ``nodes``."""

    start: float  # clock time
    nodes: frozenset[str]


def reservation(cs: CycleState, job: Job, ends: list | None = None) -> Reservation | None:
    """When and where a waiting job is expected to fit, from the running jobs' expected ends
    only (the jobs queued ahead of it are the estimate walk's business: ``scheduler.estimates``;
    backfill holds the blocked head's reservation with this): the first domain of the job's
    tier whose free devices (counted per node in whole tasks, the reserve nodes of an Ascend
    super-pod added to the need) reach the job's need as the running jobs end. None for a CPU-only job or
    when the running jobs' expected ends never free enough (some have no expected end)."""
    req = job.devices
    if req is None:
        return None
    snap = cs.ctx.snap
    models = set(cs.placer.models_for(job))
    tier = _tier_of(cs, job)
    unit = _unit(job)
    need = cs.placer.min_tasks(job) * unit
    if job.kind is JobKind.SERVING:
        need = unit * job.replica_tasks  # one replica
    if job.sp_block and job.sp_block >= ascend.A3_DIES_PER_NODE:
        need = job.sp_block  # one logical super-pod
    # plus the physical super-pod's reserve nodes (logical super-pods on Ascend 910C)
    need += _reserve_devices(cs, job)
    per_node = {
        st.node.name: sum(snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models) for st in snap.nodes.values()
    }
    # per domain of the tier, free devices in whole tasks; kept current as releases add up
    if tier is Within.SUPERNODE:
        domain_of = {name: snap.nodes[name].node.supernode or name for name in per_node}
    elif tier is Within.ANY:
        domain_of = dict.fromkeys(per_node, "")
    else:
        domain_of = {name: name for name in per_node}
    sums: dict[str, int] = defaultdict(int)
    for name, c in per_node.items():
        sums[domain_of[name]] += c // unit * unit

    def found(domain: str, start: float) -> Reservation:
        return Reservation(max(start, cs.ctx.now), frozenset(n for n, d in domain_of.items() if d == domain))

    # a job that just failed to place does not fit now, whatever the device counts say (device
    # rules and partly used nodes are finer than counts): its start is a future release
    best = max(sums, key=lambda d: (sums[d], d)) if sums else None
    ready = best if best is not None and sums[best] >= need else None
    if ready is not None and job.id not in cs.failed:
        return found(ready, cs.ctx.now)
    if ends is None:
        ends = running_ends(snap)
    shared = None  # devices fractional tasks share: whole again when their last task ends
    for end, jid in ends:
        hit = None
        for b in snap.running[jid].bindings:
            if b.node in per_node:
                devs = snap.nodes[b.node].node.devices
                if b.milli == MILLI:
                    freed = sum(1 for i in b.device_indices if devs[i].model in models)
                else:
                    if shared is None:
                        shared = shared_ends(snap)
                    freed = 0
                    for i in b.device_indices:
                        if devs[i].model in models and shared.get((b.node, i)) == end:
                            shared[(b.node, i)] = None  # counted once, whichever sharer ends last
                            freed += 1
                if freed:
                    old = per_node[b.node]
                    per_node[b.node] = old + freed
                    d = domain_of[b.node]
                    sums[d] += ((old + freed) // unit - old // unit) * unit
                    if hit is None and sums[d] >= need:
                        hit = d
        if hit is None:
            hit = ready  # enough by the counts already: the first release may be what it lacks
        if hit is not None:
            return found(hit, end)
    return None


def running_ends(snap: Snapshot) -> list[tuple[float, str]]:
    """(expected end, job id) of the running jobs that have one, earliest first."""
    return sorted((rj.expected_end, rj.job.id) for rj in snap.running.values() if rj.expected_end is not None)


def pending_reasons(cs: CycleState) -> dict[str, PendingReason]:
    """A reason, with numbers, for every job that still waits, and an estimated start for the
    first ``cs.estimate_depth`` jobs of each queue: a walk of the queue in order
    (``scheduler.estimates``), so jobs ahead take the devices that free up first. Beyond that
    position the start is not computed (the message says so): the walk stays bounded however
    long the queue is. No job shows an earlier start than its queue's first job, which
    allocate reaches first, unless backfill runs and the job wants none of the first job's
    device models (backfill lets such a job pass the head whenever it fits)."""
    waiting = [j for j in cs.pending if j not in cs.done]
    by_queue = cs.ordered_by_queue(waiting)
    out: dict[str, PendingReason] = {}
    block_cache: dict = {}
    snap = cs.ctx.snap
    depth = cs.estimate_depth
    ends = None
    releases = shared = None
    open_ended: dict = {}  # pool -> a running job holds its devices without an expected end
    not_ready = _not_ready_words(snap)
    ready_nodes = sum(1 for st in snap.nodes.values() if st.ready)
    for q, jobs in by_queue.items():
        head_est = None
        head_models: set = set()
        timelines: dict[tuple, Timeline] = {}  # pool (device models) -> this queue's walk
        for pos, job in enumerate(jobs, start=1):
            placed_now = cs.placed_tasks.get(job.id, 0)
            if job.id in cs.failed:
                code = cs.failed[job.id]
            elif placed_now:
                code = ReasonCode.UNSCHEDULABLE  # running in part, the rest does not fit now
            else:
                code = ReasonCode.WAITING_BEHIND if cs.enqueued else ReasonCode.NOT_CONSIDERED
            tier = _tier_of(cs, job)
            req = job.devices
            shape = (
                (req.vendor, req.model, req.min_memory_bytes, req.min_bf16_tflops, req.count, req.milli)
                if req
                else None
            )
            kb = (shape, tier, job.node_selector)
            if kb not in block_cache:
                block_cache[kb] = (
                    largest_block(cs, job, tier) if req else 0,
                    largest_block(cs, job, tier, empty=True) if req else 0,
                )
            free_block, empty_block = block_cache[kb]
            what, where, need, need_tasks, reserve = _asks(cs, job, tier)
            est_why = ""
            if req is None:
                est = cs.ctx.now
            elif code is ReasonCode.NEVER_FITS:
                est = None  # the message says why; it takes no devices in the walk
            elif pos > depth:
                est = None
                est_why = f"estimated start not computed beyond queue position {depth} (the profile's estimate_depth)"
            else:
                models = tuple(cs.placer.models_for(job))
                tl = timelines.get(models)
                if tl is None:
                    if releases is None:  # the running jobs do not change here
                        releases, shared = releases_by_model(snap), shared_by_model(snap)
                    if models not in open_ended:
                        open_ended[models] = holds_without_end(snap, models)
                    tl = timelines[models] = Timeline(snap, models, releases, cs.ctx.now, open_ended[models], shared)
                demand = _demand(cs, job, tier, need, need_tasks, reserve)
                if pos == 1 or job.id == cs.heads.get(q):
                    # the head's reservation, as backfill holds it: the walk goes on from there
                    if ends is None:
                        ends = running_ends(snap)
                    held = reservation(cs, job, ends)
                    e = tl.offer(demand, held.start, held.nodes) if held is not None else tl.unknown(demand)
                else:
                    e = tl.offer(demand)
                est, est_why = e.start, e.why
                if est is None:
                    est_why = f"estimated start unknown: {est_why}"
            if head_est is not None and est is not None:
                passes = (
                    cs.backfill_ran
                    and req is not None
                    and head_models
                    and head_models.isdisjoint(cs.placer.models_for(job))
                )
                if not passes:
                    est = max(est, head_est)
            if pos == 1:
                head_est = est
                head_models = set(cs.placer.models_for(job)) if req else set()
            if code is ReasonCode.NEVER_FITS:
                msg = _never_fits_message(what, where, need, empty_block)
            elif code is ReasonCode.QUEUE_OVER_MAX:
                qq = cs.ctx.queues.get(job.queue)
                msg = f"queue {job.queue} would exceed its max of {qq.max:g} devices (in use {cs.ctx.queue_usage.get(job.queue, 0.0):g}); needs {job.devices_per_task * need_tasks:g}"
            elif code is ReasonCode.WAITING_BEHIND:
                why = f": {cs.behind_why[job.id]}" if job.id in cs.behind_why else ""
                msg = f"waiting behind {cs.heads.get(q, 'a job ahead')} (holding resources for it){why}; needs {what} in {where}; largest free block {free_block}; {pos - 1} jobs ahead"
            else:
                msg = f"needs {what} = {need} devices in {where}; largest free block {free_block}; {pos - 1} jobs ahead"
            if placed_now and code is ReasonCode.UNSCHEDULABLE:
                msg = f"running {placed_now} of {job.tasks} tasks; " + msg
            if not_ready and code in (ReasonCode.UNSCHEDULABLE, ReasonCode.WAITING_BEHIND):
                msg += "; " + not_ready
            if req is None:
                msg = (
                    f"needs {job.cpu_milli}m CPU and {job.memory_bytes} bytes memory on one node; {pos - 1} jobs ahead"
                )
            elif est_why:
                msg += f"; {est_why}"
            out[job.id] = PendingReason(
                job_id=job.id,
                code=code,
                message=msg,
                queue_position=pos,
                jobs_ahead=pos - 1,
                estimated_start=est,
                numbers={
                    "need_devices": need,
                    "largest_free_block": free_block,
                    "cluster_block": empty_block,
                    "jobs_ahead": pos - 1,
                }
                | ({"nodes_ready": ready_nodes, "nodes": len(snap.nodes)} if not_ready else {})
                | ({"reserve_devices": reserve} if reserve else {})
                | (
                    {"estimate_depth": depth}
                    if req is not None and pos > depth and code is not ReasonCode.NEVER_FITS
                    else {}
                ),
            )
    return out


_WHERE = {
    Within.NODE: "one node",
    Within.HCCS_GROUP: "one HCCS group",
    Within.SUPERNODE: "one super-node",
    Within.ANY: "the cluster",
}


def _asks(cs: CycleState, job: Job, tier: Within) -> tuple[str, str, int, int, int]:
    """How a waiting job's need reads in its pending reason: (what, where, need in devices,
    tasks needed at once, reserve devices kept free beside it)."""
    req = job.devices
    per_task = (req.count if not req.fractional else 1) if req else 0
    placed = cs.placed_tasks.get(job.id, 0)
    need_tasks = max(cs.placer.min_tasks(job) - placed, 1)
    need = per_task * (job.replica_tasks if job.kind is JobKind.SERVING else need_tasks)
    reserve = _reserve_devices(cs, job)
    where = _WHERE[tier]
    what = req.describe() if req else f"{job.cpu_milli}m CPU"
    if req and job.kind is not JobKind.SERVING and need_tasks > 1:
        what = f"{need_tasks} x {what}"
    elif req and job.kind is JobKind.SERVING and job.replica_tasks > 1:
        what = f"one replica of {job.replica_tasks} x {what}"
    if reserve:
        where += f" plus {reserve // ascend.A3_DIES_PER_NODE} reserve nodes ({reserve} dies) kept free there"
    if job.node_selector:
        where += " on nodes labelled " + ", ".join(f"{k}={v}" for k, v in job.node_selector)
    return what, where, need, need_tasks, reserve


def _never_fits_message(what: str, where: str, need: int, cluster_devices: int) -> str:
    return (
        f"needs {what} = {need} devices in {where}; the whole cluster has {cluster_devices} such healthy devices "
        "there: it cannot fit until devices are added or repaired (or shrink the job)"
    )


def never_fits_reason(cs: CycleState, job: Job) -> NeverFits | None:
    """Why ``job`` can never fit the cluster (``never_fits``), or None when it could fit once
    enough devices are free. The one implementation of "can never fit": the enqueue action and
    the service's admission (``Scheduler.never_fits``) both ask it."""
    if not never_fits(cs, job):
        return None
    tier = _tier_of(cs, job)
    what, where, need, _, reserve = _asks(cs, job, tier)
    cluster = largest_block(cs, job, tier, empty=True)
    return NeverFits(_never_fits_message(what, where, need, cluster), need, reserve, cluster, where)


def _not_ready_words(snap: Snapshot) -> str:
    """Present nodes not ready yet, as a pending reason reads them ("waiting for agents: 0 of
    48 nodes ready"); "" when every node is ready."""
    groups = snap.not_ready()
    if not groups:
        return ""
    total = len(snap.nodes)
    ready = total - sum(groups.values())
    return "; ".join(f"{why}: {ready} of {total} nodes ready" for why in sorted(groups))


def _demand(cs: CycleState, job: Job, tier: Within, need: int, need_tasks: int, reserve: int) -> Demand:
    """What a waiting job asks of its queue's estimate walk: ``need`` devices at once in one
    domain of its tier (its gang, one replica, one logical super-pod), holding ``take`` once
    started (a gang's remaining tasks, a serving job's missing minimum, a batch job's missing
    tasks) for its expected duration."""
    unit = _unit(job)
    placed = cs.placed_tasks.get(job.id, 0)
    if job.sp_block and job.sp_block >= ascend.A3_DIES_PER_NODE:
        need = job.sp_block  # one logical super-pod
    if job.kind is JobKind.BATCH:
        take = unit * max(job.tasks - placed, 1)
    elif job.kind is JobKind.SERVING:
        take = unit * max(cs.placer.min_tasks(job) - placed, job.replica_tasks)
    else:
        take = unit * need_tasks
    return Demand(
        job_id=job.id,
        tier=tier,
        unit=unit,
        need=need,
        reserve=reserve,
        take=max(take, need),
        duration_seconds=job.expected_duration_seconds,
        fails_now=cs.failed.get(job.id) is ReasonCode.UNSCHEDULABLE,
        milli=job.devices.milli if job.devices is not None else MILLI,
    )
