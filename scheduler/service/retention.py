"""Retention: a finished job's history is compacted once it has been over for a period
(``xpod server --retention``, default 7 days).

Compacting a job (``store.CompactJobs``) drops its stored spec and every event but its last;
its row stays, so ``xpod jobs`` still lists it (name, queue, state, times, why it ended) and its
request id still answers, but ``xpod get`` shows an empty spec and a watch from an old revision
sees only its final event. What a queue has stored (``Store.stored_bytes``, the per-queue
storage limit) shrinks by the spec's bytes. Live jobs are never touched.

The leader runs it (a follower's store refuses writes), on a thread of its own, every
``interval_s``, in batches on the store's background lane so submissions never wait behind it.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from xpod.hal.errors import XpodError
from xpod.scheduler.store import CompactJobs, Compacted, Store, StoreClosed

from .jobs import JobBook

_log = logging.getLogger("xpod.retention")
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
_BATCH = 200  # jobs per compaction write (one transaction)


def parse_retention(text: str) -> float | None:
    """``--retention`` as seconds: ``7d``, ``12h``, ``30m``, ``90s`` or plain seconds; ``0`` or
    ``forever`` keeps every finished job's history (None). Raises XpodError with one line."""
    t = text.strip().lower()
    if t in ("0", "forever", "never"):
        return None
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    scale = units.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise XpodError(
            f"--retention {text!r}: expected a period such as 7d, 12h, 30m or 90s (or 0 to keep every finished job)"
        )
    return value


class Retention:
    """Compacts finished jobs ``retention_s`` after they ended (see the module docstring)."""

    def __init__(
        self, jobs: JobBook, store: Store, clock: Callable[[], float], retention_s: float | None = DEFAULT_RETENTION_S
    ) -> None:
        self._jobs = jobs
        self._store = store
        self._clock = clock
        self.retention_s = retention_s
        # often enough that a job is compacted within ~10% past its period, at most once a minute
        self.interval_s = 60.0 if retention_s is None else min(60.0, max(1.0, retention_s / 10))
        self._thread: threading.Thread | None = None
        self.bytes_freed = 0

    def compact_once(self, timeout_s: float = 60.0) -> int:
        """Compact every finished job past the period now; returns how many were compacted."""
        if self.retention_s is None:
            return 0
        done = 0
        cutoff = self._clock() - self.retention_s
        while True:
            ids = self._jobs.finished_before(cutoff, _BATCH)
            if not ids:
                return done
            result: Compacted = self._store.submit(CompactJobs(tuple(ids)), background=True).result(timeout_s)
            done += len(result.jobs)
            self.bytes_freed += result.bytes_freed
            if len(ids) < _BATCH or not result.jobs:
                return done

    def start(self, stop: threading.Event, leading: Callable[[], bool]) -> None:
        if self._thread is None and self.retention_s is not None:
            self._thread = threading.Thread(target=self._loop, args=(stop, leading), name="xpod-retention", daemon=True)
            self._thread.start()

    def _loop(self, stop: threading.Event, leading: Callable[[], bool]) -> None:
        while not stop.wait(self.interval_s):
            if not leading():
                continue
            try:
                self.compact_once()
            except StoreClosed:
                return
            except Exception as err:  # the store is unavailable for now (its health says so): next round
                _log.warning("retention: compaction failed, trying again in %.0f s: %s", self.interval_s, err)

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
