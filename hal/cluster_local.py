"""``xpod cluster local``: a one-node descriptor of this machine, built from device discovery.

The node is this host (its name made a valid node name); its accelerators come from every
available backend. An xpod/v1 node group holds one device model, so on a host with several
accelerator models the most numerous one is described and the others are named in a warning.
Scale-up figures come from the catalog; anything the catalog does not know is left out rather
than guessed. The result is validated with the same loader as any file before it is returned.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from typing import Any

from .catalog import match_model


def _node_name(raw: str) -> str:
    name = re.sub(r"[^a-z0-9._-]", "-", raw.lower()).strip("-._") or "localhost"
    return name[:63].rstrip("-._") or "localhost"


def local_descriptor(
    include_simulated: bool = False, name: str | None = None, host: str | None = None
) -> tuple[str, list[str]]:
    """(descriptor YAML text, warnings) for this host."""
    from .registry import available_backends

    devices = [d for b in available_backends(include_simulated=include_simulated) for d in b.devices()]
    return build_descriptor(devices, host=host or socket.gethostname(), name=name), _warnings(devices)


def _accelerators(devices):
    return [d for d in devices if d.vendor != "cpu" and d.model != "cpu"]


def _warnings(devices) -> list[str]:
    counts = Counter(d.model for d in _accelerators(devices))
    if len(counts) <= 1:
        return []
    (kept, _), *rest = counts.most_common()
    return [
        f"this host also has {', '.join(f'{n} x {m}' for m, n in rest)}; an xpod/v1 node group holds one device model, "
        f"so only {kept} is described"
    ]


def build_descriptor(devices, host: str, name: str | None = None) -> str:
    """The descriptor text for one node holding ``devices`` (``DeviceInfo`` list)."""
    import yaml

    from .cluster import parse_cluster_text

    node = _node_name(host)
    accel = _accelerators(devices)
    cpus = [d for d in devices if d.vendor == "cpu"]
    spec: dict[str, Any] = {}
    group: dict[str, Any] = {"name": "local", "hosts": node}
    if accel:
        model_name, count = Counter(d.model for d in accel).most_common()[0]
        sample = next(d for d in accel if d.model == model_name)
        model = match_model(model_name) or match_model(sample.name)
        if model is not None:
            model_id = model.id
        else:
            model_id = _node_name(model_name)
            inline: dict[str, Any] = {"vendor": sample.vendor, "displayName": sample.name or model_name}
            if sample.memory_total_bytes:
                inline["memory"] = sample.memory_total_bytes
            if sample.dies > 1:
                inline["diesPerPackage"] = sample.dies
            spec["deviceModels"] = {model_id: inline}
        group["devices"] = {"model": model_id, "packagesPerNode": count}
        units = count * (model.units_per_package if model else 1)
        if units > 1:
            tiers: list[dict[str, Any]] = []
            fabrics: list[dict[str, Any]] = []
            if model is not None and model.units_per_package > 1:
                pkg: dict[str, Any] = {
                    "name": "package",
                    "plane": "scale-up",
                    "tiers": [{"tier": 1, "scope": "package"}],
                }
                if model.vendor == "ascend":
                    pkg["link"] = "SIO"
                fabrics.append(pkg)
            link = (model.intra_node_link if model else None) or "PCIe"
            tier: dict[str, Any] = {"tier": len(fabrics) + 1, "scope": "node"}
            if model is not None and model.intra_node_bandwidth_bytes_per_s:
                tier["bandwidth"] = model.intra_node_bandwidth_bytes_per_s // model.units_per_package
            tiers.append(tier)
            fabrics.append({"name": "scale-up", "plane": "scale-up", "link": link, "tiers": tiers})
            spec["fabrics"] = fabrics
    if cpus:
        c = cpus[0]
        cpu: dict[str, Any] = {}
        if c.name:
            cpu["model"] = c.name
        if isinstance(c.extra.get("sockets"), int) and c.extra["sockets"] >= 1:
            cpu["sockets"] = c.extra["sockets"]
        if isinstance(c.extra.get("physical_cores"), int) and c.extra["physical_cores"] >= 1:
            cpu["cores"] = c.extra["physical_cores"]
        if cpu:
            group["cpu"] = cpu
        mem = sum(d.memory_total_bytes or 0 for d in cpus)
        if mem > 0:
            group["memory"] = mem
    if any(d.simulated for d in devices):
        group["labels"] = {"xpod/simulated": True}
    spec["nodeGroups"] = [group]
    doc = {"apiVersion": "xpod/v1", "kind": "Cluster", "metadata": {"name": _node_name(name or host)}, "spec": spec}
    text = "# This machine, from `xpod cluster local` (device discovery).\n" + yaml.safe_dump(doc, sort_keys=False)
    parse_cluster_text(text, source="<xpod cluster local>")  # a failure here is a bug: it keeps its traceback
    return text
