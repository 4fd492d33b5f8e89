"""Admission: a job document -> ``ParsedJob``, and whether the cluster could ever hold it.

A job document is a Kubernetes-style envelope (``apiVersion``, ``kind``, ``metadata``) around
the core's flat job spec plus the task keys of ``scheduler.contract`` (docs/reference/job-spec.md).
Every problem is found by the checker of ``xpod job validate`` (``problems``, through
``scheduler.jobspec``) and answered as one INVALID_ARGUMENT with a field violation each, the
dotted path from the document's root. A document is parsed once; the ``ParsedJob`` keeps the
task fields and the core's job. A job with a ``command`` selects real nodes
(``SIMULATED_LABEL: "false"``).

The core's own checks and its "can never fit" (``CoreLink.admit``) are asked once per job
*shape* (the core job without its id) and forgotten whenever the inventory changes.

Queues the core does not know yet are created with default shares (weight 1, no cap), up to
``Limits.max_queues``; a queue name is a DNS label, so hostile names cannot grow the metrics'
label sets. A task that asks for nothing gets ``DEFAULT_TASK_CPU_MILLI``, and a node whose CPUs
nobody declared holds ``TASKS_PER_NODE`` of them (``service.nodes.core_node``): a cycle never
walks an unbounded count of zero-sized tasks.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any, Callable, Collection

from xpod.hal.errors import XpodError
from xpod.scheduler.contract import (
    SIMULATED_LABEL,
    JobKind,
    TaskFieldError,
    TaskFields,
    parse_task_fields,
    role_spans,
    split_spec,
    task_spec,
)
from xpod.scheduler.core.model import Job
from xpod.scheduler.core.spec import parse_job, parse_roles
from xpod.scheduler.store import PendingReasonRecord

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
_CORE_ERROR = re.compile(r"^[^:]*: ([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$")
#: what a task that requests nothing is given: one CPU (documented in docs/security.md)
DEFAULT_TASK_CPU_MILLI = 1000
#: the CPUs (so default-sized tasks) a node holds when neither its agent nor the cluster file
#: declared its CPUs: the per-node task limit
TASKS_PER_NODE = 256
_QUEUE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: the id a parsed core job carries until the store names it (never a stored job's id)
PLACEHOLDER_ID = "__xpod_admission__"


#: a bad job document (``field``: the dotted path from the document's root, ``message``): the
#: contract's error for its task keys, and this module's for everything else
SpecInvalid = TaskFieldError


@dataclasses.dataclass(frozen=True)
class ParsedJob:
    """A validated job document: its envelope, its task fields and the core's job (whose id is
    ``PLACEHOLDER_ID``; ``core_job`` gives it the stored id).

    A job with ``roles`` is one stored job and one core job per role (``core_jobs``: id
    ``JOB/ROLE``, its ``group`` the stored id; the core places them all in one cycle or none);
    role i's tasks are the stored job's tasks from the sum of the earlier roles' tasks on
    (``contract.role_spans``). ``core`` is then the whole job as one gang of every role's tasks:
    what the service counts (tasks, the restart policy), never what the core places."""

    kind: JobKind
    name: str
    queue: str
    task: TaskFields
    core: Job
    roles: tuple[Job, ...] = ()

    def core_job(self, job_id: str, submit_time_s: float) -> Job:
        return dataclasses.replace(self.core, id=job_id, submit_time=submit_time_s or 1.0)

    def core_jobs(self, job_id: str, submit_time_s: float) -> tuple[Job, ...]:
        """What the core queues for this job: the job, or one job per role."""
        if not self.roles:
            return (self.core_job(job_id, submit_time_s),)
        return tuple(
            dataclasses.replace(
                r, id=f"{job_id}/{r.id.rsplit('/', 1)[1]}", group=job_id, submit_time=submit_time_s or 1.0
            )
            for r in self.roles
        )


def field_error(err: XpodError, prefix: str = "spec") -> SpecInvalid:
    """The core's ``WHERE: field: message`` as SpecInvalid("spec.field", message)."""
    m = _CORE_ERROR.match(str(err))
    if m:
        return SpecInvalid(f"{prefix}.{m.group(1)}", m.group(2))
    return SpecInvalid(prefix, str(err).split(": ", 1)[-1])


def parse_document(document: Any) -> ParsedJob:
    """A job document as a ``ParsedJob``: its task keys and its core job, parsed (not the core's
    own checks, which ``Admission.admit`` adds). Its envelope (``apiVersion``, ``kind``, the
    ``metadata``, no unknown key) is the JSON Schema's to check: ``problems`` on the submit path;
    a stored document passed it when it was submitted."""
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise SpecInvalid("job", "a job document is a mapping with kind, metadata and spec")
    try:
        kind = JobKind(document.get("kind"))
    except ValueError:
        raise SpecInvalid(
            "kind", f"{document.get('kind')!r} is not one of {', '.join(k.value for k in JobKind)}"
        ) from None
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    task, core, roles = _parse_spec(kind, document["spec"])
    return ParsedJob(kind, name if isinstance(name, str) else "", core.queue, task, core, roles)


# (kind, canonical JSON of spec) -> (task fields, core job). Neither depends on anything else
# (not the name, not the labels), and a stream of submissions repeats a few shapes, so parsing a
# submission is mostly one dict lookup. Successes only; cleared when it grows big.
_SPEC_CACHE: dict[tuple[str, str], tuple[TaskFields, Job, tuple[Job, ...]]] = {}
_SPEC_CACHE_MAX = 10_000
_SPEC_KEY = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _parse_spec(kind: JobKind, spec: dict[str, Any]) -> tuple[TaskFields, Job, tuple[Job, ...]]:
    try:
        key: tuple[str, str] | None = (kind.value, _SPEC_KEY.encode(spec))
    except (TypeError, ValueError):  # not plain JSON (a YAML date, say): parse without the cache
        key = None
    if key is not None:
        hit = _SPEC_CACHE.get(key)
        if hit is not None:
            return hit
    task = parse_task_fields(kind.value, spec)
    if "roles" in spec:
        return task, *_parse_roles(kind, spec)
    try:
        core = parse_job({**split_spec(spec), "kind": kind.label}, source="spec", job_id=PLACEHOLDER_ID)
    except XpodError as err:
        raise field_error(err) from None
    core = _core_defaults(core, task)
    if key is not None:
        if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = (task, core, ())
    return task, core, ()


def _core_defaults(core: Job, task: TaskFields) -> Job:
    """The service's own rules over a parsed core job: a task that asks for nothing gets one
    CPU; a queue is a DNS label; a job with a command selects real nodes."""
    if core.devices is None and not core.cpu_milli and not core.memory_bytes:
        core = dataclasses.replace(core, cpu_milli=DEFAULT_TASK_CPU_MILLI)
    if not _QUEUE.match(core.queue):
        raise SpecInvalid(
            "spec.queue",
            f"{core.queue[:80]!r} must be a DNS label: 1..63 of a-z, 0-9 and '-', alphanumeric at both ends",
        )
    if task.command:
        selector = {**dict(core.node_selector), SIMULATED_LABEL: "false"}
        core = dataclasses.replace(core, node_selector=tuple(sorted(selector.items())))
    return core


def _parse_roles(kind: JobKind, spec: dict[str, Any]) -> tuple[Job, tuple[Job, ...]]:
    """(the whole job as one gang, one core job per role) of a ``spec`` with ``roles``; each
    role's command, env and workdir are checked as the node agent reads them."""
    try:
        roles = parse_roles({**split_spec(spec), "kind": kind.label}, source="spec", job_id=PLACEHOLDER_ID)
    except XpodError as err:
        raise field_error(err) from None
    out = []
    for span, role in zip(role_spans(spec), roles):
        try:
            fields = parse_task_fields(kind.value, task_spec(spec, span.first))
        except TaskFieldError as err:
            raise SpecInvalid(err.field.replace("spec.", f"spec.roles[{span.index}].", 1), err.message) from None
        out.append(_core_defaults(role, fields))
    whole = dataclasses.replace(out[0], tasks=sum(r.tasks for r in out), min_tasks=None, group=None, group_size=0)
    return whole, tuple(out)


def problems(document: Any, known_models: Callable[[], Collection[str]]) -> list[tuple[str, str]]:
    """Every problem of a job document as (field, message), by the checker ``xpod job validate``
    and ``xpod submit`` run (``scheduler.jobspec``): the kind's JSON Schema with did-you-mean,
    device models and vendors against the catalog and ``known_models()`` (the server's nodes),
    the parsers. Cached per document apart from its name (a well-formed name changes nothing),
    since submissions repeat a few shapes; ``forget_problems`` when the inventory changes."""
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    try:
        if isinstance(name, str) and _NAME.match(name):
            key: str | None = _SPEC_KEY.encode({**document, "metadata": {**metadata, "name": ""}})
        else:
            key = None  # a bad name is judged with the rest, never cached
    except (TypeError, ValueError):
        key = None
    found = _PROBLEMS.get(key) if key is not None else None
    if found is None:
        from xpod.scheduler import jobspec

        found = [(v.field, v.message) for v in jobspec.violations(document, known_models=known_models())]
        if key is not None:
            if len(_PROBLEMS) >= _SPEC_CACHE_MAX:
                _PROBLEMS.clear()
            _PROBLEMS[key] = found
    return found


_PROBLEMS: dict[str, list[tuple[str, str]]] = {}


def forget_problems() -> None:
    """The server's device models may have changed: judge every document afresh."""
    _PROBLEMS.clear()


class Admission:
    """The core's verdicts on job shapes, cached until the inventory changes. ``admit`` asks the
    core (``ask(job) -> (error, never_fits)``: its checks refused the job with ``error`` (an
    ``XpodError``), or it can never fit (a reason), or both None) only for a shape it has not
    seen since the last ``forget()``."""

    def __init__(self, ask: Callable[[Job], tuple[XpodError | None, PendingReasonRecord | None]]) -> None:
        self._ask = ask
        self._lock = threading.Lock()
        self._verdicts: dict[Job | tuple[Job, ...], tuple[XpodError | None, PendingReasonRecord | None]] = {}
        self._generation = 0

    def cached(self, parsed: ParsedJob) -> tuple[XpodError | None, PendingReasonRecord | None] | None:
        """The verdict on this shape if known (no waiting), else None."""
        return self._verdicts.get(parsed.roles or parsed.core)

    def admit(self, parsed: ParsedJob) -> PendingReasonRecord | None:
        """Raise ``SpecInvalid`` when the core's checks refuse the job; return why it can never
        fit this cluster, or None. May wait for the core (a cycle in progress)."""
        verdict = self._verdicts.get(parsed.roles or parsed.core)
        if verdict is None:
            with self._lock:
                generation = self._generation
            verdict = (None, None)
            for i, job in enumerate(parsed.roles or (parsed.core,)):  # each role on its own devices
                error, never = verdict = self._ask(job)
                if parsed.roles and never is not None:  # name the role that cannot fit
                    role = f"spec.roles[{i}] ({job.id.rsplit('/', 1)[1]})"
                    verdict = (error, dataclasses.replace(never, message=f"{role}: {never.message}"))
                if verdict != (None, None):
                    break
            with self._lock:
                if generation == self._generation:  # not answered over an inventory that changed since
                    if len(self._verdicts) >= _SPEC_CACHE_MAX:
                        self._verdicts.clear()
                    self._verdicts[parsed.roles or parsed.core] = verdict
        error, never = verdict
        if error is not None:
            raise field_error(error)
        return never

    def forget(self) -> None:
        """The inventory changed: every never-fits answer may be stale."""
        with self._lock:
            self._generation += 1
            self._verdicts = {}
        forget_problems()
