"""The host CPU as a device: sockets, cores, NUMA nodes and memory from psutil and sysfs.

One ``DeviceInfo`` per NUMA node (DeepSpeed's CPU accelerator counts NUMA nodes with cores as
its devices): that is the unit a CPU job is pinned to. Collectives use gloo.
"""

from __future__ import annotations

from xpod.hal.backend import Backend, Capability, IntraNodeTopology, Link, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo, Health, MetricsSample

from . import _host


class CpuBackend(Backend):
    name = "cpu"
    torch_module = "torch"
    device_type = "cpu"
    dist_backend = "gloo"
    visible_vars = VisibleDevicesVars(None, None)
    tools = ()
    unsupported = {
        Capability.FRACTIONAL: "CPU jobs share cores through the OS scheduler, not device slices",
        Capability.HEALTH: "the host CPU has no health reading; a running host reports OK",
    }

    def devices(self) -> list[DeviceInfo]:
        host = _host.read_host()
        out = []
        for i, node in enumerate(host.numa_nodes):
            out.append(
                DeviceInfo(
                    vendor="cpu",
                    model="cpu",
                    name=host.model_name,
                    index=i,
                    physical_index=node.node_id,
                    memory_total_bytes=node.memory_total_bytes,
                    memory_used_bytes=node.memory_used_bytes,
                    health=Health.OK,
                    numa_node=node.node_id,
                    extra={
                        "cores": len(node.cpus),
                        "cpus": _host.compress_cpulist(node.cpus),
                        "sockets": host.sockets,
                        "physical_cores": host.physical_cores,
                        "logical_cpus": host.logical_cpus,
                    },
                )
            )
        return out

    def metrics(self) -> list[MetricsSample]:
        util = _host.cpu_utilization_by_node()
        temp = _host.package_temperature_celsius()
        return [
            MetricsSample(
                index=d.index,
                memory_used_bytes=d.memory_used_bytes,
                memory_total_bytes=d.memory_total_bytes,
                utilization_ratio=util.get(d.physical_index),
                temperature_celsius=temp,
                health=d.health,
            )
            for d in self.devices()
        ]

    def topology(self) -> IntraNodeTopology:
        idx = tuple(d.index for d in self.devices())
        links = tuple(tuple(Link.SELF if a == b else Link.NUMA for b in idx) for a in idx)
        return IntraNodeTopology(indices=idx, links=links, fabric_name=None)


def probe() -> ProbeResult:
    try:
        import psutil  # noqa: F401  (a hard dependency; checked so the reason is precise)
    except ImportError as err:
        return f"psutil is not importable: {err}"
    return CpuBackend()
