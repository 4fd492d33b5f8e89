"""The one place that touches Cambricon's SDK: ``torch_mlu`` and the ``cnmon`` tool.

``torch_mlu`` renames PrivateUse1 to ``mlu`` at import and needs the Neuware (CNToolkit)
libraries; its import is guarded so a broken install becomes a reason, not a crash.
"""

from __future__ import annotations

import glob
import os
import shutil

from xpod.backends._common import TorchDevice, devices_of, import_failure
from xpod.hal import smi

MODULE = "torch_mlu"
TOOL = "cnmon"
DEVICE_GLOB = "/dev/cambricon_dev[0-9]*"
NODES_WHAT = "/dev/cambricon_dev* device nodes"
TOOL_TIMEOUT_S = float(os.environ.get("XPOD_TOOL_TIMEOUT_S", "10"))


def import_extension():
    """``(module, None)`` when ``torch_mlu`` imports, else ``(None, reason)``."""
    try:
        import torch_mlu  # noqa: F401
    except Exception as err:  # OSError for a missing vendor library, RuntimeError, ...
        return None, import_failure(MODULE, err, "is Neuware installed and NEUWARE_HOME set?")
    return torch_mlu, None


def torch_device_count(module) -> int:
    import torch

    return int(torch.mlu.device_count())


def torch_devices() -> list[TorchDevice]:
    import torch

    return devices_of(torch.mlu)


def tool_path() -> str | None:
    return shutil.which(TOOL)


def device_nodes() -> list[str]:
    return sorted(glob.glob(DEVICE_GLOB))


def run_info() -> str:
    """``cnmon`` default table (raises ``smi.ToolRunError``)."""
    return smi.run_tool([TOOL], TOOL_TIMEOUT_S)
