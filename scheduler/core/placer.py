"""The placer: finds nodes and devices for a job's tasks, asking the enabled plugins through the
framework's extension points only (``framework.points``).

Per task and node (``select``): the node must be open and ready with the task's CPU and memory
left, pass every active ``Filter``, and have its devices chosen by the first ``DeviceSelect``
that answers (else first fit; a ``within`` inside a node keeps the devices in one device group
or package). Per job (``place``): a gang is bound task by task inside a statement and kept only
when at least its minimum is bound; the ``Tiers`` plugin says which topology tiers to try (one
node, one domain of a wider tier, the cluster); a ``DomainBlocks`` answer places the tasks in
blocks of wholly free nodes inside one domain each, beside the domain's reserve nodes; each
tentative binding is offered to the ``Reserve`` plugins (a refusal undoes the placement).

Node order: the free-count buckets walked lazily in the ``NodeOrder`` plugin's direction
(fullest first by default), fractional tasks by the partly used devices first; when ``Score``
plugins are active for a job, every candidate (by the free counts) is scored and the lower
node name breaks ties.
"""

from __future__ import annotations

import functools
import heapq
from collections import defaultdict
from typing import Any, Iterator, Sequence

from .fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS, Fabric, derive
from .framework import Blocks, Candidates, CycleContext, Framework, JobPlugins, Status, WalkOrder
from .framework.status import Code
from .model import MILLI, Binding, Job, JobKind, slice_bytes
from .snapshot import NodeState, Statement


class Placer:
    """Finds devices and nodes for a job's tasks with the enabled plugins. Built per cycle."""

    def __init__(self, framework: Framework, ctx: CycleContext) -> None:
        self.fw = framework
        self.ctx = ctx
        self.snap = ctx.snap
        if ctx.fabric is None:
            ctx.fabric = derive(st.node for st in self.snap.nodes.values())
        self.fabric: Fabric = ctx.fabric
        self.gang = framework.gang
        self._models_cache: dict = {}
        # job id -> the last refusal a filter, reserve or permit gave it (its pending reason says it)
        self.notes: dict[str, str] = {}

    # ---------------------------------------------------------------------- plugins
    def active(self, job: Job) -> JobPlugins:
        return self.fw.for_job(job)

    def blocks(self, job: Job) -> Blocks | None:
        """The blocks a ``DomainBlocks`` plugin places this job in, or None."""
        return self.fw.blocks(job, self.ctx)

    def replica_blocks(self, job: Job) -> Blocks | None:
        """A serving job whose every replica is one block (or None)."""
        return self.blocks(job) if job.kind is JobKind.SERVING else None

    def walk_order(self, job: Job) -> WalkOrder:
        for p in self.fw.node_orders:
            return p.node_order(job)
        return WalkOrder.FULLEST_FIRST

    def _refuse(self, job: Job, plugin: Any, status: Status) -> None:
        self.notes[job.id] = f"{getattr(plugin, 'name', '?')}: {status.message}" if status.message else ""

    # ------------------------------------------------------------------------ one node
    def models_for(self, job: Job) -> list[str]:
        req = job.devices
        if req is None:
            return []
        key = (req.vendor, req.model, req.model_choices, req.min_memory_bytes, req.min_bf16_tflops)
        hit = self._models_cache.get(key)
        if hit is None:
            hit = sorted(m for m, dev in self.snap.model_example.items() if req.matches(dev))
            self._models_cache[key] = hit
        return hit

    def passes(self, job: Job, st: NodeState, filters: Sequence[Any]) -> bool:
        """Every active filter lets a task of ``job`` on this node."""
        for p in filters:
            status = p.filter(job, st)
            if status.code is not Code.SUCCESS:
                if status.message:
                    self._refuse(job, p, status)
                return False
        return True

    def never_on(self, job: Job, st: NodeState) -> bool:
        """An active filter says this node can never take the job (unresolvable): it counts for
        nothing in what the empty cluster offers the job."""
        for p in self.active(job).filters:
            if p.filter(job, st).code is Code.UNRESOLVABLE:
                return True
        return False

    def select(self, job: Job, st: NodeState) -> tuple[int, ...] | None:
        """Devices for one task of ``job`` on this node state, or None if it does not fit."""
        if not (st.schedulable and st.ready) or st.cpu_left < job.cpu_milli or st.memory_left < job.memory_bytes:
            return None
        active = self.active(job)
        if active.filters and not self.passes(job, st, active.filters):
            return None
        req = job.devices
        if req is None:
            return ()
        devs = st.node.devices
        if req.fractional:
            for sel in active.selectors:
                got = sel.select(job, st, (), 1)
                if not isinstance(got, Status):
                    return got
                if not got.skip:
                    return None
            for d in devs:  # first fit when no plugin chooses
                i = d.index
                if (
                    st.usable[i]
                    and req.matches(d)
                    and st.free_milli[i] >= req.milli
                    and st.free_memory[i] >= slice_bytes(job, d.memory_bytes)
                ):
                    return (i,)
            return None
        mask = [st.usable[d.index] and st.free_milli[d.index] == MILLI and req.matches(d) for d in devs]
        if sum(mask) < req.count:
            return None
        for sel in active.selectors:
            got = sel.select(job, st, mask, req.count)
            if not isinstance(got, Status):
                return got
            if not got.skip:
                return None
        if job.within in NODE_LOCAL_LEVELS:
            # each task's devices inside one device group (or package): the fullest that fits
            groups: dict[int, list[int]] = defaultdict(list)
            for d in devs:
                if mask[d.index]:
                    groups[_local_unit(d, job.within)].append(d.index)
            fitting = sorted((len(v), g) for g, v in groups.items() if len(v) >= req.count)
            return tuple(groups[fitting[0][1]][: req.count]) if fitting else None
        return tuple([d.index for d in devs if mask[d.index]][: req.count])

    def binding(self, job: Job, task: int, st: NodeState, idx: tuple[int, ...]) -> Binding:
        req = job.devices
        milli = req.milli if req else MILLI
        dev_mem = slice_bytes(job, st.node.devices[idx[0]].memory_bytes) if idx and req and req.fractional else 0
        return Binding(job.id, task, st.node.name, idx, milli, job.cpu_milli, job.memory_bytes, dev_mem)

    def bind(self, job: Job, stmt: Statement, b: Binding) -> bool:
        """Bind tentatively and offer the binding to the active ``Reserve`` plugins (their
        ``unreserve`` runs if the statement is discarded). False: a plugin refused it; the
        binding is undone and the caller gives up this placement."""
        stmt.bind(job, b)
        reservers = self.active(job).reservers
        if not reservers:
            return True
        ctx = self.ctx
        for p in reservers:
            status = p.reserve(job, b, ctx)
            stmt.on_discard(job.id, functools.partial(p.unreserve, job, b, ctx))
            if not status.ok:
                self._refuse(job, p, status)
                stmt.unbind_job(job.id)
                return False
        return True

    def capacity(self, job: Job, st: NodeState, limit: int) -> int:
        """How many tasks of ``job`` fit on this node now (at most ``limit``)."""
        if limit <= 0:
            return 0
        req = job.devices
        if req is not None and not req.fractional and self._generic(job):
            # whole devices, no device rule: arithmetic instead of simulated selection
            if not (st.schedulable and st.ready):
                return 0
            filters = self.active(job).filters
            if filters and not self.passes(job, st, filters):
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
            if req is not None:
                for i in idx:
                    view.free_milli[i] -= req.milli
                    view.free_memory[i] -= slice_bytes(job, st.node.devices[i].memory_bytes) if req.fractional else 0
            if not idx and job.cpu_milli == 0 and job.memory_bytes == 0:
                return limit  # a task that needs nothing fits any number of times
        return n

    def _generic(self, job: Job) -> bool:
        """True when no device rule shapes this job's whole-device selection (capacity is then
        a division): one matching model, no active device selector, no device-group ``within``.
        Capability requests may match models with different rules: not generic."""
        if job.within in NODE_LOCAL_LEVELS:
            return False
        return len(self.models_for(job)) == 1 and not self.active(job).selectors

    def free_total(self, job: Job) -> int:
        return sum(self.snap.free_total.get(m, 0) for m in self.models_for(job))

    # ----------------------------------------------------------------------- node order
    def free_matching(self, st: NodeState, models: list[str]) -> int:
        return sum(self.snap.free_whole.get(m, {}).get(st.node.name, 0) for m in models)

    def _bucket_walk(self, model: str, need_devices: int, descending: bool) -> Iterator[tuple[int, str]]:
        """(key, name) of nodes with at least ``need_devices`` whole free devices of ``model``,
        in the walk order, by name inside a count."""
        return _lazy_walk(self.snap.buckets.get(model, {}), need_devices, descending)

    def ordered_nodes(self, job: Job, need_devices: int = 0) -> Iterator[NodeState]:
        """Candidate nodes, preferred first (see the module docstring). Lazy unless scored: no
        walk sorts the whole cluster for one task; scored, every candidate is ranked."""
        scorers = self.active(job).scorers
        if not scorers:
            return self._walk(job, need_devices)
        return self._scored(job, self._candidates(job, need_devices), scorers)

    def _candidates(self, job: Job, need_devices: int) -> Candidates:
        """Ready nodes that may hold a task of ``job`` by the free counts (whole free devices of
        its models; for a fraction, a partly free device of about its size or a whole free
        one), in name order: what scorers rank. Filtered with numpy over node rows."""
        import numpy as np

        vec = self.snap.vectors()
        rows = vec.rows_by_name()
        req = job.devices
        if req is not None:
            models = self.models_for(job)
            free = sum((vec.free[m][rows] for m in models if m in vec.free), np.zeros(len(rows), dtype=np.int64))
            if not req.fractional:
                rows = rows[free >= max(need_devices, 1)]
            else:
                low = req.milli // 100
                part = np.zeros(len(rows), dtype=bool)
                for m in models:
                    if m in vec.partial:
                        part |= vec.partial[m][rows] >= low
                rows = rows[(free > 0) | part]
        states = vec.states
        return Candidates(rows=rows, states=states)

    def _scored(self, job: Job, cands: Candidates, scorers: Sequence[Any]) -> Iterator[NodeState]:
        """``cands`` by the scorers' sum, higher first, ties to the earlier candidate (the lower
        name: kube-scheduler's rule, which the FGD simulator keeps); a node any scorer gives
        ``-inf`` is left out (it cannot host the task), and the caller still checks each node it
        tries fits. A scorer answering a Status abstains for this job. Scorers get every
        candidate at once: ``cands.rows`` (``NodeState.row``, a numpy vector) indexes a plugin's
        own arrays over nodes, ``Snapshot.watch`` says which nodes changed since it last looked
        and ``Snapshot.vectors`` holds the free counts by row."""
        import numpy as np

        if not cands:
            return iter(())
        total = np.zeros(len(cands))
        for p in scorers:
            got = p.score(job, cands, self.ctx)
            if isinstance(got, Status):
                continue
            total += np.asarray(got, dtype=float)
        order = np.argsort(-total, kind="stable")  # stable: equal scores keep the walk's order
        return (cands[i] for i in order.tolist() if total[i] != -np.inf)

    def _walk(self, job: Job, need_devices: int) -> Iterator[NodeState]:
        snap = self.snap
        models = self.models_for(job)
        req = job.devices
        if req is None:
            for name in snap.cpu_order():
                yield snap.nodes[name]
            return
        if not models:
            return
        descending = self.walk_order(job) is WalkOrder.EMPTIEST_FIRST
        if not req.fractional:
            if len(models) == 1:
                for _, name in self._bucket_walk(models[0], need_devices, descending):
                    yield snap.nodes[name]
                return
            seen: set[str] = set()
            for _, name in heapq.merge(*(self._bucket_walk(m, need_devices, descending) for m in models)):
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
        for _, name in heapq.merge(*(self._bucket_walk(m, 1, descending) for m in models)):
            if name not in seen:
                seen.add(name)
                yield snap.nodes[name]

    # -------------------------------------------------------------------------- one job
    def min_tasks(self, job: Job) -> int:
        return self.gang.min_tasks(job) if self.gang else 1

    def tiers(self, job: Job) -> tuple[str, ...]:
        """Topology levels to try, tightest first: the ``Tiers`` plugin's, else only the job's
        own level (a level inside a node: the cluster)."""
        if self.fw.tier_rule is not None:
            return self.fw.tier_rule.tiers(job, self.fabric)
        return (CLUSTER,) if job.within in NODE_LOCAL_LEVELS else (job.within,)

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
        blocks = self.blocks(job)
        if blocks is not None:
            return self._place_blocks(job, stmt, want, first_task, blocks)
        snap = self.snap
        for level in self.tiers(job):
            if level != NODE and level != CLUSTER and not snap.has_level(level):
                continue
            if level == NODE:
                if need < want:
                    # an elastic gang: first a node that holds it whole (one that holds only its
                    # minimum would cost a restart to regrow right after), then its minimum
                    for st in self.ordered_nodes(job, per_task * want):
                        if self.capacity(job, st, want) >= want:
                            return self._bind_on(job, stmt, [(st, want)], want, first_task)
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
                    if level == CLUSTER and got >= want:
                        break  # fullest-first prefix already holds the whole job
            if level != CLUSTER:
                groups: dict[str, list] = defaultdict(list)
                for st, cap in caps:
                    dom = st.node.domains.get(level)
                    if dom is not None:
                        groups[dom].append((st, cap))
                models = self.models_for(job)
                best = None
                for dom, members in groups.items():
                    total = sum(c for _, c in members)
                    if total < need:
                        continue
                    free = sum(self.free_matching(st, models) for st, _ in members)
                    key = (free, dom)  # best fit: the fullest domain that still fits
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
                if not self.bind(job, stmt, self.binding(job, first_task + placed, st, idx)):
                    return 0
                placed += 1
        return placed

    def _place_replicas(self, job: Job, stmt: Statement, want: int, need: int, first_task: int) -> int:
        """Serving: one replica per step, each on one node, into the failure domain holding the
        fewest replicas of this job so far (spread), best fit inside it. Replicas of several
        tasks, or placed as blocks, go through ``_place_multi_replicas``."""
        if job.replica_size > 1 or self.replica_blocks(job) is not None:
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
            idx = self.select(job, st)
            assert idx is not None  # it fitted a moment ago
            if not self.bind(job, stmt, self.binding(job, free_tasks[placed], st, idx)):
                return 0
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
        # (level, domain) -> replicas touching it, for every topology level
        per_level: dict[tuple[str, str], int] = defaultdict(int)
        running = snap.running.get(job.id)
        used: set[int] = set()
        domains: set[tuple[int, str]] = set()
        levels: set[tuple[int, str, str]] = set()
        for b in running.bindings if running else ():
            r = b.task // size
            used.add(r)
            st = snap.nodes.get(b.node)
            domains.add((r, st.node.domain if st else b.node))
            if st is not None:
                for lv, dom in st.node.domains.items():
                    levels.add((r, lv, dom))
        for _, d in domains:
            per_domain[d] += 1
        for _, lv, dom in levels:
            per_level[(lv, dom)] += 1
        want_r, need_r = want // size, -(-need // size)
        free_r = [r for r in range(len(used) + want_r) if r not in used][:want_r]
        placed = 0
        for r in free_r:
            chosen = self._replica_nodes(job, per_domain, per_level)
            if chosen is None:
                break
            tasks = iter(range(r * size, (r + 1) * size))
            for st, n in chosen:
                for _ in range(n):
                    idx = self.select(job, st)
                    if idx is None:  # pragma: no cover - capacity() said these tasks fit
                        raise AssertionError(f"{job.id}: replica {r} lost its place on {st.node.name}")
                    if not self.bind(job, stmt, self.binding(job, next(tasks), st, idx)):
                        return 0
            for d in {st.node.domain for st, _ in chosen}:
                per_domain[d] += 1
            for key in {(lv, dom) for st, _ in chosen for lv, dom in st.node.domains.items()}:
                per_level[key] += 1
            placed += 1
        if placed < need_r:
            stmt.unbind_job(job.id)
            return 0
        return placed * size

    def _replica_nodes(self, job: Job, per_domain: dict, per_level: dict) -> list[tuple[NodeState, int]] | None:
        """Where one replica of ``job.replica_tasks`` tasks goes: [(node, tasks there)], or None.
        Tightest tier first (one node, then one domain of each wider tier, then the cluster, as
        far as ``within`` allows); among domains of the tier, the one holding the fewest
        replicas of this job (spread), then best fit; inside a domain or the cluster, nodes in
        the failure domains with the fewest replicas first, then the placer's node order. A
        replica placed as a block takes wholly free nodes of one domain beside its reserve."""
        size = job.replica_tasks
        req = job.devices
        per_task = req.count if req is not None and not req.fractional else 0
        blocks = self.replica_blocks(job)
        caps = []  # (rank in the node order, node, tasks of this replica it can take)
        # the walk may stop early when the answer cannot change (a cluster of thousands of
        # nodes): no domain tier to sum, and whole devices without device rules, so the
        # first node holding the whole replica in an untouched failure domain is the one-node
        # tier's choice, and, when no node could hold it (by the free-count buckets), enough
        # tasks on nodes of untouched domains are the cluster tier's first choices
        tiers = self.tiers(job)
        early = (
            per_task > 0
            and blocks is None
            and self._generic(job)
            and tiers[-1] == CLUSTER
            and not any(lv not in (NODE, CLUSTER) and self.snap.has_level(lv) for lv in tiers)
        )
        one_node = False
        untouched = 0
        if early:
            buckets = self.snap.buckets.get(self.models_for(job)[0], {})
            one_node = max((c for c, names in buckets.items() if names), default=0) >= per_task * size
        for rank, st in enumerate(self.ordered_nodes(job, per_task)):
            cap = self.capacity(job, st, size)
            if cap > 0:
                caps.append((rank, st, cap))
                if early and per_domain.get(st.node.domain, 0) == 0:
                    untouched += cap
                    if cap >= size or (not one_node and untouched >= size):
                        break
        if blocks is not None:
            free_nodes: dict[str, list] = defaultdict(list)
            for rank, st, _cap in caps:
                dom = st.node.domains.get(blocks.level)
                if dom is not None and all(f == MILLI for f in st.free_milli):
                    free_nodes[dom].append((rank, st, 1))
            best = None
            for dom, members in free_nodes.items():
                spare = len(members) - blocks.reserve_nodes
                if spare < size:
                    continue
                # spread first, then the block rule's best fit (MindCluster's superpod/frame.go):
                # the smallest remainder of the spare nodes modulo the block, then the fewest
                # free nodes
                key = (per_level[(blocks.level, dom)], spare % size, len(members), dom)
                if best is None or key < best[0]:
                    best = (key, members)
            return None if best is None else _fill(best[1], size, per_domain)
        models = self.models_for(job)
        for level in tiers:
            if level == NODE:
                fits = [(per_domain[st.node.domain], rank, st) for rank, st, cap in caps if cap >= size]
                if fits:
                    return [(min(fits, key=lambda x: x[:2])[2], size)]
            elif level != CLUSTER:
                groups: dict[str, list] = defaultdict(list)
                for c in caps:
                    dom = c[1].node.domains.get(level)
                    if dom is not None:
                        groups[dom].append(c)
                best_dom: tuple[tuple, list] | None = None
                for dom, members in groups.items():
                    if sum(c[2] for c in members) < size:
                        continue
                    dkey = (per_level[(level, dom)], sum(self.free_matching(st, models) for _, st, _ in members), dom)
                    if best_dom is None or dkey < best_dom[0]:
                        best_dom = (dkey, members)
                if best_dom is not None:
                    return _fill(best_dom[1], size, per_domain)
            elif sum(c[2] for c in caps) >= size:
                return _fill(caps, size, per_domain)
        return None

    def _place_blocks(self, job: Job, stmt: Statement, want: int, first_task: int, blocks: Blocks) -> int:
        """Blocks of ``blocks.tasks`` tasks, one per wholly free node, each block inside one
        domain of ``blocks.level`` keeping ``blocks.reserve_nodes`` free nodes in it. Domains
        are tried as MindCluster does: smallest remainder of (free - reserve) modulo the
        block's node count first, then the fewest free nodes (best fit)."""
        per_block = blocks.tasks
        placed = 0
        for _ in range(want // per_block):
            free_by_dom: dict[str, list[NodeState]] = defaultdict(list)
            for st in self.snap.nodes.values():
                dom = st.node.domains.get(blocks.level)
                if dom is None:
                    continue
                # the cheap test first: a block takes only wholly free nodes
                if all(f == MILLI for f in st.free_milli) and self.capacity(job, st, 1) == 1:
                    free_by_dom[dom].append(st)
            best = None
            for dom, free_nodes in free_by_dom.items():
                spare = len(free_nodes) - blocks.reserve_nodes
                if spare < per_block:
                    continue
                key = (spare % per_block, len(free_nodes), dom)
                if best is None or key < best[0]:
                    best = (key, free_nodes)
            if best is None:
                stmt.unbind_job(job.id)
                return 0
            for st in sorted(best[1], key=lambda s: s.node.name)[:per_block]:
                idx = self.select(job, st)
                assert idx is not None  # capacity() said one task fits
                if not self.bind(job, stmt, self.binding(job, first_task + placed, st, idx)):
                    return 0
                placed += 1
        return placed


def _local_unit(d: Any, level: str) -> int:
    """The device group (or package) a device belongs to, for a ``within`` inside a node."""
    if level == "package":
        return d.package if d.package is not None else d.index
    return d.group if d.group is not None else d.index // 4


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
