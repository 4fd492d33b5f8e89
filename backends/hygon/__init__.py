"""Hygon DCUs (Z100, K100, K100_AI) through a DTK build of ``torch`` or ``hy-smi`` / ``rocm-smi``.

Facts (hal.md section 1): no extra torch module (a DTK/ROCm build of torch), device type
``cuda``, collectives ``nccl`` (RCCL underneath), process variable ``HIP_VISIBLE_DEVICES``,
container variable ``HCU_VISIBLE_DEVICES`` (hcu-container-toolkit), tools ``hy-smi`` then
``rocm-smi``, PCI vendor id 0x1d94. ``cuda`` also names NVIDIA and AMD devices, so identity
comes from ``torch.version.hip`` plus Hygon hardware (see ``_sdk.py``), never the type string.
hy-smi has no health field: health is UNKNOWN.
"""

from __future__ import annotations

from xpod.backends._common import ToolBackend, probe_tool_backend
from xpod.hal.backend import Capability, IntraNodeTopology, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo

from . import _sdk, rocm_smi


class HygonBackend(ToolBackend):
    name = "hygon"
    torch_module = "torch"
    device_type = "cuda"
    dist_backend = "nccl"
    visible_vars = VisibleDevicesVars("HIP_VISIBLE_DEVICES", "HCU_VISIBLE_DEVICES")
    tools = ("hy-smi", "rocm-smi")
    model_prefix = "hygon"
    sdk = _sdk
    unsupported = {
        Capability.HEALTH: "hy-smi and rocm-smi print no health field; health is reported as unknown",
        Capability.METRICS: "only memory (from --showmeminfo vram) is read; utilisation and power columns are not turned into gauges",
        Capability.FRACTIONAL: "vDCU slicing (hy-smi virtual ...) is not driven by xpod",
    }

    def read_tool_devices(self) -> list[DeviceInfo]:
        tool = _sdk.tool_name()
        devices = rocm_smi.parse(_sdk.run_info(), tool=tool, source=tool)
        # rocm-smi on a mixed host also lists AMD GPUs; those are not this backend's.
        return [d for d in devices if d.vendor == "hygon"]

    def read_tool_topology(self) -> IntraNodeTopology | None:
        return rocm_smi.parse_topology(_sdk.run_topology(), tool=_sdk.tool_name())


def probe() -> ProbeResult:
    return probe_tool_backend(HygonBackend)
