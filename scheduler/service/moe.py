"""The live MoE loops of serving jobs (``spec.moe``): the service routes load reports,
schedules the re-plans and stores what they give; the MoE logic is ``runtime.moe.live``.

* ``report``: one replica's loads (``contract.MoeLoadReport``), checked against the job
  (NOT_FOUND, or INVALID_ARGUMENT naming both shapes), added to the open window; the answer is
  the plan in force, with its documents only when the agent holds an older one.
* ``run_due`` (every ``TICK_S``): a job whose ``every_s`` passed closes its window; the entry is
  stored (``store.MoeWindowWrite``), a published plan with a ``MOE_PLAN`` event in the same
  transaction, and served only once durable.
* After a restart or failover a loop is rebuilt from the store at its job's first report (the
  last published plan stays in force); only the leader holds loops.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

from xpod.scheduler.contract import (
    MAX_MOE_LOAD_VALUES,
    MoeLoadReport,
    MoePlanAnswer,
    MoeSpec,
    moe_ep_devices,
    parse_task_fields,
)
from xpod.scheduler.store import JobRecord, MoeWindowWrite, Store

from .errors import ApiError, Code

#: how often due windows are looked for (a job's ``every_s`` is at least 0.5 s)
TICK_S = 0.1


def _refused(code: Code, reason: str, message: str, job_id: str, field: str | None = None) -> ApiError:
    """A load report the service refuses (nothing of it recorded)."""
    return ApiError(code, reason, message, field=field, metadata={"jobId": job_id[:253]})


def moe_of(job: JobRecord) -> MoeSpec | None:
    """The job's ``spec.moe`` (None without one)."""
    spec = job.spec.get("spec", {}) if isinstance(job.spec, dict) else {}
    return parse_task_fields(job.kind, spec).moe


def _replicas(job: JobRecord) -> tuple[int, int]:
    """(replicas placed, nodes of one replica) of a bound serving job."""
    spec = job.spec.get("spec", {})
    per = spec.get("tasks_per_replica", 1) if isinstance(spec.get("tasks_per_replica", 1), int) else 1
    replicas = {a.task // max(1, per) for a in job.allocations}
    return (max(replicas) + 1 if replicas else 0), max(1, per)


class MoeLoops:
    """The live loops of the leader's serving jobs (module docstring). Thread-safe."""

    def __init__(self, store: Store, job: Callable[[str], JobRecord | None], clock: Callable[[], float]) -> None:
        self._store = store
        self._job = job  # the job book's read of a job
        self._clock = clock
        self._lock = threading.RLock()  # a done write may call back at once, inside run_due
        self._loops: dict[str, Any] = {}  # job id -> runtime.moe.live.LiveLoop
        self._served: dict[str, Any] = {}  # job id -> the durable plan documents (PlanDocuments)
        self._thread: threading.Thread | None = None

    # --- reports ---

    def report(self, r: MoeLoadReport) -> MoePlanAnswer:
        job = self._job(r.job_id)
        if job is None:
            raise _refused(Code.NOT_FOUND, "JOB_NOT_FOUND", f"no job {r.job_id[:253]!r}", r.job_id)
        moe = moe_of(job)
        if moe is None:
            raise _refused(
                Code.FAILED_PRECONDITION, "NO_MOE", f"job {job.id} has no spec.moe: it takes no expert loads", job.id
            )
        if job.state.terminal or r.node not in {a.node for a in job.allocations}:
            why = f"job {job.id} is {job.state.value} and not bound to node {r.node!r}"
            raise _refused(Code.FAILED_PRECONDITION, "NOT_ASSIGNED", why, job.id)
        replicas, _ = _replicas(job)
        if not 0 <= r.replica < replicas:
            why = f"job {job.id} has no replica {r.replica} (replicas placed: 0..{replicas - 1})"
            raise _refused(Code.NOT_FOUND, "REPLICA_NOT_FOUND", why, job.id, "replica")
        counts = None
        if r.counts:
            if (r.layers, r.experts) != (moe.layers, moe.experts):
                why = (
                    f"loads of {r.layers} layers x {r.experts} experts, but job {job.id}'s spec.moe is "
                    f"{moe.layers} layers x {moe.experts} experts"
                )
                raise _refused(Code.INVALID_ARGUMENT, "LOADS_SHAPE_MISMATCH", why, job.id, "layers")
            if len(r.counts) != r.layers * r.experts or len(r.counts) > MAX_MOE_LOAD_VALUES:
                why = f"counts has {len(r.counts)} values, layers x experts is {r.layers * r.experts}"
                raise _refused(Code.INVALID_ARGUMENT, "LOADS_SHAPE_MISMATCH", why, job.id, "counts")
            import numpy as np

            counts = np.asarray(r.counts, dtype=np.float64).reshape(r.layers, r.experts)
            if not np.all(np.isfinite(counts)) or counts.min() < 0:
                raise _refused(
                    Code.INVALID_ARGUMENT, "INVALID_LOADS", "counts must be finite numbers >= 0", job.id, "counts"
                )
        with self._lock:
            loop = self._loop(job, moe)
            if counts is not None:
                loop.add(counts)
            served = self._served.get(job.id)
        if served is None:
            return MoePlanAnswer(0)
        if served.revision <= r.known_plan:
            return MoePlanAnswer(served.revision)
        return MoePlanAnswer(served.revision, served.plan_json, served.sglang_json)

    def _loop(self, job: JobRecord, moe: MoeSpec) -> Any:
        """The job's loop, rebuilt from the store the first time (caller holds the lock)."""
        loop = self._loops.get(job.id)
        if loop is None:
            from xpod.runtime.moe.live import LiveEntry, LiveLoop

            entries = [LiveEntry.from_json(d, f"job {job.id} stored moe window") for d in self._stored(job.id)]
            spec = job.spec.get("spec", {})
            loop = LiveLoop(
                moe.experts,
                moe.layers,
                moe.slots_per_device,
                moe_ep_devices(spec),
                _replicas(job)[1],
                moe.every_s,
                moe.max_moves,
                start_s=self._clock(),
                entries=entries,
            )
            self._loops[job.id] = loop
            if loop.documents is not None:
                self._served[job.id] = loop.documents
        return loop

    def _stored(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self._store.moe_windows(job_id, after=out[-1]["window"] if out else -1, limit=1000)
            out += page
            if len(page) < 1000:
                return out

    # --- the loop ---

    def run_due(self) -> list[concurrent.futures.Future]:
        """Close every due window and queue its write; a published plan is served once its
        write is durable. Returns the writes' futures (tests wait on them)."""
        now = self._clock()
        out = []
        with self._lock:
            for job_id, loop in list(self._loops.items()):
                job = self._job(job_id)
                if job is None or job.state.terminal:
                    del self._loops[job_id]
                    self._served.pop(job_id, None)
                    continue
                if not loop.due(now):
                    continue
                entry = loop.step(now)
                if entry is None:
                    continue
                event = ""
                if entry.published:
                    before = "-" if entry.balance_before is None else f"{entry.balance_before:.4f}"
                    event = (
                        f"moe plan {entry.plan_revision} published (window {entry.window}): predicted balance "
                        f"{before} -> {entry.balance_after:.4f}, {entry.moves} expert weights moved; {entry.reason}"
                    )
                write = MoeWindowWrite(job_id, entry.window, entry.time_s, entry.to_json(), event)
                future = self._store.submit(write, background=True)
                if entry.published:
                    future.add_done_callback(lambda f, j=job_id, d=loop.documents: self._durable(f, j, d))
                out.append(future)
        return out

    def _durable(self, future: concurrent.futures.Future, job_id: str, documents: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # not stored: never served (a new leader rebuilds from what is stored)
        with self._lock:
            current = self._served.get(job_id)
            if current is None or current.revision < documents.revision:
                self._served[job_id] = documents

    def start(self, stop: threading.Event, is_leader: Callable[[], bool] = lambda: True) -> None:
        def run() -> None:
            while not stop.wait(TICK_S):
                if is_leader():
                    try:
                        self.run_due()
                    except Exception as err:  # noqa: BLE001 - a closing store; the next tick tries again
                        import sys

                        print(f"xpod server: moe loop: {str(err)[:200]}", file=sys.stderr, flush=True)

        self._thread = threading.Thread(target=run, name="xpod-moe", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    # --- history ---

    def history(self, job: JobRecord) -> list[Any]:
        """The job's closed windows, oldest first (``runtime.moe.live.LiveEntry``, plans left out)."""
        from xpod.runtime.moe.live import LiveEntry

        return [LiveEntry.from_json({**d, "plan": None}) for d in self._stored(job.id)]
