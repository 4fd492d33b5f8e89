"""Reading ``cnmon`` (Cambricon MLU) default output.

A box table with a two-row header and two rows per device, e.g. (CNMON v5.x)::

    | Card  VF  Name       Firmware |               Bus-Id | Util        Ecc-Error |
    | Fan   Temp      Pwr:Usage/Cap |         Memory-Usage | SR-IOV   Compute-Mode |
    | 0     /   MLU370-X8    v1.1.6 |         0000:39:00.0 | 0%                N/A |
    |  0%   32C        106 W/ 250 W |     0 MiB/ 23374 MiB | N/A           Default |

Older v4.x output has ``Inited`` where v5 has ``Bus-Id`` and a ``vMemory-Usage`` column.
Columns are located by their header words. cnmon has no health column: ``Ecc-Error`` 0 maps
to OK, a positive count to WARNING, ``N/A`` to UNKNOWN (no signal). An MLU370-X8 card has two
chips and cnmon lists each chip as its own entry (``Card`` 0 and 1 above), which is also
what ``torch_mlu`` counts; so one ``DeviceInfo`` per listed entry.
"""

from __future__ import annotations

import re

from xpod.backends._common import resolve_model
from xpod.hal import smi
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import ToolOutputError

TOOL = "cnmon"


def _locate(header: tuple[smi.BoxRow, ...], word: str) -> tuple[int, int, int] | None:
    """(header row, cell, token position) of a header word, exact match, case-insensitive."""
    for r, row in enumerate(header):
        for c, cell in enumerate(row.cells):
            toks = cell.split()
            for k, t in enumerate(toks):
                if t.lower() == word.lower():
                    return r, c, k
    return None


def parse(text: str, source: str | None = None) -> list[DeviceInfo]:
    """Devices in a ``cnmon`` output, in card order. ``ToolOutputError`` when the device
    table is missing, a device has only its first row (truncated), or memory is unreadable."""
    lines = smi.lines_of(text)
    first = smi.first_content_line(lines)
    if first is None:
        raise ToolOutputError(TOOL, "empty output")
    table = None
    for t in smi.box_tables(lines):
        if t.header and _locate(t.header, "Name") and _locate(t.header, "Memory-Usage"):
            table = t
            break
    if table is None:
        raise ToolOutputError(
            TOOL, "no 'Card VF Name ... | Memory-Usage' device table found; is this cnmon output?", first.no, first.text
        )
    header = table.header
    name_at = _locate(header, "Name")
    mem_at = _locate(header, "Memory-Usage")
    ecc_at = _locate(header, "Ecc-Error")
    bus_at = _locate(header, "Bus-Id")
    driver = re.search(r"Driver\s+v?([\w.\-]+)", " ".join(r.line.text for r in table.title_rows))
    devices: list[DeviceInfo] = []
    for group in table.records:
        rows = [r for r in group if r.cells and r.cells[0].split()]
        if not rows:
            continue
        head = rows[0]
        toks = head.cells[0].split()
        if not toks[0].isdigit():
            raise ToolOutputError(TOOL, "device row does not start with a card number", head.line.no, head.line.text)
        if len(rows) < 2:
            raise ToolOutputError(
                TOOL, "device row without its memory row (truncated table?)", head.line.no, head.line.text
            )
        card = int(toks[0])

        def cell(at: tuple[int, int, int] | None, whole: bool = False) -> str | None:
            if at is None or at[0] >= len(rows) or at[1] >= len(rows[at[0]].cells):
                return None
            c = rows[at[0]].cells[at[1]]
            if whole:
                return c
            parts = c.split()
            return parts[at[2]] if at[2] < len(parts) else None

        name = cell(name_at)
        if name is None or not re.search(r"[A-Za-z]", name):
            m = re.search(r"\bMLU[\w\-]*", head.cells[0])
            name = m.group(0) if m else None
        mem_cell = cell(mem_at, whole=True)
        if mem_cell is None:
            raise ToolOutputError(
                TOOL, "no Memory-Usage cell in this device's rows", rows[-1].line.no, rows[-1].line.text
            )
        try:
            pairs = smi.find_used_total_pairs(mem_cell, default_unit="MiB")
        except ValueError as err:
            raise ToolOutputError(
                TOOL, f"cannot read memory: {err}", rows[mem_at[0]].line.no, rows[mem_at[0]].line.text
            ) from None  # type: ignore[index]
        if not pairs:
            raise ToolOutputError(
                TOOL, "Memory-Usage is not 'used/ total'", rows[mem_at[0]].line.no, rows[mem_at[0]].line.text
            )  # type: ignore[index]
        used, total = pairs[0]
        health = Health.UNKNOWN
        ecc = cell(ecc_at)
        if ecc is not None and ecc.isdigit():
            health = Health.OK if int(ecc) == 0 else Health.WARNING
        if used > total:
            health = health.worst(Health.ALARM)
        bus_text = cell(bus_at, whole=True) or " ".join(c for r in rows for c in r.cells)
        devices.append(
            DeviceInfo(
                vendor="cambricon",
                model=resolve_model("cambricon", name, "cambricon"),  # type: ignore[arg-type]
                name=name,
                index=len(devices),
                physical_index=card,
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                pci_bus_id=smi.normalize_pci_bus_id(bus_text),
                extra={
                    **({"ecc_errors": int(ecc)} if ecc and ecc.isdigit() else {}),
                    **({"driver": driver.group(1)} if driver else {}),
                    **({"source": source} if source else {}),
                },
            )
        )
    if not devices:
        raise ToolOutputError(TOOL, "the device table lists no cards", header[-1].line.no, header[-1].line.text)
    return devices
