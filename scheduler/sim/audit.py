"""An independent check of every placement a replay makes against the cluster's rules.

The plugins that place jobs (``scheduler/core/plugins``) are what is being checked, so this
module asks none of them: it keeps its own record of which device every running job holds and
checks each new placement against the rules written out here again, from the cluster's devices
alone. A broken rule is a *violation*; a correct replay has none.

Rules checked for every job the scheduler starts:

* the gang: a training job starts with all its tasks at once, each task number once;
* devices: every device exists, matches the request's model, and is held by no other running
  job (a shared device: not beyond its 1000 milli); each task has exactly the devices it asked for, on one node;
* Ascend 910C (CloudMatrix; MindCluster's rules, research/scheduler.md section 4.1): a task
  takes 1 or an even number of dies up to 16, an even count takes whole die pairs (modules); a
  distributed task takes all 16 dies of its node; a logical super-pod (``domain_block``) lies
  inside one physical super-pod, and that super-pod keeps ``reserve_nodes`` nodes wholly free
  beside it when it is placed;
* Ascend 910B: a task takes 1, 2, 4 or 8 NPUs; 1, 2 and 4 inside one HCCS group of 4;
* ``within``: every task inside one domain of the level the job names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from ..core.fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from ..core.model import MILLI, Binding, Job, JobKind, Node
from ..core.plugins.ascend import rules as ascend_rules

#: violations whose message the report keeps (the count covers them all)
MAX_EXAMPLES = 20


class PlacementAudit:
    """Device ownership and rule checks over a replay. ``started`` for each job the scheduler
    starts (its bindings of one cycle), ``stopped`` when it finishes or is evicted."""

    def __init__(
        self, nodes: Iterable[Node], reserve_nodes: int = ascend_rules.DEFAULT_SUPERNODE_RESERVE_NODES
    ) -> None:
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.reserve_nodes = reserve_nodes
        # node -> per device: the job holding milli of it ({job: milli})
        self.held: dict[str, list[dict[str, int]]] = {n: [{} for _ in node.devices] for n, node in self.nodes.items()}
        self.jobs: dict[str, tuple[Binding, ...]] = {}
        self.used_devices = 0.0  # devices held now (fractions count their share)
        self.violations = 0
        self.examples: list[str] = []
        self.checked = 0  # placements checked

    # ------------------------------------------------------------------------ changes
    def started(self, job: Job, bindings: Sequence[Binding]) -> None:
        """The scheduler started ``job`` (or more tasks of it) with these bindings: check them,
        then record the devices as held."""
        self.checked += 1
        for why in self._check(job, bindings):
            self._violation(f"{job.id}: {why}")
        for b in bindings:
            held = self.held.get(b.node)
            if held is None:
                continue
            for i in b.device_indices:
                if 0 <= i < len(held):
                    held[i][job.id] = held[i].get(job.id, 0) + b.milli
                    self.used_devices += b.milli / MILLI
        self.jobs[job.id] = self.jobs.get(job.id, ()) + tuple(bindings)

    def stopped(self, job_id: str) -> None:
        """``job_id`` finished or was evicted: its devices are free again (idempotent)."""
        for b in self.jobs.pop(job_id, ()):
            held = self.held.get(b.node)
            if held is None:
                continue
            for i in b.device_indices:
                if 0 <= i < len(held) and job_id in held[i]:
                    self.used_devices -= held[i].pop(job_id) / MILLI

    def _violation(self, message: str) -> None:
        self.violations += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    # ------------------------------------------------------------------------- checks
    def _check(self, job: Job, bindings: Sequence[Binding]) -> Iterable[str]:
        req = job.devices
        tasks = sorted(b.task for b in bindings)
        if len(set(tasks)) != len(tasks):
            yield f"a task number is bound twice ({tasks})"
        if job.kind is JobKind.TRAINING and job.id not in self.jobs:
            need = job.tasks if job.min_tasks is None else job.min_tasks
            if len(bindings) < need:
                yield f"gang broken: {len(bindings)} of {need} tasks started"
        for b in bindings:
            node = self.nodes.get(b.node)
            if node is None:
                yield f"task {b.task} on unknown node {b.node}"
                continue
            idx = b.device_indices
            if req is None:
                if idx:
                    yield f"task {b.task} is CPU-only but holds devices {idx} on {b.node}"
                continue
            if len(set(idx)) != len(idx) or len(idx) != req.count:
                yield f"task {b.task} holds devices {idx} on {b.node}, asked for {req.count}"
            taken: dict[int, list[str]] = {}
            for i in idx:
                if not 0 <= i < len(node.devices):
                    yield f"task {b.task}: {b.node} has no device {i}"
                    continue
                dev = node.devices[i]
                if not req.matches(dev):
                    yield f"task {b.task}: device {b.node}/{i} is a {dev.model}, asked for {req.describe()}"
                held = self.held[b.node][i]
                if sum(held.values()) + b.milli > MILLI:
                    taken[i] = sorted(held)
            if taken:
                owners = sorted({j for js in taken.values() for j in js})
                yield f"task {b.task}: devices {sorted(taken)} of {b.node} are already held by {', '.join(owners)}"
            yield from self._ascend(job, b, node)
        yield from self._domains(job, bindings)

    def _ascend(self, job: Job, b: Binding, node: Node) -> Iterable[str]:
        req = job.devices
        if req is None or req.fractional or not b.device_indices:
            return
        fam = ascend_rules.family(node.devices[b.device_indices[0]].model)
        k = len(b.device_indices)
        if fam == "910c":
            if k != 1 and (k % 2 or k > ascend_rules.A3_DIES_PER_NODE):
                yield f"task {b.task}: {k} dies on {b.node} (an A3 task takes 1 or an even number up to 16)"
            distributed = job.kind is JobKind.TRAINING and job.tasks > 1
            if distributed and k != ascend_rules.A3_DIES_PER_NODE:
                yield f"task {b.task}: a distributed A3 task holds {k} dies of {b.node}, not all 16"
            if k > 1:
                pairs: dict[int, int] = defaultdict(int)
                for i in b.device_indices:
                    d = node.devices[i]
                    pairs[d.package if d.package is not None else i // 2] += 1
                split = sorted(p for p, c in pairs.items() if c != 2)
                if split:
                    yield f"task {b.task}: {k} dies on {b.node} split die pair(s) {split} (even counts take whole modules)"
        elif fam == "910b":
            if k not in ascend_rules.B_LEGAL:
                yield f"task {b.task}: {k} NPUs on {b.node} (a 910B task takes 1, 2, 4 or 8)"
            elif k < 8:
                groups = {
                    node.devices[i].group if node.devices[i].group is not None else i // ascend_rules.B_GROUP_SIZE
                    for i in b.device_indices
                }
                if len(groups) > 1:
                    yield f"task {b.task}: {k} NPUs on {b.node} span HCCS groups {sorted(groups)}"

    def _domains(self, job: Job, bindings: Sequence[Binding]) -> Iterable[str]:
        """``within`` and logical super-pods (``domain_block``), from the nodes' domains."""
        level = job.within
        names = [b.node for b in bindings if b.node in self.nodes]
        if level == NODE and len(set(names)) > 1:
            yield f"within node, but its tasks are on {len(set(names))} nodes"
        elif level not in (NODE, CLUSTER, *NODE_LOCAL_LEVELS):
            doms = {self.nodes[n].domains.get(level) for n in names}
            if len(doms) > 1 or None in doms:
                yield f"within {level}, but its tasks span {sorted(map(str, doms))}"
        block = job.domain_block
        req = job.devices
        if not block or req is None or block < ascend_rules.A3_DIES_PER_NODE:
            return
        if ascend_rules.family(req.model) != "910c":
            return
        per_block = block // req.count
        by_block: dict[int, set[str]] = defaultdict(set)
        for b in bindings:
            by_block[b.task // max(per_block, 1)].add(b.node)
        for k, members in sorted(by_block.items()):
            sps = {self.nodes[n].domains.get(_SUPERPOD) for n in members if n in self.nodes}
            if len(sps) != 1 or None in sps:
                yield f"logical super-pod {k} spans physical super-pods {sorted(map(str, sps))}"
                continue
            sp = next(iter(sps))
            free = self._free_nodes(sp, bindings)
            if free < self.reserve_nodes:
                yield (
                    f"logical super-pod {k} placed in {sp} leaving {free} wholly free nodes there "
                    f"(the super-pod keeps {self.reserve_nodes})"
                )

    def _free_nodes(self, superpod: str, extra: Sequence[Binding]) -> int:
        """Nodes of ``superpod`` with every device free, counting ``extra`` (the job being
        placed) as held."""
        taken = {b.node for b in extra}
        return sum(
            1
            for name, node in self.nodes.items()
            if node.domains.get(_SUPERPOD) == superpod
            and name not in taken
            and all(not held for held in self.held[name])
        )


#: the topology level of a physical super-pod (CloudMatrix384's UB domain)
_SUPERPOD = "supernode"
