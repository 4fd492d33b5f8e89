"""The ``xpod`` command line.

Each area of xpod registers its own subcommands from one module listed in ``COMMAND_MODULES``;
a module exposes ``register(commands: Commands) -> None`` and adds parsers whose ``func``
default takes the parsed ``argparse.Namespace`` and returns an exit code. Modules listed here
must import cheaply: torch, grpc and the like are imported inside the command functions.

User errors (``XpodError``) end in one line on stderr and exit 1 (a file with problems: one
``FILE:LINE:COL: message`` line per problem); bad flags exit 2 with one line naming the flag.
Anything else is a bug and keeps its traceback.

A client command (one whose parser has the client flags, ``jobs.client_flags``) run as a process
of its own ends with ``os._exit`` once its output is flushed, without the interpreter's teardown:
gRPC's core often finishes its global shutdown on a detached thread of its own (when one of its
threads drops the last reference: 13 of 30 runs of ``xpod jobs`` against a closed port), and the
interpreter's teardown and the C++ destructors that ``exit()`` runs then race that thread: the
one way found for a command that had printed its answer to linger (not reproduced here).

``XPOD_EXIT_WITH_PID=PID`` in the environment makes an ``xpod`` process (and every ``xpod``
process it starts) end, SIGKILL, within a second of process PID's end. Test suites and
launchers set it so that servers and agents never outlive them (an agent's tasks end with the
agent, ``runtime.agent``; a server's front ends with the server).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import threading

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


EXIT_WITH_ENV = "XPOD_EXIT_WITH_PID"


def _exit_with(pid: int) -> None:
    """End this process (SIGKILL) within a second of process ``pid``'s end (see the module
    docstring). A watch thread, not ``PR_SET_PDEATHSIG``: that fires when the parent *thread*
    that started this process ends, which a launcher's worker thread may do early."""

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:  # a zombie is gone: nobody has reaped it yet
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True
        except OSError:  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
            return False

    def watch() -> None:
        while not gone():
            threading.Event().wait(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    if pid != os.getpid():
        threading.Thread(target=watch, name="xpod-exit-with", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    watched = os.environ.get(EXIT_WITH_ENV, "")
    if argv is None and watched.isdigit():  # a process of its own, not a call from a test
        _exit_with(int(watched))
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    rc = _run(func, args)
    if argv is None and getattr(args, "grpc_client", False):
        _exit_now(rc)
    return rc


def _run(func, args: argparse.Namespace) -> int:
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


def _exit_now(rc: int) -> None:
    """Flush stdout and stderr and end the process with ``rc``, skipping the interpreter's
    teardown (a client command's, see the module docstring). A reader that has gone (``xpod jobs
    | head``) gets nothing more, as with the teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    raise SystemExit(main())
