"""The one place that touches Hygon's SDK: a DTK (ROCm-derived) build of ``torch`` and the
``hy-smi`` / ``rocm-smi`` tools.

Hygon DCUs use device type ``cuda`` through a HIP build of torch, exactly like AMD GPUs on a
ROCm torch and unlike NVIDIA only in what is underneath. So vendor identity is never taken
from the device type: torch must be a HIP build (``torch.version.hip``) *and* the host must
have a Hygon PCI device (vendor id 0x1d94, "Chengdu Haiguang IC Design") or ``hy-smi``.
"""

from __future__ import annotations

import glob
import os
import shutil

from xpod.backends._common import TorchDevice, devices_of, torch_failure
from xpod.hal import smi

MODULE = "torch (DTK build)"
TOOL = "hy-smi"
TOOLS = ("hy-smi", "rocm-smi")
TOOL_MISSING = "neither hy-smi nor rocm-smi is on PATH"
PCI_VENDOR = "0x1d94"
DEVICE_GLOB = "/sys/bus/pci/devices/*/vendor"
NODES_WHAT = f"PCI device with vendor id {PCI_VENDOR} (Hygon) in /sys/bus/pci/devices"
TOOL_TIMEOUT_S = float(os.environ.get("XPOD_TOOL_TIMEOUT_S", "10"))


def pci_devices_with_vendor(vendor: str) -> list[str]:
    out = []
    for path in glob.glob(DEVICE_GLOB):
        try:
            with open(path) as f:
                if f.read().strip().lower() == vendor:
                    out.append(path.split("/")[-2])
        except OSError:
            continue
    return sorted(out)


def device_nodes() -> list[str]:
    return pci_devices_with_vendor(PCI_VENDOR)


def import_extension():
    """``(torch, None)`` when torch is a HIP (DTK/ROCm) build on a host with Hygon hardware,
    else ``(None, reason)``."""
    try:
        import torch
    except Exception as err:
        return None, torch_failure(err)
    hip = getattr(torch.version, "hip", None)
    if not hip:
        cuda = getattr(torch.version, "cuda", None)
        kind = f"a CUDA {cuda} build" if cuda else "a CPU-only build"
        return None, f"torch {torch.__version__} is {kind}, not a DTK/ROCm build (torch.version.hip is None)"
    if not device_nodes() and shutil.which("hy-smi") is None:
        return (
            None,
            f"torch {torch.__version__} is a ROCm/HIP {hip} build but no Hygon PCI device (vendor {PCI_VENDOR}) or hy-smi is present, so its 'cuda' devices are not Hygon DCUs",
        )
    return torch, None


def torch_device_count(module) -> int:
    return int(module.cuda.device_count())


def torch_devices() -> list[TorchDevice]:
    import torch

    return devices_of(torch.cuda)


def tool_path() -> str | None:
    for tool in TOOLS:
        path = shutil.which(tool)
        if path:
            return path
    return None


def tool_name() -> str:
    path = tool_path()
    return os.path.basename(path) if path else TOOL


def run_info() -> str:
    """``hy-smi`` (preferred) or ``rocm-smi`` concise output, with ``--showproductname`` and
    ``--showmeminfo vram`` so that model and memory are known (raises ``smi.ToolRunError``)."""
    tool = tool_name()
    base = smi.run_tool([tool], TOOL_TIMEOUT_S)
    extra = []
    for args in (["--showproductname"], ["--showmeminfo", "vram"]):
        try:
            extra.append(smi.run_tool([tool, *args], TOOL_TIMEOUT_S))
        except smi.ToolRunError:
            continue  # older DTK tools lack a flag; the concise table still counts devices
    return "\n".join([base, *extra])


def run_topology() -> str:
    return smi.run_tool([tool_name(), "--showtopo"], TOOL_TIMEOUT_S)
