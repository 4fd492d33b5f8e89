"""Adapter: the one fabric model (``xpod.hal.cluster`` / ``xpod.hal.topology``) and the device
catalog (``xpod.hal.catalog``) -> the scheduler core's ``Node``, ``Device`` and ``Fabric``.

The rest of the core does not import ``hal.cluster``; only this adapter does, so the core stays
testable from fluent builders alone. Mapping:

* one ``Device`` per schedulable unit of ``hal.topology`` (a die on 910C); its ``package`` when
  dies are the unit, its ``group`` from the node group's ``scope: group`` tier (``groupSize``);
  memory and BF16 per unit from the catalog (``enrich_device``: the same enrichment for the
  cluster file's nodes and for nodes an agent registers);
* ``Node.domains``: the node's domain at every topology level (``supernode``, ``rack``, ...);
  ``failure_domain`` = its ``rack`` domain (else its super-node, else the node itself);
  ``labels`` = its node group's labels;
* ``Fabric`` (``fabric_from_cluster``): one tier per scope that a descriptor tier uses, with
  the tier names, whether a scale-up plane covers it, and the slowest bandwidth and latency;
* CPU: the descriptor gives sockets, not cores, so CPU is not a scheduling constraint for
  descriptor nodes (``UNBOUNDED_CPU_MILLI``); memory: the group's host memory or unbounded.
"""

from __future__ import annotations

from typing import Any, Iterable

from .fabric import CLUSTER, NODE, Fabric, FabricTier
from .model import Device, Node

#: CPU or memory a descriptor does not state: large enough never to bind
UNBOUNDED_CPU_MILLI = 10**9
UNBOUNDED_MEMORY_BYTES = 2**60


def enrich_device(
    index: int, model: str, vendor: str | None = None, memory_bytes: int | None = None, group: int | None = None
) -> Device:
    """A core ``Device`` for device ``index`` of a node, its facts from the catalog: the catalog
    id for a model a tool or agent names by an alias, memory (the given reading wins) and BF16
    per schedulable unit, and its package when dies are the unit. A model the catalog does not
    know keeps what was given (0 where nothing was)."""
    from xpod.hal.catalog import match_model

    m = match_model(model)
    if m is None:
        return Device(index, model, vendor or "", memory_bytes or 0, 0.0, group, None)
    return _device(index, m, memory_bytes, group)


def _device(index: int, m: Any, memory_bytes: int | None, group: int | None) -> Device:
    """A core ``Device`` from a ``hal.catalog.DeviceModel`` (a catalog or inline model)."""
    per_pkg = m.units_per_package
    return Device(
        index=index,
        model=m.id,
        vendor=m.vendor,
        memory_bytes=memory_bytes or m.memory_bytes_per_unit or 0,
        bf16_tflops=m.bf16_tflops_per_unit or 0.0,
        group=group,
        package=(index // per_pkg) if per_pkg > 1 else None,
    )


def node_from_devices(
    name: str,
    devices: Iterable[tuple[int, str, str | None, int | None]],
    *,
    cpu_milli: int = 0,
    memory_bytes: int = 0,
    labels: dict[str, str] | None = None,
    domains: dict[str, str] | None = None,
    failure_domain: str | None = None,
) -> Node:
    """A core ``Node`` for a node an agent registered: ``devices`` as (index, model, vendor,
    memory bytes or None), enriched from the catalog (``enrich_device``); CPU and memory 0 mean
    no constraint."""
    return Node(
        name=name,
        cpu_milli=cpu_milli or UNBOUNDED_CPU_MILLI,
        memory_bytes=memory_bytes or UNBOUNDED_MEMORY_BYTES,
        devices=tuple(enrich_device(i, model, vendor, mem) for i, model, vendor, mem in devices),
        domains=dict(domains or {}),
        failure_domain=failure_domain,
        labels=dict(labels or {}),
    )


def nodes_from_cluster(cluster: Any) -> list[Node]:
    """Nodes of ``cluster`` (a ``xpod.hal.cluster.Cluster``) in descriptor order, built from its
    topology (``xpod.hal.topology``)."""
    topo = cluster.topology()
    domains: dict[str, dict[str, str]] = {}
    for d in cluster.domains:
        for h in d.hosts:
            domains.setdefault(h, {})[d.level] = d.name
    out: list[Node] = []
    for g in cluster.node_groups:
        group_size = None
        for t in cluster.tiers():
            if t.fabric in g.fabrics and t.scope == "group" and t.group_size:
                group_size = t.group_size
        for h in g.hosts:
            devs = tuple(
                _device(d.index, g.model, None, (d.index // group_size) if group_size else None)
                for d in topo.devices_of_node(h)
            )
            mine = domains.get(h, {})
            out.append(
                Node(
                    name=h,
                    cpu_milli=UNBOUNDED_CPU_MILLI,
                    memory_bytes=g.memory_bytes or UNBOUNDED_MEMORY_BYTES,
                    devices=devs,
                    domains=dict(mine),
                    failure_domain=mine.get("rack") or mine.get("supernode"),
                    labels={str(k): str(v) for k, v in dict(g.labels).items()},
                )
            )
    return out


def fabric_from_cluster(cluster: Any) -> Fabric:
    """The scheduler's ``Fabric`` of a descriptor: one tier per scope its tiers use (plus
    ``node`` and ``cluster``), narrowest first."""
    by_scope: dict[str, list[Any]] = {}
    for t in cluster.tiers():
        by_scope.setdefault(t.scope, []).append(t)
    planes = {f.name: f.plane for f in cluster.fabrics}
    tiers = []
    for scope in cluster.scopes():
        ts = by_scope.get(scope, [])
        if not ts and scope not in (NODE, CLUSTER):
            continue
        bws = [t.bandwidth_bytes_per_s for t in ts]
        lats = [t.latency_seconds for t in ts]
        tiers.append(
            FabricTier(
                level=scope,
                names=tuple(dict.fromkeys(t.name for t in ts if t.name)),
                scale_up=any(planes.get(t.fabric) == "scale-up" for t in ts),
                bandwidth_bytes_per_s=None if not bws or None in bws else min(bws),
                latency_seconds=None if not lats or None in lats else max(lats),
            )
        )
    return Fabric(tuple(tiers))


def load_nodes(path: str) -> list[Node]:
    """Read and validate a cluster YAML (``XpodError`` with FILE:LINE:COL on problems)."""
    from xpod.hal.cluster import load_cluster

    return nodes_from_cluster(load_cluster(path))


def load_inventory(path: str) -> tuple[list[Node], Fabric]:
    """Nodes and fabric of a cluster YAML."""
    from xpod.hal.cluster import load_cluster

    cluster = load_cluster(path)
    return nodes_from_cluster(cluster), fabric_from_cluster(cluster)
