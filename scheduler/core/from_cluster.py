"""Adapter: a validated cluster descriptor (``xpod.hal.cluster``) -> scheduler ``Node`` values.

The scheduler core does not import ``hal.cluster``; only this adapter does, so the core stays
testable from fluent builders alone. Mapping:

* one ``Device`` per schedulable unit (a die on 910C), memory and BF16 per unit from the catalog;
* ``module`` = the package index when dies are the unit (910C die pairs);
* ``hccs_group`` = index // groupSize of the node group's ``scope: group`` tier, if any;
* ``supernode`` = the node's domain at level ``supernode``; ``failure_domain`` = its ``rack``
  domain (else the super-node, else the node itself);
* CPU: the descriptor gives sockets, not cores, so CPU is not a scheduling constraint for
  descriptor nodes (``UNBOUNDED_CPU_MILLI``); memory: the group's host memory or unbounded.
"""

from __future__ import annotations

from .model import Device, Node

#: CPU or memory a descriptor does not state: large enough never to bind
UNBOUNDED_CPU_MILLI = 10**9
UNBOUNDED_MEMORY_BYTES = 2**60


def nodes_from_cluster(cluster) -> list[Node]:
    """Nodes of ``cluster`` (a ``xpod.hal.cluster.Cluster``) in descriptor order."""
    domain: dict[tuple[str, str], str] = {}
    for d in cluster.domains:
        for h in d.hosts:
            domain[(d.level, h)] = d.name
    out: list[Node] = []
    for g in cluster.node_groups:
        group_size = None
        for f in cluster.fabrics:
            if f.name in g.fabrics:
                for t in f.tiers:
                    if t.scope == "group" and t.group_size:
                        group_size = t.group_size
        model = g.model
        per_pkg = model.units_per_package if model else 1
        for h in g.hosts:
            devs = []
            for i in range(g.units_per_node):
                devs.append(
                    Device(
                        index=i,
                        model=model.id,
                        vendor=model.vendor,
                        memory_bytes=model.memory_bytes_per_unit or 0,
                        bf16_tflops=model.bf16_tflops_per_unit or 0.0,
                        hccs_group=(i // group_size) if group_size else None,
                        module=(i // per_pkg) if per_pkg > 1 else None,
                    )
                )
            sn = domain.get(("supernode", h))
            out.append(
                Node(
                    name=h,
                    cpu_milli=UNBOUNDED_CPU_MILLI,
                    memory_bytes=g.memory_bytes or UNBOUNDED_MEMORY_BYTES,
                    devices=tuple(devs),
                    supernode=sn,
                    failure_domain=domain.get(("rack", h)) or sn,
                    labels=dict(g.labels),
                )
            )
    return out


def load_nodes(path: str) -> list[Node]:
    """Read and validate a cluster YAML (``XpodError`` with FILE:LINE:COL on problems)."""
    from xpod.hal.cluster import load_cluster

    return nodes_from_cluster(load_cluster(path))
