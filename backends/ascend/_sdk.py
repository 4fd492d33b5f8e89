"""The one place that touches Ascend's SDK: ``torch_npu`` and the ``npu-smi`` tool.

Everything here is imported lazily and bounded: importing ``torch_npu`` on a host without
CANN raises (and, with torch's device-backend autoload on, breaks ``import torch`` itself;
the registry sets ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` before probing). ``npu-smi`` runs with
a timeout because a wedged driver makes it hang.
"""

from __future__ import annotations

import glob
import os
import shutil

from xpod.backends._common import TorchDevice, devices_of, import_failure
from xpod.hal import smi

MODULE = "torch_npu"
TOOL = "npu-smi"
DEVICE_GLOB = "/dev/davinci[0-9]*"
NODES_WHAT = "/dev/davinci* device nodes"
TOOL_TIMEOUT_S = float(os.environ.get("XPOD_TOOL_TIMEOUT_S", "10"))


def import_extension():
    """``(module, None)`` when ``torch_npu`` imports, else ``(None, reason)``."""
    try:
        import torch_npu  # noqa: F401
    except Exception as err:  # OSError for a missing vendor library, RuntimeError, ...
        return None, import_failure(MODULE, err, "is CANN installed and set_env.sh sourced?")
    return torch_npu, None


def torch_device_count(module) -> int:
    import torch

    return int(torch.npu.device_count())


def torch_devices() -> list[TorchDevice]:
    import torch

    return devices_of(torch.npu)


def tool_path() -> str | None:
    return shutil.which(TOOL)


def device_nodes() -> list[str]:
    return sorted(glob.glob(DEVICE_GLOB))


def run_info() -> str:
    """``npu-smi info`` (raises ``smi.ToolRunError``)."""
    return smi.run_tool([TOOL, "info"], TOOL_TIMEOUT_S)


def run_topo() -> str:
    return smi.run_tool([TOOL, "info", "-t", "topo"], TOOL_TIMEOUT_S)
