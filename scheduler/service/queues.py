"""Which queues a server accepts, and each one's limits: ``Queues``.

With a token file (``xpod server --tokens``) the queues are the file's top-level ``queues:`` (a
name, or ``{name, max_pending, max_stored_bytes}``; docs/security.md), every submitter's
``queues:``, and ``default``; another queue is refused (INVALID_ARGUMENT ``UNKNOWN_QUEUE``, naming
the declared ones) unless ``--auto-queues N`` lets N more be created on first use (past N:
FAILED_PRECONDITION ``TOO_MANY_QUEUES``). An open server and ``xpod up`` create queues on first
use, at most ``Limits.max_queues``. Undeclared limits are ``Limits``' per-queue defaults.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .errors import ApiError, Code

if TYPE_CHECKING:
    from .api import Limits


@dataclasses.dataclass(frozen=True)
class QueuePolicy:
    """One declared queue; None limits fall back to ``Limits``' per-queue defaults."""

    name: str
    max_pending: int | None = None  # queued (not yet placed) jobs
    max_stored_bytes: int | None = None  # bytes of job specs stored (``Store.stored_bytes``)


@dataclasses.dataclass(frozen=True)
class Queues:
    """The queues a server accepts (see the module docstring).

    ``declared``: the configured queues. ``auto_queues``: how many undeclared queues may be
    created on first use (0: none, an unknown queue is refused); None: any, up to
    ``Limits.max_queues`` queues in all (an open server's default)."""

    declared: tuple[QueuePolicy, ...] = ()
    auto_queues: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {q.name: q for q in self.declared})

    @property
    def names(self) -> frozenset[str]:
        """The declared queues' names, ``default`` included."""
        return frozenset(self._by_name) | {"default"}  # type: ignore[attr-defined]

    def policy(self, queue: str) -> QueuePolicy | None:
        """The declared queue's policy, None for an undeclared one."""
        return self._by_name.get(queue)  # type: ignore[attr-defined]

    def with_auto_queues(self, auto_queues: int | None) -> "Queues":
        return dataclasses.replace(self, auto_queues=auto_queues)

    def check(
        self, queue: str, limits: "Limits", *, known: set[str], pending: int, stored_bytes: int, document_bytes: int
    ) -> None:
        """Refuse a submission to ``queue`` (ApiError naming the limit): a queue the
        configuration does not declare (unless this server creates it on first use and has room
        for one more), a full backlog, or a job past the queue's stored bytes. ``known``: the
        queues jobs name now; ``pending``, ``stored_bytes``: the queue's queued jobs and stored
        spec bytes; ``document_bytes``: the new job's."""
        policy = self.policy(queue)
        if policy is None and queue != "default":
            self._undeclared(queue, limits, known | {"default"})
        max_pending = (policy and policy.max_pending) or limits.max_pending_per_queue
        max_stored = (policy and policy.max_stored_bytes) or limits.max_stored_bytes_per_queue
        if pending >= max_pending:
            raise ApiError(
                Code.RESOURCE_EXHAUSTED,
                "QUEUE_FULL",
                f"queue {queue!r} has {pending} queued jobs, its limit (max_pending); wait for some to start "
                "or cancel some",
                metadata={"queue": queue, "limit": str(max_pending)},
                retry_after_s=5.0,
            )
        if stored_bytes + document_bytes > max_stored:
            raise ApiError(
                Code.RESOURCE_EXHAUSTED,
                "QUEUE_STORAGE_FULL",
                f"queue {queue!r} stores {stored_bytes} bytes of job specs; this {document_bytes}-byte job would "
                f"pass its limit of {max_stored} bytes (max_stored_bytes); finished jobs' specs are freed after "
                "the server's --retention period",
                metadata={"queue": queue, "storedBytes": str(stored_bytes), "limitBytes": str(max_stored)},
                retry_after_s=60.0,
            )

    def _undeclared(self, queue: str, limits: "Limits", known: set[str]) -> None:
        auto = self.auto_queues
        if auto == 0:
            shown = ", ".join(sorted(self.names)[:20])
            raise ApiError(
                Code.INVALID_ARGUMENT,
                "UNKNOWN_QUEUE",
                f"spec.queue: {queue!r} is not a queue of this server (declared: {shown}); use one of them, or ask "
                "an admin to declare it in the tokens file's 'queues:' (or start the server with --auto-queues N)",
                field="spec.queue",
                metadata={"queue": queue},
            )
        if queue in known:
            return
        if auto is None:  # open: any queue, at most max_queues in all
            cap, made = limits.max_queues, len(known)
        else:
            cap, made = auto, len(known - self.names)
        if made >= cap:
            raise ApiError(
                Code.FAILED_PRECONDITION,
                "TOO_MANY_QUEUES",
                f"spec.queue: {queue!r} would be queue number {made + 1}; the server creates at most {cap} "
                "(use an existing queue or ask an admin to declare it)",
                field="spec.queue",
                metadata={"queue": queue, "maxQueues": str(cap)},
            )


#: an open server, and a SchedulerApi built without configuration: queues on first use, capped
OPEN_QUEUES = Queues()
