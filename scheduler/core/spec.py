"""Job documents (dicts from YAML, JSON or protobuf Struct) -> ``Job``.

Shape (every key but ``kind`` optional; unknown keys are errors)::

    id: train-1                      # the service may assign one
    kind: training | serving | batch
    tasks: 4                         # training / batch: tasks; serving: use replicas
    min_tasks: 2                     # elastic minimum (training)
    replicas: {min: 2, max: 4}       # serving only
    tasks_per_replica: 2             # serving only: a replica of 2 tasks (e.g. 2 nodes of 16 dies)
    devices:                         # per task; omit for CPU-only
      count: 16                      # whole devices, or 1 with milli < 1000
      model: ascend-910c             # or vendor: / capability: min_memory + min_bf16_tflops
      vendor: ascend
      min_memory: 64Gi
      min_bf16_tflops: 300
      milli: 500                     # a fraction of one device (milli-devices)
      memory: 16Gi                   # memory slice of that fraction
    cpu: 8                           # cores (number) or "8000m"
    memory: 64Gi
    within: supernode                # a tier of the cluster's fabric: node, group (a device group
                                     # inside a node), a topology level (supernode, rack) or a
                                     # tier's name (ub-l2), or any (the default)
    queue: default
    priority_class: normal
    expected_duration_seconds: 3600  # estimated starts; backfill onto devices reserved for a
                                     # blocked job needs it (without it, only elsewhere)
    domain_block: 64                 # devices per block, each block inside one domain (the ascend
                                     # plugin: MindCluster's sp-block, a 910C logical super-pod)
    node_selector: {xpod/simulated: "false"}   # labels a node must carry (each with this value)
    autoscale:                       # serving only: replicas follow the load they report
      metric: tokens_per_s           # or requests_per_s
      target_per_replica: 2000       # load one replica serves (> 0)
      scale_up_after_s: 0            # a rise must last this long (default 0)
      scale_down_after_s: 300        # a trough must last this long (default 300)
      lead_s: 40                     # forecast rule: scale-up decision to a serving replica (default 40)
      basis_s: 600                   # its basis: the highest load of this window (default 600)
      history_s: 1800                # rises within lead_s seen this long size the spare (default 1800)
      rise_quantile: 1.0             # which rise (1.0: the largest; default 1.0)
      min_rises_s: 300               # until then at least the profile's fixed margin (default 300)
      slo_attainment: 0.995          # error budget: rise_quantile only while the budget affords a
                                     # miss, else the largest rise (default: none, rise_quantile as given)
      slo_window_s: 3600             # the window the budget is counted over (default 3600)
      slo_interval_s: 10             # the interval a short load report spends (default 10)
      counters: [myserver:tokens_total]  # the agent's: the /metrics counters whose rate is the
                                     # load (default: SGLang's and vLLM's for the metric)
    grace_period_s: 30               # SIGTERM (and the notice file) to SIGKILL when a task must stop
    roles:                           # several roles, placed together whole or not at all
      - name: prefill                # (``parse_roles``; then no tasks/replicas/devices above)
        tasks: 2
        devices: {count: 8, model: ascend-910b3}
      - name: decode                 # a ServingJob's role may have replicas (each a gang of
        tasks: 1                     # its tasks) and autoscale, as a role-less ServingJob: its
        replicas: {min: 1, max: 8}   # min replicas are placed with the other roles, then it
        autoscale: {metric: tokens_per_s, target_per_replica: 4000}   # scales on its own load
        devices: {count: 16, model: ascend-910c}

Every error is an ``XpodError`` of one line naming the field: ``job train-1: devices.count: ...``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from xpod.hal.errors import XpodError

from .model import CLUSTER, DEFAULT_GRACE_PERIOD_S, MILLI, Autoscale, DeviceRequest, Job, JobKind, LoadMetric

_TOP = {
    "id",
    "kind",
    "tasks",
    "min_tasks",
    "replicas",
    "devices",
    "cpu",
    "memory",
    "within",
    "queue",
    "priority_class",
    "expected_duration_seconds",
    "domain_block",
    "name",
    "tasks_per_replica",
    "node_selector",
    "autoscale",
    "grace_period_s",
    "roles",
}
#: the keys of a job document the core reads (a job file's spec holds these and the agent's)
CORE_KEYS = frozenset(_TOP)
#: the keys of one role (a job with roles); command, env and workdir are the node agent's
ROLE_KEYS = frozenset({"name", "tasks", "devices", "cpu", "memory", "within", "command", "env", "workdir"})
#: what a ServingJob's role may set besides: its replicas (each a gang of the role's tasks) and autoscale
SERVING_ROLE_KEYS = frozenset({"replicas", "autoscale"})
#: what a job with roles sets per role, never above them
_PER_ROLE: tuple[str, ...] = ("tasks", "min_tasks", "replicas", "tasks_per_replica", "devices", "cpu", "memory")
_PER_ROLE += ("within", "domain_block", "autoscale")
_ROLE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_AUTOSCALE = {
    "metric",
    "target_per_replica",
    "scale_up_after_s",
    "scale_down_after_s",
    "lead_s",
    "basis_s",
    "history_s",
}
# counters: the node agent's (``contract.load_counters``), checked by the job schema; the core reads none
_AUTOSCALE |= {"rise_quantile", "min_rises_s", "counters", "slo_attainment", "slo_window_s", "slo_interval_s"}
_DEV = {"count", "model", "vendor", "min_memory", "min_bf16_tflops", "milli", "memory"}
_LEVEL = re.compile(r"^[a-z][a-z0-9._-]*$")
_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP]i?)?B?$")
_SCALE = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


class _Err:
    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, field: str, msg: str) -> XpodError:
        return XpodError(f"{self.where}: {field}: {msg}")


def _int(err: _Err, field: str, v: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise err(field, f"{v!r} is not a whole number")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise err(field, f"{v} must be {'>= ' + str(lo) if hi is None else f'in {lo}..{hi}'}")
    return v


def _bytes(err: _Err, field: str, v: Any) -> int:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v < 0 or v != int(v):
            raise err(field, f"{v!r} is not a byte count")
        return int(v)
    m = _BYTES.match(str(v).strip())
    if not m:
        raise err(field, f"{v!r} is not a size (use bytes or 64Gi, 80G, 512Mi)")
    return int(float(m.group(1)) * _SCALE[m.group(2)])


def _cpu(err: _Err, v: Any) -> int:
    if isinstance(v, str) and v.endswith("m"):
        return _int(err, "cpu", int(v[:-1]) if v[:-1].isdigit() else v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise err("cpu", f"{v!r} is not a number of cores (e.g. 8, 0.5 or '500m')")
    return int(round(float(v) * 1000))


def _enum(err: _Err, field: str, cls, v: Any):
    try:
        return cls(v)
    except ValueError:
        raise err(field, f"{v!r} is not one of {', '.join(e.value for e in cls)}") from None


def parse_job(doc: Mapping[str, Any], source: str = "job", job_id: str | None = None) -> Job:
    """Build a ``Job`` from a document; ``job_id`` overrides ``doc['id']`` (service-assigned)."""
    if not isinstance(doc, Mapping):
        raise XpodError(f"{source}: a job is a mapping (got {type(doc).__name__})")
    jid = job_id or doc.get("id") or doc.get("name")
    err = _Err(f"{source}" + (f" ({jid})" if jid and source != f"job {jid}" else ""))
    extra = sorted(set(doc) - _TOP)
    if extra:
        raise err(extra[0], f"unknown key (allowed: {', '.join(sorted(_TOP))})")
    if not jid or not isinstance(jid, str):
        raise err("id", "missing: give the job an id")
    if "roles" in doc:
        raise err("roles", "a job with roles is one job per role: read it with parse_roles")
    if "kind" not in doc:
        raise err("kind", "missing (training, serving or batch)")
    kind = _enum(err, "kind", JobKind, doc["kind"])
    min_tasks = None
    per_replica = 1
    if kind is JobKind.SERVING:
        if "tasks" in doc or "min_tasks" in doc:
            raise err("tasks", "a serving job sets replicas: {min, max} instead")
        r = doc.get("replicas", 1)
        if isinstance(r, Mapping):
            bad = sorted(set(r) - {"min", "max"})
            if bad:
                raise err(f"replicas.{bad[0]}", "unknown key (allowed: min, max)")
            tasks = _int(err, "replicas.max", r.get("max", r.get("min", 1)), 1)
            min_tasks = _int(err, "replicas.min", r.get("min", tasks), 1)
            if min_tasks > tasks:
                raise err("replicas.min", f"{min_tasks} is above replicas.max ({tasks}): give min <= max")
        else:
            tasks = _int(err, "replicas", r, 1)
        # a replica larger than one node is several tasks placed together (each task one node's
        # share); Job.tasks counts tasks, so the replica counts scale by the replica's size
        per_replica = _int(err, "tasks_per_replica", doc.get("tasks_per_replica", 1), 1, 4096)
        tasks *= per_replica
        if min_tasks is not None:
            min_tasks *= per_replica
    else:
        if "tasks_per_replica" in doc:
            raise err("tasks_per_replica", f"only serving jobs have replicas; a {kind.value} job sets tasks")
        if "replicas" in doc:
            raise err("replicas", f"only serving jobs have replicas; a {kind.value} job sets tasks")
        tasks = _int(err, "tasks", doc.get("tasks", 1), 1)
        if "min_tasks" in doc:
            if kind is not JobKind.TRAINING:
                raise err("min_tasks", "only training jobs are elastic")
            min_tasks = _int(err, "min_tasks", doc["min_tasks"], 1, tasks)
    devices = None
    d = doc.get("devices")
    if d is not None:
        if not isinstance(d, Mapping):
            raise err("devices", "a mapping: {count, model | vendor | min_memory/min_bf16_tflops, milli, memory}")
        bad = sorted(set(d) - _DEV)
        if bad:
            raise err(f"devices.{bad[0]}", f"unknown key (allowed: {', '.join(sorted(_DEV))})")
        count = _int(err, "devices.count", d.get("count", 1), 1, 4096)
        milli = _int(err, "devices.milli", d.get("milli", MILLI), 1, MILLI)
        if milli < MILLI and count != 1:
            raise err("devices.milli", f"a fraction of a device ({milli}m) needs count: 1, not {count}")
        if "memory" in d and milli == MILLI:
            raise err(
                "devices.memory",
                "a memory slice goes with a fraction (milli < 1000); whole devices bring all their memory",
            )
        for key in ("model", "vendor"):
            if key in d and (not isinstance(d[key], str) or not d[key]):
                raise err(f"devices.{key}", f"{d[key]!r} is not a name")
        tflops = d.get("min_bf16_tflops", 0)
        if isinstance(tflops, bool) or not isinstance(tflops, (int, float)) or tflops < 0:
            raise err("devices.min_bf16_tflops", f"{tflops!r} is not a non-negative number")
        devices = DeviceRequest(
            count=count,
            vendor=d.get("vendor"),
            model=d.get("model"),
            min_memory_bytes=_bytes(err, "devices.min_memory", d.get("min_memory", 0)),
            min_bf16_tflops=float(tflops),
            milli=milli,
            memory_bytes=_bytes(err, "devices.memory", d.get("memory", 0)),
        )
    within = doc.get("within", CLUSTER)
    if not isinstance(within, str) or not _LEVEL.match(within):
        raise err("within", f"{within!r} is not a tier name (node, supernode, any, ...)")
    dur = doc.get("expected_duration_seconds")
    if dur is not None and (isinstance(dur, bool) or not isinstance(dur, (int, float)) or dur <= 0):
        raise err("expected_duration_seconds", f"{dur!r} must be a positive number of seconds")
    block = doc.get("domain_block")
    if block is not None:
        block = _int(err, "domain_block", block, 1)
        if devices is None:
            raise err("domain_block", "only for device jobs (devices per block)")
    for key in ("queue", "priority_class"):
        if key in doc and (not isinstance(doc[key], str) or not doc[key]):
            raise err(key, f"{doc[key]!r} is not a name")
    selector = doc.get("node_selector", {})
    if not isinstance(selector, Mapping):
        raise err("node_selector", "a mapping of label names to the values a node must carry")
    for k, v in selector.items():
        if not isinstance(k, str) or not k:
            raise err("node_selector", f"{k!r} is not a label name")
        if not isinstance(v, str):
            hint = " (YAML reads true/false unquoted as a boolean: quote it)" if isinstance(v, bool) else ""
            raise err(f"node_selector.{k}", f"{v!r} is not text{hint}")
    autoscale = _autoscale(err, kind, doc.get("autoscale"))
    if autoscale is not None and (min_tasks is None or min_tasks == tasks):
        fixed = tasks // per_replica
        raise err("autoscale", f"replicas are fixed at {fixed}: give replicas: {{min, max}} with min < max to scale")
    grace = _seconds(err, "grace_period_s", doc.get("grace_period_s", DEFAULT_GRACE_PERIOD_S))
    return Job(
        id=jid,
        kind=kind,
        tasks=tasks,
        devices=devices,
        cpu_milli=_cpu(err, doc.get("cpu", 0)),
        memory_bytes=_bytes(err, "memory", doc.get("memory", 0)),
        min_tasks=min_tasks,
        within=within,
        queue=doc.get("queue", "default"),
        priority_class=doc.get("priority_class", "normal"),
        expected_duration_seconds=float(dur) if dur is not None else None,
        domain_block=block,
        replica_tasks=per_replica,
        node_selector=tuple(sorted(selector.items())),
        autoscale=autoscale,
        grace_period_s=grace,
    )


def _seconds(err: _Err, field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
        raise err(field, f"{v!r} must be a number of seconds >= 0")
    return float(v)


def _autoscale(err: _Err, kind: JobKind, a: Any) -> Autoscale | None:
    if a is None:
        return None
    if kind is not JobKind.SERVING:
        raise err("autoscale", f"only serving jobs scale with their load; a {kind.value} job sets tasks")
    if not isinstance(a, Mapping):
        raise err("autoscale", "a mapping: {metric, target_per_replica, scale_up_after_s, scale_down_after_s, ...}")
    bad = sorted(set(a) - _AUTOSCALE)
    if bad:
        raise err(f"autoscale.{bad[0]}", f"unknown key (allowed: {', '.join(sorted(_AUTOSCALE))})")
    for key in ("metric", "target_per_replica"):
        if key not in a:
            raise err(f"autoscale.{key}", "missing")
    metric = _enum(err, "autoscale.metric", LoadMetric, a["metric"])
    target = a["target_per_replica"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < float("inf"):
        raise err(
            "autoscale.target_per_replica", f"{target!r} must be a number > 0 ({metric.value} one replica serves)"
        )
    d = Autoscale(metric, float(target))
    secs = {
        k: _seconds(err, f"autoscale.{k}", a.get(k, getattr(d, k)))
        for k in ("scale_up_after_s", "scale_down_after_s", "lead_s", "basis_s", "history_s", "min_rises_s")
    }
    if secs["history_s"] <= 0:
        raise err("autoscale.history_s", f"{a['history_s']!r} must be > 0 (seconds of rises kept)")
    if secs["min_rises_s"] > secs["history_s"]:
        raise err(
            "autoscale.min_rises_s",
            f"{secs['min_rises_s']:g} must be <= history_s ({secs['history_s']:g}): rises are kept only that long,"
            " so the forecast rule would never take over",
        )
    q = a.get("rise_quantile", d.rise_quantile)
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise err("autoscale.rise_quantile", f"{q!r} must be a number in (0, 1] (1: the largest rise seen)")
    slo = a.get("slo_attainment", d.slo_attainment)
    if slo is not None and (isinstance(slo, bool) or not isinstance(slo, (int, float)) or not 0 < slo <= 1):
        raise err(
            "autoscale.slo_attainment", f"{slo!r} must be a number in (0, 1] (0.995: 0.5 % of intervals may go short)"
        )
    for key in ("slo_window_s", "slo_interval_s"):
        secs[key] = _seconds(err, f"autoscale.{key}", a.get(key, getattr(d, key)))
        if secs[key] <= 0:
            raise err(f"autoscale.{key}", f"{a[key]!r} must be > 0 seconds")
    if secs["slo_interval_s"] > secs["slo_window_s"]:
        raise err(
            "autoscale.slo_interval_s",
            f"{secs['slo_interval_s']:g} must be <= slo_window_s ({secs['slo_window_s']:g}): the window counts intervals",
        )
    return Autoscale(
        metric,
        float(target),
        scale_up_after_s=secs["scale_up_after_s"],
        scale_down_after_s=secs["scale_down_after_s"],
        lead_s=secs["lead_s"],
        basis_s=secs["basis_s"],
        history_s=secs["history_s"],
        rise_quantile=float(q),
        min_rises_s=secs["min_rises_s"],
        slo_attainment=None if slo is None else float(slo),
        slo_window_s=secs["slo_window_s"],
        slo_interval_s=secs["slo_interval_s"],
    )


def parse_roles(doc: Mapping[str, Any], source: str = "job", job_id: str | None = None) -> list[Job]:
    """The roles of a job with ``roles`` as one ``Job`` each (id ``JOB/ROLE``, a gang of its
    ``tasks`` with its own devices), tied by ``Job.group`` so that they are placed together,
    all of them whole or none. The job's queue, priority class, grace period, node selector and
    expected duration apply to every role. A ServingJob's role with ``replicas`` or ``autoscale``
    is a serving job whose replica is a gang of the role's ``tasks`` (``tasks_per_replica``):
    its min replicas are placed with the other roles, later it scales on its own load like a
    role-less serving job; any other role is one gang of its tasks. ``XpodError`` naming the
    field on bad input."""
    if not isinstance(doc, Mapping):
        raise XpodError(f"{source}: a job is a mapping (got {type(doc).__name__})")
    jid = job_id or doc.get("id") or doc.get("name")
    err = _Err(f"{source}" + (f" ({jid})" if jid and source != f"job {jid}" else ""))
    if not jid or not isinstance(jid, str):
        raise err("id", "missing: give the job an id")
    kind = _enum(err, "kind", JobKind, doc.get("kind"))
    if kind is JobKind.BATCH:
        raise err("roles", "a batch job has no roles (its tasks run on their own); use a TrainingJob or ServingJob")
    roles = doc.get("roles")
    if not isinstance(roles, list) or not roles:
        raise err("roles", "a list of at least one role ({name, tasks, devices, command}); leave roles out for none")
    for key in _PER_ROLE:
        if key in doc:
            raise err(key, f"set per role when the job has roles (roles[].{key})")
    shared = {k: v for k, v in doc.items() if k not in ("roles", "kind", "id", "name")}
    names: dict[str, int] = {}
    out: list[Job] = []
    for i, role in enumerate(roles):
        where = f"roles[{i}]"
        if not isinstance(role, Mapping):
            raise err(where, "a role is a mapping: {name, tasks, devices, command}")
        allowed = ROLE_KEYS | SERVING_ROLE_KEYS
        bad = sorted(set(role) - allowed)
        if bad:
            raise err(f"{where}.{bad[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
        scaled = sorted(SERVING_ROLE_KEYS & set(role))
        if scaled and kind is not JobKind.SERVING:
            raise err(
                f"{where}.{scaled[0]}",
                f"only a ServingJob's roles have replicas and scale with their load; a {kind.value} role is one "
                "gang of its tasks",
            )
        name = role.get("name")
        if not isinstance(name, str) or not _ROLE_NAME.match(name):
            raise err(f"{where}.name", f"{name!r}: a role name is 1..32 of a-z, 0-9, '-' (e.g. prefill)")
        if name in names:
            raise err(f"{where}.name", f"{name!r} is already roles[{names[name]}]")
        names[name] = i
        body = {k: v for k, v in role.items() if k in _TOP}
        body.pop("name", None)
        role_kind = "training"
        if scaled:  # replicas of a gang of the role's tasks
            per_replica = _int(err, f"{where}.tasks", body.pop("tasks", 1), 1, 4096)
            body = {**body, "replicas": body.get("replicas", 1), "tasks_per_replica": per_replica}
            role_kind = "serving"
        try:
            job = parse_job({**shared, **body, "kind": role_kind}, source=source, job_id=f"{jid}/{name}")
        except XpodError as e:
            # name the field as the role's: "spec (pd): devices.count: ..." -> roles[i].devices.count
            text = str(e)
            head = f"{err.where}: " if text.startswith(f"{err.where}: ") else None
            if head is None:
                head = text.split(": ", 1)[0] + ": "
            raise XpodError(f"{err.where}: {where}.{text[len(head) :]}") from None
        out.append(dataclasses.replace(job, group=jid, group_size=len(roles)))
    return out
