"""Reading ``mthreads-gmi`` (Moore Threads MTT GPUs) default output.

Not a closed box: column groups are separated by ``|`` but rows have no outer border, e.g.
(mthreads-gmi 1.12.2)::

    ID   Name           |PCIe                |%GPU  Mem
         Device Type    |Pcie Lane Width     |Temp  MPC Capable
                                             |      ECC Mode
    +-------------------------------------------------------------+
    0    MTT S4000      |00000000:08:00.0    |88%   44302MiB(32768MiB)
         Physical       |16x(16x)            |65C   YES
                                             |      N/A

A device starts at a line ``<id>  <name> |``; memory is ``used(total)``. The tool prints no
health state: a reading with used > total (seen on S4000 with IOMMU off, the FAQ in
MooreThreads/tutorial_on_musa) is ALARM, otherwise UNKNOWN.
"""

from __future__ import annotations

import re

from xpod.backends._common import resolve_model
from xpod.hal import smi
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import ToolOutputError

TOOL = "mthreads-gmi"
_HEADER = re.compile(r"^\s*ID\s+Name\b")
_DEVICE = re.compile(r"^\s*(\d+)\s+(\S[^|]*?)\s*\|(.*)$")
_MEM = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*\(\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*\)", re.IGNORECASE)


def parse(text: str, source: str | None = None) -> list[DeviceInfo]:
    """Devices in an ``mthreads-gmi`` output, in ID order as printed."""
    lines = smi.lines_of(text)
    first = smi.first_content_line(lines)
    if first is None:
        raise ToolOutputError(TOOL, "empty output")
    start = next((k for k, ln in enumerate(lines) if _HEADER.match(ln.text)), None)
    if start is None:
        raise ToolOutputError(
            TOOL, "no 'ID  Name  |PCIe ...' header found; is this mthreads-gmi output?", first.no, first.text
        )
    versions = re.search(r"mthreads-gmi:\s*([\w.\-]+).*?Driver Version:\s*([\w.\-]+)", text)
    devices: list[DeviceInfo] = []
    for ln in lines[start + 1 :]:
        if re.match(r"^\s*Processes\b|^\s*\|\s*Processes", ln.text):
            break
        m = _DEVICE.match(ln.text)
        if not m:
            continue
        dev_id, name, rest = int(m.group(1)), m.group(2).strip(), m.group(3)
        mem = _MEM.search(rest)
        if mem is None:
            raise ToolOutputError(
                TOOL, "device row has no 'used(total)' memory value (truncated or unknown layout)", ln.no, ln.text
            )
        try:
            used = smi.parse_size_bytes(mem.group(1) + mem.group(2))
            total = smi.parse_size_bytes(mem.group(3) + mem.group(4))
        except ValueError as err:
            raise ToolOutputError(TOOL, f"cannot read memory: {err}", ln.no, ln.text) from None
        health = Health.ALARM if used > total else Health.UNKNOWN
        devices.append(
            DeviceInfo(
                vendor="mthreads",
                model=resolve_model("mthreads", name, "mthreads"),  # type: ignore[arg-type]
                name=name,
                index=len(devices),
                physical_index=dev_id,
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                pci_bus_id=smi.normalize_pci_bus_id(rest),
                extra={
                    **({"anomaly": "memory used exceeds total (IOMMU off or not effective?)"} if used > total else {}),
                    **({"tool_version": versions.group(1), "driver": versions.group(2)} if versions else {}),
                    **({"source": source} if source else {}),
                },
            )
        )
    if not devices:
        raise ToolOutputError(TOOL, "the table lists no devices after its header", lines[start].no, lines[start].text)
    return devices
