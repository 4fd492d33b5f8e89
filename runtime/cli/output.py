"""How commands print what people read: tables that are never cut, and the same rows as JSON or TSV.

``-o/--output`` picks the form: ``table`` (the default), ``wide`` (the table with every column),
``json`` (the command's JSON, also ``--json``) or ``tsv`` (every column, tab-separated, one
header line, for ``cut``/``awk``/spreadsheets). A table's cells wrap rather than end in "…" on a
narrow terminal, and when stdout is not a terminal (a pipe, a file, CI logs) tables are laid out
at their full width (``print_table``): a redirected table holds every cell on one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Any, Sequence

from xpod.hal.errors import XpodError

FORMATS = ("table", "wide", "json", "tsv")
#: the width a table is measured at when stdout is not a terminal: wide enough that no cell wraps
UNBOUNDED_WIDTH = 1_000_000


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``-o/--output FORMAT`` and ``--json`` (the same as ``-o json``)."""
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table (default), wide (every column), json, or tsv (every column, tab-separated)",
    )
    parser.add_argument("--json", action="store_true", help="the same as --output json")


def output_format(args: argparse.Namespace) -> str:
    return "json" if getattr(args, "json", False) else getattr(args, "output", "table")


def console(stderr: bool = False) -> Any:
    """A rich Console for stdout (or stderr) for text and rules; tables go through ``print_table``."""
    from rich.console import Console

    return Console(stderr=stderr)


def print_table(t: Any, stderr: bool = False) -> None:
    """Print a rich table: on a terminal at its width (cells wrap, never cut); elsewhere at the
    table's full natural width, so every cell stays on one line."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        Console(stderr=stderr).print(t)
        return
    probe = Console(stderr=stderr, width=UNBOUNDED_WIDTH)
    width = probe.measure(t).maximum
    Console(stderr=stderr, width=max(width, 80)).print(t)


def table(title: str | None = None) -> Any:
    """A rich Table whose columns never cut a cell (they wrap instead)."""
    return _folding_table()(title=title)


@functools.lru_cache(maxsize=1)
def _folding_table() -> type:
    from rich.table import Table  # here, not at import: parsers are built without rich

    class FoldingTable(Table):
        def add_column(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("overflow", "fold")
            super().add_column(*args, **kwargs)

    return FoldingTable


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    wide: bool = False  # shown only by ``-o wide`` and ``-o tsv``
    justify: str = "left"


def print_rows(fmt: str, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> None:
    """Rows (one value per column) as a table (``table``/``wide``) or TSV. JSON is the caller's:
    it carries more than the cells."""
    if fmt == "tsv":
        out = sys.stdout
        out.write("\t".join(c.header for c in columns) + "\n")
        for row in rows:
            out.write("\t".join(_tsv(v) for v in row) + "\n")
        return
    shown = [i for i, c in enumerate(columns) if fmt == "wide" or not c.wide]
    t = table(title)
    for i in shown:
        t.add_column(columns[i].header, justify=columns[i].justify)
    for row in rows:
        t.add_row(*(str(row[i]) for i in shown))
    print_table(t)


def _tsv(value: Any) -> str:
    # a tab or line break inside a value would start a new cell or row
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def print_json(data: Any) -> None:
    import json

    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def save_figure(fig: Any, path: str, flag: str = "--plot") -> None:
    """Write a matplotlib figure as PNG and close it; an unwritable path is one ``XpodError`` line."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise XpodError(f"{flag} {path}: cannot write: {err.strerror}") from None
    finally:
        plt.close(fig)
