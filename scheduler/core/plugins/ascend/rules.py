"""Huawei's placement rules for Ascend, after MindCluster's ascend-for-volcano (the ascend
plugin, ``plugin.py``, applies them through the framework's extension points).

Sources (research/scheduler.md section 4.1): MindCluster ``component/ascend-for-volcano``
(``internal/npu/**``, ``superpod/frame.go``) and the MindCluster 7.3.0 docs "Affinity Scheduling
Policies" (dl_affinity_0017) and "Affinity Scheduling of Logical SuperPoDs" (dl_affinity_0032).

* 910B: a task takes 1, 2, 4 or 8 NPUs; 1, 2 and 4 stay inside one HCCS group of 4 NPUs (the
  core's device group: ``Device.group``), 8 is the whole node. Group choice: for 1 NPU prefer a group with 1 free, then
  3, 2, 4; for 2 prefer 2 free, then 4, then 3; 4 takes a fully free group.
* 910C / A3 (CloudMatrix): a node is 16 dies in 8 modules (die pairs: the core's packages,
  ``Device.package``). Single-node tasks take 1, 2, 4, 6, ..., 16 dies; even counts take whole
  modules; a single die prefers a module whose other die is busy (keeps whole modules whole).
  A distributed task takes all 16 dies of its node. A logical super-pod (MindCluster's
  sp-block: the job's ``domain_block`` dies, a multiple of 16) lies inside one physical
  super-pod, and each super-pod keeps ``reserve_nodes`` (default 2) nodes free for fault
  rescheduling. A serving replica of several 16-die tasks is one logical super-pod (its
  ``domain_block`` is the replica's dies).

All functions are pure: they read device lists and return index tuples or error strings.
"""

from __future__ import annotations

from typing import Sequence

from ...model import Device, Job

A3_DIES_PER_NODE = 16
A3_LEGAL_SINGLE_NODE = frozenset([1] + list(range(2, 17, 2)))
B_LEGAL = frozenset({1, 2, 4, 8})
B_GROUP_SIZE = 4
#: for a request of k NPUs, the preferred free-count of the HCCS group, best first
B_GROUP_PREFERENCE = {1: (1, 3, 2, 4), 2: (2, 4, 3), 4: (4,)}
DEFAULT_SUPERNODE_RESERVE_NODES = 2


def family(model: str | None) -> str | None:
    """'910b', '910c' or None for models outside these rule sets."""
    if not model:
        return None
    m = model.lower()
    if m.startswith("ascend-910c"):
        return "910c"
    if m.startswith("ascend-910b"):
        return "910b"
    return None


def validate(job: Job) -> str | None:
    """Why ``job`` breaks an Ascend rule (one line), or None."""
    req = job.devices
    fam = family(req.model if req else None)
    if req is None or fam is None:
        return None
    k = req.count
    if req.fractional:
        return None  # vNPU slices are not governed by the whole-NPU rules
    if fam == "910b":
        if k not in B_LEGAL:
            return f"devices.count: an Ascend 910B task takes 1, 2, 4 or 8 NPUs, not {k}"
        return None
    serving = job.kind.value == "serving"
    # a multi-task serving replica is a distributed job of its own (one logical super-pod)
    distributed = (job.tasks > 1 and job.kind.value == "training") or (serving and job.replica_tasks > 1)
    if distributed and k != A3_DIES_PER_NODE:
        return (
            f"devices.count: a distributed Ascend 910C task takes all {A3_DIES_PER_NODE} dies of its node, "
            f"not {k} (or run one task of 1, 2, 4, ..., 16 dies)"
        )
    if k not in A3_LEGAL_SINGLE_NODE:
        return f"devices.count: an Ascend 910C task takes 1 or an even number of dies up to 16, not {k}"
    if job.domain_block is not None:
        sp = job.domain_block
        total = (job.replica_tasks if serving else job.tasks) * k
        if serving and sp != total:
            return (
                f"domain_block: a serving replica is one logical super-pod: set domain_block to its {total} dies "
                "or leave it out"
            )
        if sp < A3_DIES_PER_NODE:
            if sp != total:
                return f"domain_block: {sp} below 16 must equal the job's {total} dies"
        elif sp % A3_DIES_PER_NODE:
            return f"domain_block: {sp} must be a multiple of {A3_DIES_PER_NODE} dies"
        elif total % sp:
            return f"domain_block: the job's {total} dies are not a multiple of domain_block {sp}"
    return None


def _groups(devices: Sequence[Device], free: Sequence[bool]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in devices:
        g = d.group if d.group is not None else d.index // B_GROUP_SIZE
        out.setdefault(g, [])
        if free[d.index]:
            out[g].append(d.index)
    return out


def select_910b(devices: Sequence[Device], free: Sequence[bool], k: int) -> tuple[int, ...] | None:
    """NPU indices for a 910B task of k NPUs on one node, or None."""
    if k == 8:
        idx = [d.index for d in devices if free[d.index]]
        return tuple(idx) if len(idx) == len(devices) and len(idx) >= 8 else None
    groups = _groups(devices, free)
    for want in B_GROUP_PREFERENCE.get(k, ()):
        for g in sorted(groups):
            if len(groups[g]) == want:
                return tuple(groups[g][:k])
    return None


def select_910c(devices: Sequence[Device], free: Sequence[bool], k: int) -> tuple[int, ...] | None:
    """Die indices for a 910C task of k dies on one node, or None. Modules = die pairs."""
    modules: dict[int, list[int]] = {}
    for d in devices:
        m = d.package if d.package is not None else d.index // 2
        modules.setdefault(m, []).append(d.index)
    if k == 1:
        half = [m for m in sorted(modules) if sum(free[i] for i in modules[m]) == 1]
        for m in half:
            return tuple(i for i in modules[m] if free[i])
        for m in sorted(modules):
            for i in modules[m]:
                if free[i]:
                    return (i,)
        return None
    whole = [m for m in sorted(modules) if all(free[i] for i in modules[m]) and len(modules[m]) == 2]
    need = k // 2
    if len(whole) < need:
        return None
    return tuple(i for m in whole[:need] for i in modules[m])
