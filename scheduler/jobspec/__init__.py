"""Job specs checked like cluster files: every problem at once, each named by its field.

One checker for the three places a job document is judged: ``xpod job validate FILE`` (offline,
optionally against a cluster descriptor), ``xpod submit`` (before the call) and the server's
admission (``violations(document, known_models=...)``, answered as INVALID_ARGUMENT with one
field violation per problem). Checks, in order:

1. the text: readable, UTF-8, not binary, one YAML document, no recursive or exponentially
   expanding aliases, no duplicate or merge keys (``hal.yamldoc``, shared with cluster files);
2. the JSON Schema of the job's kind (``schema.py``; ``xpod job schema KIND``): types, ranges,
   unknown keys with a did-you-mean or the complete list of allowed keys;
3. device names: ``devices.model`` and ``devices.vendor`` against the device catalog (and the
   models a cluster or the server's inventory adds), an unknown one named as such with the
   closest catalog names (never a capacity error);
4. when 1-3 found nothing: the parsers the scheduler and the node agent use (``core.spec``,
   ``taskspec``) and the core's own admission rules (priority classes, the enabled policies'
   rules such as the Ascend die-pair rule), so what passes here is what the server accepts;
5. with a cluster (``--cluster``): whether the job fits that cluster even when it is empty,
   decided by one scheduling cycle of the core on the cluster's nodes.

File problems are ``FILE:LINE:COL: message`` lines (``hal.yamldoc.DocumentError``); document
problems are ``Violation(field, message)`` with a dotted field path (``spec.devices.count``,
``spec.command[0]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import threading
from typing import Any, Collection

from xpod.hal.errors import XpodError
from xpod.hal.yamldoc import (
    DocumentError,
    Located,
    Path,
    compose_one,
    fmt_path,
    format_problems,
    read_text,
    schema_errors,
    type_word,
)

from .schema import KINDS, envelope_schema, pattern_message, schema

__all__ = [
    "KINDS",
    "DocumentError",
    "JobFile",
    "Violation",
    "load_job_file",
    "parse_job_text",
    "schema",
    "violations",
]


@dataclasses.dataclass(frozen=True)
class Violation:
    """One problem of a job document: ``field`` is its dotted path from the document's root
    (``spec.devices.count``; ``""`` for the document itself); ``message`` says what is wrong and
    what to do, naming the field."""

    field: str
    message: str


@dataclasses.dataclass(frozen=True)
class JobFile:
    """A job file that passed every check: its document and where each field is written."""

    path: str
    document: dict[str, Any]
    located: Located

    def position(self, field: str) -> tuple[int, int]:
        """1-based (line, column) of a dotted field path, or of its deepest written parent."""
        path = _path_of(field)
        while path and path not in self.located.key_at and path not in self.located.value_at:
            path = path[:-1]  # the deepest part that is written: at its key
        line, col = self.located.pos(path, key=True)
        return line + 1, col + 1

    def line_of(self, field: str) -> int:
        return self.position(field)[0]

    def device_name_problems(self, known_models: Collection[str] = ()) -> list[str]:
        """``FILE:LINE:COL`` lines for a device model or vendor that neither the catalog nor
        ``known_models`` names ([] when both are known): for a file loaded with
        ``check_models=False``, once the models the server's nodes have are known."""
        devices = self.document["spec"].get("devices")
        if not isinstance(devices, dict):
            return []
        found = _device_names(devices, known_models)
        return format_problems(self.path, [(*self.located.pos(p, key=k), m) for p, k, m in found])

    def outside_catalog(self) -> bool:
        """Whether ``devices.model`` or ``devices.vendor`` is a name the catalog lacks."""
        return bool(self.device_name_problems())

    def summary(self) -> dict[str, Any]:
        """What ``xpod job validate`` reports for a valid file (a job with roles: the first
        role's fields, and ``roles``: name, tasks, devices of each, and replicas {min, max} of a role
        with replicas, whose tasks are its max replicas')."""
        jobs = core_jobs(self.document["kind"], self.document["spec"])
        job = jobs[0]
        req = job.devices
        roles = [
            {
                "name": j.id.split("/")[-1],
                "tasks": j.tasks,
                "devices_per_task": None
                if j.devices is None
                else {"count": j.devices.count, "what": j.devices.describe()},
                "within": j.within,
                # a role with replicas: each a gang of its tasks
                **(
                    {"replicas": {"min": j.min_required // j.replica_tasks, "max": j.tasks // j.replica_tasks}}
                    if j.kind.value == "serving"
                    else {}
                ),
            }
            for j in jobs
            if j.group is not None
        ]
        return {
            "file": self.path,
            "kind": self.document["kind"],
            "name": self.document["metadata"]["name"],
            "queue": job.queue,
            "priority_class": job.priority_class,
            "tasks": job.tasks,
            "min_tasks": job.min_tasks,
            "devices_per_task": None if req is None else {"count": req.count, "what": req.describe()},
            "within": job.within,
            **({"roles": roles} if roles else {}),
        }


def load_job_file(path: str, *, cluster: Any = None, check_models: bool = True) -> JobFile:
    """Read and check a job file; every problem at once as ``DocumentError`` lines, an unreadable,
    binary or non-UTF-8 file as one ``XpodError`` line. ``cluster`` (a ``hal.cluster.Cluster``)
    adds its models to the known ones and the fit check; ``check_models=False`` leaves device
    names to the server (``xpod submit``: the server knows the models its nodes registered)."""
    return parse_job_text(read_text(path), path, cluster=cluster, check_models=check_models)


def parse_job_text(text: str, source: str, *, cluster: Any = None, check_models: bool = True) -> JobFile:
    """``load_job_file`` for text; ``source`` names it in messages."""
    root, problems = compose_one(
        text,
        empty="the file is empty; expected a job (apiVersion: xpod/v1, kind: TrainingJob | ServingJob | BatchJob)",
        several="more than one YAML document; put one job per file",
    )
    if root is None:
        raise DocumentError(format_problems(source, problems))
    located = Located()
    data = located.build(root)
    problems = list(located.problems)
    known = None
    if cluster is not None:
        known = set(cluster.models)
    for path, key, message in _check(data, known_models=known, check_models=check_models, structure_ok=not problems):
        problems.append((*located.pos(path, key=key), message))
    if not problems and cluster is not None:
        for path, key, message in _fit(data, cluster):
            problems.append((*located.pos(path, key=key), message))
    if problems:
        raise DocumentError(format_problems(source, problems))
    return JobFile(source, data, located)


def violations(document: Any, *, known_models: Collection[str] | None = None) -> list[Violation]:
    """Every problem of a job document (a dict, as the server receives it); [] when valid.
    ``known_models``: device model ids the server's nodes have, beside the catalog's."""
    return [
        Violation(fmt_path(path) if path else "", message)
        for path, _, message in _check(document, known_models=known_models, check_models=True, structure_ok=True)
    ]


# --------------------------------------------------------------------------- the checks

_Found = tuple  # (path, key, message)


def _check(data: Any, *, known_models: Collection[str] | None, check_models: bool, structure_ok: bool) -> list:
    if not isinstance(data, dict):
        return [((), False, f"a job is a mapping with kind, metadata and spec, got {type_word(data)}")]
    kind = data.get("kind")
    if kind not in KINDS:
        return schema_errors(_validator(None), data)
    found: list[_Found] = schema_errors(_validator(kind), data, pattern_message)
    spec = data.get("spec")
    devices = spec.get("devices") if isinstance(spec, dict) else None
    if check_models and isinstance(devices, dict):
        found += _device_names(devices, known_models or ())
    roles = spec.get("roles") if isinstance(spec, dict) else None
    if check_models and isinstance(roles, list):
        for i, role in enumerate(roles):
            if isinstance(role, dict) and isinstance(role.get("devices"), dict):
                found += _device_names(role["devices"], known_models or (), ("spec", "roles", i, "devices"))
    if not found and structure_ok:
        found += _parsers(kind, data["spec"])
    return found


@functools.lru_cache(maxsize=None)
def _validator(kind: str | None) -> Any:
    """The JSON Schema validator of a kind (None: the envelope), built once."""
    import jsonschema

    return jsonschema.Draft202012Validator(envelope_schema() if kind is None else schema(kind))


def _device_names(
    devices: dict[str, Any], known_models: Collection[str], at: Path = ("spec", "devices")
) -> list[_Found]:
    from xpod.hal.catalog import VENDORS, all_models, match_model

    out: list[_Found] = []
    ids = [m.id for m in all_models()] + sorted(set(known_models) - {m.id for m in all_models()})
    model = devices.get("model")
    if isinstance(model, str) and model and model not in ids:
        alias = match_model(model)
        if alias is not None:
            message = f"{model!r} is a name of the catalog model {alias.id!r}: write the id, model: {alias.id}"
        else:
            close = difflib.get_close_matches(model, ids, n=3, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else f"known models: {', '.join(ids)}"
            message = f"unknown device model {model!r} ({hint}; `xpod devices` and hal/catalog.yaml list them)"
        out.append(((*at, "model"), False, f"{fmt_path((*at, 'model'))}: {message}"))
    vendor = devices.get("vendor")
    vendors = sorted(set(VENDORS) | {m.vendor for m in all_models()})
    if isinstance(vendor, str) and vendor and vendor not in vendors:
        close = difflib.get_close_matches(vendor, vendors, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"known vendors: {', '.join(vendors)}"
        out.append(((*at, "vendor"), False, f"{fmt_path((*at, 'vendor'))}: unknown vendor {vendor!r} ({hint})"))
    return out


#: the core's parser says ``WHERE: field: message``
_CORE_ERROR = re.compile(r"^[^:]*: ([A-Za-z_][A-Za-z0-9_.\[\]]*): (.*)$")
_VALIDATION_ID = "__xpod_validate__"


def _parsers(kind: str, spec: dict[str, Any]) -> list[_Found]:
    """What the node agent and the scheduler core read, by their own parsers and rules."""
    from xpod.scheduler.contract import TaskFieldError, parse_task_fields, role_spans, task_spec

    try:
        parse_task_fields(kind, spec)
    except TaskFieldError as err:
        return [(_path_of(err.field), False, f"{err.field}: {err.message}")]
    for span in role_spans(spec):  # a role's command, env and workdir, as the node agent reads them
        try:
            parse_task_fields(kind, task_spec(spec, span.first))
        except TaskFieldError as err:
            field = err.field.replace("spec.", f"spec.roles[{span.index}].", 1)
            return [(_path_of(field), False, f"{field}: {err.message}")]
    try:
        jobs = core_jobs(kind, spec)
    except XpodError as err:
        return [_core_found(err)]
    for i, job in enumerate(jobs):
        try:
            _facade().validate(job)
        except XpodError as err:
            found = _core_found(err)
            if job.group is None:
                return [found]
            # the rule broke on one role: name the role's field
            path, key, message = found
            return [(("spec", "roles", i, *path[1:]), key, message.replace("spec.", f"spec.roles[{i}].", 1))]
    return []


def core_jobs(kind: str, spec: dict[str, Any]) -> list[Any]:
    """The core's ``Job`` of a checked document, or one per role for a job with ``roles``."""
    if "roles" not in spec:
        return [core_job(kind, spec)]
    from xpod.scheduler.core.spec import parse_roles
    from xpod.scheduler.contract import split_spec

    return parse_roles({**split_spec(spec), "kind": KINDS[kind]}, source="spec", job_id=_VALIDATION_ID)


def core_job(kind: str, spec: dict[str, Any]) -> Any:
    """The core's ``Job`` for a checked document's ``kind`` and ``spec`` (placeholder id)."""
    from xpod.scheduler.core.spec import parse_job
    from xpod.scheduler.contract import split_spec

    return parse_job({**split_spec(spec), "kind": KINDS[kind]}, source="spec", job_id=_VALIDATION_ID)


def _core_found(err: XpodError) -> _Found:
    m = _CORE_ERROR.match(str(err))
    if m:
        return (("spec", *_path_of(m.group(1))), False, f"spec.{m.group(1)}: {m.group(2)}")
    return (("spec",), False, f"spec: {str(err).split(': ', 1)[-1]}")


class _Facade:
    """The core's admission rules on an empty inventory (priority classes, the default
    profile's validators), as the server runs them; one instance, one lock."""

    def __init__(self) -> None:
        from xpod.scheduler.core.model import Queue
        from xpod.scheduler.core.scheduler import Scheduler

        self._queue = Queue
        self._scheduler = Scheduler()
        self._lock = threading.Lock()

    def validate(self, job: Any) -> None:
        with self._lock:
            sched = self._scheduler
            sched.queues.setdefault(job.queue, self._queue(job.queue))  # queues are created on first use
            try:
                sched.submit(dataclasses.replace(job, submit_time=1.0))
            finally:
                sched.pending.pop(job.id, None)


_FACADE: _Facade | None = None


def _facade() -> _Facade:
    global _FACADE
    if _FACADE is None:
        _FACADE = _Facade()
    return _FACADE


def _fit(data: dict[str, Any], cluster: Any) -> list[_Found]:
    """Whether the job fits ``cluster`` when it is empty: one cycle of the core on its nodes."""
    from xpod.scheduler.core.from_cluster import nodes_from_cluster
    from xpod.scheduler.core.model import Queue
    from xpod.scheduler.core.scheduler import Scheduler

    kind, spec = data["kind"], data["spec"]
    jobs = core_jobs(kind, spec)
    sched = Scheduler(nodes_from_cluster(cluster), queues=(Queue("default"), Queue(jobs[0].queue)))
    try:
        for job in jobs:
            sched.submit(dataclasses.replace(job, submit_time=1.0))
    except XpodError as err:
        return [_core_found(err)]
    if len(jobs) > 1:  # a role that cannot fit even alone is the one to name
        for i, job in enumerate(jobs):
            why = sched.never_fits(dataclasses.replace(job, group=None, group_size=0))
            if why is not None:
                return [
                    (
                        ("spec", "roles", i),
                        True,
                        f"spec.roles[{i}] ({job.id.split('/')[-1]}): does not fit cluster {cluster.name} "
                        f"({cluster.source}) even when it is empty: {why.message}",
                    )
                ]
    result = sched.cycle(now=1.0)
    for i, job in enumerate(jobs):
        placed = sum(1 for b in result.bindings if b.job_id == job.id)
        # a batch job's tasks run one by one; a gang (training) or a serving job needs its minimum at once
        need = 1 if kind == "BatchJob" else (job.min_tasks or job.tasks)
        if placed >= need:
            continue
        reason = result.pending.get(job.id)
        why = f"{reason.code.value}: {reason.message}" if reason is not None else f"{placed} of {need} tasks placed"
        at, what = (
            (("spec", "roles", i), f"spec.roles[{i}] ({job.id.split('/')[-1]})") if job.group else (("spec",), "spec")
        )
        return [
            (at, True, f"{what}: does not fit cluster {cluster.name} ({cluster.source}) even when it is empty: {why}")
        ]
    return []


def _path_of(field: str) -> Path:
    """``spec.command[0]`` -> ("spec", "command", 0)."""
    out: list[Any] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)
