"""Debug timeline of the server's submit path, off unless ``XPOD_TRACE`` names a file.

With ``XPOD_TRACE=/tmp/t.tsv xpod server ...`` the store writer records one row per group
commit and the gRPC adapter one row per SubmitJob (and the event loop's lag), all stamped with
``time.monotonic()`` (CLOCK_MONOTONIC: comparable across the server's processes). Rows are
buffered in memory and appended to the file once a second and at exit, so tracing costs a
list append on the hot path. Rows are tab-separated: ``kind`` then its fields (see ``FIELDS``).
Used to find where the p99 of ``bench/service_submit.py`` comes from; never on by default.
"""

from __future__ import annotations

import atexit
import os
import threading
import time

FIELDS = {
    # one group commit: popped from the lanes, BEGIN done, rows applied, COMMIT (fsync) done,
    # on_commit (the API's mirror) done, futures resolved; front/back lane sizes in the batch
    "batch": ("t_pop", "t_begin", "t_applied", "t_committed", "t_mirrored", "t_acked", "n_front", "n_back"),
    # one SubmitJob on the loop: handler entered, write queued, commit awaited, response built
    "submit": ("t_start", "t_queued", "t_resumed", "t_end"),
    # the loop ran the wake-up a commit asked for: first future resolved, drained, how many
    "drain": ("t_resolved", "t_drained", "n"),
    # the event loop woke this late for a timer (seconds)
    "lag": ("t", "lag_s"),
    # a writer-run checkpoint pass: start, end
    "wckpt": ("t_start", "t_end"),
    # one cyclic-GC pass: start, end, generation
    "gc": ("t_start", "t_end", "generation", "pid"),
}

PATH = os.environ.get("XPOD_TRACE") or None
ENABLED = PATH is not None
_rows: list[tuple] = []
_lock = threading.Lock()


def add(kind: str, *values: float) -> None:
    """Record one row (only call when ``ENABLED``)."""
    _rows.append((kind, *values))  # list.append is atomic under the GIL


def flush() -> None:
    global _rows
    if not ENABLED:
        return
    with _lock:
        rows, _rows = _rows, []
        if not rows:
            return
        with open(PATH, "a", encoding="utf-8") as f:
            f.write("".join("\t".join(map(str, r)) + "\n" for r in rows))


def _flusher() -> None:
    while True:
        time.sleep(1.0)
        flush()


_gc_start = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.monotonic()
    else:
        add("gc", _gc_start[0], time.monotonic(), info.get("generation", -1), os.getpid())


if ENABLED:
    import gc

    gc.callbacks.append(_gc_callback)
    atexit.register(flush)
    threading.Thread(target=_flusher, name="xpod-trace", daemon=True).start()
