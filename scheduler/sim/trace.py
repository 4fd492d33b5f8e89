"""Job traces for ``xpod replay jobs``: reading them, and making their sizes legal on a cluster.

A trace is a CSV (or ``.csv.gz``) in the normalized schema of the research traces
(``shared/data/traces/normalized/philly_jobs.csv``)::

    job_id, submit_s, duration_s, num_devices, device_milli, device_type, vc, ...

``job_id``, ``submit_s``, ``duration_s`` and ``num_devices`` are required; ``device_milli``
(default 1000: whole devices; a fraction of one device only with ``num_devices`` 1),
``device_type`` (a device model; empty: any) and ``vc`` (the tenant, reported only) are
optional; other columns are ignored. A bad file ends in one ``XpodError`` line naming the file,
the line and the field (``trace.csv:17: duration_s: '-3' must be a number of seconds >= 0``).

Sizes (``legal_shape``): one trace device is one schedulable device of the cluster (a die on
Ascend 910C), and a job's device count becomes the smallest size the cluster's rules allow that
holds it. On Ascend (``plugins/ascend/rules``): a 910C task takes 1 or an even number of dies up
to 16, a larger job is distributed over tasks of 16 dies (a whole node each) in one logical
super-pod; a 910B task takes 1, 2, 4 or 8. Elsewhere a job up to one node's devices is one task,
a larger one takes whole nodes. The replay reports every mapping it used.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import math
from collections.abc import Sequence

from xpod.hal.errors import XpodError

from ..core.model import MILLI
from ..core.plugins.ascend import rules as ascend_rules

REQUIRED = ("job_id", "submit_s", "duration_s", "num_devices")
OPTIONAL = ("device_milli", "device_type", "vc")


@dataclasses.dataclass(frozen=True)
class TraceJob:
    """One row of a job trace."""

    job_id: str
    submit_s: float  # seconds on the trace's clock
    duration_s: float  # run time on its devices without interruption
    num_devices: int  # devices it asked for in the trace (GPUs in Philly)
    device_milli: int = MILLI  # per device; < 1000 only with one device
    device_type: str = ""  # a device model; "" = any
    vc: str = ""  # the tenant (Philly's virtual cluster); reported, not scheduled on
    line: int = 0  # line in the file (for messages)


def _number(path: str, line: int, field: str, text: str, *, integer: bool = False) -> float:
    try:
        v = float(text)
    except ValueError:
        raise XpodError(f"{path}:{line}: {field}: {text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise XpodError(f"{path}:{line}: {field}: {text!r} must be a finite number >= 0")
    if integer and v != int(v):
        raise XpodError(f"{path}:{line}: {field}: {text!r} must be a whole number")
    return v


def read_trace(path: str) -> list[TraceJob]:
    """Every row of the trace at ``path``, in file order (``XpodError`` on the first bad one)."""
    try:
        if path.endswith(".gz"):
            f = gzip.open(path, "rt", encoding="utf-8", newline="")
        else:
            f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise XpodError(f"{path}: no such trace file") from None
    except OSError as err:
        raise XpodError(f"{path}: cannot read: {err.strerror}") from None
    out: list[TraceJob] = []
    seen: dict[str, int] = {}
    with f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise XpodError(f"{path}: empty file (expected a header with {', '.join(REQUIRED)})")
            header = [h.strip() for h in header]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise XpodError(
                    f"{path}:1: missing column {missing[0]!r} (a job trace has {', '.join(REQUIRED)}; "
                    f"optional {', '.join(OPTIONAL)})"
                )
            col = {name: header.index(name) for name in (*REQUIRED, *OPTIONAL) if name in header}
            width = max(col.values()) + 1
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) < width:
                    short = next(n for n, i in col.items() if i >= len(row))
                    raise XpodError(f"{path}:{line}: {short}: missing (the row has {len(row)} of {len(header)} fields)")
                jid = row[col["job_id"]].strip()
                if not jid:
                    raise XpodError(f"{path}:{line}: job_id: empty")
                if jid in seen:
                    raise XpodError(f"{path}:{line}: job_id: {jid!r} already used on line {seen[jid]}")
                seen[jid] = line
                submit = _number(path, line, "submit_s", row[col["submit_s"]].strip())
                duration = _number(path, line, "duration_s", row[col["duration_s"]].strip())
                count = int(_number(path, line, "num_devices", row[col["num_devices"]].strip(), integer=True))
                if count < 1:
                    raise XpodError(f"{path}:{line}: num_devices: 0: a replayed job asks for 1 or more devices")
                milli = MILLI
                if "device_milli" in col and row[col["device_milli"]].strip():
                    text = row[col["device_milli"]].strip()
                    milli = int(_number(path, line, "device_milli", text, integer=True))
                    if not 1 <= milli <= MILLI:
                        raise XpodError(
                            f"{path}:{line}: device_milli: {text} must be in 1..1000 (1000 = a whole device)"
                        )
                    if milli < MILLI and count != 1:
                        raise XpodError(
                            f"{path}:{line}: device_milli: {milli} is a fraction of one device; num_devices must be 1, "
                            f"not {count}"
                        )
                dtype = row[col["device_type"]].strip() if "device_type" in col else ""
                vc = row[col["vc"]].strip() if "vc" in col else ""
                out.append(TraceJob(jid, submit, duration, count, milli, dtype, vc, line))
        except csv.Error as err:
            raise XpodError(f"{path}:{reader.line_num}: not valid CSV: {err}") from None
        except UnicodeDecodeError:
            raise XpodError(f"{path}: not a UTF-8 text file") from None
        except (OSError, EOFError) as err:  # a damaged .gz
            raise XpodError(f"{path}: cannot read: {err}") from None
    return out


def window(jobs: Sequence[TraceJob], from_s: float | None, to_s: float | None) -> list[TraceJob]:
    """The jobs submitted in ``[from_s, to_s)`` (either end open when None), by submit time."""
    lo = -math.inf if from_s is None else from_s
    hi = math.inf if to_s is None else to_s
    return sorted((j for j in jobs if lo <= j.submit_s < hi), key=lambda j: (j.submit_s, j.line))


@dataclasses.dataclass(frozen=True)
class Shape:
    """A trace size made legal on the cluster: ``tasks`` tasks of ``per_task`` devices."""

    tasks: int
    per_task: int
    block: int | None = None  # devices per logical super-pod (Ascend sp-block), None: no blocks

    @property
    def devices(self) -> int:
        return self.tasks * self.per_task


def legal_shape(count: int, model: str, per_node: int) -> Shape:
    """The smallest shape the cluster's rules allow for a job of ``count`` devices of ``model``
    on nodes of ``per_node`` such devices (see the module docstring)."""
    family = ascend_rules.family(model)
    if family == "910c":
        node = ascend_rules.A3_DIES_PER_NODE
        if count <= node:
            size = min(s for s in ascend_rules.A3_LEGAL_SINGLE_NODE if s >= count)
            return Shape(1, size)
        tasks = -(-count // node)
        return Shape(tasks, node, tasks * node)
    if family == "910b":
        top = max(ascend_rules.B_LEGAL)
        if count <= top:
            return Shape(1, min(s for s in ascend_rules.B_LEGAL if s >= count))
        return Shape(-(-count // top), top)
    if count <= per_node:
        return Shape(1, count)
    return Shape(-(-count // per_node), per_node)
