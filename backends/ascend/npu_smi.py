"""Reading ``npu-smi info`` and ``npu-smi info -t topo`` (Huawei Ascend).

``npu-smi info`` is a box table whose header has two rows: an NPU row
(``NPU Name | Health | Power(W) Temp(C) Hugepages-Usage(page)``) and a chip row
(``Chip [Device|Phy-ID] | Bus-Id | AICore(%) Memory-Usage(MB) [HBM-Usage(MB)]``). Each device
record is an NPU row followed by its chip row(s). Layouts seen (hal.md section 2):

- 910B / Atlas A2 (npu-smi 23.x-25.x) and the first-generation 910 ("910A"): one chip per
  NPU, HBM-Usage column (then HBM is the device memory and Memory-Usage the control CPU's DDR);
- 310P: ``Chip Device`` header (the second number is the chip's logical device id), no HBM
  column (Memory-Usage is the device memory); an Atlas 300I Duo card is one NPU id with two
  chip rows, read as one package with ``dies=2``;
- Atlas A3 / 910C (name ``Ascend910``, ``Chip Phy-ID``): each NPU id is printed twice, once
  per die, as an NPU row + chip row pair (vllm-project/vllm-ascend issue 2534). One NPU id is
  one package of two dies: one ``DeviceInfo`` with ``dies=2`` and the dies' memory summed.

NPU ids need not start at 0 (the 310P3 fixture lists NPUs 4 and 5). Power may be ``NA`` or
``-``. ``MB`` here means MiB (a 64 GiB 910B prints ``65536``). Columns are found by their
header words, not by position, so wider columns or an extra column do not break parsing.
"""

from __future__ import annotations

import re

from xpod.backends._common import resolve_model
from xpod.hal import smi
from xpod.hal.backend import IntraNodeTopology, Link
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import ToolOutputError

TOOL = "npu-smi"
_NPU_ROW = re.compile(r"^(\d+)\s+(\S.*?)$")
_CHIP_ROW = re.compile(r"^(\d+)(?:\s+(\d+))?$")
_TOPO_LINKS = {
    "X": Link.SELF,
    "HCCS": Link.FABRIC,
    "HCCS_SW": Link.FABRIC,
    "SIO": Link.DIE,  # the two dies of one 910C package
    "PIX": Link.PCIE_SWITCH,
    "PXB": Link.PCIE_SWITCH,
    "PHB": Link.PCIE_HOST,
    "SYS": Link.NUMA,
    "NA": Link.UNKNOWN,
}


# Names the catalog does not carry: npu-smi 22.x prints the first-generation Ascend 910 as "910A".
_LEGACY_NAMES = {"910a": "ascend-910", "ascend910a": "ascend-910"}


_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")  # "NA" and "-" are no reading


def _gauges(powers: list[float], temps: list[float], aicores: list[float]) -> dict[str, float]:
    """A package's gauges from its NPU rows (one per die on A3) and chip rows: power summed over
    the rows, the hottest temperature, AI-core utilisation averaged over the chips (0..1)."""
    out: dict[str, float] = {}
    if powers:
        out["power_watts"] = sum(powers)
    if temps:
        out["temperature_celsius"] = max(temps)
    if aicores:
        out["utilization_ratio"] = sum(aicores) / len(aicores) / 100.0
    return out


def _model(name: str) -> str | None:
    legacy = _LEGACY_NAMES.get(name.lower())
    return legacy or resolve_model("ascend", name, "ascend")


def _usage_titles(header_cell: str) -> list[str]:
    """``"AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)"`` -> ``["memory", "hbm"]`` in order."""
    return [m.group(1).lower() for m in re.finditer(r"([A-Za-z]+)-Usage", header_cell)]


def _find_header(tables: list[smi.BoxTable]) -> tuple[smi.BoxTable, int] | None:
    for t in tables:
        rows = t.header
        for k, row in enumerate(rows):
            first = row.cells[0].split() if row.cells else []
            if first[:2] == ["NPU", "Name"] and len(row.cells) >= 2 and "health" in row.cells[1].lower():
                return t, k
    return None


def parse_info(text: str, source: str | None = None) -> list[DeviceInfo]:
    """Devices in one ``npu-smi info`` output, one per NPU id, ordered as printed.

    Raises ``ToolOutputError`` for an empty or unreadable output, an NPU row without its
    chip row (a truncated paste), or values that cannot be read.
    """
    lines = smi.lines_of(text)
    first = smi.first_content_line(lines)
    if first is None:
        raise ToolOutputError(TOOL, "empty output")
    tables = smi.box_tables(lines)
    found = _find_header(tables)
    if found is None:
        raise ToolOutputError(
            TOOL, "no 'NPU Name | Health' table header found; is this 'npu-smi info' output?", first.no, first.text
        )
    table, k = found
    header = table.header
    chip_header = header[k + 1] if k + 1 < len(header) else None
    if chip_header is None or len(chip_header.cells) < 3:
        raise ToolOutputError(
            TOOL, "the 'Chip | Bus-Id | ...' header row is missing", header[k].line.no, header[k].line.text
        )
    usage = _usage_titles(chip_header.cells[2])
    # gauge columns, found by their header words: NPU row "Power(W) Temp(C) ...", chip row "AICore(%) ..."
    npu_words = header[k].cells[2].split() if len(header[k].cells) > 2 else []
    power_at = next((i for i, w in enumerate(npu_words) if w.lower().startswith("power")), None)
    temp_at = next((i for i, w in enumerate(npu_words) if w.lower().startswith("temp")), None)
    aicore_at = (
        0 if chip_header.cells[2].split()[:1] and chip_header.cells[2].split()[0].lower().startswith("aicore") else None
    )
    chip_titles = chip_header.cells[0].split()
    phy_layout = any(t.lower() == "phy-id" for t in chip_titles)
    # 310P / 910A tables print each chip's logical device id ("Chip Device"); elsewhere
    # logical ids follow print order, one per chip (die), which is what the runtime numbers
    # and ASCEND_RT_VISIBLE_DEVICES names (16 on an A3 node of 8 NPU ids).
    device_layout = any(t.lower() == "device" for t in chip_titles)
    next_logical = 0

    # Gather (npu_row, chip_rows) in print order, across record groups: A3 prints the second
    # die of an NPU id in its own group, right after the first.
    pairs: list[tuple[smi.BoxRow, list[smi.BoxRow]]] = []
    in_process_table = False
    for group in table.records:
        if in_process_table:
            break
        for row in group:
            cells = row.cells
            if len(cells) < 3:
                if pairs and not pairs[-1][1]:
                    raise ToolOutputError(TOOL, "NPU row without its chip row", row.line.no, row.line.text)
                continue  # "No running processes found in NPU 0" and similar
            if "process" in " ".join(cells).lower():
                in_process_table = True  # the process table that follows the device table
                break
            m_npu = _NPU_ROW.match(cells[0])
            m_chip = _CHIP_ROW.match(cells[0])
            if m_chip and smi.normalize_pci_bus_id(cells[1]) is not None:
                if not pairs:
                    raise ToolOutputError(TOOL, "chip row before any NPU row", row.line.no, row.line.text)
                pairs[-1][1].append(row)
            elif m_npu and smi.normalize_pci_bus_id(cells[1]) is None:
                if pairs and not pairs[-1][1]:
                    raise ToolOutputError(
                        TOOL,
                        "NPU row without its chip row (truncated table?)",
                        pairs[-1][0].line.no,
                        pairs[-1][0].line.text,
                    )
                pairs.append((row, []))
            else:
                raise ToolOutputError(TOOL, "row is neither an NPU row nor a chip row", row.line.no, row.line.text)
    if not pairs:
        raise ToolOutputError(TOOL, "the device table has no NPU rows", header[-1].line.no, header[-1].line.text)
    if not pairs[-1][1]:
        raise ToolOutputError(
            TOOL, "NPU row without its chip row (truncated table?)", pairs[-1][0].line.no, pairs[-1][0].line.text
        )

    # Group by NPU id, keeping first-seen order: on A3 one id spans two pairs.
    by_id: dict[int, list[tuple[smi.BoxRow, list[smi.BoxRow]]]] = {}
    for npu_row, chips in pairs:
        npu_id = int(_NPU_ROW.match(npu_row.cells[0]).group(1))  # type: ignore[union-attr]
        by_id.setdefault(npu_id, []).append((npu_row, chips))

    devices: list[DeviceInfo] = []
    for ordinal, (npu_id, entries) in enumerate(by_id.items()):
        names = {_NPU_ROW.match(r.cells[0]).group(2).strip() for r, _ in entries}  # type: ignore[union-attr]
        if len(names) != 1:
            r = entries[-1][0]
            raise ToolOutputError(
                TOOL, f"NPU {npu_id} is listed with different names {sorted(names)}", r.line.no, r.line.text
            )
        name = names.pop()
        health = Health.UNKNOWN
        total = used = 0
        bus_ids: list[str] = []
        chip_ids: list[int] = []
        phy_ids: list[int] = []
        logical_ids: list[int] = []
        die_memory: list[list[int]] = []
        powers: list[float] = []
        temps: list[float] = []
        aicores: list[float] = []
        for npu_row, chips in entries:
            values = npu_row.cells[2].split() if len(npu_row.cells) > 2 else []
            for at, into in ((power_at, powers), (temp_at, temps)):
                if at is not None and at < len(values) and _NUMBER.match(values[at]):
                    into.append(float(values[at]))
            word = npu_row.cells[1].strip()
            h = Health.parse(word) if word else Health.UNKNOWN
            if word and h is Health.UNKNOWN and word.lower() != "unknown":
                raise ToolOutputError(TOOL, f"unknown health value {word!r}", npu_row.line.no, npu_row.line.text)
            health = h if health is Health.UNKNOWN else health.worst(h)
            for chip in chips:
                m = _CHIP_ROW.match(chip.cells[0])
                chip_ids.append(int(m.group(1)))  # type: ignore[union-attr]
                if m and m.group(2) is not None and phy_layout:  # type: ignore[union-attr]
                    phy_ids.append(int(m.group(2)))  # type: ignore[union-attr]
                if device_layout and m and m.group(2) is not None:  # type: ignore[union-attr]
                    logical_ids.append(int(m.group(2)))  # type: ignore[union-attr]
                else:
                    logical_ids.append(next_logical)
                next_logical = logical_ids[-1] + 1
                bus = smi.normalize_pci_bus_id(chip.cells[1])
                if bus:
                    bus_ids.append(bus)
                chip_values = chip.cells[2].split()
                if aicore_at is not None and chip_values and _NUMBER.match(chip_values[aicore_at]):
                    aicores.append(float(chip_values[aicore_at]))
                try:
                    pairs_found = smi.find_used_total_pairs(chip.cells[2], default_unit="MiB")
                except ValueError as err:
                    raise ToolOutputError(
                        TOOL, f"cannot read memory usage: {err}", chip.line.no, chip.line.text
                    ) from None
                if usage and len(pairs_found) == len(usage):
                    # HBM is the device memory where it is shown; Memory-Usage is then the
                    # small DDR of the control CPU (often 0 / 0).
                    which = usage.index("hbm") if "hbm" in usage else usage.index("memory") if "memory" in usage else 0
                    u, t = pairs_found[which]
                    die_memory.append([u, t])
                    used += u
                    total += t
                else:
                    raise ToolOutputError(
                        TOOL,
                        f"expected {len(usage)} 'used / total' values ({', '.join(usage) or 'none in header'}), found {len(pairs_found)}",
                        chip.line.no,
                        chip.line.text,
                    )
        dies = len(set(chip_ids)) if chip_ids else 1
        if used > total and total > 0:
            health = health.worst(Health.ALARM)  # a reading that cannot be true
        devices.append(
            DeviceInfo(
                vendor="ascend",
                model=_model(name),  # type: ignore[arg-type]
                name=name,
                index=ordinal,
                physical_index=npu_id,
                memory_total_bytes=total if total > 0 else None,
                memory_used_bytes=used if total > 0 else None,
                health=health,
                pci_bus_id=bus_ids[0] if bus_ids else None,
                dies=dies,
                extra={
                    "chips": sorted(set(chip_ids)),
                    "logical_ids": logical_ids,
                    **({"die_memory_bytes": die_memory} if len(die_memory) > 1 else {}),
                    **({"phy_ids": phy_ids} if phy_ids else {}),
                    **({"die_pci_bus_ids": bus_ids} if len(bus_ids) > 1 else {}),
                    **({"gauges": _gauges(powers, temps, aicores)} if powers or temps or aicores else {}),
                    **({"source": source} if source else {}),
                },
            )
        )
    return devices


def parse_topo(text: str) -> IntraNodeTopology:
    """``npu-smi info -t topo``: the link matrix, indexed by NPU id (``NPU3`` -> 3)."""
    lines = smi.lines_of(text)
    try:
        matrices = smi.link_matrices(lines, r"NPU\d+")
    except ValueError as err:
        raise ToolOutputError(TOOL, f"topology matrix: {err}") from None
    if not matrices:
        first = smi.first_content_line(lines)
        raise ToolOutputError(
            TOOL, "no 'NPU0 NPU1 ...' topology matrix found", first.no if first else None, first.text if first else None
        )
    m = matrices[0]
    ids = tuple(int(lab[3:]) for lab in m.labels)
    rows = []
    for i, row in enumerate(m.cells):
        out = []
        for j, word in enumerate(row):
            link = _TOPO_LINKS.get(word.upper())
            if link is None:
                raise ToolOutputError(
                    TOOL, f"unknown link type {word!r} between {m.labels[i]} and {m.labels[j]}", m.first_line + 1 + i
                )
            out.append(link)
        rows.append(tuple(out))
    fabric = "HCCS" if any(w.upper().startswith("HCCS") for r in m.cells for w in r) else None
    return IntraNodeTopology(indices=ids, links=tuple(rows), fabric_name=fabric)


def is_topo_output(text: str) -> bool:
    return bool(re.search(r"^\s+NPU\d+\s+NPU\d+|^\s+NPU0\s+CPU Affinity", text, re.MULTILINE))


def parse(text: str, source: str | None = None) -> list[DeviceInfo]:
    """Inventory from any ``npu-smi`` output this module reads: ``info`` (preferred) or, for a
    file that holds only ``info -t topo``, the NPUs the matrix names (model unknown)."""
    if "NPU" in text and re.search(r"\|\s*NPU\s+Name\s", text):
        return parse_info(text, source)
    if is_topo_output(text):
        topo = parse_topo(text)
        affinity = _topo_affinity(text)
        return [
            DeviceInfo(
                vendor="ascend",
                model=None,  # type: ignore[arg-type]  # the matrix names no model
                index=k,
                physical_index=npu,
                extra={
                    "cpu_affinity": affinity.get(npu),
                    "inventory_from": "topology matrix",
                    **({"source": source} if source else {}),
                },
            )
            for k, npu in enumerate(topo.indices)
        ]
    return parse_info(text, source)  # raises the precise error


def _topo_affinity(text: str) -> dict[int, str]:
    m = smi.link_matrices(smi.lines_of(text), r"NPU\d+")[0]
    return {int(lab[3:]): " ".join(ex) for lab, ex in zip(m.labels, m.extra) if ex}
