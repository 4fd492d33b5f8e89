"""Vendor-neutral pieces of management-tool output parsing (npu-smi, cnmon, mthreads-gmi,
hy-smi, rocm-smi, nvidia-smi).

The tools share a handful of text shapes; each shape is read once here and the per-tool
knowledge (which column means what) lives in ``backends/<vendor>/``:

- box tables drawn with ``+----+`` / ``|====|`` rules and ``|``-separated cells (npu-smi,
  cnmon, nvidia-smi): ``box_tables``;
- indented ``key : value`` trees (``nvidia-smi -q``): ``kv_tree``;
- per-device ``GPU[0] : key: value`` lines (``rocm-smi -a`` and friends): ``indexed_kv``;
- device-by-device link matrices (``npu-smi info -t topo``, ``nvidia-smi topo -m``,
  ``rocm-smi --showtopo``): ``link_matrix``;
- sizes with units (``65536MiB``, ``32768 MB``, ``80 GB``): ``parse_size_bytes``;
- capture files holding several command outputs, each after a ``$ tool ...`` prompt line:
  ``command_sections``.

Everything keeps 1-based line numbers so that a parser can name the line it could not read
(``ToolOutputError``). Nothing here guesses: a helper returns ``None`` or raises
``ValueError`` and the caller decides whether that is fatal.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterable, Sequence

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclasses.dataclass(frozen=True)
class Line:
    """One line of tool output: 1-based number in the original text, ANSI escapes removed."""

    no: int
    text: str


def lines_of(text: str, first_no: int = 1) -> list[Line]:
    """Split ``text`` into numbered lines, stripping ANSI escapes, CR and trailing blanks."""
    out = []
    for i, raw in enumerate(text.splitlines()):
        out.append(Line(first_no + i, ANSI_RE.sub("", raw).rstrip("\r").rstrip()))
    return out


def first_content_line(lines: Sequence[Line]) -> Line | None:
    """The first line that is not blank (for error messages about unreadable output)."""
    for ln in lines:
        if ln.text.strip():
            return ln
    return None


# --------------------------------------------------------------------------------- sizes

_UNIT_BYTES = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
# The management tools print "MB"/"GB" but mean binary units: npu-smi's HBM total for a
# 64 GiB 910B is "65536 MB", hy-smi/rocm-smi print "MB" for MiB as well. A caller that knows
# its tool uses decimal units passes ``decimal=True``.
_DECIMAL = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BINARY_SPELLED = {"kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size_bytes(text: str, default_unit: str | None = None, decimal: bool = False) -> int:
    """``"65536MiB"``, ``"32768 MB"``, ``"80 GB"``, ``"206141652992"`` -> bytes.

    ``default_unit`` applies when the text has no unit (npu-smi's ``Memory-Usage(MB)`` column
    holds bare numbers). ``MB``/``GB`` are binary unless ``decimal`` (see the module note).
    Raises ``ValueError`` for anything else, including negative or empty values.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    number, unit = m.group(1), m.group(2).lower()
    if not unit and default_unit is not None:
        unit = default_unit.lower()
    if unit in _UNIT_BYTES:
        factor = _UNIT_BYTES[unit]
    elif unit in _DECIMAL:
        factor = _DECIMAL[unit] if decimal else _BINARY_SPELLED[unit]
    else:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {text!r}")
    value = float(number) * factor
    return int(round(value))


_PAIR_RE = re.compile(
    r"(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*(?:/|\()\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*\)?",
    re.IGNORECASE,
)


def find_used_total_pairs(text: str, default_unit: str = "MiB") -> list[tuple[int, int]]:
    """Every ``used / total`` pair in ``text``, in bytes, left to right.

    Reads ``3318 / 65536`` (npu-smi, unit from ``default_unit``), ``0 MiB/ 23374 MiB``
    (cnmon), ``0MiB /  81559MiB`` (nvidia-smi) and ``44302MiB(32768MiB)`` (mthreads-gmi).
    """
    out = []
    for m in _PAIR_RE.finditer(text):
        used = parse_size_bytes(m.group(1) + (m.group(2) or ""), default_unit=default_unit)
        total = parse_size_bytes(m.group(3) + (m.group(4) or ""), default_unit=default_unit)
        out.append((used, total))
    return out


# ---------------------------------------------------------------------------- box tables

_RULE_RE = re.compile(r"^\s*[+|]?[-=+|]*[-=]{3,}[-=+|]*[+|]?\s*$")


def rule_kind(text: str) -> str | None:
    """``"="`` for a header-closing rule (``|====|``, ``+====+``), ``"-"`` for an ordinary
    rule (``+----+``), ``None`` when the line is not a rule."""
    if not _RULE_RE.match(text) or not text.strip():
        return None
    return "=" if "=" in text else "-"


def split_cells(text: str) -> tuple[str, ...]:
    """``"| 0  910B3 | OK | 101.8 |"`` -> ``("0  910B3", "OK", "101.8")`` (cells stripped)."""
    body = text.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|"):
        body = body[:-1]
    return tuple(c.strip() for c in body.split("|"))


@dataclasses.dataclass(frozen=True)
class BoxRow:
    line: Line
    cells: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BoxTable:
    """One ``+---+`` box table.

    ``groups`` are runs of rows between rule lines; ``eq_after`` marks the groups followed by
    a ``====`` rule. ``header`` is the group just before the first ``====`` rule (the column
    titles); ``records`` are the groups after it. ``closed`` says whether the table ended with
    a rule line (a paste cut in the middle of a row group is not closed).
    """

    groups: tuple[tuple[BoxRow, ...], ...]
    eq_after: tuple[bool, ...]
    closed: bool
    first_line: int
    last_line: int

    @property
    def header_index(self) -> int | None:
        for i, eq in enumerate(self.eq_after):
            if eq:
                return i
        return None

    @property
    def header(self) -> tuple[BoxRow, ...]:
        i = self.header_index
        return () if i is None else self.groups[i]

    @property
    def records(self) -> tuple[tuple[BoxRow, ...], ...]:
        i = self.header_index
        return self.groups if i is None else self.groups[i + 1 :]

    @property
    def title_rows(self) -> tuple[BoxRow, ...]:
        i = self.header_index
        return tuple(r for g in (self.groups[:i] if i is not None else ()) for r in g)


def box_tables(lines: Sequence[Line]) -> list[BoxTable]:
    """Every box table in ``lines``. A table starts at a rule line and continues while lines
    are rules or ``|``-rows; any other line (blank, free text) ends it."""
    tables: list[BoxTable] = []
    i = 0
    n = len(lines)
    while i < n:
        if rule_kind(lines[i].text) is None:
            i += 1
            continue
        groups: list[tuple[BoxRow, ...]] = []
        eq_after: list[bool] = []
        current: list[BoxRow] = []
        first = lines[i].no
        last = first
        closed = True
        while i < n:
            text = lines[i].text
            kind = rule_kind(text)
            if kind is not None:
                if current:
                    groups.append(tuple(current))
                    eq_after.append(kind == "=")
                    current = []
                elif kind == "=" and eq_after:
                    eq_after[-1] = True  # "+====+" directly after "|===|": same boundary
                closed = True
            elif "|" in text and text.strip():
                current.append(BoxRow(lines[i], split_cells(text)))
                closed = False
            else:
                break
            last = lines[i].no
            i += 1
        if current:
            groups.append(tuple(current))
            eq_after.append(False)
        tables.append(BoxTable(tuple(groups), tuple(eq_after), closed, first, last))
    return tables


# ---------------------------------------------------------------------- key : value trees

_KV_RE = re.compile(r"^(\s*)(\S.*?)\s+:(?:\s+(.*))?$")


@dataclasses.dataclass
class KVNode:
    """One ``key : value`` line (``value`` None for a section title) and its children."""

    key: str
    value: str | None
    line: Line
    indent: int
    children: list["KVNode"] = dataclasses.field(default_factory=list)

    def get(self, *path: str) -> "KVNode | None":
        """The descendant reached by ``path`` (exact keys, case-insensitive), or None."""
        node: KVNode | None = self
        for key in path:
            if node is None:
                return None
            node = next((c for c in node.children if c.key.lower() == key.lower()), None)
        return node

    def value_of(self, *path: str) -> str | None:
        node = self.get(*path)
        return None if node is None else node.value

    def walk(self) -> Iterable["KVNode"]:
        yield self
        for c in self.children:
            yield from c.walk()


def kv_tree(lines: Sequence[Line]) -> list[KVNode]:
    """Parse an indented ``key : value`` listing (``nvidia-smi -q``) into a forest.

    A line with ``key<spaces>: value`` is a leaf; a line without `` :`` is a section title
    whose children are the following, more indented lines. Blank lines are skipped. Lines
    such as ``[...]`` (an author's elision) become titles with no children.
    """
    roots: list[KVNode] = []
    stack: list[KVNode] = []
    for ln in lines:
        if not ln.text.strip():
            continue
        indent = len(ln.text) - len(ln.text.lstrip(" \t"))
        m = _KV_RE.match(ln.text)
        if m:
            node = KVNode(m.group(2).strip(), (m.group(3) or "").strip(), ln, indent)
        else:
            node = KVNode(ln.text.strip(), None, ln, indent)
        while stack and stack[-1].indent >= indent:
            stack.pop()
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
    return roots


_INDEXED_RE = re.compile(r"^\s*(GPU|DCU|HCU|card)\s*\[\s*(\d+)\s*\]\s*:\s*(.*)$", re.IGNORECASE)


def indexed_kv(lines: Sequence[Line]) -> dict[int, dict[str, tuple[str, Line]]]:
    """``GPU[3]  : VRAM Total Memory (B): 206141652992`` lines, grouped by device index.

    Returns ``{index: {key: (value, line)}}``; the first occurrence of a key wins. Lines whose
    payload has no ``key: value`` (``Not supported``) are skipped.
    """
    out: dict[int, dict[str, tuple[str, Line]]] = {}
    for ln in lines:
        m = _INDEXED_RE.match(ln.text)
        if not m:
            continue
        idx = int(m.group(2))
        payload = m.group(3)
        key, sep, value = payload.partition(": ")
        if not sep:
            if payload.rstrip().endswith(":"):
                key, value = payload.rstrip()[:-1], ""
            else:
                out.setdefault(idx, {})
                continue
        out.setdefault(idx, {}).setdefault(key.strip(), (value.strip(), ln))
    return out


# ------------------------------------------------------------------------- link matrices


@dataclasses.dataclass(frozen=True)
class LinkMatrix:
    """A device-by-device matrix: ``labels`` as printed (``NPU0``), ``cells[i][j]`` the
    printed link word, ``extra[i]`` the trailing columns (CPU / NUMA affinity)."""

    labels: tuple[str, ...]
    cells: tuple[tuple[str, ...], ...]
    extra: tuple[tuple[str, ...], ...]
    extra_titles: tuple[str, ...]
    first_line: int


def link_matrices(lines: Sequence[Line], label_re: str = r"(?:GPU|NPU|DCU|HCU|MLU)\d+") -> list[LinkMatrix]:
    """Every matrix whose header row lists device labels (``GPU0  GPU1 ...``) and whose rows
    start with the same labels. Raises ``ValueError`` naming the line when a row has fewer
    cells than there are devices (a truncated or re-typed paste)."""
    label = re.compile(rf"^{label_re}$")
    out = []
    i = 0
    while i < len(lines):
        text = lines[i].text
        tokens = text.split()
        labels = []
        for t in tokens:
            if not label.match(t):
                break
            labels.append(t)
        # A header row is indented (the corner cell is empty) and starts with device labels;
        # data rows start at column 0 with their label.
        if not labels or not text[:1].isspace():
            i += 1
            continue
        rest = text.strip()
        for lab in labels:
            rest = rest[len(lab) :].lstrip() if rest.startswith(lab) else rest
        rows: list[tuple[str, ...]] = []
        extras: list[tuple[str, ...]] = []
        j = i + 1
        while j < len(lines) and len(rows) < len(labels):
            toks = lines[j].text.split()
            if not toks:
                break
            if toks[0] != labels[len(rows)]:
                break
            if len(toks) < 1 + len(labels):
                raise ValueError(
                    f"line {lines[j].no}: matrix row {toks[0]} has {len(toks) - 1} cells for {len(labels)} devices"
                )
            rows.append(tuple(toks[1 : 1 + len(labels)]))
            extras.append(tuple(toks[1 + len(labels) :]))
            j += 1
        if rows:
            if len(rows) != len(labels):
                ln = lines[j] if j < len(lines) else lines[-1]
                raise ValueError(f"line {ln.no}: matrix has {len(rows)} rows for {len(labels)} devices (truncated?)")
            titles = tuple(t.strip() for t in re.split(r"\s{2,}|\t", rest) if t.strip())
            out.append(LinkMatrix(tuple(labels), tuple(rows), tuple(extras), titles, lines[i].no))
            i = j
        else:
            i += 1
    return out


# ---------------------------------------------------------------------- capture sections


@dataclasses.dataclass(frozen=True)
class Section:
    """The output of one command in a capture file (``command`` None for text before the
    first prompt line, or for a file that is one bare output)."""

    command: str | None
    lines: tuple[Line, ...]


def command_sections(lines: Sequence[Line], tool: str) -> list[Section]:
    """Split a capture at prompt lines that run ``tool`` (``$ nvidia-smi -q``,
    ``# $ nvidia-smi topo -m``, ``[root@host ~]# npu-smi info``). A file with no such
    line is one section with ``command`` None."""
    prompt = re.compile(rf"^\s*(?:#\s*)?(?:\[[^\]]*\][#$]\s*|\$\s+|(?:\S+@\S+)?[#$>]\s+)({re.escape(tool)}\b.*)$")
    sections: list[Section] = []
    command: str | None = None
    current: list[Line] = []
    for ln in lines:
        m = prompt.match(ln.text)
        if m:
            if current or command is not None:
                sections.append(Section(command, tuple(current)))
            command, current = m.group(1).strip(), []
        else:
            current.append(ln)
    sections.append(Section(command, tuple(current)))
    return [s for s in sections if s.command is not None or any(ln.text.strip() for ln in s.lines)]


def normalize_pci_bus_id(text: str) -> str | None:
    """``"00000000:18:00.0"`` / ``"0000:C1:00.0"`` / ``"18:00.0"`` -> ``"0000:18:00.0"``
    (lowercase, 4-digit domain), or None when ``text`` is not a PCI address."""
    m = re.search(r"\b(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])\b", text)
    if not m:
        return None
    domain = (m.group(1) or "0000")[-4:]
    return f"{domain}:{m.group(2)}:{m.group(3)}.{m.group(4)}".lower()


# --------------------------------------------------------------------------- running tools


class ToolRunError(Exception):
    """A management tool could not be run or failed; ``str()`` is a one-line reason."""


def run_tool(argv: Sequence[str], timeout_s: float = 10.0) -> str:
    """Run a management tool and return its stdout.

    Raises ``ToolRunError`` with a one-line reason when the tool is missing, exits non-zero
    or runs longer than ``timeout_s`` (a hung driver makes these tools block). Only the
    backends' ``_sdk.py`` modules call this.
    """
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, errors="replace")
    except FileNotFoundError:
        raise ToolRunError(f"{argv[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise ToolRunError(f"'{' '.join(argv)}' did not finish within {timeout_s:g} s (hung driver?)") from None
    except OSError as err:
        raise ToolRunError(f"cannot run {argv[0]}: {err.strerror or err}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ToolRunError(
            f"'{' '.join(argv)}' exited with status {proc.returncode}" + (f": {detail[0][:200]}" if detail else "")
        )
    return proc.stdout
