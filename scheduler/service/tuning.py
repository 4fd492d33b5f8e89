"""Keep CPython's cyclic garbage collector from stalling the server as its job count grows.

A full (generation 2) collection walks every tracked object in the process while holding the
GIL. The server keeps every job it has accepted in memory (``SchedulerApi``'s mirror), so that
walk grows with the jobs: measured on a 2-core machine under the submission benchmark, full
collections took 33 ms at ~2,500 jobs and 75 ms at ~8,000, and every call in flight waited
them out (the p99 latency of ``bench/service_submit.py`` was these stalls).

``GcFreezer`` moves the survivors into CPython's permanent generation (``gc.freeze``) every
``freeze_interval_s``, right after a young collection, so automatic full collections only walk
what was allocated since. Frozen objects are still freed by reference counting as usual; only
a *cycle* that was alive when frozen and became garbage later escapes until the next
``full_interval_s`` pass (``gc.unfreeze`` + ``gc.collect``: one full walk every few minutes
instead of every second or two). The service's hot path makes no reference cycles (a test
checks it), so that backlog stays small.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# The server's store writer gives the GIL up around every SQLite call (BEGIN, the inserts, the
# COMMIT's fsync) and must win it back each time from the busy event-loop thread; at 5 ms a
# group commit that needs the GIL half a dozen times could take 30 ms more than its fsync, and
# every submission in it waited. At 1 ms, A/B runs of bench/service_submit.py in turns
# (README "Scheduler service") gave a lower p99 and more submissions/s in most pairs.
SERVER_SWITCH_INTERVAL_S = 0.001


def tune_switch_interval(seconds: float = SERVER_SWITCH_INTERVAL_S) -> float:
    """Set the interpreter's GIL switch interval for a server process; returns the old one."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    return old


class GcFreezer:
    """A daemon thread; ``start()`` / ``stop()``. ``freezes`` and ``full_collections`` count."""

    def __init__(self, freeze_interval_s: float = 1.0, full_interval_s: float = 300.0) -> None:
        if freeze_interval_s <= 0 or full_interval_s < freeze_interval_s:
            raise ValueError("need 0 < freeze_interval_s <= full_interval_s")
        self.freeze_interval_s = freeze_interval_s
        self.full_interval_s = full_interval_s
        self.freezes = 0
        self.full_collections = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GcFreezer":
        if self._thread is None:
            gc.collect()  # what start-up and recovery left: collected once, then frozen
            gc.freeze()
            self._thread = threading.Thread(target=self._loop, name="xpod-gc-freezer", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        last_full = time.monotonic()
        while not self._stop.wait(self.freeze_interval_s):
            if time.monotonic() - last_full >= self.full_interval_s:
                gc.unfreeze()
                gc.collect()
                self.full_collections += 1
                last_full = time.monotonic()
            else:
                gc.collect(1)  # young cycles die here, not in the permanent generation
            gc.freeze()
            self.freezes += 1

    def stop(self) -> None:
        """Stop the thread and hand everything back to the normal collector."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        gc.unfreeze()


__all__ = ["GcFreezer", "SERVER_SWITCH_INTERVAL_S", "tune_switch_interval"]
