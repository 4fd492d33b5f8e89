"""Huawei Ascend NPUs (910B/A2, 910C/A3 CloudMatrix, 310P) through ``torch_npu`` or ``npu-smi``.

Facts (hal.md section 1): torch module ``torch_npu``, device type ``npu``, collectives
``hccl``, process variable ``ASCEND_RT_VISIBLE_DEVICES`` (logical ids, ascending, parsing stops
at the first bad token), container variable ``ASCEND_VISIBLE_DEVICES``, tool ``npu-smi``,
device nodes ``/dev/davinci*``. Ascend is the one vendor with an explicit health state, read
from npu-smi's Health column. On 910C one NPU id is a package of two dies (``dies=2``).
"""

from __future__ import annotations

from xpod.backends._common import ToolBackend, probe_tool_backend
from xpod.hal.backend import Capability, IntraNodeTopology, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo

from . import _sdk, npu_smi


class AscendBackend(ToolBackend):
    name = "ascend"
    torch_module = _sdk.MODULE
    device_type = "npu"
    dist_backend = "hccl"
    visible_vars = VisibleDevicesVars("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES")
    tools = ("npu-smi",)
    model_prefix = "ascend"
    sdk = _sdk
    unsupported = {
        Capability.METRICS: "npu-smi info's table gives memory, health, power, temperature and AI-core utilisation only (no clocks, energy or link states yet)",
        Capability.FRACTIONAL: "vNPU slicing (npu-smi set -t device-share / templates) needs the Ascend device plugin and is not driven by xpod",
    }

    def read_tool_devices(self) -> list[DeviceInfo]:
        return npu_smi.parse_info(_sdk.run_info(), source="npu-smi info")

    def read_tool_topology(self) -> IntraNodeTopology | None:
        return npu_smi.parse_topo(_sdk.run_topo())

    def _dies(self, name: str | None) -> int:
        # torch_npu names a 910C die "Ascend910_93xx"; each torch device is then one die,
        # so a torch-only listing counts dies, not packages.
        return 1


def probe() -> ProbeResult:
    return probe_tool_backend(AscendBackend)
