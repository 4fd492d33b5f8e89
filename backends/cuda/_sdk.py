"""The one place that touches NVIDIA's SDK: CUDA ``torch``, NVML (``pynvml``) and ``nvidia-smi``.

A CUDA torch on NVIDIA and a HIP torch on AMD/Hygon both use device type ``cuda``; this backend
is NVIDIA only, so a HIP build (``torch.version.hip``) is rejected here and left to ``hygon``.
"""

from __future__ import annotations

import glob
import os
import shutil

from xpod.backends._common import TorchDevice, devices_of, torch_failure
from xpod.hal import smi

MODULE = "torch (CUDA build)"
TOOL = "nvidia-smi"
DEVICE_GLOB = "/dev/nvidia[0-9]*"
NODES_WHAT = "/dev/nvidia* device nodes"
TOOL_TIMEOUT_S = float(os.environ.get("XPOD_TOOL_TIMEOUT_S", "10"))


def import_extension():
    """``(torch, None)`` for a CUDA build of torch, else ``(None, reason)``."""
    try:
        import torch
    except Exception as err:
        return None, torch_failure(err)
    if getattr(torch.version, "hip", None):
        return None, f"torch {torch.__version__} is a ROCm/HIP build: its 'cuda' devices are AMD or Hygon, not NVIDIA"
    if not getattr(torch.version, "cuda", None):
        return None, f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    return torch, None


def torch_device_count(module) -> int:
    return int(module.cuda.device_count())


def torch_devices() -> list[TorchDevice]:
    import torch

    return devices_of(torch.cuda)


def nvml_status() -> str | None:
    """None when NVML answers with >= 1 GPU, else why not (for the reason string)."""
    try:
        import pynvml
    except ImportError:
        return "pynvml is not installed"
    try:
        pynvml.nvmlInit()
        try:
            n = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:
        return f"NVML failed: {type(err).__name__}: {str(err)[:120]}"
    return None if n > 0 else "NVML reports 0 GPUs"


def tool_path() -> str | None:
    return shutil.which(TOOL)


def device_nodes() -> list[str]:
    return sorted(glob.glob(DEVICE_GLOB))


def run_info() -> str:
    """``nvidia-smi -q`` (health fields included; raises ``smi.ToolRunError``)."""
    return smi.run_tool([TOOL, "-q"], TOOL_TIMEOUT_S)


def run_topo() -> str:
    return smi.run_tool([TOOL, "topo", "-m"], TOOL_TIMEOUT_S)


def run_nvlink_status() -> str:
    """``nvidia-smi nvlink -s``: each GPU's NVLinks with their speed or ``<inactive>``."""
    return smi.run_tool([TOOL, "nvlink", "-s"], TOOL_TIMEOUT_S)
