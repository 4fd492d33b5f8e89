"""Small helpers that several command modules share (cheap to import: no torch, grpc or numpy)."""

from __future__ import annotations

import argparse
import sys
import threading

from xpod.hal.errors import XpodError


def positive_seconds(value: float | None, flag: str) -> None:
    """``None`` (flag not given) passes; zero or a negative number is an ``XpodError`` naming FLAG."""
    if value is not None and not value > 0:
        raise XpodError(f"{flag} {value:g}: must be a positive number of seconds")


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set STOP (the caller's loop waits on it with a timeout: a signal may land
    while another thread holds the GIL, and Python runs handlers only in the main thread)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def print_usage(parser: argparse.ArgumentParser) -> int:
    """For a command group called without its subcommand: help on stderr, exit code 2."""
    parser.print_help(sys.stderr)
    return 2
