"""Cambricon MLUs (MLU370, MLU590) through ``torch_mlu`` or ``cnmon``.

Facts (hal.md section 1): torch module ``torch_mlu``, device type ``mlu``, collectives
``cncl``, process variable ``MLU_VISIBLE_DEVICES``, container variable
``CAMBRICON_SPLIT_VISIBLE_DEVICES`` (sMLU split), tool ``cnmon``, device nodes
``/dev/cambricon_dev*``. cnmon prints no health state (see ``cnmon.py`` for the ECC mapping).
"""

from __future__ import annotations

from xpod.backends._common import ToolBackend, probe_tool_backend
from xpod.hal.backend import Capability, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo

from . import _sdk, cnmon


class CambriconBackend(ToolBackend):
    name = "cambricon"
    torch_module = _sdk.MODULE
    device_type = "mlu"
    dist_backend = "cncl"
    visible_vars = VisibleDevicesVars("MLU_VISIBLE_DEVICES", "CAMBRICON_SPLIT_VISIBLE_DEVICES")
    tools = ("cnmon",)
    model_prefix = "cambricon"
    sdk = _sdk
    unsupported = {
        Capability.HEALTH: "cnmon has no health column; only its Ecc-Error count is mapped (0 -> ok, >0 -> warning), CNDEV's health metric is not read",
        Capability.TOPOLOGY: "no text form of MLU-Link topology was found for cnmon (hal.md section 7); links are reported as unknown",
        Capability.METRICS: "cnmon has no machine-readable mode; only memory is read from its table",
        Capability.FRACTIONAL: "sMLU splitting (cnmon set -smlu on) needs Cambricon's device plugin and is not driven by xpod",
    }

    def read_tool_devices(self) -> list[DeviceInfo]:
        return cnmon.parse(_sdk.run_info(), source="cnmon")


def probe() -> ProbeResult:
    return probe_tool_backend(CambriconBackend)
