"""Vendor backends, one folder each. Only ``backends/<vendor>/_sdk.py`` imports a vendor SDK.

``parse_tool_output`` is the offline entry point behind ``xpod devices --parse FILE --tool T``:
it reads a captured management-tool output and returns the inventory it shows. The per-tool
format knowledge lives next to each backend (``ascend/npu_smi.py``, ``cambricon/cnmon.py``,
``mthreads/mthreads_gmi.py``, ``hygon/rocm_smi.py``, ``cuda/nvidia_smi.py``); the shapes they
share are read by ``xpod.hal.smi``. Importing this module imports no vendor SDK.
"""

from __future__ import annotations

from xpod.hal.device import DeviceInfo
from xpod.hal.errors import ToolOutputError, XpodError

#: tools ``parse_tool_output`` reads, and the backend whose folder holds each parser
TOOLS = {
    "npu-smi": "ascend",
    "cnmon": "cambricon",
    "mthreads-gmi": "mthreads",
    "hy-smi": "hygon",
    "rocm-smi": "hygon",
    "nvidia-smi": "cuda",
}


def parse_tool_output(tool: str, text: str, source: str | None = None) -> list[DeviceInfo]:
    """The devices a captured ``tool`` output shows, in the order printed.

    ``DeviceInfo.index`` is the position in the output and ``physical_index`` the tool's own
    id (npu-smi NPU id, nvidia-smi index, ...). Values the output does not show are None
    (memory in hy-smi's concise table, the model in a topology matrix). ``vendor`` is the
    backend id, except ``"amd"`` for AMD GPUs in rocm-smi output (no xpod backend). Raises
    ``ToolOutputError`` naming the tool and line for an output it cannot read, and
    ``XpodError`` for an unknown tool name.
    """
    if tool not in TOOLS:
        raise XpodError(f"unknown tool {tool!r}; expected one of: {', '.join(TOOLS)}")
    if not text.strip():
        raise ToolOutputError(tool, "empty output" + (f" in {source}" if source else ""))
    if "\x00" in text:
        raise ToolOutputError(tool, "output contains NUL bytes; is this a binary file rather than a text capture?")
    if tool == "npu-smi":
        from xpod.backends.ascend import npu_smi

        return npu_smi.parse(text, source)
    if tool == "cnmon":
        from xpod.backends.cambricon import cnmon

        return cnmon.parse(text, source)
    if tool == "mthreads-gmi":
        from xpod.backends.mthreads import mthreads_gmi

        return mthreads_gmi.parse(text, source)
    if tool in ("hy-smi", "rocm-smi"):
        from xpod.backends.hygon import rocm_smi

        return rocm_smi.parse(text, tool=tool, source=source)
    from xpod.backends.cuda import nvidia_smi

    return nvidia_smi.parse(text, source)
