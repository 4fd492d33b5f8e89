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
from collections.abc import Iterable

from xpod.hal.errors import XpodError

from .model import ANY, CLUSTER, NODE, Node

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
