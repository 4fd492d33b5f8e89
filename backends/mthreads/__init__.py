"""Moore Threads MTT GPUs (S4000, S5000) through ``torch_musa`` or ``mthreads-gmi``.

Facts (hal.md section 1): torch module ``torch_musa``, device type ``musa``, collectives
``mccl`` (MetaX also names its library mccl, so the string does not identify the vendor),
process variable ``MUSA_VISIBLE_DEVICES``, container variable ``MTHREADS_VISIBLE_DEVICES``,
tool ``mthreads-gmi``, PCI vendor 0x1ed5. No health column: health comes from XIDs, which
xpod does not read, so only an impossible memory reading is flagged (ALARM).
"""

from __future__ import annotations

from xpod.backends._common import ToolBackend, probe_tool_backend
from xpod.hal.backend import Capability, ProbeResult, VisibleDevicesVars
from xpod.hal.device import DeviceInfo

from . import _sdk, mthreads_gmi


class MthreadsBackend(ToolBackend):
    name = "mthreads"
    torch_module = _sdk.MODULE
    device_type = "musa"
    dist_backend = "mccl"
    visible_vars = VisibleDevicesVars("MUSA_VISIBLE_DEVICES", "MTHREADS_VISIBLE_DEVICES")
    tools = ("mthreads-gmi",)
    model_prefix = "mthreads"
    sdk = _sdk
    unsupported = {
        Capability.HEALTH: "mthreads-gmi has no health column and xpod does not read XIDs; only used > total memory is flagged (alarm)",
        Capability.TOPOLOGY: "'mthreads-gmi topo -m' text was not available to build a parser from (hal.md section 7); links are reported as unknown",
        Capability.METRICS: "only memory is read from the mthreads-gmi table; pymtml gauges are not read",
        Capability.FRACTIONAL: "MPC partitioning is not driven by xpod",
    }

    def read_tool_devices(self) -> list[DeviceInfo]:
        return mthreads_gmi.parse(_sdk.run_info(), source="mthreads-gmi")


def probe() -> ProbeResult:
    return probe_tool_backend(MthreadsBackend)
