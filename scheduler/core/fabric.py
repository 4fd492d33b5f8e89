"""The cluster's fabric as the scheduler sees it: tiers, narrowest first, each a level of the
topology with what the descriptor says about its links.

One fabric model (``xpod.hal.topology``) feeds the scheduler, the collectives and MoE placement.
``scheduler.core.from_cluster`` builds a ``Fabric`` from a descriptor's tiers: a tier's
*level* is its scope (``package``, ``group``, ``node``, a topology level such as ``rack`` or
``supernode``, ``cluster``), its bandwidth and latency are the descriptor's. Nodes name the
domain they belong to at each topology level (``Node.domains``); devices name their device
group and package (``Device.group``, ``Device.package``).

A job's ``within`` names a level (``node``, ``group``, ``supernode``, ``rack``, ``cluster``),
a descriptor tier by name (``ub-l2`` means its scope, ``supernode``), or ``any`` (the cluster).
Placement tries the fabric's tiers from ``node`` up to the job's level (the topology plugin:
fewest tiers crossed first); levels below a node (``group``, ``package``) constrain each task's
devices instead. Without a descriptor (nodes from builders or agents) the fabric is derived
from the nodes: their topology levels (narrowest first by domain count) between ``node`` and
``cluster``, and ``group`` when devices carry groups.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from xpod.hal.errors import XpodError

from .model import ANY, Binding, Node
from .model import CLUSTER as CLUSTER  # re-exported: the tier names callers compare with
from .model import NODE as NODE

#: levels inside one node, narrowest first: they constrain each task's devices
NODE_LOCAL_LEVELS = ("package", "group")


@dataclasses.dataclass(frozen=True)
class FabricTier:
    """One tier: the devices of one domain of ``level`` talk over it."""

    level: str  # package | group | node | a topology level (rack, supernode, ...) | cluster
    names: tuple[str, ...] = ()  # the descriptor's tier names at this level (e.g. "ub-l2")
    scale_up: bool = False  # on a scale-up plane (one memory-semantic domain: NVLink, UB, HCCS)
    bandwidth_bytes_per_s: int | None = None  # per device, one direction; the slowest fabric's
    latency_seconds: float | None = None  # the slowest fabric's; None when unknown


@dataclasses.dataclass(frozen=True)
class Fabric:
    """Tiers narrowest first, always with ``node`` and ending at ``cluster``. A topology level
    that no fabric tier has as its scope (a rack on a flat UB super-node) is no tier: locality
    there buys nothing, so ``within`` cannot name it."""

    tiers: tuple[FabricTier, ...]

    def __post_init__(self) -> None:
        levels = [t.level for t in self.tiers]
        if NODE not in levels or CLUSTER not in levels or levels[-1] != CLUSTER:
            raise ValueError(f"a fabric needs tiers up to 'node' and ending at 'cluster', got {levels}")

    @property
    def levels(self) -> tuple[str, ...]:
        """The tiers' levels, narrowest first."""
        return tuple(t.level for t in self.tiers)

    @property
    def domain_levels(self) -> tuple[str, ...]:
        """Tier levels between a node and the cluster (rack, supernode, ...), narrowest first."""
        lv = self.levels
        return lv[lv.index(NODE) + 1 : -1]

    @property
    def scale_up_level(self) -> str | None:
        """The widest tier level above a node on a scale-up plane (a super-node: one UB or
        NVLink domain), or None when scale-up links end at the node."""
        out = None
        for t in self.tiers:
            if t.level in self.domain_levels and t.scale_up:
                out = t.level
        return out

    def tier(self, level: str) -> FabricTier | None:
        return next((t for t in self.tiers if t.level == level), None)

    def words(self) -> tuple[str, ...]:
        """Every word a ``within`` may use here."""
        names = [n for t in self.tiers for n in t.names]
        return tuple(dict.fromkeys([*self.levels, *names, ANY]))

    def resolve(self, within: str) -> str | None:
        """The level a ``within`` word means here (a level, a tier name, or ``any``); None when
        the cluster has no such level or tier."""
        if within == ANY:
            return CLUSTER
        if within in self.levels:
            return within
        for t in self.tiers:
            if within in t.names:
                return t.level
        return None

    def check(self, within: str, where: str) -> str:
        """``resolve`` or an ``XpodError`` naming the field and the words this cluster knows."""
        level = self.resolve(within)
        if level is None:
            raise XpodError(
                f"{where}: within: {within!r} is not a tier of this cluster (tiers: {', '.join(self.words())})"
            )
        return level

    def walk(self, level: str) -> tuple[str, ...]:
        """The placement tiers a job of this ``within`` level tries, fewest crossed first: the
        tier levels from ``node`` up to its level (all of them up to ``cluster`` for a level
        inside a node: that constrains each task's devices, not where tasks go)."""
        lv = self.levels
        node = lv.index(NODE)
        if level in NODE_LOCAL_LEVELS or level not in lv:
            return lv[node:]
        return lv[node : lv.index(level) + 1]


def derive(nodes: Iterable[Node], *, scale_up_levels: Iterable[str] = ("supernode",)) -> Fabric:
    """A fabric for nodes that came without a descriptor: ``group`` when a device carries one,
    ``node``, the nodes' topology levels narrowest first (more domains = narrower), ``cluster``.
    Levels named in ``scale_up_levels`` count as scale-up tiers (a builder's super-node)."""
    groups = False
    domains: dict[str, set[str]] = {}
    for n in nodes:
        groups = groups or any(d.group is not None for d in n.devices)
        for level, name in n.domains.items():
            domains.setdefault(level, set()).add(name)
    up = set(scale_up_levels)
    levels = sorted(domains, key=lambda lv: (-len(domains[lv]), lv))
    tiers = ([FabricTier("group", scale_up=True)] if groups else []) + [FabricTier(NODE, scale_up=True)]
    tiers += [FabricTier(lv, scale_up=lv in up) for lv in levels]
    tiers.append(FabricTier(CLUSTER))
    return Fabric(tuple(tiers))


# ------------------------------------------------------------------- a placement as a file

#: annotations of a rendered placement: the device of each rank (its first device), and every
#: device the placement holds; ``xpod.hal.topology.load_job_topology`` reads them back
RANKS_ANNOTATION = "xpod/ranks"
DEVICES_ANNOTATION = "xpod/devices"

_NAME_OK = re.compile(r"[^a-z0-9._-]+")


def _name(text: str, fallback: str) -> str:
    """A descriptor name (lower case letters, digits, '.', '_', '-', alphanumeric ends, <= 63)."""
    out = _NAME_OK.sub("-", text.lower()).strip("._-")[:63].strip("._-")
    return out or fallback


def placement_document(name: str, nodes: Sequence[Node], fabric: Fabric, bindings: Sequence[Binding]) -> dict[str, Any]:
    """A job's placement as a cluster descriptor (``apiVersion: xpod/v1, kind: Cluster``) that
    ``xpod.hal`` loads: the nodes its ``bindings`` use, whole, with their device model, the
    fabric's tiers (one fabric per tier, with the descriptor's bandwidth and latency) and their
    domains; ``metadata.annotations`` name the device of each rank (``xpod/ranks``: rank ``i``
    is the task numbered ``i``-th lowest among the bindings, its first device) and every device
    the placement holds (``xpod/devices``). The agent writes it where ``XPOD_TOPOLOGY`` points:
    ``xpod.hal.collectives`` takes the ranks' tiers from it (hierarchical algorithms) and
    ``xpod moe place --topology FILE`` plans on exactly these devices. ``bindings`` are one
    world's (a job's, or one serving replica's); every task must hold a device."""
    from xpod.hal.catalog import match_model

    bindings = sorted(bindings, key=lambda b: b.task)
    if not bindings:
        raise ValueError("a placement without bindings has no topology")
    if any(not b.device_indices for b in bindings):
        raise ValueError("a task without devices (CPU only) has no device to name in a topology")
    by_name = {n.name: n for n in nodes}
    used = list(dict.fromkeys(b.node for b in bindings))
    missing = [n for n in used if n not in by_name]
    if missing:
        raise ValueError(f"placement names node {missing[0]!r}, which is not among the nodes given")
    mine = [by_name[n] for n in used]
    ranks = [f"{b.node}/{b.device_indices[0]}" for b in bindings]
    held = [f"{b.node}/{i}" for b in bindings for i in b.device_indices]
    # device models: the catalog's, else declared inline from what the core knows
    inline: dict[str, dict[str, Any]] = {}
    groups: dict[tuple, list[str]] = {}
    for n in mine:
        if not n.devices:
            key: tuple = (None, 0, n.memory_bytes)
        else:
            model = n.devices[0].model
            m = match_model(model)
            per_pkg = m.units_per_package if m is not None else 1
            if m is None and model not in inline:
                d = n.devices[0]
                vendor = d.vendor if d.vendor in ("ascend", "cambricon", "mthreads", "hygon", "cuda", "cpu") else "cpu"
                inline[model] = {"vendor": vendor, **({"memory": d.memory_bytes} if d.memory_bytes else {})}
            key = (model, -(-len(n.devices) // per_pkg), n.memory_bytes)
        groups.setdefault(key, []).append(n.name)
    node_groups = []
    for i, ((model, packages, memory), hosts) in enumerate(groups.items()):
        g: dict[str, Any] = {"name": f"g{i}", "hosts": ",".join(hosts)}
        if model is not None:
            g["devices"] = {"model": model, "packagesPerNode": packages}
        if memory and memory < 2**60:
            g["memory"] = memory
        node_groups.append(g)
    has_packages = all(d.package is not None for n in mine for d in n.devices) and any(n.devices for n in mine)
    group_size = max(
        (sum(1 for d in n.devices if d.group == g) for n in mine for g in {d.group for d in n.devices} - {None}),
        default=0,
    )
    levels = [lv for lv in fabric.domain_levels if any(lv in n.domains for n in mine)]
    fabrics = []
    number = 0
    for t in fabric.tiers:
        if t.level == "package" and not has_packages or t.level == "group" and not group_size:
            continue
        if t.level not in ("package", "group", NODE, CLUSTER) and t.level not in levels:
            continue
        number += 1
        tier: dict[str, Any] = {"tier": number, "name": _name(t.names[0] if t.names else t.level, f"tier{number}")}
        tier["scope"] = t.level
        if t.level == "group":
            tier["groupSize"] = group_size
        if t.bandwidth_bytes_per_s is not None:
            tier["bandwidth"] = t.bandwidth_bytes_per_s
        if t.latency_seconds is not None:
            tier["latency"] = t.latency_seconds
        fabrics.append(
            {
                "name": f"f{number}-{_name(t.level, 'tier')}",
                "plane": "scale-up" if t.scale_up else "scale-out",
                "tiers": [tier],
            }
        )
    domains = []
    for lv in levels:
        members: dict[str, list[str]] = {}
        for n in mine:
            if lv in n.domains:
                members.setdefault(n.domains[lv], []).append(n.name)
        domains += [
            {"name": _name(dom, f"{lv}-{k}"), "level": lv, "hosts": ",".join(h)}
            for k, (dom, h) in enumerate(members.items())
        ]
    spec: dict[str, Any] = {"fabrics": fabrics, "nodeGroups": node_groups}
    if inline:
        spec["deviceModels"] = inline
    if levels:
        spec["topology"] = {"levels": list(reversed(levels)), "domains": domains}
    return {
        "apiVersion": "xpod/v1",
        "kind": "Cluster",
        "metadata": {
            "name": _name(name, "placement"),
            "annotations": {RANKS_ANNOTATION: ",".join(ranks), DEVICES_ANNOTATION: ",".join(held)},
        },
        "spec": spec,
    }
