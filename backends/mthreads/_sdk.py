"""The one place that touches Moore Threads' SDK: ``torch_musa`` and ``mthreads-gmi``.

``torch_musa`` renames PrivateUse1 to ``musa`` at import and needs the MUSA toolkit; the
import is guarded so a broken install becomes a reason. Moore Threads GPUs have no
vendor-specific /dev node name; they are recognised by PCI vendor id 0x1ed5 in sysfs.
"""

from __future__ import annotations

import glob
import os
import shutil

from xpod.backends._common import TorchDevice, devices_of, import_failure
from xpod.hal import smi

MODULE = "torch_musa"
TOOL = "mthreads-gmi"
PCI_VENDOR = "0x1ed5"
DEVICE_GLOB = "/sys/bus/pci/devices/*/vendor"
NODES_WHAT = f"PCI device with vendor id {PCI_VENDOR} (Moore Threads) in /sys/bus/pci/devices"
TOOL_TIMEOUT_S = float(os.environ.get("XPOD_TOOL_TIMEOUT_S", "10"))


def import_extension():
    """``(module, None)`` when ``torch_musa`` imports, else ``(None, reason)``."""
    try:
        import torch_musa  # noqa: F401
    except Exception as err:  # OSError for a missing vendor library, RuntimeError, ...
        return None, import_failure(MODULE, err, "is the MUSA toolkit installed?")
    return torch_musa, None


def torch_device_count(module) -> int:
    import torch

    return int(torch.musa.device_count())


def torch_devices() -> list[TorchDevice]:
    import torch

    return devices_of(torch.musa)


def tool_path() -> str | None:
    return shutil.which(TOOL)


def pci_devices_with_vendor(vendor: str) -> list[str]:
    out = []
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip().lower() == vendor:
                    out.append(path.split("/")[-2])
        except OSError:
            continue
    return sorted(out)


def device_nodes() -> list[str]:
    return pci_devices_with_vendor(PCI_VENDOR)


def run_info() -> str:
    """``mthreads-gmi`` default table (raises ``smi.ToolRunError``)."""
    return smi.run_tool([TOOL], TOOL_TIMEOUT_S)
