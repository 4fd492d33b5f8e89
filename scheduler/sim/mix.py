"""``xpod replay mix``: serving that follows its demand and training in the background, on one pod,
through the scheduler ``xpod server`` runs, on the virtual-clock engine (``engine.Engine``).

What is replayed (a warm-up of ``warmup_s``, then one virtual hour in ``step_s`` = 10 s intervals):

* **Serving demand**: an LLM inference trace (Azure LLM inference 2023: ``TIMESTAMP,
  ContextTokens, GeneratedTokens``; or Mooncake FAST'25 JSONL: ``timestamp`` in ms,
  ``input_length``, ``output_length``). Its load per 10 s interval (prompt + generated tokens per
  second, or requests per second, as the serving job's ``autoscale.metric`` says) is scaled so
  that the peak interval of the trace's first hour needs exactly ``peak_replicas`` replicas at
  the job's ``target_per_replica`` (a replay shorter than the hour sees its first part); the
  job's max replicas become ``peak_replicas``.
* **A serving job with roles** (a ServingJob file whose roles each have ``autoscale``, e.g.
  ``examples/jobs/prefill-decode-autoscale.yaml``) is one pool per role, all placed together
  first, then each following its own load: the one trace drives every role, each by the tokens
  ``--role-tokens`` gives it (``ROLE=prompt|generated|both,...``; default
  ``DEFAULT_ROLE_TOKENS``: ``prefill`` the prompt tokens of its requests, Azure's
  ``ContextTokens``, Mooncake's ``input_length``; ``decode`` the generated tokens,
  ``GeneratedTokens``, ``output_length``; a role it does not name both; ``requests_per_s``
  counts the requests, for any role); each role's series is scaled so that its own peak needs
  ``peak_replicas`` of its replicas. An interval meets the SLO when every role's ready capacity
  meets its demand; the result's ``roles`` gives each role's own attainment, scale-up p99 and
  tokens.
* **The serving job** is a ServingJob file with ``autoscale``; at the start of every interval
  (an engine ``CALL`` event) its ready replicas report the load of the interval that just
  ended (each its share: ``Scheduler.report_load``), so the scheduler sees the demand one
  interval late, as a live one does. During the warm-up they report the first minute's highest
  load.
* **Training**: a job trace in the normalized Philly schema (``job_id, submit_s, duration_s,
  num_devices``), read from ``training_from_s``: the jobs running then arrive at the warm-up's
  start with the work they had left, the jobs submitted in the hour arrive at their times. A
  job runs on one device model: with several in the cluster (a mixed pod), the jobs are split
  in proportion to each model's devices (``split_models``). A job of n trace GPUs takes n
  schedulable devices (dies on Ascend 910C) of its model in the smallest shape the cluster's
  placement rules allow: on 910C one task of 1, 2, 4, ..., 16 dies, or tasks of 16 dies (whole
  nodes: MindCluster's rule for a distributed 910C task); on 910B one task of 1, 2, 4 or 8
  NPUs, or tasks of 8 (whole nodes); elsewhere one task up to a node, else whole nodes. A job
  of several tasks is elastic down to half of them (``min_tasks``), as an elastic
  data-parallel job (torchrun's ``--nnodes MIN:MAX``) scales by whole nodes; a job of one task
  cannot shrink. Its work is its trace duration at full size;
  at fewer tasks it progresses proportionally slower (the engine's rate).

The engine runs ``Scheduler.cycle`` at every event instant (arrivals, finishes, the 10 s load
reports) and books starts, evictions and resizes on its job records (``engine`` module
docstring: progress, checkpoints, restarts); this module only watches (``_MixBook``): when each
serving replica serves, the interval samples and the counts.

Costs the core does not model and the replay charges, the same for every profile:

* a task that must stop (evicted, shrunk) gets SIGTERM and, when the profile gives ``notice``
  (the default; Kubernetes preemption does not), its notice file: it writes a checkpoint in
  ``checkpoint_s`` (kept when that is within its job's ``grace_period_s``); without the notice
  its progress falls back to its last periodic checkpoint (every ``checkpoint_every_s`` of its
  progress). It frees its devices after ``checkpoint_s``: a replica placed on them serves that
  much later;
* a replica serves ``replica_startup_s`` after its devices are free (model load);
* a training gang makes no progress for ``restart_s`` after each restart (evicted and started
  again, shrunk, regrown).

Metrics (``MixResult``; the intervals of the hour):

* ``slo_attainment``: fraction of intervals whose ready serving capacity (ready replicas x
  target) is at least the interval's demand;
* ``scale_up_p99_s``: for every interval whose needed replicas rise above the previous
  interval's, the time from its start until that many replicas are ready (0 when they already
  are); the 99th percentile (nearest rank);
* ``training_device_hours``: training progress made in the hour and kept (progress at the
  hour's end less progress at its start, so work an eviction threw away is not counted), in
  device-hours at the jobs' trace sizes;
* ``gang_restarts``: training gangs restarted (shrunk, regrown, or evicted whole and started
  again); ``preemptions``: training jobs evicted whole; ``utilisation``: device-seconds
  allocated / (devices x hour); ``violations``: placements breaking the cluster's rules,
  checked by ``audit_binding`` without asking any plugin (must be 0).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from xpod.hal.errors import XpodError

from ..core.autoscale import ScaleRule, recommendation
from ..core.model import Binding, CycleResult, DeviceRequest, Job, JobKind, Node
from ..core.plugins.ascend import rules as ascend_rules
from ..core.profile import Profile
from ..core.scheduler import Scheduler
from ..core.fabric import Fabric
from .engine import Engine, JobRecord, PreemptionCost

#: the trace's resolution and the replay's cycle period
STEP_S = 10.0


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """The replay's knobs (the CLI's flags); every profile is replayed with the same."""

    hour_s: float = 3600.0  # virtual time measured
    warmup_s: float = 120.0  # before the hour: serving at the first interval's demand, training queued
    training_from_s: float = 0.0  # seconds into the training trace the hour starts at
    elastic_fraction: float = 0.5  # a multi-task training job runs with at least this share of its tasks
    replica_startup_s: float = 20.0  # a placed replica serves this long after its devices are free
    checkpoint_s: float = 10.0  # a noticed training task writes its checkpoint and exits in this long
    checkpoint_every_s: float = 1800.0  # periodic checkpoints (what a too-short notice falls back to)
    restart_s: float = 60.0  # a (re)started training gang makes progress after this long
    step_s: float = STEP_S


# --------------------------------------------------------------------------- inputs


def _open_text(path: str, what: str):
    """A trace file as text (``.gz``: decompressed); ``XpodError`` naming it when unreadable."""
    import gzip

    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as err:
        raise XpodError(f"{path}: cannot read the {what}: {err.strerror}") from None


def _read_azure(path: str) -> list[tuple[float, int, int]]:
    """(seconds from the first request, context tokens, generated tokens) per request."""
    out: list[tuple[float, int, int]] = []
    with _open_text(path, "serving trace") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        need = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
        missing = [c for c in need if c not in header]
        if missing:
            raise XpodError(
                f"{path}:1: missing column {missing[0]!r} (an Azure LLM inference trace has {', '.join(need)})"
            )
        col = [header.index(c) for c in need]
        t0 = None
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) <= max(col):
                raise XpodError(f"{path}:{line}: {need[len(row) if len(row) < 3 else 2]}: missing")
            ts = _timestamp(path, line, row[col[0]].strip())
            t0 = ts if t0 is None else t0
            ctx = _count(path, line, "ContextTokens", row[col[1]])
            gen = _count(path, line, "GeneratedTokens", row[col[2]])
            out.append((ts - t0, ctx, gen))
    return out


def _timestamp(path: str, line: int, text: str) -> float:
    """Seconds since the epoch of ``2023-11-16 18:15:46.6805900`` (any digits of fraction)."""
    import datetime

    whole, _, frac = text.partition(".")
    try:
        t = datetime.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
        f = float("0." + frac) if frac else 0.0
    except ValueError:
        raise XpodError(f"{path}:{line}: TIMESTAMP: {text!r} is not a time like 2023-11-16 18:15:46.68") from None
    return t.timestamp() + f


def _count(path: str, line: int, field: str, text: str) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        raise XpodError(f"{path}:{line}: {field}: {text.strip()!r} is not a whole number of tokens") from None
    if v < 0:
        raise XpodError(f"{path}:{line}: {field}: {v} must be >= 0")
    return v


def _read_mooncake(path: str) -> list[tuple[float, int, int]]:
    out: list[tuple[float, int, int]] = []
    with _open_text(path, "serving trace") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
                ts, inp, outp = rec["timestamp"], rec["input_length"], rec["output_length"]
            except (ValueError, KeyError, TypeError) as err:
                what = f"missing field {err}" if isinstance(err, KeyError) else "not a JSON object"
                raise XpodError(
                    f"{path}:{line}: {what} (a Mooncake trace line has timestamp, input_length, output_length)"
                ) from None
            for field, v in (("timestamp", ts), ("input_length", inp), ("output_length", outp)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                    raise XpodError(f"{path}:{line}: {field}: {v!r} must be a number >= 0")
            out.append((ts / 1000.0, int(inp), int(outp)))
    if out:
        t0 = min(t for t, _, _ in out)
        out = [(t - t0, a, b) for t, a, b in out]
    return out


def read_serving_trace(path: str) -> list[tuple[float, int, int]]:
    """Requests of an LLM inference trace: (seconds from the first, prompt tokens, generated
    tokens). Azure's CSV, or Mooncake's JSONL (``.jsonl``). ``XpodError`` naming the file, the
    line and the field on bad input."""
    jsonl = path.endswith(".jsonl") or path.endswith(".jsonl.gz")
    try:
        reqs = _read_mooncake(path) if jsonl else _read_azure(path)
    except UnicodeDecodeError:
        raise XpodError(f"{path}: not a UTF-8 text file (an LLM inference trace is CSV or JSONL)") from None
    if not reqs:
        raise XpodError(f"{path}: no requests in the serving trace")
    return reqs


#: which tokens of a request a serving role's ``tokens_per_s`` counts: prompt (Azure's
#: ContextTokens, Mooncake's input_length), generated (GeneratedTokens, output_length) or both
TOKENS = ("both", "prompt", "generated")
#: ``xpod replay mix --role-tokens``'s default: the two phases disaggregated serving splits, by
#: their usual names (a role of exactly that name; any role it does not name follows both)
DEFAULT_ROLE_TOKENS = "prefill=prompt,decode=generated"


def parse_role_tokens(text: str, flag: str = "--role-tokens") -> dict[str, str]:
    """``ROLE=KIND,...`` (KIND one of ``TOKENS``; '' names no role) as {role: kind};
    ``XpodError`` naming ``flag`` and the entry on a malformed entry, an unknown kind or a role
    named twice."""
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry and not text.strip():
            continue
        role, eq, kind = (x.strip() for x in entry.partition("="))
        if not eq or not role or not kind:
            raise XpodError(f"{flag} {text}: {entry!r} is not ROLE=KIND (KIND: {', '.join(TOKENS)})")
        if kind not in TOKENS:
            raise XpodError(f"{flag} {text}: {entry}: unknown token kind {kind!r} (one of {', '.join(TOKENS)})")
        if role in out:
            raise XpodError(f"{flag} {text}: role {role!r} named twice")
        out[role] = kind
    return out


def role_tokens(jobs: Sequence[Job], text: str | None = None, flag: str = "--role-tokens") -> list[str]:
    """The tokens (``TOKENS``) whose rate is each serving job's load, in ``jobs``' order: a job
    without roles both; a role what ``text`` (``ROLE=KIND,...``; None: ``DEFAULT_ROLE_TOKENS``)
    says for its name, both when it names it not. A ``text`` given that names a role the job
    does not have, or given for a job without roles, is one ``XpodError`` line naming ``flag``."""
    mapping = parse_role_tokens(DEFAULT_ROLE_TOKENS if text is None else text, flag)
    names = [job.id.rsplit("/", 1)[1] if job.group is not None else "" for job in jobs]
    if text is not None and mapping:
        if not any(names):
            raise XpodError(
                f"{flag} {text}: the serving job has no roles (its load is both prompt and generated tokens)"
            )
        unknown = [r for r in mapping if r not in names]
        if unknown:
            raise XpodError(
                f"{flag} {text}: the serving job has no role {unknown[0]!r} (its roles: {', '.join(names)})"
            )
    return [mapping.get(name, "both") if name else "both" for name in names]


def demand_series(
    requests: Sequence[tuple[float, int, int]], metric: str, hour_s: float, step_s: float, tokens: str = "both"
) -> list[float]:
    """The load of each ``step_s`` interval of the first ``hour_s`` (per second): tokens (prompt +
    generated, or only one of them: ``tokens``) or requests, as ``metric`` (``tokens_per_s`` /
    ``requests_per_s``) says. A trace shorter than the hour repeats."""
    prompt, generated = tokens in ("both", "prompt"), tokens in ("both", "generated")
    n = int(math.ceil(hour_s / step_s))
    span = max(t for t, _, _ in requests) + 1e-9
    out = [0.0] * n
    reps = int(math.ceil(hour_s / span)) if span < hour_s else 1
    for k in range(reps):
        for t, a, b in requests:
            i = int((t + k * span) // step_s)
            if 0 <= i < n:
                out[i] += (a * prompt + b * generated) if metric == "tokens_per_s" else 1.0
    return [v / step_s for v in out]


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """One training job of the trace, as the hour sees it."""

    job: Job
    arrive_s: float  # seconds into the hour it is submitted (0 for the jobs running when the hour starts)
    work_s: float  # seconds of work left at its full size
    devices: int  # trace devices (device-seconds of progress per second at its full size)


def shape(count: int, model: str, per_node: int) -> tuple[int, int]:
    """(tasks, devices per task): the smallest legal shape for ``count`` devices (see the module
    docstring): Ascend 910C one task of 1, 2, 4, ..., 16 dies or tasks of 16; Ascend 910B one
    task of 1, 2, 4 or 8 NPUs or tasks of 8 (whole nodes); elsewhere one task up to a node, else
    whole nodes."""
    fam = ascend_rules.family(model)
    if fam == "910c":
        node = ascend_rules.A3_DIES_PER_NODE
        if count <= node:
            return 1, min(s for s in ascend_rules.A3_LEGAL_SINGLE_NODE if s >= count)
        return -(-count // node), node
    if fam == "910b":
        node = max(ascend_rules.B_LEGAL)
        if count <= node:
            return 1, min(s for s in ascend_rules.B_LEGAL if s >= count)
        return -(-count // node), node
    if count <= per_node:
        return 1, count
    return -(-count // per_node), per_node


@dataclasses.dataclass(frozen=True)
class TrainingModel:
    """A device model training may run on: its devices in the cluster and the most on one node."""

    model: str
    devices: int
    per_node: int


def training_models(nodes: Sequence[Node]) -> list[TrainingModel]:
    """Every device model of the cluster (most devices first, then by name)."""
    count: dict[str, int] = {}
    most: dict[str, int] = {}
    for n in nodes:
        here: dict[str, int] = {}
        for d in n.devices:
            if d.model:
                here[d.model] = here.get(d.model, 0) + 1
        for m, k in here.items():
            count[m] = count.get(m, 0) + k
            most[m] = max(most.get(m, 0), k)
    return [TrainingModel(m, count[m], most[m]) for m in sorted(count, key=lambda m: (-count[m], m))]


def read_training(
    path: str, settings: MixSettings, model: str | Sequence[TrainingModel], per_node: int = 0, biggest_devices: int = 0
) -> list[TrainingJob]:
    """The training jobs of the hour from a normalized job trace (``XpodError`` naming the
    file, line and field), on one device ``model`` (``per_node`` of it on the largest node,
    ``biggest_devices`` in the cluster), or split over several (``TrainingModel``s: the rule of
    ``split_models``). Jobs larger than every model's devices are left out."""
    models = [TrainingModel(model, biggest_devices, per_node)] if isinstance(model, str) else list(model)
    try:
        rows = _read_training_rows(path, settings)
    except UnicodeDecodeError:
        raise XpodError(f"{path}: not a UTF-8 text file (a job trace is CSV)") from None
    except csv.Error as err:
        raise XpodError(f"{path}: not valid CSV: {err}") from None
    out = []
    for (job_id, arrive, left, n), m in zip(rows, split_models(rows, models, settings.hour_s)):
        if m is None:
            continue
        tasks, per = shape(n, m.model, m.per_node)
        elastic = tasks > 1
        min_tasks = max(1, math.ceil(tasks * settings.elastic_fraction)) if elastic else None
        job = Job(
            id=job_id,
            kind=JobKind.TRAINING,
            tasks=tasks,
            devices=DeviceRequest(count=per, model=m.model),
            min_tasks=min_tasks,
            priority_class="normal",
            submit_time=arrive,
        )
        out.append(TrainingJob(job, arrive, left, n))
    return out


def split_models(
    rows: Sequence[tuple[str, float, float, int]], models: Sequence[TrainingModel], hour_s: float
) -> list[TrainingModel | None]:
    """The model each training job of ``rows`` (job id, arrival in the hour, work left, trace
    devices; in arrival order) runs on: the jobs are split in proportion to each model's devices.
    In arrival order, a job goes to the model whose training work of the hour (device-seconds:
    trace devices x the part of its work the hour can hold, ``min(left, hour - arrival)``),
    with this job added, is the smallest per device the model has, among the models with at
    least the job's trace devices (ties: the model with more devices, then by name); None when
    no model has that many. With one model every job that fits goes to it."""
    load = {m.model: 0.0 for m in models}
    out: list[TrainingModel | None] = []
    for _, arrive, left, n in rows:
        fits = [m for m in models if n <= m.devices]
        if not fits:
            out.append(None)
            continue
        work = n * max(0.0, min(left, hour_s - arrive))
        best = min(fits, key=lambda m: ((load[m.model] + work) / m.devices, -m.devices, m.model))
        load[best.model] += work
        out.append(best)
    return out


def _read_training_rows(path: str, settings: MixSettings) -> list[tuple[str, float, float, int]]:
    """(job id, arrival in the hour, seconds of work left, trace devices) of every job of the
    trace that runs in the hour, in arrival order (then by id)."""
    lo, hi = settings.training_from_s, settings.training_from_s + settings.hour_s
    out: list[tuple[str, float, float, int]] = []
    with _open_text(path, "training trace") as f:
        reader = csv.DictReader(f)
        need = ("job_id", "submit_s", "duration_s", "num_devices")
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise XpodError(f"{path}:1: missing column {missing[0]!r} (a job trace has {', '.join(need)})")
        for row in reader:
            line = reader.line_num
            vals = {}
            for field in need[1:]:
                text = (row.get(field) or "").strip()
                try:
                    vals[field] = float(text)
                except ValueError:
                    raise XpodError(f"{path}:{line}: {field}: {text!r} is not a number") from None
                if not math.isfinite(vals[field]) or vals[field] < 0:
                    raise XpodError(f"{path}:{line}: {field}: {text!r} must be a finite number >= 0")
            submit, duration, n = vals["submit_s"], vals["duration_s"], int(vals["num_devices"])
            if n < 1 or submit >= hi or submit + duration <= lo:
                continue
            arrive = max(0.0, submit - lo)
            left = duration - max(0.0, lo - submit)
            out.append((row["job_id"].strip(), arrive, left, n))
    out.sort(key=lambda r: (r[1], r[0]))
    return out


# ------------------------------------------------------------------------------ audit


def audit_binding(b: Binding, node: Node, job: Job) -> str | None:
    """Why a binding breaks the cluster's placement rules (checked from the rules alone, not by
    asking a plugin), or None: devices exist, are of the job's model, on Ascend 910C a task
    takes 1 die or whole die pairs (1, 2, 4, ..., 16) and a task of a multi-task job all 16; on
    Ascend 910B a task takes 1, 2 or 4 NPUs of one HCCS group, or all 8 of its node
    (``ascend.rules``)."""
    devs = node.devices
    if any(i >= len(devs) for i in b.device_indices):
        return f"{b.job_id}/{b.task}: device index beyond node {node.name}"
    req = job.devices
    if req is not None and req.model and any(devs[i].model != req.model for i in b.device_indices):
        return f"{b.job_id}/{b.task}: a device not of model {req.model} on {node.name}"
    if req is not None and ascend_rules.family(req.model) == "910b":
        return _audit_910b(b, node)
    if req is not None and ascend_rules.family(req.model) == "910c":
        k = len(b.device_indices)
        if k not in ascend_rules.A3_LEGAL_SINGLE_NODE:
            return f"{b.job_id}/{b.task}: {k} dies is no legal 910C task"
        if k > 1:
            pkgs: dict[int, int] = {}
            for i in b.device_indices:
                p = devs[i].package if devs[i].package is not None else i // 2
                pkgs[p] = pkgs.get(p, 0) + 1
            if any(c != 2 for c in pkgs.values()):
                return f"{b.job_id}/{b.task}: dies {b.device_indices} split a die pair on {node.name}"
        if job.kind is JobKind.TRAINING and job.tasks > 1 and k != ascend_rules.A3_DIES_PER_NODE:
            return f"{b.job_id}/{b.task}: a distributed 910C task of {k} dies (must be 16)"
    return None


def _audit_910b(b: Binding, node: Node) -> str | None:
    devs, k = node.devices, len(b.device_indices)
    if k not in ascend_rules.B_LEGAL:
        return f"{b.job_id}/{b.task}: {k} NPUs is no legal 910B task"
    if k == max(ascend_rules.B_LEGAL):
        if len(devs) != k:
            return f"{b.job_id}/{b.task}: 8 NPUs of a node of {len(devs)} on {node.name}"
    else:
        groups = {
            devs[i].group if devs[i].group is not None else i // ascend_rules.B_GROUP_SIZE for i in b.device_indices
        }
        if len(groups) != 1:
            return f"{b.job_id}/{b.task}: NPUs {b.device_indices} span HCCS groups on {node.name}"
    return None


# ----------------------------------------------------------------------------- replay


@dataclasses.dataclass
class MixResult:
    """What one replay measured (``to_json`` is the CLI's JSON)."""

    profile: str
    slo_attainment: float
    scale_up_p99_s: float
    training_device_hours: float
    gang_restarts: int
    preemptions: int
    shrinks: int
    regrows: int
    utilisation: float
    violations: int
    violation_examples: list[str]
    seconds: float
    devices: int
    peak_replicas: int
    serving_device_hours: float
    cycles: int
    # per interval, for the plot: demand and ready capacity in replicas, training devices
    curve_t: list[float] = dataclasses.field(default_factory=list)
    curve_demand: list[float] = dataclasses.field(default_factory=list)
    curve_ready: list[int] = dataclasses.field(default_factory=list)
    curve_training: list[int] = dataclasses.field(default_factory=list)
    # a job with roles: per role, its own slo_attainment, scale_up_p99_s, peak_replicas, tokens
    roles: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # training_device_hours per device model (the JSON has it when the training ran on several)
    training_by_model: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": "scheduler",
            "profile": self.profile,
            "slo_attainment": round(self.slo_attainment, 4),
            "scale_up_p99_s": round(self.scale_up_p99_s, 1),
            "training_device_hours": round(self.training_device_hours, 2),
            "gang_restarts": self.gang_restarts,
            "preemptions": self.preemptions,
            "utilisation": round(self.utilisation, 4),
            "seconds": round(self.seconds, 2),
            "shrinks": self.shrinks,
            "regrows": self.regrows,
            "serving_device_hours": round(self.serving_device_hours, 2),
            "violations": self.violations,
            "violation_examples": self.violation_examples,
            "devices": self.devices,
            "peak_replicas": self.peak_replicas,
            "cycles": self.cycles,
            **({"roles": self.roles} if self.roles else {}),
            **(
                {"training_device_hours_by_model": {m: round(v, 2) for m, v in self.training_by_model.items()}}
                if len(self.training_by_model) > 1
                else {}
            ),
        }


def replay_mix(
    nodes: Sequence[Node],
    fabric: Fabric | None,
    serving: Job | Sequence[Job],
    demand: Sequence[float] | Sequence[Sequence[float]],
    training: Sequence[TrainingJob],
    profile: Profile,
    profile_name: str,
    settings: MixSettings = MixSettings(),
    progress: Callable[[float, float], None] | None = None,
    observers: Sequence[object] = (),
    explain: bool = False,
    tokens: Sequence[str] = (),
) -> MixResult:
    """Replay one hour (see the module docstring) on the virtual-clock engine. ``serving`` must
    be an autoscaled serving job whose max replicas is the peak; ``demand`` its load per
    interval, in its metric's units per second, already scaled. A job with roles: ``serving``
    its roles (each autoscaled) and ``demand`` one series per role, in the same order.
    ``observers``: more engine observers after the replay's own (a bench's); ``explain``: cycles
    write pending reasons (``CycleResult.pending``) for them; ``tokens``: which tokens each
    demand series counts (``TOKENS``, for the result's ``roles``; default both)."""
    t_wall = time.perf_counter()
    pools = [serving] if isinstance(serving, Job) else list(serving)
    demands = [demand] if isinstance(serving, Job) else list(demand)  # type: ignore[list-item]
    if len(pools) != len(demands):
        raise XpodError(f"{len(pools)} serving job(s) but {len(demands)} demand series")
    for job in pools:
        if job.autoscale is None:
            raise XpodError(f"job {job.id}: the serving job needs an autoscale block (metric, target_per_replica)")
    sched = Scheduler(nodes, profile=profile, fabric=fabric, clock=lambda: 0.0, resizes=True)
    cost = PreemptionCost(
        checkpoint_every_s=settings.checkpoint_every_s,
        restart_s=settings.restart_s,
        notice_checkpoint_s=settings.checkpoint_s,
    )
    kinds = list(tokens) or ["both"] * len(pools)
    book = _MixBook(sched, pools, demands, kinds, training, settings, {n.name: n for n in nodes}, progress)  # type: ignore[arg-type]
    engine = Engine(sched, preemption=cost, observers=[book, *observers], explain=explain)
    for job in pools:
        engine.arrive(0.0, dataclasses.replace(job, submit_time=0.0))
    warm = settings.warmup_s
    for tj in training:
        t = warm + tj.arrive_s if tj.arrive_s > 0 else 0.0
        engine.arrive(t, dataclasses.replace(tj.job, submit_time=t), tj.work_s)
    for k in range(int(round(warm / settings.step_s)) + book.intervals):
        engine.call(k * settings.step_s, book.report)
    end = book.hour_start + book.intervals * settings.step_s
    summary = engine.run(until_s=end - 1e-9)
    return book.result(engine, end, profile_name, summary.cycles, time.perf_counter() - t_wall)


class _Pool:
    """One autoscaled serving job of the replay (a job without roles, or one role of a job with
    roles): its demand per interval and when each of its replicas serves."""

    def __init__(self, job: Job, demand: Sequence[float], step_s: float, tokens: str = "both") -> None:
        assert job.autoscale is not None
        self.job, self.demand, self.tokens = job, demand, tokens
        self.size = job.replica_tasks
        self.target = job.autoscale.target_per_replica
        # before the hour the replicas report the first minute's highest load (a trace's first
        # intervals are often a ramp of its own start, not of the service's demand)
        self.warm_load = max(demand[: max(1, int(60.0 / step_s))])
        self.ready_at: dict[int, float] = {}  # replica -> time it serves from
        self.ready_series: list[int] = []

    def needed(self, i: int) -> int:
        """Replicas interval ``i``'s demand needs at the job's target (no margin)."""
        return recommendation(self.job.autoscale, ScaleRule(), self.demand[i], 0, 10**9)  # type: ignore[arg-type]


class _MixBook:
    """The replay's observer: the serving replicas' load reports (an engine ``CALL`` every
    interval), when each replica serves, the intervals' samples and the counts of the metrics.
    A job with roles is one pool per role: an interval meets the SLO when every role's ready
    capacity meets that role's demand (a request needs both phases)."""

    def __init__(
        self,
        sched: Scheduler,
        serving: Sequence[Job],
        demand: Sequence[Sequence[float]],
        tokens: Sequence[str],
        training: Sequence[TrainingJob],
        settings: MixSettings,
        node_of: dict[str, Node],
        progress: Callable[[float, float], None] | None,
    ) -> None:
        self.sched, self.settings = sched, settings
        self.pools = {job.id: _Pool(job, d, settings.step_s, k) for job, d, k in zip(serving, demand, tokens)}
        self.intervals = min(len(d) for d in demand)
        self.node_of, self.progress = node_of, progress
        self.trace_devices = {tj.job.id: tj.devices for tj in training}
        self.trace_model = {tj.job.id: tj.job.devices.model if tj.job.devices else "" for tj in training}
        self.step = settings.step_s
        self.hour_start = settings.warmup_s  # virtual time 0 is the warm-up's start
        self.held: dict[str, dict[int, Binding]] = {}  # job -> task -> binding (the replay's own book)
        self.violations: list[str] = []
        self.training_series: list[int] = []
        self.progress_at_start: dict[str, float] = {}
        self.preemptions = self.restarts = self.shrinks = self.regrows = 0
        self.used_device_s = self.serving_device_s = 0.0

    def interval(self, t: float) -> int:
        """The hour's interval ``t`` starts (negative: the warm-up)."""
        return int(math.floor((t - self.hour_start) / self.step + 1e-9))

    def report(self, engine: Engine, t: float) -> None:
        """Each serving replica that serves reports its share of its pool's load of the interval
        that just ended (the warm-up: the first minute's highest), before this instant's cycle."""
        i = self.interval(t)
        if i == 0:
            self.progress_at_start = {jid: rec.progress_at(t) for jid, rec in engine.records.items()}
        for jid, pool in self.pools.items():
            seen = pool.demand[i - 1] if i >= 1 else pool.warm_load
            ready = sorted(r for r, at in pool.ready_at.items() if at <= t)
            for r in ready:
                self.sched.report_load(jid, r, seen / len(ready))
        if self.progress is not None and i >= 0:
            self.progress(i * self.step, self.intervals * self.step)

    def on_finished(self, engine: Engine, now: float, rec: JobRecord) -> None:
        self.held.pop(rec.job.id, None)

    def on_cycle(self, engine: Engine, now: float, result: CycleResult) -> None:
        in_hour = now >= self.hour_start - 1e-9
        pools = self.pools
        freed: set[tuple[str, int]] = set()  # devices stopped tasks gave up this cycle
        stop_delay = 0.0
        for e in result.evictions:
            for b in self.held.pop(e.job_id, {}).values():
                freed.update((b.node, d) for d in b.device_indices)
            if e.job_id in pools:
                pools[e.job_id].ready_at.clear()
            elif e.job_id in self.trace_devices:
                stop_delay = max(stop_delay, self._stop_s(e.job_id))
                self.preemptions += int(in_hour)
        resized = set()
        for rz in result.resizes:
            mine = self.held.get(rz.job_id, {})
            for task in rz.released:
                b = mine.pop(task, None)
                if b is not None:
                    freed.update((b.node, d) for d in b.device_indices)
            if rz.job_id in pools:
                pool = pools[rz.job_id]
                for task in rz.released:
                    pool.ready_at.pop(task // pool.size, None)
                continue
            resized.add(rz.job_id)
            if rz.tasks_after < rz.tasks_before:  # shrunk: its stopping tasks checkpoint first
                stop_delay = max(stop_delay, self._stop_s(rz.job_id))
                self.shrinks += int(in_hour)
            else:
                self.regrows += int(in_hour)
            if in_hour and rz.restart and rz.job_id in self.trace_devices:
                self.restarts += 1
        running = self.sched.running
        for b in result.bindings:
            rj = running.get(b.job_id)
            node = self.node_of.get(b.node)
            if node is not None and rj is not None:
                why = audit_binding(b, node, rj.job)
                if why:
                    self.violations.append(why)
            mine = self.held.setdefault(b.job_id, {})
            for other in mine.values():
                if other.node == b.node and set(other.device_indices) & set(b.device_indices):
                    self.violations.append(f"{b.job_id}: tasks {other.task} and {b.task} share a device on {b.node}")
            mine[b.task] = b
            if b.job_id in pools:
                pool = pools[b.job_id]
                delay = stop_delay if any((b.node, d) in freed for d in b.device_indices) else 0.0
                pool.ready_at[b.task // pool.size] = now + delay + self.settings.replica_startup_s
        for jid in dict.fromkeys(b.job_id for b in result.bindings):
            rec = engine.records.get(jid)
            if jid in resized or rec is None or jid not in self.trace_devices:
                continue
            if in_hour and rec.run_started_s == now and rec.first_start_s is not None and rec.first_start_s < now:
                self.restarts += 1  # started again after an eviction
        i = self.interval(now)
        if 0 <= i < self.intervals and abs(now - (self.hour_start + i * self.step)) < 1e-6:
            self._sample(now)

    def _stop_s(self, job_id: str) -> float:
        """How long a stopping training task holds its devices (it writes its checkpoint)."""
        rj = self.sched.running.get(job_id)
        grace = rj.job.grace_period_s if rj is not None else self.settings.checkpoint_s
        return min(self.settings.checkpoint_s, grace)

    def _sample(self, now: float) -> None:
        """The interval starting at ``now``: ready replicas, devices of training and serving."""
        for pool in self.pools.values():
            pool.ready_series.append(sum(1 for at in pool.ready_at.values() if at <= now))
        train = serve = 0
        for jid, rj in self.sched.running.items():
            n = sum(len(b.device_indices) for b in rj.bindings)
            if jid in self.pools:
                serve += n
            elif jid in self.trace_devices:
                train += n
        self.training_series.append(train)
        self.serving_device_s += serve * self.step
        self.used_device_s += (serve + train) * self.step

    @staticmethod
    def _p99(waits: list[float]) -> float:
        waits = sorted(waits)
        return waits[max(0, math.ceil(0.99 * len(waits)) - 1)] if waits else 0.0

    def _waits(self, pool: _Pool) -> list[float]:
        """For every interval whose needed replicas rise above the previous interval's: the
        time until that many of the pool's replicas are ready (the first interval counts)."""
        n, step, ready = self.intervals, self.step, pool.ready_series
        rises = [(0, pool.needed(0))] + [
            (i, pool.needed(i)) for i in range(1, n) if pool.needed(i) > pool.needed(i - 1)
        ]
        return [next(((j - i) * step for j in range(i, n) if ready[j] >= need), (n - i) * step) for i, need in rises]

    def result(self, engine: Engine, end: float, profile_name: str, cycles: int, seconds: float) -> MixResult:
        step, n = self.step, self.intervals
        pools = list(self.pools.values())

        def met(pool: _Pool, i: int) -> bool:
            return pool.ready_series[i] * pool.target >= pool.demand[i] - 1e-9

        ok = sum(1 for i in range(n) if all(met(p, i) for p in pools))
        waits = [w for p in pools for w in self._waits(p)]
        kept_s = 0.0  # device-seconds of training progress made in the hour and kept
        by_model = {m: 0.0 for m in sorted(set(self.trace_model.values()))}
        for jid, devices in self.trace_devices.items():
            rec = engine.records.get(jid)
            if rec is not None:
                kept = (rec.progress_at(end) - self.progress_at_start.get(jid, 0.0)) * devices
                kept_s += kept
                by_model[self.trace_model[jid]] += kept / 3600.0
        total = sum(len(nd.devices) for nd in self.node_of.values())
        hour = n * step
        roles = {}
        if len(pools) > 1 or pools[0].job.group is not None:
            for p in pools:
                roles[p.job.id.rsplit("/", 1)[-1]] = {
                    "slo_attainment": round(sum(1 for i in range(n) if met(p, i)) / n if n else 1.0, 4),
                    "scale_up_p99_s": round(self._p99(self._waits(p)), 1),
                    "peak_replicas": p.job.tasks // p.size,
                    "tokens": p.tokens,
                }
        return MixResult(
            profile=profile_name,
            slo_attainment=ok / n if n else 1.0,
            scale_up_p99_s=self._p99(waits),
            training_device_hours=kept_s / 3600.0,
            gang_restarts=self.restarts,
            preemptions=self.preemptions,
            shrinks=self.shrinks,
            regrows=self.regrows,
            utilisation=self.used_device_s / (total * hour) if total and hour else 0.0,
            violations=len(self.violations),
            violation_examples=self.violations[:5],
            seconds=seconds,
            devices=total,
            peak_replicas=sum(p.job.tasks // p.size for p in pools),
            serving_device_hours=self.serving_device_s / 3600.0,
            cycles=cycles,
            curve_t=[k * step for k in range(n)],
            # a job with roles: replicas of every role summed
            curve_demand=[sum(p.demand[i] / p.target for p in pools) for i in range(n)],
            curve_ready=[sum(p.ready_series[i] for p in pools) for i in range(n)],
            curve_training=self.training_series,
            roles=roles,
            training_by_model=by_model,
        )


# ------------------------------------------------------------------------------ files

#: the baseline profiles shipped with the replay, in scheduler/sim/profiles/ (static-partition.yaml, reactive-hpa.yaml)
BASELINES = ("static-partition", "reactive-hpa")


def baseline_profile(name: str) -> Profile:
    """A shipped baseline profile by name (``BASELINES``)."""
    from importlib import resources

    from ..core.profile import load_profile

    if name not in BASELINES:
        raise XpodError(f"profile {name!r}: not a shipped baseline ({', '.join(BASELINES)}); give a file")
    return load_profile(str(resources.files("xpod.scheduler.sim") / "profiles" / f"{name}.yaml"))


def profiles_to_compare() -> list[tuple[str, Profile]]:
    """The default profile and the shipped baselines, in that order (``xpod replay mix``'s default)."""
    from ..core.profile import default_profile

    return [("default", default_profile())] + [(n, baseline_profile(n)) for n in BASELINES]


def serving_job_from_file(path: str, peak_replicas: int) -> Job:
    """The serving job of a ServingJob file without roles (``serving_jobs_from_file``)."""
    jobs = serving_jobs_from_file(path, peak_replicas)
    if len(jobs) != 1 or jobs[0].group is not None:
        raise XpodError(f"{path}: spec.roles: a job with roles is several serving jobs (serving_jobs_from_file)")
    return jobs[0]


def serving_jobs_from_file(path: str, peak_replicas: int) -> list[Job]:
    """The serving job of a ServingJob file (checked like ``xpod job validate``), or its roles
    (every one with ``autoscale``), each with its max replicas set to ``peak_replicas`` (its
    min kept, at most the peak)."""
    from xpod.scheduler import jobspec

    from ..core.spec import CORE_KEYS, parse_job, parse_roles

    doc = jobspec.load_job_file(path).document
    if doc.get("kind") != "ServingJob":
        raise XpodError(f"{path}: kind: {doc.get('kind')!r}: the serving job of a mix is a ServingJob")
    spec = {k: v for k, v in doc["spec"].items() if k in CORE_KEYS}
    name = doc["metadata"]["name"]
    if "roles" in spec:
        jobs = parse_roles({**spec, "kind": "serving"}, source=path, job_id=name)
    else:
        jobs = [parse_job({**spec, "kind": "serving"}, source=path, job_id=name)]
    for i, job in enumerate(jobs):
        if job.autoscale is None:
            field = f"spec.roles[{i}].autoscale" if job.group is not None else "spec.autoscale"
            raise XpodError(f"{path}: {field}: missing (metric, target_per_replica): the mix follows its demand")
    if peak_replicas < 1:
        raise XpodError(f"--peak-replicas: {peak_replicas} must be >= 1")
    out = []
    for job in jobs:
        size = job.replica_tasks
        lo = min(job.min_required // size, peak_replicas)
        out.append(dataclasses.replace(job, tasks=peak_replicas * size, min_tasks=lo * size))
    return out


def run_mix(
    cluster: str,
    serving_trace: str,
    serving_job: str,
    peak_replicas: int,
    training_trace: str,
    profile: Profile,
    profile_name: str,
    settings: MixSettings = MixSettings(),
    progress: Callable[[float, float], None] | None = None,
    role_tokens_text: str | None = None,
) -> MixResult:
    """``xpod replay mix``: read the files (one ``XpodError`` line on bad input) and replay.

    A serving job with roles: each role's load is the trace's load in the role's metric, of the
    tokens ``role_tokens_text`` (``--role-tokens``, ``ROLE=prompt|generated|both,...``; None:
    ``DEFAULT_ROLE_TOKENS``) gives the role (``role_tokens``), each scaled so that its own peak
    needs ``peak_replicas`` of the role's replicas. The training runs on every device model of
    the cluster, the jobs split in proportion to each model's devices (``split_models``)."""
    from ..core.from_cluster import load_inventory

    nodes, fabric = load_inventory(cluster)
    jobs = serving_jobs_from_file(serving_job, peak_replicas)
    tokens = role_tokens(jobs, role_tokens_text)
    requests = read_serving_trace(serving_trace)
    # scaled by the peak of the trace's first hour (a shorter replay sees part of that hour)
    span = min(3600.0, max(t for t, _, _ in requests) + settings.step_s)
    demands = []
    for job, kind in zip(jobs, tokens):
        assert job.autoscale is not None
        metric = job.autoscale.metric.value
        whole = demand_series(requests, metric, max(span, settings.hour_s), settings.step_s, kind)
        peak = max(whole)
        if peak <= 0:
            raise XpodError(f"{serving_trace}: no load in the first hour")
        scale = peak_replicas * job.autoscale.target_per_replica / peak
        demands.append([v * scale for v in whole[: int(math.ceil(settings.hour_s / settings.step_s))]])
    models = training_models(nodes)
    counts = {m.model: m.devices for m in models}
    for i, job in enumerate(jobs):
        if not counts.get(_model(job)):
            field = "spec.devices.model" if job.group is None else f"spec.roles[{i}].devices.model"
            raise XpodError(f"{serving_job}: {field}: {_model(job) or 'none'}: no node of {cluster} has that model")
    training = read_training(training_trace, settings, models)
    if jobs[0].group is None:
        return replay_mix(nodes, fabric, jobs[0], demands[0], training, profile, profile_name, settings, progress)
    return replay_mix(nodes, fabric, jobs, demands, training, profile, profile_name, settings, progress, tokens=tokens)


def _model(job: Job) -> str:
    return job.devices.model if job.devices and job.devices.model else ""
