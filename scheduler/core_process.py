"""``ProcessPlacer``: the scheduler core in a child process, so its cycles do not hold the
server's GIL (`xpod server --core-process`).

The parent keeps a ``CorePlacer`` for admission only (``parse``, ``never_fits``: its shadow
facade, no jobs); the child runs the live ``CorePlacer`` over the same cluster file. Every
other ``Placer`` call is a message on a pipe, in order: the ones that return nothing are
buffered and go over as one batch (one pickle, one write) just before the next call that waits
for an answer (``cycle``, ``release_tasks``), since the child only needs them by then; ``cycle``
waits for the child's outcome (the parent's threads run meanwhile, since waiting on a pipe
releases the GIL). An error the child meets on a one-way call is raised by the next ``cycle``.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from .api import CycleOutcome, NodeView, ParsedJob
from .core_bridge import CorePlacer
from .store import JobRecord, PendingReasonRecord


def _child(conn, cluster_path: str | None) -> None:
    cluster = None
    if cluster_path:
        from xpod.hal.cluster import load_cluster

        cluster = load_cluster(cluster_path)
    placer = CorePlacer(cluster)
    failure: BaseException | None = None
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            return
        if op == "stop":
            return
        if op == "batch":  # one-way calls buffered by the parent, in order
            for one_op, one_args in args:
                try:
                    getattr(placer, one_op)(*one_args)
                except BaseException as err:  # reported to the parent by the next cycle
                    failure = failure or err
            continue
        try:
            result = getattr(placer, op)(*args)
        except BaseException as err:  # reported to the parent by the next cycle
            failure = failure or err
            result = None
        if op in ("cycle", "release_tasks"):  # the calls that wait for an answer
            conn.send(("error", failure) if failure is not None else ("ok", result))
            failure = None


_BATCH_OPS = 64


class ProcessPlacer:
    """``api.Placer`` with the live core in a child process (see the module docstring)."""

    def __init__(self, cluster_path: str | None, cluster=None) -> None:
        self._admission = CorePlacer(cluster)
        ctx = multiprocessing.get_context("spawn")  # the server has threads: never fork it
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child_conn, cluster_path), name="xpod-core", daemon=True)
        self._proc.start()
        child_conn.close()
        self._send_lock = threading.Lock()
        self._outbox: list[tuple[str, tuple]] = []  # one-way calls not sent yet (under _send_lock)

    def _send(self, op: str, *args: Any) -> None:
        with self._send_lock:
            self._outbox.append((op, args))

    def _flush(self) -> None:
        """Send the buffered one-way calls (caller holds ``_send_lock``), in messages of at
        most ``_BATCH_OPS`` calls: pickling runs in C without letting go of the GIL, so one
        message for a whole burst of submissions would stall the server's other threads."""
        batch, self._outbox = self._outbox, []
        for i in range(0, len(batch), _BATCH_OPS):
            self._conn.send(("batch", batch[i : i + _BATCH_OPS]))

    def _call(self, op: str, *args: Any) -> Any:
        """A call that waits for the child's answer, after everything buffered before it."""
        with self._send_lock:
            self._flush()
            self._conn.send((op, args))
            status, value = self._conn.recv()
        if status == "error":
            raise RuntimeError(f"scheduler core process failed: {value!r}") from value
        return value

    # admission: in this process, on the shadow facade
    def parse(self, document: dict[str, Any]) -> ParsedJob:
        return self._admission.parse(document)

    def never_fits(self, job: ParsedJob) -> PendingReasonRecord | None:
        return self._admission.never_fits(job)

    # inventory: both sides
    def add_node(self, node: NodeView) -> None:
        self._admission.add_node(node)
        self._send("add_node", node)

    def remove_node(self, name: str) -> None:
        self._admission.remove_node(name)
        self._send("remove_node", name)

    def set_device_health(self, node: str, index: int, health: str) -> None:
        self._admission.set_device_health(node, index, health)
        self._send("set_device_health", node, index, health)

    # jobs: the child only
    def add_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        self._send("add_job", job, parsed)

    def restore_job(self, job: JobRecord, parsed: ParsedJob) -> None:
        self._send("restore_job", job, parsed)

    def release_tasks(self, job_id: str, tasks: list[int], why: str) -> list[int]:
        # the child answers in order with the cycle's replies, so ask under the send lock
        return self._call("release_tasks", job_id, tasks, why)

    def remove_job(self, job_id: str) -> None:
        self._send("remove_job", job_id)

    def cycle(self, now_s: float) -> CycleOutcome:
        return self._call("cycle", now_s)

    def close(self) -> None:
        try:
            with self._send_lock:
                self._outbox.clear()  # the child's state dies with it
                self._conn.send(("stop", ()))
        except (OSError, BrokenPipeError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
