"""NVIDIA GPUs through a CUDA build of ``torch`` or ``nvidia-smi``.

Facts (hal.md section 1): torch module ``torch``, device type ``cuda``, collectives ``nccl``,
process variable ``CUDA_VISIBLE_DEVICES`` (NVML and nvidia-smi ignore it, P2), tool
``nvidia-smi``. Health comes from ``nvidia-smi -q`` ECC, row-remapping and page-retirement
fields (see ``nvidia_smi.py``); a HIP build of torch is not NVIDIA (see ``_sdk.py``).
"""

from __future__ import annotations

from xpod.backends._common import ToolBackend, probe_tool_backend, sample_from_device
from xpod.hal.backend import Capability, IntraNodeTopology, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo, LinkState, MetricsSample
from xpod.hal.errors import ToolOutputError
from xpod.hal.smi import ToolRunError

from . import _sdk, nvidia_smi


class CudaBackend(ToolBackend):
    name = "cuda"
    torch_module = "torch"
    device_type = "cuda"
    dist_backend = "nccl"
    # NVIDIA's container runtime reads NVIDIA_VISIBLE_DEVICES; hal.md did not re-check it in a
    # primary source (section 7), so no container variable is claimed here.
    visible_vars = VisibleDevicesVars("CUDA_VISIBLE_DEVICES", None)
    tools = ("nvidia-smi",)
    model_prefix = "nvidia"
    sdk = _sdk
    unsupported = {
        Capability.FRACTIONAL: "MIG partitioning is not driven by xpod",
    }

    def read_tool_devices(self) -> list[DeviceInfo]:
        return nvidia_smi.parse(_sdk.run_info(), source="nvidia-smi -q")

    def read_tool_topology(self) -> IntraNodeTopology | None:
        return nvidia_smi.parse_topo(_sdk.run_topo())

    def metrics(self) -> list[MetricsSample]:
        """Memory and health as ``devices()``, plus the gauges ``nvidia-smi -q`` prints
        (utilisation, temperature, power, SM and memory clocks; energy where the driver prints
        a total) and each NVLink's state from ``nvidia-smi nvlink -s`` (absent when that fails)."""
        devices = self.devices()
        links: dict[int, list[tuple[str, bool]]] = {}
        if _sdk.tool_path() is not None:
            try:
                links = nvidia_smi.parse_nvlink_status(_sdk.run_nvlink_status())
            except (ToolRunError, ToolOutputError):
                links = {}  # no NVLink (PCIe cards) or an old driver: no link series
        return [
            sample_from_device(d, tuple(LinkState("nvlink", n, up) for n, up in links.get(d.physical_index, [])))
            for d in devices
        ]


def probe() -> ProbeResult:
    result = probe_tool_backend(CudaBackend)
    if isinstance(result, str):
        nvml = _sdk.nvml_status()
        return f"{result}; {nvml}" if nvml else result
    return result
