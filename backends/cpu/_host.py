"""Reading the host: NUMA nodes from sysfs, sockets and cores from /proc/cpuinfo, psutil for
memory and load. Kept apart so the backend class reads as the contract only."""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import psutil

SYS_NODE = "/sys/devices/system/node"


@dataclasses.dataclass(frozen=True)
class NumaNode:
    node_id: int
    cpus: tuple[int, ...]
    memory_total_bytes: int
    memory_used_bytes: int


@dataclasses.dataclass(frozen=True)
class Host:
    model_name: str | None
    sockets: int
    physical_cores: int | None
    logical_cpus: int
    numa_nodes: tuple[NumaNode, ...]


def parse_cpulist(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> ``[0, 1, 2, 3, 8, 10, 11]`` (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def compress_cpulist(cpus: tuple[int, ...] | list[int]) -> str:
    """The inverse of ``parse_cpulist``."""
    cpus = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def _node_meminfo(node_dir: str) -> tuple[int, int] | None:
    try:
        with open(os.path.join(node_dir, "meminfo")) as f:
            text = f.read()
    except OSError:
        return None
    total = re.search(r"MemTotal:\s+(\d+) kB", text)
    free = re.search(r"MemFree:\s+(\d+) kB", text)
    if not total or not free:
        return None
    t, fr = int(total.group(1)) * 1024, int(free.group(1)) * 1024
    return t, t - fr


def _cpuinfo() -> tuple[str | None, int]:
    model, sockets = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "physical id":
                    sockets.add(value.strip())
    except OSError:
        pass
    return model, max(1, len(sockets))


def read_host() -> Host:
    model, sockets = _cpuinfo()
    vm = psutil.virtual_memory()
    nodes: list[NumaNode] = []
    for node_dir in sorted(glob.glob(os.path.join(SYS_NODE, "node[0-9]*")), key=lambda p: int(p.rsplit("node", 1)[1])):
        try:
            with open(os.path.join(node_dir, "cpulist")) as f:
                cpus = tuple(parse_cpulist(f.read()))
        except OSError:
            continue
        if not cpus:
            continue  # memory-only node (CXL, HBM): not a CPU device
        mem = _node_meminfo(node_dir)
        node_id = int(node_dir.rsplit("node", 1)[1])
        total, used = mem if mem else (vm.total, vm.total - vm.available)
        nodes.append(NumaNode(node_id, cpus, total, used))
    if not nodes:  # no sysfs NUMA information (containers, non-Linux): the whole host is one node
        cpus = (
            tuple(sorted(os.sched_getaffinity(0)))
            if hasattr(os, "sched_getaffinity")
            else tuple(range(psutil.cpu_count() or 1))
        )
        nodes.append(NumaNode(0, cpus, vm.total, vm.total - vm.available))
    elif len(nodes) == 1:
        # One node: psutil's view (available, not free) is the more useful "used" figure.
        n = nodes[0]
        nodes[0] = NumaNode(n.node_id, n.cpus, vm.total, vm.total - vm.available)
    return Host(
        model_name=model,
        sockets=sockets,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cpus=psutil.cpu_count(logical=True) or 1,
        numa_nodes=tuple(nodes),
    )


def cpu_utilization_by_node() -> dict[int, float]:
    """Mean utilisation (0..1) of each NUMA node's CPUs over a short interval."""
    per_cpu = psutil.cpu_percent(interval=0.1, percpu=True)
    out = {}
    for node in read_host().numa_nodes:
        vals = [per_cpu[c] for c in node.cpus if c < len(per_cpu)]
        if vals:
            out[node.node_id] = sum(vals) / len(vals) / 100.0
    return out


def package_temperature_celsius() -> float | None:
    try:
        temps = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    for key in ("coretemp", "k10temp", "zenpower", "cpu_thermal"):
        if temps.get(key):
            return max(t.current for t in temps[key])
    return None
