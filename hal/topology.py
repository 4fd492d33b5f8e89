"""The topology of a validated cluster: which tier joins any two devices, at what cost.

A ``Device`` is one schedulable unit (a die on Ascend 910C, a package elsewhere), named
``"<node>/<index>"`` (``cm-n00/3``: node cm-n00, device 3 = package 1, die 1). For every tier
number each device has a *key*: the fabric plus the part of the cluster that tier's scope
covers (its package, its group of ``groupSize``, its node, its rack/super-node domain, or the
whole cluster), or none when the device's node group is not on that tier. Two devices are
joined by the lowest-numbered tier at which their keys are equal. The loader guarantees that
keys nest (the tier relation is an ultrametric) and that every pair has a joining tier.

Users: the collectives take ``groups(tier)`` for hierarchical algorithms; the scheduler takes
``groups(tier)`` for free blocks per tier; MoE placement takes ``node_of``/``supernode_of`` and
``distance_matrix``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import XpodError

if TYPE_CHECKING:
    from .cluster import Cluster, Tier


@dataclasses.dataclass(frozen=True)
class Device:
    """One schedulable device of the cluster."""

    node: str  # host name
    index: int  # schedulable index within the node: 0 .. units_per_node - 1
    package: int  # package (chip) index within the node
    die: int | None  # die within the package when dies are the schedulable unit, else None
    model: str  # catalog (or inline) model id

    @property
    def id(self) -> str:
        return f"{self.node}/{self.index}"

    def __str__(self) -> str:
        return self.id


@dataclasses.dataclass(frozen=True)
class RankTier:
    """One tier as a set of ranks sees it (``Topology.rank_tiers``), closest first.

    ``groups`` partitions ``range(len(devices))``: ranks joined at this tier or closer share a
    group; every group lies inside one group of the next ``RankTier``."""

    number: int  # the cluster's tier number
    scope: str
    fabrics: tuple[str, ...]  # fabrics of this tier number the ranks use
    groups: tuple[tuple[int, ...], ...]  # rank indices, each group in rank order
    bandwidth_bytes_per_s: int | None  # the slowest of those fabrics; None if any is unknown
    latency_seconds: float | None  # the slowest of those fabrics; None if any is unknown


class Topology:
    """Built from a ``Cluster`` (``cluster.topology()``); immutable once built."""

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster
        self._tiers_by_number: dict[int, list["Tier"]] = {}
        for t in cluster.tiers():
            self._tiers_by_number.setdefault(t.number, []).append(t)
        self._numbers = sorted(self._tiers_by_number)
        self._domain: dict[tuple[str, str], str] = {}  # (level, node) -> domain name
        for d in cluster.domains:
            for h in d.hosts:
                self._domain[(d.level, h)] = d.name
        devices: list[Device] = []
        self._node_devices: dict[str, tuple[Device, ...]] = {}
        self._group_of_node: dict[str, Any] = {}
        for g in cluster.node_groups:
            per_pkg = g.model.units_per_package if g.model else 1
            for h in g.hosts:
                self._group_of_node[h] = g
                mine = (
                    tuple(
                        Device(h, i, i // per_pkg, (i % per_pkg) if per_pkg > 1 else None, g.model.id)
                        for i in range(g.units_per_node)
                    )
                    if g.model
                    else ()
                )
                self._node_devices[h] = mine
                devices.extend(mine)
        self._devices = tuple(devices)
        self._pos = {d: i for i, d in enumerate(self._devices)}
        self._by_id = {d.id: d for d in self._devices}
        # keys[number][i]: hashable key of device i at that tier number, or None
        self._keys: dict[int, list[Any]] = {n: [self._key(d, n) for d in self._devices] for n in self._numbers}

    # -- keys -------------------------------------------------------------------------------

    def _tier_for(self, node: str, number: int) -> "Tier | None":
        group = self._group_of_node[node]
        for t in self._tiers_by_number.get(number, ()):
            if t.fabric in group.fabrics:
                return t
        return None

    def _key(self, d: Device, number: int) -> Any:
        t = self._tier_for(d.node, number)
        if t is None:
            return None
        if t.scope == "package":
            return (t.fabric, d.node, d.package)
        if t.scope == "group":
            return (t.fabric, d.node, d.index // (t.group_size or 1))
        if t.scope == "node":
            return (t.fabric, d.node)
        if t.scope == "cluster":
            return (t.fabric,)
        dom = self._domain.get((t.scope, d.node))
        return None if dom is None else (t.fabric, dom)

    # -- devices ----------------------------------------------------------------------------

    def devices(self) -> tuple[Device, ...]:
        """Every device, node groups in file order, nodes in hostlist order."""
        return self._devices

    def device(self, device_id: str) -> Device:
        """``"cm-n00/3"`` -> the Device; ``XpodError`` if there is none."""
        try:
            return self._by_id[device_id]
        except KeyError:
            raise XpodError(f"no device {device_id!r} in cluster {self.cluster.name!r} (ids are NODE/INDEX)") from None

    def _dev(self, d: "Device | str") -> Device:
        return self.device(d) if isinstance(d, str) else d

    def nodes(self) -> list[str]:
        return self.cluster.nodes()

    def devices_of_node(self, node: str) -> tuple[Device, ...]:
        if node not in self._node_devices:
            raise XpodError(f"no node {node!r} in cluster {self.cluster.name!r}")
        return self._node_devices[node]

    def node_of(self, d: "Device | str") -> str:
        return self._dev(d).node

    def domain_of(self, d: "Device | str", level: str) -> str | None:
        """The name of the ``level`` domain (rack, supernode, ...) holding the device's node."""
        if level not in self.cluster.levels:
            raise XpodError(
                f"no topology level {level!r} in cluster {self.cluster.name!r}; levels: {', '.join(self.cluster.levels) or 'none'}"
            )
        return self._domain.get((level, self._dev(d).node))

    def supernode_of(self, d: "Device | str") -> str | None:
        """The super-node domain of the device, or None when the cluster has no such level."""
        if "supernode" not in self.cluster.levels:
            return None
        return self._domain.get(("supernode", self._dev(d).node))

    # -- tiers ------------------------------------------------------------------------------

    def tier_numbers(self) -> list[int]:
        """Tier numbers in use, closest first."""
        return list(self._numbers)

    def tiers(self, number: int | None = None) -> tuple["Tier", ...]:
        """All tiers (closest first), or those with one number (one per fabric)."""
        if number is None:
            return self.cluster.tiers()
        return tuple(self._tiers_by_number.get(number, ()))

    def tier_between(self, a: "Device | str", b: "Device | str") -> "Tier | None":
        """The tier that joins two devices (None when ``a == b``): the closest tier whose scope
        holds both on a fabric both are on."""
        a, b = self._dev(a), self._dev(b)
        if a == b:
            return None
        ia, ib = self._pos[a], self._pos[b]
        for n in self._numbers:
            ka = self._keys[n][ia]
            if ka is not None and ka == self._keys[n][ib]:
                return self._tier_for(a.node, n)
        return None

    def bandwidth_bytes_per_s(self, a: "Device | str", b: "Device | str") -> int | None:
        t = self.tier_between(a, b)
        return None if t is None else t.bandwidth_bytes_per_s

    def latency_seconds(self, a: "Device | str", b: "Device | str") -> float | None:
        t = self.tier_between(a, b)
        return None if t is None else t.latency_seconds

    def groups(self, number: int) -> list[tuple[Device, ...]]:
        """The devices one tier joins, as disjoint groups (e.g. tier "node": one group per
        node; tier "supernode": one per super-node). Devices not on that tier are left out."""
        if number not in self._keys:
            raise XpodError(
                f"no tier {number} in cluster {self.cluster.name!r}; tiers: {', '.join(map(str, self._numbers)) or 'none'}"
            )
        out: dict[Any, list[Device]] = {}
        for d, k in zip(self._devices, self._keys[number]):
            if k is not None:
                out.setdefault(k, []).append(d)
        return [tuple(v) for v in out.values()]

    def groups_on(self, tier: "Tier") -> list[tuple[Device, ...]]:
        """Like ``groups(tier.number)`` but only the groups on that tier's fabric."""
        return [g for g in self.groups(tier.number) if self._keys[tier.number][self._pos[g[0]]][0] == tier.fabric]

    def distance_matrix(self, devices: "Sequence[Device | str] | None" = None):
        """``numpy`` int matrix: entry ``[i][j]`` is the tier number joining devices i and j
        (0 on the diagonal and between equal devices; -1 where no tier joins them)."""
        import numpy as np

        devs = [self._dev(d) for d in (self._devices if devices is None else devices)]
        idx = np.array([self._pos[d] for d in devs], dtype=np.int64)
        n = len(devs)
        out = np.full((n, n), -1, dtype=np.int64)
        for num in reversed(self._numbers):  # closest last, so it wins
            codes: dict[Any, int] = {}
            col = np.array(
                [codes.setdefault(k, len(codes)) if k is not None else -1 for k in self._keys[num]], dtype=np.int64
            )[idx]
            same = (col[:, None] == col[None, :]) & (col[:, None] >= 0)
            out[same] = num
        same_dev = idx[:, None] == idx[None, :]
        out[same_dev] = 0
        return out

    def supernodes(self) -> list[str]:
        """Names of the super-node domains, in file order (empty when there is no such level)."""
        return [d.name for d in self.cluster.domains if d.level == "supernode"]

    def group_of(self, d: "Device | str", number: int) -> tuple[Device, ...] | None:
        """The group of tier ``number`` holding the device, or None when it is not on that tier."""
        d = self._dev(d)
        key = self._keys[number][self._pos[d]] if number in self._keys else None
        if key is None:
            return None
        return tuple(x for x, k in zip(self._devices, self._keys[number]) if k == key)

    def rank_tiers(self, devices: "Sequence[Device | str]") -> list[RankTier]:
        """The tiers that matter to a set of ranks (rank i runs on ``devices[i]``), closest
        first, for hierarchical collectives: a tier is kept only if it joins more ranks than
        the tiers before it. A rank not on some tier keeps its group from the tier before
        (its node group is not on that fabric), which keeps the groups nested."""
        devs = [self._dev(d) for d in devices]
        if len(set(devs)) != len(devs):
            raise XpodError("rank_tiers: a device appears twice; give one device per rank")
        prev: list[Any] = [("rank", i) for i in range(len(devs))]
        out: list[RankTier] = []
        for n in self._numbers:
            cur = []
            for i, d in enumerate(devs):
                k = self._keys[n][self._pos[d]]
                cur.append(("key", k) if k is not None else ("carry", prev[i]))
            if len(set(cur)) < len(set(prev)):
                groups: dict[Any, list[int]] = {}
                for i, k in enumerate(cur):
                    groups.setdefault(k, []).append(i)
                used = sorted({t.fabric for d in devs if (t := self._tier_for(d.node, n)) is not None})
                tiers = [t for t in self._tiers_by_number[n] if t.fabric in used]
                bws = [t.bandwidth_bytes_per_s for t in tiers]
                lats = [t.latency_seconds for t in tiers]
                out.append(
                    RankTier(
                        number=n,
                        scope=tiers[0].scope if tiers else self._tiers_by_number[n][0].scope,
                        fabrics=tuple(used),
                        groups=tuple(tuple(g) for g in groups.values()),
                        bandwidth_bytes_per_s=_min_known(bws),
                        latency_seconds=_max_known(lats),
                    )
                )
            prev = cur
        return out

    def unjoined_example(self) -> tuple[Device, Device] | None:
        """A pair of devices no tier joins, or None when every pair is joined.

        Because keys nest, it is enough to compare each device with the first one at the
        widest tier each is on, and to check the first device reaches all others."""
        if len(self._devices) < 2:
            return None
        first = self._devices[0]
        for d in self._devices[1:]:
            if self.tier_between(first, d) is None:
                return (first, d)
        return None

    def describe(self) -> list[dict[str, Any]]:
        """Per tier number: scope, fabrics, how many groups and devices per group."""
        out = []
        for n in self._numbers:
            gs = self.groups(n)
            sizes = sorted({len(g) for g in gs})
            out.append(
                {
                    "tier": n,
                    "scope": self._tiers_by_number[n][0].scope,
                    "fabrics": [t.fabric for t in self._tiers_by_number[n]],
                    "groups": len(gs),
                    "devices_per_group": sizes,
                }
            )
        return out


def pairs(devices: Iterable[Device]) -> Iterable[tuple[Device, Device]]:
    devs = list(devices)
    for i, a in enumerate(devs):
        for b in devs[i + 1 :]:
            yield a, b


def _min_known(values: list[int | None]) -> int | None:
    """The smallest value, or None when there is none or one of them is unknown."""
    known = [v for v in values if v is not None]
    return min(known) if known and len(known) == len(values) else None


def _max_known(values: list[float | None]) -> float | None:
    """The largest value, or None when there is none or one of them is unknown."""
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


# --------------------------------------------------------------- a job's placement as a file

#: the environment variable naming a job's placement file (the agent writes it for each task)
TOPOLOGY_ENV = "XPOD_TOPOLOGY"
#: annotations of a placement file (``scheduler.core.fabric.placement_document`` writes them)
RANKS_ANNOTATION = "xpod/ranks"
DEVICES_ANNOTATION = "xpod/devices"


@dataclasses.dataclass(frozen=True)
class JobTopology:
    """A job's placement read back from its topology file: the topology of the nodes it runs
    on, the device each rank runs on (rank i: ``ranks[i]``) and every device it holds."""

    topology: Topology
    ranks: tuple[Device, ...]
    devices: tuple[Device, ...]
    source: str  # the file

    def node_count(self) -> int:
        return len({d.node for d in self.devices})

    def supernode_count(self) -> int:
        """Super-nodes the held devices span (1 when the cluster names none)."""
        return len({self.topology.supernode_of(d) for d in self.devices}) or 1


def load_job_topology(path: str) -> JobTopology:
    """Read a job's placement file (a cluster descriptor whose ``metadata.annotations`` name
    ``xpod/ranks`` and ``xpod/devices``, comma-separated ``NODE/INDEX`` ids). ``XpodError``
    with the file and what is wrong: descriptor problems as ``FILE:LINE:COL``, a missing
    annotation, an id that names no device of the file."""
    from .cluster import load_cluster

    cluster = load_cluster(path)
    topo = cluster.topology()

    def ids(key: str) -> tuple[Device, ...]:
        raw = cluster.annotations.get(key)
        if not isinstance(raw, str) or not raw.strip():
            raise XpodError(f"{path}: metadata.annotations.{key}: missing; a placement file lists NODE/INDEX ids there")
        out = []
        for item in raw.split(","):
            try:
                out.append(topo.device(item.strip()))
            except XpodError:
                raise XpodError(
                    f"{path}: metadata.annotations.{key}: {item.strip()!r} names no device of this file"
                ) from None
        return tuple(out)

    return JobTopology(topo, ids(RANKS_ANNOTATION), ids(DEVICES_ANNOTATION), path)
