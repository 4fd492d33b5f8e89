"""The ``xpod`` command line.

Each area of xpod registers its own subcommands from one module listed in ``COMMAND_MODULES``;
a module exposes ``register(commands: Commands) -> None`` and adds parsers whose ``func``
default takes the parsed ``argparse.Namespace`` and returns an exit code. Modules listed here
must import cheaply: torch, grpc and the like are imported inside the command functions.

User errors (``XpodError``) end in one line on stderr and exit 1 (a file with problems: one
``FILE:LINE:COL: message`` line per problem); bad flags exit 2 with one line naming the flag.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys

from xpod import __version__
from xpod.hal.errors import XpodError

COMMAND_MODULES = [
    "xpod.runtime.cli.scheduler",
    "xpod.runtime.cli.replay",
    "xpod.runtime.cli.devices",
    "xpod.runtime.cli.cluster",
    "xpod.runtime.cli.collectives",
    "xpod.runtime.cli.server",
    "xpod.runtime.cli.jobs",
    "xpod.runtime.cli.metrics",
    "xpod.runtime.cli.moe",
    "xpod.runtime.cli.agent",
    "xpod.runtime.cli.up",
    "xpod.runtime.cli.demo",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``xpod devices: --tool: invalid choice ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


@dataclasses.dataclass
class Commands:
    """Where modules hang their subcommands: ``top`` is ``xpod <cmd>``, ``bench`` is
    ``xpod bench <what>``."""

    top: argparse._SubParsersAction
    bench: argparse._SubParsersAction


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="xpod",
        description="One control plane for heterogeneous AI accelerator pods.",
    )
    parser.add_argument("--version", action="version", version=f"xpod {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    bench_parser = top.add_parser("bench", help="benchmarks (collectives, scheduler)")
    bench = bench_parser.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=ArgumentParser)
    bench_parser.set_defaults(func=lambda args: _missing(bench_parser))
    commands = Commands(top=top, bench=bench)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def _missing(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except XpodError as err:
        lines = getattr(err, "messages", None)  # a file's problems: every FILE:LINE:COL line, as they are
        print("\n".join(lines) if lines else f"xpod: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xpod: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
