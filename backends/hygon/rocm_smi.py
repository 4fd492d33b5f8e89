"""Reading ``hy-smi`` (Hygon DTK) and ``rocm-smi`` (Hygon DTK builds and AMD ROCm).

Hygon's DTK ships ``hy-smi`` and a ``rocm-smi`` derived from AMD's; the text shapes are the
same family, so one module reads both:

- the concise table: a header line ``DCU  Temp  AvgPwr ... VRAM%  DCU%  Mode`` (Hygon; ``HCU``
  on driver >= 6.3) or ``Device  [Model : Revision]  Temp ...`` / ``Device  Node  IDs ...``
  (AMD), then one line per device starting with its index (AMD adds an indented name line);
- per-device lines ``GPU[0]  : VRAM Total Memory (B): 206141652992`` (``-a``,
  ``--showmeminfo vram``, ``--showproductname``, the NUMA part of ``--showtopo``);
- the ``--showtopo`` matrices (weight, hops, link type).

All of them in one file are merged by device index, so a capture with several commands does
not count a device twice. None of these outputs carries a health state: health is UNKNOWN
(hal.md P7). The concise tables print no memory size and no Hygon model name, so those stay
null unless a ``GPU[i] : VRAM Total Memory`` or ``Card series`` line is present.

Vendor: Hygon when the output says DCU/HCU or names Haiguang/Hygon as card vendor; AMD
(vendor ``"amd"``, which has no xpod backend) when it names AMD or an AMD device id. The
device-type string ``cuda`` that both share is never used for this.
"""

from __future__ import annotations

import re

from xpod.backends._common import resolve_model
from xpod.hal import smi
from xpod.hal.backend import IntraNodeTopology, Link
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import ToolOutputError

# AMD Instinct PCI device ids whose model is confirmed in a cited source:
# 0x74a1 = "AMD-Instinct-MI300X-OAM" (ray-project/ray python/ray/_private/accelerators/amd_gpu.py,
# hal.md section 3). Other ids are reported as their id, model null.
AMD_DEVICE_IDS = {"0x74a1": "AMD Instinct MI300X"}
_CONCISE_HEADER = re.compile(r"^(DCU|HCU|GPU|Device)\s+.*\b(Temp|VRAM%)", re.IGNORECASE)
_ROW = re.compile(r"^(\d+)\s+(\S.*)$")
_BANNER = re.compile(r"^=+(.*?)=*$")
_TOPO_WORDS = {"XGMI": Link.FABRIC, "PCIE": Link.PCIE_HOST, "0": Link.SELF, "X": Link.SELF}


def _concise(lines: list[smi.Line], tool: str) -> tuple[str | None, dict[int, dict]]:
    """Rows of the concise table: ``(header word, {index: fields})``."""
    for k, ln in enumerate(lines):
        m = _CONCISE_HEADER.match(ln.text)
        if not m:
            continue
        word = m.group(1).upper()
        cols = ln.text.split()
        rows: dict[int, dict] = {}
        last: int | None = None
        for row_ln in lines[k + 1 :]:
            text = row_ln.text
            if _BANNER.match(text) and text.startswith("=="):
                if rows:
                    break
                continue
            if not text.strip():
                continue
            r = _ROW.match(text)
            if r:
                idx = int(r.group(1))
                toks = text.split()
                fields: dict = {"line": row_ln, "tokens": toks}
                dev_id = re.search(r"\b(0x[0-9a-fA-F]{4})\b", text)
                if dev_id:
                    fields["device_id"] = dev_id.group(1).lower()
                if word in ("DCU", "HCU"):
                    # Hygon rows: one token per header column (values have no spaces).
                    if len(toks) < len(cols):
                        raise ToolOutputError(
                            tool, f"row has {len(toks)} values for {len(cols)} columns (truncated?)", row_ln.no, text
                        )
                    fields.update({c: t for c, t in zip(cols, toks)})
                rows[idx] = fields
                last = idx
            elif (
                text[:1].isspace()
                and last is not None
                and "name" not in rows[last]
                and not text.strip().startswith("(")
            ):
                rows[last]["name"] = text.strip()  # AMD: the indented product-name line
        return word, rows
    return None, {}


def _topology(lines: list[smi.Line], tool: str) -> IntraNodeTopology | None:
    try:
        matrices = smi.link_matrices(lines, r"(?:GPU|DCU|HCU)\d+")
    except ValueError as err:
        raise ToolOutputError(tool, f"topology matrix: {err}") from None
    link_matrix = None
    for m in matrices:
        words = {w.upper() for row in m.cells for w in row}
        if words & {"XGMI", "PCIE"}:
            link_matrix = m
    if link_matrix is None:
        return None
    ids = tuple(int(re.sub(r"\D", "", lab)) for lab in link_matrix.labels)
    rows = []
    for i, row in enumerate(link_matrix.cells):
        rows.append(tuple(Link.SELF if i == j else _TOPO_WORDS.get(w.upper(), Link.UNKNOWN) for j, w in enumerate(row)))
    fabric = "xGMI" if any(w.upper() == "XGMI" for r in link_matrix.cells for w in r) else None
    return IntraNodeTopology(indices=ids, links=tuple(rows), fabric_name=fabric)


def parse_topology(text: str, tool: str = "rocm-smi") -> IntraNodeTopology:
    topo = _topology(smi.lines_of(text), tool)
    if topo is None:
        raise ToolOutputError(tool, "no 'Link Type between two GPUs' matrix found")
    return topo


def _size(kv: dict[str, tuple[str, smi.Line]], pattern: str, tool: str) -> int | None:
    for key, (value, ln) in kv.items():
        m = re.fullmatch(pattern, key, re.IGNORECASE)
        if m:
            unit = m.group(1)
            try:
                return smi.parse_size_bytes(value, default_unit="B" if unit.upper() == "B" else unit)
            except ValueError:
                raise ToolOutputError(tool, f"cannot read {key!r}", ln.no, ln.text) from None
    return None


def _json_devices(text: str, tool: str) -> dict[int, dict[str, tuple[str, smi.Line]]]:
    """``rocm-smi ... --json``: ``{"card0": {"Card Series": ..., "VRAM Total Memory (B)": ...}}``
    in the same shape as ``smi.indexed_kv`` (keys as printed; line numbers unknown -> 1)."""
    import json

    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ToolOutputError(tool, f"looks like JSON but is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ToolOutputError(tool, "JSON output is not an object of cards")
    out: dict[int, dict[str, tuple[str, smi.Line]]] = {}
    for key, fields in doc.items():
        m = re.fullmatch(r"(?:card|gpu|dcu|hcu)(\d+)", key.strip(), re.IGNORECASE)
        if not m or not isinstance(fields, dict):
            continue  # "system" and other non-card entries
        here = smi.Line(1, key)
        kv = out.setdefault(int(m.group(1)), {})
        for name, value in fields.items():
            kv.setdefault(name, (str(value), here))
            # newer rocm-smi capitalises differently ("Card Series"); keep both spellings
            kv.setdefault(name[:1] + name[1:].lower() if name.startswith("Card") else name, (str(value), here))
    if not out:
        raise ToolOutputError(tool, "JSON output has no 'cardN' entries")
    return out


def parse(text: str, tool: str = "rocm-smi", source: str | None = None) -> list[DeviceInfo]:
    """Devices in an ``hy-smi`` / ``rocm-smi`` output (any mix of the shapes above)."""
    lines = smi.lines_of(text)
    first = smi.first_content_line(lines)
    if first is None:
        raise ToolOutputError(tool, "empty output")
    word, concise = _concise(lines, tool)
    per_device = smi.indexed_kv(lines)
    if text.lstrip().startswith("{"):
        per_device = _json_devices(text, tool)
    topo = _topology(lines, tool)
    indices = sorted(set(concise) | set(per_device) | set(topo.indices if topo else ()))
    if not indices:
        raise ToolOutputError(
            tool,
            "no device table ('DCU  Temp ...' / 'Device ...'), no 'GPU[i] : ...' lines and no topology matrix found",
            first.no,
            first.text,
        )
    lower = text.lower()
    vendor_words = " ".join(
        v for kv in per_device.values() for k, (v, _) in kv.items() if k.lower() == "card vendor"
    ).lower()
    if text.lstrip().startswith("{"):
        lower = vendor_words  # JSON: only the card-vendor field names the vendor
    if (
        word in ("DCU", "HCU")
        or "haiguang" in vendor_words
        or "hygon" in vendor_words
        or re.search(r"\b(dcu|hcu)s?\b", lower)
        and "amd" not in lower
    ):
        vendor = "hygon"
    elif "advanced micro devices" in vendor_words or "amd" in lower or any("device_id" in r for r in concise.values()):
        vendor = "amd"
    else:
        vendor = "hygon" if tool == "hy-smi" else "amd"
    devices = []
    for ordinal, idx in enumerate(indices):
        row = concise.get(idx, {})
        kv = per_device.get(idx, {})
        dev_id = (
            kv.get("Device ID", (None,))[0]
            or kv.get("Card model", (None,))[0]
            or kv.get("Card Model", (None,))[0]
            or row.get("device_id")
            or ""
        )
        dev_id = dev_id.lower() or None
        name = None
        series = kv.get("Card series", (None,))[0] or kv.get("Card Series", (None,))[0]
        if series and series.strip():
            name = series.strip()
        elif row.get("name"):
            name = row["name"]
        elif vendor == "amd" and dev_id in AMD_DEVICE_IDS:
            name = AMD_DEVICE_IDS[dev_id]
        if vendor == "amd":
            model = None
            if dev_id in AMD_DEVICE_IDS:
                model = "amd-" + AMD_DEVICE_IDS[dev_id].split()[-1].lower()
            elif name:
                model = resolve_model("amd", name.replace("AMD Instinct", "").strip(), "amd")
        else:
            model = resolve_model("hygon", name, "hygon")
        total = _size(kv, r"VRAM Total Memory \((\w+)\)", tool)
        used = _size(kv, r"VRAM Total Used Memory \((\w+)\)", tool)
        health = Health.UNKNOWN
        if total is not None and used is not None and used > total:
            health = Health.ALARM
        numa = kv.get("(Topology) Numa Node", (None,))[0]
        uuid = kv.get("Unique ID", (None,))[0]
        extra = {}
        if dev_id:
            extra["device_id"] = dev_id
        for col in ("VRAM%", "DCU%", "HCU%", "Mode", "PwrCap"):
            if col in row:
                extra[col.lower().replace("%", "_percent")] = row[col]
        if source:
            extra["source"] = source
        devices.append(
            DeviceInfo(
                vendor=vendor,
                model=model,  # type: ignore[arg-type]
                name=name,
                index=ordinal,
                physical_index=idx,
                uuid=uuid if uuid and uuid.upper() != "N/A" else None,
                memory_total_bytes=total,
                memory_used_bytes=used,
                health=health,
                numa_node=int(numa) if numa and numa.lstrip("-").isdigit() and int(numa) >= 0 else None,
                pci_bus_id=smi.normalize_pci_bus_id(kv.get("PCI Bus", ("",))[0]),
                extra=extra,
            )
        )
    return devices
