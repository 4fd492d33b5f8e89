"""Reading ``nvidia-smi`` output: ``-q`` detail (or its XML form ``-q -x``), the default table,
``--query-gpu`` CSV and ``-L``, alone or several of them in one capture file; plus ``topo -m``.

Inventory source, most detailed first: the last ``-q`` block, else the last default table,
else the last ``--query-gpu`` CSV, else ``-L``. Only one is used, so a capture holding idle and
load snapshots of the same GPUs never counts a GPU twice. Sections are found by prompt lines
(``$ nvidia-smi -q``) when the file has them, else by content.

Health (hal.md P7), from ``-q``: remapped rows pending, retired pages pending, channel/TPC
repair pending, drain recommended -> WARNING; volatile uncorrectable ECC (SRAM or DRAM), SRAM
threshold exceeded, remapping failure, unrepairable memory, reset required / a recovery action
of reset or reboot -> CRITICAL; memory used > total -> ALARM; ECC fields
present and clean -> OK; no such field at all -> UNKNOWN. From the table: ``Volatile Uncorr.
ECC`` > 0 -> CRITICAL, 0 -> OK.
"""

from __future__ import annotations

import csv
import io
import re

from xpod.backends._common import resolve_model
from xpod.hal import smi
from xpod.hal.backend import IntraNodeTopology, Link
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import ToolOutputError

TOOL = "nvidia-smi"
_GPU_BLOCK = re.compile(r"^GPU\s+([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*$")
_LIST = re.compile(r"^GPU\s+(\d+):\s+(.+?)\s+\(UUID:\s*([^)]+)\)")
_ELIDED = re.compile(r"^\s*\[?\s*\.\.\.\s*\]?\s*$")


def _model(name: str | None) -> str | None:
    return resolve_model("cuda", name, "nvidia")


# ------------------------------------------------------------------------------- -q detail


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    m = re.match(r"^\s*(\d+)", v)
    return int(m.group(1)) if m else None


def _health_from_q(block: smi.KVNode) -> tuple[Health, list[str]]:
    """Map ECC / remap / retirement fields of one GPU block onto Health, with the reasons."""
    health, why, seen = Health.UNKNOWN, [], False

    def bump(h: Health, reason: str) -> None:
        nonlocal health
        health = health.worst(h)
        why.append(reason)

    ecc = block.get("ECC Errors")
    if ecc is not None:
        seen = True
        vol = ecc.get("Volatile")
        for node in vol.children if vol else []:
            key = node.key.lower()
            if "uncorrectable" in key and (_int(node.value) or 0) > 0:
                bump(Health.CRITICAL, f"volatile {node.key} = {node.value}")
        agg = ecc.get("Aggregate")
        for node in agg.children if agg else []:
            if node.key.lower() == "sram threshold exceeded" and (node.value or "").lower() == "yes":
                bump(Health.CRITICAL, "SRAM threshold exceeded")
        for key in ("Channel Repair Pending", "TPC Repair Pending"):
            if (ecc.value_of(key) or "").lower() == "yes":
                bump(Health.WARNING, f"{key}: Yes")
        if (ecc.value_of("Unrepairable Memory") or "").lower() == "yes":
            bump(Health.CRITICAL, "Unrepairable Memory: Yes")
    rows = block.get("Remapped Rows")
    if rows is not None and rows.children:
        seen = True
        if (rows.value_of("Pending") or "").lower() == "yes":
            bump(Health.WARNING, "remapped rows pending (GPU reset needed)")
        if (rows.value_of("Remapping Failure Occurred") or "").lower() == "yes":
            bump(Health.CRITICAL, "row remapping failure occurred")
    pages = block.get("Retired Pages")
    if pages is not None and pages.children:
        seen = True
        if (
            pages.value_of("Pending Page Blacklist") or pages.value_of("Pending Page Retirement") or ""
        ).lower() == "yes":
            bump(Health.WARNING, "retired page pending (reset needed)")
    reset = block.get("GPU Reset Status")
    if reset is not None and reset.children:
        seen = True
        if (reset.value_of("Reset Required") or "").lower() == "yes":
            bump(Health.CRITICAL, "GPU Reset Status: Reset Required")
        if (reset.value_of("Drain and Reset Recommended") or "").lower() == "yes":
            bump(Health.WARNING, "GPU Reset Status: Drain and Reset Recommended")
    action = (block.value_of("GPU Recovery Action") or "").strip()
    if action:
        seen = True
        # NVML's recovery actions: None, Reset, Reboot, Drain P2P, Drain and Reset.
        if action.lower() in ("reset", "gpu reset", "reboot", "node reboot", "drain and reset"):
            bump(Health.CRITICAL, f"GPU Recovery Action: {action}")
        elif action.lower().startswith("drain"):
            bump(Health.WARNING, f"GPU Recovery Action: {action}")
    if seen and health is Health.UNKNOWN:
        health = Health.OK
    return health, why


_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(%|C|W|MHz|J|mJ)\s*$")
_SCALE = {"%": 0.01, "C": 1.0, "W": 1.0, "MHz": 1e6, "J": 1.0, "mJ": 1e-3}


def _reading(value: str | None, unit: str) -> float | None:
    """``"59 C"`` -> 59.0, ``"1980 MHz"`` -> 1.98e9, ``"100 %"`` -> 1.0 (base units); None for
    ``N/A``, a missing field or another unit."""
    m = _NUMBER_UNIT.match(value or "")
    if m is None or m.group(2) != unit:
        return None
    return float(m.group(1)) * _SCALE[unit]


def _gauges_from_q(block: smi.KVNode) -> dict[str, float]:
    """The gauges one ``-q`` GPU section reports, in base units (only those present):
    ``utilization_ratio`` (Utilization/GPU), ``temperature_celsius`` (GPU Current Temp),
    ``power_watts`` (Power Draw; Instantaneous Power Draw on drivers that split it),
    ``core_clock_hertz`` (Clocks/SM), ``memory_clock_hertz`` (Clocks/Memory) and
    ``energy_joules_total`` (a "Total Energy Consumption" field, where a driver prints one:
    neither the 565 nor the 590 captures do, so it is usually absent)."""
    out: dict[str, float] = {}
    power = block.get("GPU Power Readings") or block.get("Power Readings")
    pairs = {
        "utilization_ratio": (block.value_of("Utilization", "GPU"), "%"),
        "temperature_celsius": (block.value_of("Temperature", "GPU Current Temp"), "C"),
        "power_watts": (
            (power.value_of("Power Draw") or power.value_of("Instantaneous Power Draw")) if power else None,
            "W",
        ),
        "core_clock_hertz": (block.value_of("Clocks", "SM"), "MHz"),
        "memory_clock_hertz": (block.value_of("Clocks", "Memory"), "MHz"),
    }
    for key, (text, unit) in pairs.items():
        v = _reading(text, unit)
        if v is not None:
            out[key] = v
    for node in block.walk():
        if node.key.lower() == "total energy consumption":
            v = _reading(node.value, "J")
            v = _reading(node.value, "mJ") if v is None else v
            if v is not None:
                out["energy_joules_total"] = v
    return out


_NVLINK = re.compile(r"^\s*Link\s+(\d+):\s*(.+?)\s*$")


def parse_nvlink_status(text: str) -> dict[int, list[tuple[str, bool]]]:
    """``nvidia-smi nvlink -s``: GPU index -> [(link number, up)]. A link reads up when it
    shows a speed (``26.562 GB/s``), down when ``<inactive>`` (or anything without a speed)."""
    out: dict[int, list[tuple[str, bool]]] = {}
    gpu: int | None = None
    for ln in smi.lines_of(text):
        m = _LIST.match(ln.text)
        if m:
            gpu = int(m.group(1))
            out[gpu] = []
            continue
        m = _NVLINK.match(ln.text)
        if m and gpu is not None:
            out[gpu].append((m.group(1), bool(re.search(r"[0-9.]+\s*[GM]B/s", m.group(2)))))
    return out


def _parse_q(lines: list[smi.Line], source: str | None) -> list[DeviceInfo]:
    return _devices_from_forest(smi.kv_tree(lines), any(_ELIDED.match(ln.text) for ln in lines), source)


# ``nvidia-smi -q -x`` tag -> the ``-q`` key the health and inventory code reads. Other tags
# are turned into keys by replacing "_" with " " (lookups ignore case).
_XML_KEYS = {
    "uuid": "GPU UUID",
    "attached_gpus": "Attached GPUs",
    "remapped_row_pending": "Pending",
    "remapped_row_failure": "Remapping Failure Occurred",
    "pending_blacklist": "Pending Page Blacklist",
    "pending_retirement": "Pending Page Retirement",
}


def _parse_xml(text: str, source: str | None) -> list[DeviceInfo]:
    """``nvidia-smi -q -x``: the same fields as ``-q``, as XML; read into the ``-q`` tree."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text[text.index("<nvidia_smi_log") :] if "<nvidia_smi_log" in text else text)
    except ET.ParseError as err:
        raise ToolOutputError(TOOL, f"XML output is not well-formed: {err}") from None

    def node(el, depth: int) -> smi.KVNode:
        if el.tag == "gpu":
            key = f"GPU {el.get('id', '')}".strip()
        else:
            key = _XML_KEYS.get(el.tag, el.tag.replace("_", " "))
        value = (el.text or "").strip() if len(el) == 0 else None
        out = smi.KVNode(key, value, smi.Line(1, el.tag), depth * 4)
        out.children = [node(c, depth + 1) for c in el]
        return out

    forest = [node(c, 0) for c in root]
    return _devices_from_forest(forest, False, source)


def _devices_from_forest(forest: list[smi.KVNode], elided: bool, source: str | None) -> list[DeviceInfo]:
    attached = next((_int(n.value) for n in forest if n.key == "Attached GPUs"), None)
    blocks = [n for n in forest if _GPU_BLOCK.match(n.key)]
    if not blocks:
        # A fragment without its "GPU <bus id>" line (an excerpt of one GPU's ECC block):
        # the indented fields belong to one unnamed GPU.
        fields = [
            n
            for n in forest
            if n.indent > 0 and n.children or n.key in ("ECC Errors", "Remapped Rows", "Retired Pages")
        ]
        if not fields:
            return []
        blocks = [smi.KVNode("GPU (not shown)", None, fields[0].line, 0, fields)]
    if attached is not None and attached != len(blocks) and not elided:
        raise ToolOutputError(
            TOOL,
            f"'Attached GPUs : {attached}' but {len(blocks)} GPU sections follow (truncated output?)",
            blocks[-1].line.no,
            blocks[-1].line.text,
        )
    if len(blocks) > 1 and not elided:
        # Every GPU section of one -q run has the same fields; a last section missing some
        # that the first has was cut off.
        first_keys = {c.key for c in blocks[0].children}
        missing = first_keys - {c.key for c in blocks[-1].children}
        if missing:
            raise ToolOutputError(
                TOOL,
                f"the last GPU section lacks {len(missing)} field(s) the first has, e.g. {sorted(missing)[0]!r} (truncated output?)",
                blocks[-1].line.no,
                blocks[-1].line.text,
            )
    devices = []
    for k, block in enumerate(blocks):
        name = block.value_of("Product Name")
        fb = block.get("FB Memory Usage")
        total = used = None
        if fb is not None:
            try:
                t, u = fb.value_of("Total"), fb.value_of("Used")
                total = smi.parse_size_bytes(t) if t else None
                used = smi.parse_size_bytes(u) if u else None
            except ValueError as err:
                raise ToolOutputError(TOOL, f"cannot read FB Memory Usage: {err}", fb.line.no, fb.line.text) from None
        health, why = _health_from_q(block)
        if total is not None and used is not None and used > total:
            health = health.worst(Health.ALARM)
            why.append("memory used exceeds total")
        m = _GPU_BLOCK.match(block.key)
        bus = smi.normalize_pci_bus_id(m.group(1)) if m else None
        uuid = block.value_of("GPU UUID")
        minor = _int(block.value_of("Minor Number"))
        numa = _int(block.value_of("GPU NUMA ID") or "")
        extra = {}
        if why:
            extra["health_reasons"] = why
        gauges = _gauges_from_q(block)
        if gauges:
            extra["gauges"] = gauges
        if minor is not None:
            extra["minor_number"] = minor
        if elided:
            extra["excerpt"] = True
            if attached is not None:
                extra["attached_gpus"] = attached
        if source:
            extra["source"] = source
        devices.append(
            DeviceInfo(
                vendor="cuda",
                model=_model(name),  # type: ignore[arg-type]
                name=name,
                index=k,
                physical_index=k,  # nvidia-smi orders GPUs by PCI bus id, as -q lists them
                uuid=uuid if uuid and uuid != "N/A" else None,
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                numa_node=numa,
                pci_bus_id=bus,
                extra=extra,
            )
        )
    return devices


# ---------------------------------------------------------------------------- default table


def _parse_table(table: smi.BoxTable, source: str | None) -> list[DeviceInfo]:
    header_text = " ".join(c for r in table.header for c in r.cells)
    ecc_col = None
    for row in table.header:
        for c, cell in enumerate(row.cells):
            if "Uncorr. ECC" in cell or "Uncorr ECC" in cell:
                ecc_col = c
    devices = []
    for group in table.records:
        rows = [r for r in group if any(r.cells)]
        if not rows:
            continue
        head = rows[0]
        m = re.match(r"^(\d+)\s+(.*?)(?:\s+(On|Off))?$", head.cells[0])
        if not m:
            raise ToolOutputError(TOOL, "GPU row does not start with a GPU index", head.line.no, head.line.text)
        if len(rows) < 2:
            raise ToolOutputError(
                TOOL, "GPU row without its memory row (truncated table?)", head.line.no, head.line.text
            )
        pairs = []
        for r in rows[1:]:
            for cell in r.cells:
                if "MiB" in cell or "GiB" in cell:
                    try:
                        pairs = smi.find_used_total_pairs(cell, default_unit="MiB")
                    except ValueError as err:
                        raise ToolOutputError(
                            TOOL, f"cannot read Memory-Usage: {err}", r.line.no, r.line.text
                        ) from None
                    break
            if pairs:
                break
        if not pairs:
            raise ToolOutputError(
                TOOL, "no 'used / total' Memory-Usage in this GPU's rows", rows[1].line.no, rows[1].line.text
            )
        used, total = pairs[0]
        health = Health.UNKNOWN
        if ecc_col is not None and ecc_col < len(head.cells):
            v = head.cells[ecc_col].strip()
            if v.isdigit():
                health = Health.CRITICAL if int(v) > 0 else Health.OK
        if used > total:
            health = health.worst(Health.ALARM)
        name = m.group(2).strip()
        truncated_name = name.endswith("...")
        devices.append(
            DeviceInfo(
                vendor="cuda",
                model=_model(name) if not truncated_name else resolve_model("cuda", name.rstrip(". "), "nvidia"),  # type: ignore[arg-type]
                name=name,
                index=len(devices),
                physical_index=int(m.group(1)),
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                pci_bus_id=smi.normalize_pci_bus_id(head.cells[1]) if len(head.cells) > 1 else None,
                extra={
                    **({"name_truncated": True} if truncated_name else {}),
                    **({"source": source} if source else {}),
                },
            )
        )
    if not devices and "Bus-Id" in header_text:
        raise ToolOutputError(TOOL, "the GPU table lists no GPUs", table.header[-1].line.no, table.header[-1].line.text)
    return devices


def _gpu_tables(lines: list[smi.Line]) -> list[smi.BoxTable]:
    out = []
    for t in smi.box_tables(lines):
        text = " ".join(c for r in t.header for c in r.cells)
        if "Bus-Id" in text and "Name" in text:
            out.append(t)
    return out


# ------------------------------------------------------------------------------------- CSV


def _parse_csv(lines: list[smi.Line], source: str | None) -> list[DeviceInfo]:
    start = None
    for k, ln in enumerate(lines):
        cols = [c.strip() for c in ln.text.split(",")]
        if "name" in cols or any(c.startswith("memory.total") for c in cols):
            start = k
            break
    if start is None:
        return []
    rows = []
    for ln in lines[start:]:
        if not ln.text.strip() or ln.text.lstrip().startswith("#"):
            break
        rows.append(ln)
    reader = csv.reader(io.StringIO("\n".join(r.text for r in rows)), skipinitialspace=True)
    table = list(reader)
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in table[0]]
    units = {h: (re.search(r"\[(.*)\]", raw) or [None, None])[1] for h, raw in zip(header, table[0])}
    devices = []
    for k, values in enumerate(table[1:], start=1):
        ln = rows[k]
        if len(values) != len(header):
            raise ToolOutputError(
                TOOL, f"CSV row has {len(values)} values for {len(header)} columns (truncated?)", ln.no, ln.text
            )
        row = dict(zip(header, (v.strip() for v in values)))

        def size(col: str) -> int | None:
            v = row.get(col)
            if v is None or v.startswith("[") or v in ("N/A", ""):
                return None
            try:
                return smi.parse_size_bytes(v, default_unit=units.get(col) or "MiB")
            except ValueError:
                raise ToolOutputError(TOOL, f"cannot read {col}={v!r}", ln.no, ln.text) from None

        total, used = size("memory.total"), size("memory.used")
        health = Health.UNKNOWN
        unc = row.get("ecc.errors.uncorrected.volatile.total")
        if unc is not None and unc.isdigit():
            health = Health.CRITICAL if int(unc) > 0 else Health.OK
        if (row.get("remapped_rows.pending") or "").lower() in ("yes", "1", "true"):
            health = health.worst(Health.WARNING)
        if total is not None and used is not None and used > total:
            health = health.worst(Health.ALARM)
        idx = row.get("index")
        name = row.get("name")
        devices.append(
            DeviceInfo(
                vendor="cuda",
                model=_model(name),  # type: ignore[arg-type]
                name=name,
                index=len(devices),
                physical_index=int(idx) if idx and idx.isdigit() else len(devices),
                uuid=row.get("uuid") or None,
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                pci_bus_id=smi.normalize_pci_bus_id(row.get("pci.bus_id") or ""),
                extra={"source": source} if source else {},
            )
        )
    return devices


def _parse_list(lines: list[smi.Line], source: str | None) -> list[DeviceInfo]:
    out = []
    for ln in lines:
        m = _LIST.match(ln.text)
        if m:
            name = m.group(2)
            out.append(
                DeviceInfo(
                    vendor="cuda",
                    model=_model(name),  # type: ignore[arg-type]
                    name=name,
                    index=len(out),
                    physical_index=int(m.group(1)),
                    uuid=m.group(3).strip(),
                    extra={"source": source} if source else {},
                )
            )
    return out


# ------------------------------------------------------------------------------ dispatcher


def _kind(command: str | None) -> str | None:
    if command is None:
        return None
    args = command.split()[1:]
    if args[:1] == ["topo"] or args[:1] == ["nvlink"] or args[:1] in (["pmon"], ["dmon"]):
        return "other"
    if any(a.startswith("--query-gpu") for a in args):
        return "csv"
    if any(a.startswith("--query") or a.startswith("--help") or a in ("-h", "--version") for a in args):
        return "other"
    if "-q" in args or "--query" in args or "-a" in args:
        return "q"
    if "-L" in args or "--list-gpus" in args:
        return "list"
    if not args:
        return "table"
    return "other"


def parse(text: str, source: str | None = None) -> list[DeviceInfo]:
    """Devices in an ``nvidia-smi`` output or capture (see the module note for the order)."""
    lines = smi.lines_of(text)
    first = smi.first_content_line(lines)
    if first is None:
        raise ToolOutputError(TOOL, "empty output")
    if re.search(r"<nvidia_smi_log\b", text):
        return _parse_xml(text, source)
    sections = smi.command_sections(lines, TOOL)
    candidates: dict[str, list[list[smi.Line]]] = {"q": [], "table": [], "csv": [], "list": []}
    for sec in sections:
        kind = _kind(sec.command)
        body = list(sec.lines)
        if kind == "other":
            continue
        if kind is None or kind == "q":
            if any(_GPU_BLOCK.match(ln.text) for ln in body) or any(
                re.match(r"^\s+(ECC Errors|Remapped Rows|FB Memory Usage)\s*$", ln.text) for ln in body
            ):
                candidates["q"].append(body)
                if kind == "q":
                    continue
        if kind is None or kind == "table":
            if _gpu_tables(body):
                candidates["table"].append(body)
                continue
        if kind is None or kind == "csv":
            if any("memory.total" in ln.text or ln.text.startswith("name,") for ln in body):
                candidates["csv"].append(body)
                continue
        if kind is None or kind == "list":
            if any(_LIST.match(ln.text) for ln in body):
                candidates["list"].append(body)
    for kind in ("q", "table", "csv", "list"):
        if not candidates[kind]:
            continue
        body = candidates[kind][-1]  # the latest snapshot
        if kind == "q":
            devices = _parse_q(body, source)
        elif kind == "table":
            devices = [d for t in _gpu_tables(body)[-1:] for d in _parse_table(t, source)]
        elif kind == "csv":
            devices = _parse_csv(body, source)
        else:
            devices = _parse_list(body, source)
        if devices:
            return devices
    if is_topo_output(text):
        topo = parse_topo(text)
        return [
            DeviceInfo(
                vendor="cuda", model=None, index=k, physical_index=i, extra={"inventory_from": "topology matrix"}
            )
            for k, i in enumerate(topo.indices)
        ]  # type: ignore[arg-type]
    raise ToolOutputError(
        TOOL,
        "no GPU inventory found (expected the default table, -q detail, --query-gpu CSV or -L output)",
        first.no,
        first.text,
    )


# ------------------------------------------------------------------------------- topo -m

_NV = re.compile(r"^NV(\d+)$")
_TOPO_WORDS = {
    "X": Link.SELF,
    "PIX": Link.PCIE_SWITCH,
    "PXB": Link.PCIE_SWITCH,
    "PHB": Link.PCIE_HOST,
    "NODE": Link.PCIE_HOST,
    "SYS": Link.NUMA,
    "SOC": Link.NUMA,
}


def is_topo_output(text: str) -> bool:
    return bool(re.search(r"^\s+GPU0\s+(GPU1|CPU Affinity)", smi.ANSI_RE.sub("", text), re.MULTILINE))


def parse_topo(text: str) -> IntraNodeTopology:
    """``nvidia-smi topo -m`` (TAB- or space-separated, ANSI escapes allowed): the GPU-by-GPU
    matrix; ``NV#`` is the fabric (NVLink), NIC rows and columns are ignored."""
    lines = smi.lines_of(text)
    try:
        matrices = smi.link_matrices(lines, r"GPU\d+")
    except ValueError as err:
        raise ToolOutputError(TOOL, f"topo -m: {err}") from None
    if not matrices:
        first = smi.first_content_line(lines)
        raise ToolOutputError(
            TOOL, "no 'GPU0 GPU1 ...' topology matrix found", first.no if first else None, first.text if first else None
        )
    m = matrices[-1]
    ids = tuple(int(lab[3:]) for lab in m.labels)
    rows = []
    nvlinks = {}
    for i, row in enumerate(m.cells):
        out = []
        for j, w in enumerate(row):
            nv = _NV.match(w)
            if nv:
                out.append(Link.FABRIC)
                nvlinks[(ids[i], ids[j])] = int(nv.group(1))
            elif w in _TOPO_WORDS:
                out.append(_TOPO_WORDS[w])
            else:
                raise ToolOutputError(
                    TOOL, f"unknown link type {w!r} between {m.labels[i]} and {m.labels[j]}", m.first_line + 1 + i
                )
        rows.append(tuple(out))
    return IntraNodeTopology(indices=ids, links=tuple(rows), fabric_name="NVLink" if nvlinks else None)
