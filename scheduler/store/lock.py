"""Exclusive locks on the state a process owns: ``xpod server`` on its database, ``xpod up`` and
``xpod agent`` on their state directories.

A lock is ``flock`` on a small file beside the state (``xpod.db.lock`` for a database,
``DIR/xpod.lock`` for a directory) that names its holder in one line of JSON: who, which pid,
which address. The kernel drops the lock when the holder exits, ``kill -9`` included, so a
stale file never blocks anybody: the next process takes the lock and rewrites the file. A second
process that finds the lock held touches nothing else and raises ``StateInUse``, whose text is
the one line the CLI prints::

    /srv/xpod.db is in use by xpod server (pid 1234, 127.0.0.1:7070)
"""

from __future__ import annotations

import fcntl
import json
import os

from xpod.hal.errors import XpodError


class StateInUse(XpodError):
    """The state is locked by another live process; ``str`` names the path and the holder."""


class StateLock:
    """An exclusive lock held until ``release()`` (or the process ends). Not re-entrant: a
    second ``acquire`` of the same state in the same process fails like one from elsewhere."""

    def __init__(self, target: str, lock_path: str, fd: int, holder: str) -> None:
        self.target = target  # what is locked (the database or the directory), absolute
        self.lock_path = lock_path
        self.holder = holder
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, target: str, holder: str, address: str = "") -> "StateLock":
        """Lock ``target`` (a database file or a directory, which must exist) for ``holder``
        (``xpod server``). Raises ``StateInUse`` when another process holds it, ``XpodError``
        when the lock file cannot be created."""
        target = os.path.abspath(target)
        lock_path = os.path.join(target, "xpod.lock") if os.path.isdir(target) else target + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise XpodError(f"{lock_path}: cannot create the lock file: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            finally:
                os.close(fd)
            raise StateInUse(f"{target} is in use by {_describe(text)}") from None
        lock = cls(target, lock_path, fd, holder)
        lock.set_address(address)
        return lock

    def set_address(self, address: str) -> None:
        """Record where the holder serves (known only once it listens)."""
        if self._fd is None:
            return
        text = json.dumps({"holder": self.holder, "pid": os.getpid(), "address": address}) + "\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        """Idempotent. The file stays: removing it would race a process about to lock it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def _describe(text: str) -> str:
    """``xpod server (pid 1234, 127.0.0.1:7070)`` from a lock file's line."""
    try:
        d = json.loads(text)
        where = ", ".join(str(x) for x in (f"pid {d['pid']}", d.get("address")) if x)
        return f"{d['holder']} ({where})"
    except (ValueError, KeyError, TypeError):
        return "another xpod process (it is starting up)"
