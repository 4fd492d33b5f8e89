"""The backend contract: what each vendor plugin (``backends/<vendor>``) implements.

A backend is found through the entry-point group ``xpod.backends``. Each entry point names a
zero-argument *probe* that does a cheap, side-effect-free check and returns either a
``Backend`` instance or a reason string saying why the backend cannot be used here (vLLM's
platform-plugin pattern, with the reason kept instead of a silent ``None``). Probes must not
initialise a device runtime; the registry bounds their time and catches what they raise.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Union

from .device import DeviceInfo, Health, MetricsSample
from .errors import BackendUnavailable, CapabilityUnsupported


class Capability(str, enum.Enum):
    """Things a backend may lack. A backend lists what it lacks, each with the reason."""

    TORCH_DEVICES = "torch_devices"  # tensors on the device through a torch extension
    DISTRIBUTED = "distributed"  # a torch.distributed backend for collectives
    ALL_TO_ALL = "all_to_all"  # torch.distributed all_to_all_single on that backend
    UNEVEN_ALL_GATHER = "uneven_all_gather"  # all_gather of tensors whose dim 0 differs by rank
    HEALTH = "health"  # an explicit health reading (Ascend) or mapped signals
    METRICS = "metrics"  # utilisation / temperature / power readings
    TOPOLOGY = "topology"  # an intra-node link matrix
    FRACTIONAL = "fractional"  # sharing one device between processes (MIG, vNPU, sMLU)


class Link(str, enum.Enum):
    """How two devices of one node are joined, closest first."""

    SELF = "self"
    DIE = "die"  # two dies of one package (Ascend 910C)
    FABRIC = "fabric"  # vendor scale-up link: HCCS, NVLink, MLU-Link, MTLink, xGMI, UB
    PCIE_SWITCH = "pcie-switch"  # same PCIe switch
    PCIE_HOST = "pcie-host"  # through the host bridge / CPU
    NUMA = "numa"  # across sockets (SMP interconnect)
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class IntraNodeTopology:
    """The link between each pair of this node's devices (indices as in ``devices()``)."""

    indices: tuple[int, ...]
    links: tuple[tuple[Link, ...], ...]  # links[i][j], symmetric, SELF on the diagonal
    fabric_name: str | None = None  # "HCCS", "NVLink", ...

    def link(self, a: int, b: int) -> Link:
        return self.links[self.indices.index(a)][self.indices.index(b)]


@dataclasses.dataclass(frozen=True)
class VisibleDevicesVars:
    """The visible-devices variables a vendor uses: per process (runtime) and per container."""

    process: str | None  # e.g. ASCEND_RT_VISIBLE_DEVICES; None for CPU
    container: str | None  # e.g. ASCEND_VISIBLE_DEVICES (container runtime / device plugin)


class Backend(abc.ABC):
    """One vendor's devices on this host.

    Class attributes describe the vendor (they are facts, not probes); the methods read the
    host. ``devices()`` is cheap enough to call at every agent heartbeat.
    """

    #: backend id, the entry-point name ("ascend", "cuda", ...)
    name: str = ""
    #: the Python module of the vendor's torch extension ("torch_npu"), or "torch"
    torch_module: str = "torch"
    #: the torch device type string ("npu", "mlu", "musa", "cuda", "cpu")
    device_type: str = "cpu"
    #: the torch.distributed backend name ("hccl", "cncl", "mccl", "nccl", "gloo")
    dist_backend: str = "gloo"
    #: visible-devices variables
    visible_vars: VisibleDevicesVars = VisibleDevicesVars(None, None)
    #: management tool names, in order of preference
    tools: tuple[str, ...] = ()
    #: what this backend lacks, with the reason (SkyPilot-style: data, not code paths)
    unsupported: Mapping[Capability, str] = {}
    #: True for the simulated backend only
    simulated: bool = False

    @abc.abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices on this host, ordered by logical index."""

    def health(self) -> dict[int, Health]:
        """Current health per logical index. Default: the health in ``devices()``."""
        return {d.index: d.health for d in self.devices()}

    def metrics(self) -> list[MetricsSample]:
        """One sample per device. Default: memory and health from ``devices()``."""
        return [
            MetricsSample(
                index=d.index,
                memory_used_bytes=d.memory_used_bytes,
                memory_total_bytes=d.memory_total_bytes,
                health=d.health,
            )
            for d in self.devices()
        ]

    def topology(self) -> IntraNodeTopology:
        """Intra-node links. Default: unknown links between distinct devices."""
        idx = tuple(d.index for d in self.devices())
        links = tuple(tuple(Link.SELF if a == b else Link.UNKNOWN for b in idx) for a in idx)
        return IntraNodeTopology(indices=idx, links=links)

    def visible_env(self, indices: Sequence[int]) -> dict[str, str]:
        """Variables a launched process needs to see exactly ``indices`` (logical indices
        of this host, i.e. ``DeviceInfo.index``) and nothing else.

        The process-level variable is set for every vendor that has one. The container-level
        variable is for container runtimes and is not set here: inside a process it would
        be ignored or, worse, double-filter the indices.
        """
        if any(i < 0 for i in indices):
            raise ValueError(f"device indices must be >= 0, got {list(indices)}")
        if len(set(indices)) != len(indices):
            raise ValueError(f"device indices repeat: {list(indices)}")
        if self.visible_vars.process is None:
            return {}
        # Ascend stops parsing at the first id out of order; sort for every vendor so a
        # process's local rank order is the same everywhere (hal.md P1).
        return {self.visible_vars.process: ",".join(str(i) for i in sorted(indices))}

    def supports(self, capability: Capability) -> bool:
        return capability not in self.unsupported

    def require(self, capability: Capability) -> None:
        """Raise ``CapabilityUnsupported`` (with the backend's reason) if it lacks ``capability``."""
        if capability in self.unsupported:
            raise CapabilityUnsupported(self.name, capability, self.unsupported[capability])

    def synchronize(self, device: Any) -> None:
        """Block until ``device`` (a ``torch.device`` of this backend's ``device_type``) has run
        everything queued on it: compute kernels and the collective library's own streams alike
        (``torch.cuda.synchronize`` and ``torch.npu.synchronize`` wait for every stream of the
        device). ``Communicator.close()`` calls it before its barrier, so no rank passes the
        barrier while its collectives still run. Call ``load_torch_extension`` first. The default
        is ``torch.<device_type>.synchronize(device)``; for the CPU, whose ops are done when they
        return, that is ``torch.cpu.synchronize``, which returns at once. A backend whose
        namespace lacks ``synchronize`` overrides this. It has no timeout: a caller that needs a
        bound waits for it on another thread (the vendors' synchronize releases the GIL)."""
        import torch

        getattr(torch, self.device_type).synchronize(device)

    def load_torch_extension(self) -> None:
        """Make this backend's torch device type usable (``torch.npu`` once ``torch_npu`` is
        imported): called before torch touches its devices. The import of a vendor extension
        happens in the backend's SDK seam (``backends/<vendor>/_sdk.py``), never by module name
        here. Raises ``BackendUnavailable`` with the reason when it cannot load. The default
        serves backends whose ``torch_module`` is torch itself; others override it."""
        if self.torch_module != "torch":
            raise BackendUnavailable(
                self.name, f"it names {self.torch_module} but does not say how to load it (load_torch_extension)"
            )


#: What a probe returns: a ready backend, or the reason it is unavailable.
ProbeResult = Union[Backend, str]
Probe = Callable[[], ProbeResult]


def parse_visible_devices(value: str | None) -> list[int] | None:
    """Read a visible-devices variable the way the vendor runtimes do.

    ``None`` (unset) means every device is visible; ``""`` means none (Ray treats
    ``"NoDevFiles"`` the same). Parsing stops at the first token that is not a
    non-negative integer, as Ascend's runtime does (``"1, 2,3"`` gives ``[1]``), and a
    repeated id ends the list as well.
    """
    if value is None:
        return None
    value = value.strip()
    if value in ("", "NoDevFiles"):
        return []
    out: list[int] = []
    for token in value.split(","):
        if not token.isdigit() or int(token) in out:
            break
        out.append(int(token))
    return out
