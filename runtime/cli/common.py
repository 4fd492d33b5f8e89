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


def local_admin_token(addresses) -> str | None:
    """The admin token of the ``xpod up`` at one of ``addresses`` (``app.local_token_path``), else
    the one in this user's default state directory, for a CLI given no token; only for loopback
    servers (a local token never travels to another host), only from a file nobody else can
    read."""
    import os

    from xpod.runtime.cli.app import ADMIN_TOKEN_FILE, is_loopback, local_token_path, split_host_port

    try:
        if not addresses or not all(is_loopback(split_host_port(a, "--server")[0]) for a in addresses):
            return None
        paths = [local_token_path(a) for a in addresses]
    except XpodError:
        return None
    from xpod.runtime.agent.agent import default_state_dir

    for path in (*paths, os.path.join(default_state_dir(), ADMIN_TOKEN_FILE)):
        try:
            if os.stat(path).st_mode & 0o077:
                continue
            with open(path, encoding="utf-8") as f:
                token = f.read(4096).strip()
        except OSError:
            continue
        if token:
            return token
    return None
