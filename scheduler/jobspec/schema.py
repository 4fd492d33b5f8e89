"""The JSON Schema (draft 2020-12) of each job kind: the one source of a job file's structure.

A job file is a Kubernetes-style envelope (``apiVersion``, ``kind``, ``metadata``) around
``spec``, which holds what the scheduler places (``tasks``, ``devices``, ``within``, ...: the
core's job spec, ``scheduler/core/spec.py``) and what the node agent runs (``command``, ``env``,
``workdir``, ``restart``, ``simulate``, a ServingJob's ``moe``: ``scheduler/contract.py``).
Unknown keys are errors.
``schemas/<Kind>.json`` are these schemas written out (``xpod job schema KIND``) for editors; a
test keeps them identical to ``schema(kind)`` and the keys identical to what the parsers read.
"""

from __future__ import annotations

from typing import Any

from xpod.hal.cluster_schema import schema_object as _obj
from xpod.hal.yamldoc import fmt_path
from xpod.scheduler.contract import COUNTER_NAME_PATTERN, DEFAULT_SIMULATED_DURATION_S, MAX_LOAD_COUNTERS

API_VERSION = "xpod/v1"
#: job kinds as the envelope names them, and as the core's spec names them
KINDS = {"TrainingJob": "training", "ServingJob": "serving", "BatchJob": "batch"}
#: metadata.name: 1..63 of a-z, 0-9, '-', '.', starting and ending alphanumeric
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"
#: a byte quantity: bytes, or a number with K/M/G/T/P (powers of 1000) or Ki/Mi/Gi/Ti/Pi (of 1024)
SIZE_PATTERN = r"^(\d+(?:\.\d+)?)\s*([KMGTP]i?)?B?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
CPU_PATTERN = r"^\d+m$"
#: ``within``: a tier of the cluster's fabric (node, group, a topology level, a tier's name) or any
TIER_PATTERN = r"^[a-z][a-z0-9._-]*$"
#: a role's name (``roles[].name``)
ROLE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"

_COUNT = {"type": "integer", "minimum": 1}
_TEXT = {"type": "string", "minLength": 1}
_SIZE = {"type": ["integer", "string"], "minimum": 0, "pattern": SIZE_PATTERN}
_SECONDS = {"type": "number", "minimum": 0}


def _d(base: dict[str, Any], description: str) -> dict[str, Any]:
    return {**base, "description": description}


def _command(description: str) -> dict[str, Any]:
    return _d({"type": "array", "minItems": 1, "items": {"type": "string"}, "prefixItems": [_TEXT]}, description)


def _env(description: str) -> dict[str, Any]:
    return _d(
        {"type": "object", "additionalProperties": {"type": "string"}, "propertyNames": {"pattern": ENV_NAME_PATTERN}},
        description,
    )


def _autoscale() -> dict[str, Any]:
    """A ServingJob's (or one of its roles') ``autoscale`` block."""
    return _obj(
        {
            "metric": _d({"enum": ["tokens_per_s", "requests_per_s"]}, "the load replicas report"),
            "target_per_replica": _d(
                {"type": "number", "exclusiveMinimum": 0}, "load one replica serves at its target (> 0)"
            ),
            "scale_up_after_s": _d(_SECONDS, "a rise must last this long before replicas are added (default 0)"),
            "scale_down_after_s": _d(
                _SECONDS,
                "a trough must last this long before replicas go (default 300); the freed devices "
                "go back to the training that lent them",
            ),
            "lead_s": _d(
                _SECONDS,
                "forecast rule: seconds from a scale-up decision to a serving replica (load report age, "
                "freeing devices, model load); the spare capacity covers the rises seen within it (default 40)",
            ),
            "basis_s": _d(
                _SECONDS, "forecast rule: the highest load of this trailing window is its basis (default 600)"
            ),
            "history_s": _d(
                {"type": "number", "exclusiveMinimum": 0},
                "forecast rule: rises of the last this many seconds size the spare capacity (default 1800)",
            ),
            "rise_quantile": _d(
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "forecast rule: which quantile of those rises (default 1.0: the largest)",
            ),
            "min_rises_s": _d(
                _SECONDS,
                "forecast rule: until rises span this long, keep at least the profile's fixed margin (default 300)",
            ),
            "slo_attainment": _d(
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "error budget: the share of slo_interval_s intervals of any slo_window_s whose ready replicas "
                "cover the load; the forecast rule spends the rest (rise_quantile) only while one uncovered "
                "rise still fits it, else provisions for the largest rise (default: none, rise_quantile as given)",
            ),
            "slo_window_s": _d(
                {"type": "number", "exclusiveMinimum": 0},
                "error budget: the window short intervals are counted over (default 3600)",
            ),
            "slo_interval_s": _d(
                {"type": "number", "exclusiveMinimum": 0},
                "error budget: the interval a report above its replicas' capacity marks short (default 10)",
            ),
            "counters": _d(
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_LOAD_COUNTERS,
                    "items": {"type": "string", "pattern": COUNTER_NAME_PATTERN},
                },
                "the Prometheus counters on the replica's /metrics whose summed rate is its load "
                "(default: SGLang's and vLLM's token or request counters for the metric)",
            ),
        },
        required=("metric", "target_per_replica"),
        description="replicas follow the load they report, between replicas.min and replicas.max",
    )


def _replicas(description: str) -> dict[str, Any]:
    return _d(
        {"oneOf": [_COUNT, _obj({"min": _COUNT, "max": _COUNT}, description="between min and max replicas")]},
        description,
    )


def _spec(kind: str) -> dict[str, Any]:
    devices = _obj(
        {
            "count": _d({**_COUNT, "maximum": 4096}, "devices per task (1 with milli < 1000 for a fraction)"),
            "model": _d(_TEXT, "a device model id of the catalog (xpod devices, hal/catalog.yaml), e.g. ascend-910c"),
            "vendor": _d(_TEXT, "any model of this vendor: ascend, cambricon, mthreads, hygon, cuda, cpu"),
            "min_memory": _d(_SIZE, "capability request: at least this much device memory (e.g. 64Gi)"),
            "min_bf16_tflops": _d({"type": "number", "minimum": 0}, "capability request: at least this BF16 TFLOPS"),
            "milli": _d({"type": "integer", "minimum": 1, "maximum": 1000}, "a fraction of one device, in 1/1000"),
            "memory": _d(_SIZE, "the memory slice of that fraction (with milli < 1000)"),
        },
        description="per task; omit for a CPU-only job",
    )
    props: dict[str, Any] = {}
    if kind != "BatchJob":
        props["roles"] = _d(
            {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "name": _d(
                            {"type": "string", "pattern": ROLE_PATTERN},
                            "the role's name (e.g. prefill, decode, actor, learner)",
                        ),
                        "tasks": _d(
                            _COUNT,
                            "tasks of this role (a gang: all or none, with the other roles); with replicas, "
                            "the tasks of one replica",
                        ),
                        "devices": devices,
                        "cpu": _d(
                            {"type": ["number", "string"], "minimum": 0, "pattern": CPU_PATTERN}, "cores per task"
                        ),
                        "memory": _d(_SIZE, "host memory per task (e.g. 64Gi)"),
                        "within": _d({"type": "string", "pattern": TIER_PATTERN}, "the fabric tier its tasks share"),
                        "command": _command("argv of every task of this role"),
                        "env": _env("extra environment variables of this role's tasks"),
                        "workdir": _d(_TEXT, "current directory of this role's tasks"),
                        **(
                            {
                                "replicas": _replicas(
                                    "replicas of this role, each a gang of its tasks: N, or {min, max}; its min "
                                    "replicas start with the other roles, then it scales on its own load"
                                ),
                                "autoscale": _autoscale(),
                            }
                            if kind == "ServingJob"
                            else {}
                        ),
                    },
                    required=("name",),
                )
                | (
                    {}
                    if kind == "ServingJob"
                    else {
                        "x-elsewhere": {
                            key: f"only a ServingJob's roles have {key}; a {kind} role is one gang of its tasks"
                            for key in ("replicas", "autoscale")
                        }
                    }
                ),
            },
            "several roles, each with its own devices, tasks and command, placed together whole or not at all "
            "(then no tasks, replicas or devices above the roles)",
        )
    if kind == "ServingJob":
        props["replicas"] = _replicas("replicas: N, or {min, max}")
        props["tasks_per_replica"] = _d(
            {**_COUNT, "maximum": 4096}, "tasks of one replica, placed together (e.g. 2 nodes of 16 dies)"
        )
        props["moe"] = _obj(
            {
                "experts": _d({"type": "integer", "minimum": 2, "maximum": 4096}, "routed experts per MoE layer"),
                "layers": _d({"type": "integer", "minimum": 1, "maximum": 1024}, "MoE layers"),
                "slots_per_device": _d(
                    {"type": "integer", "minimum": 1, "maximum": 4096},
                    "expert weights per device per layer (every device of a replica alike)",
                ),
                "rebalance": _obj(
                    {
                        "every_s": _d({"type": "number", "minimum": 0.5, "maximum": 86400}, "seconds between re-plans"),
                        "max_moves": _d(
                            {"type": "integer", "minimum": 0, "maximum": 10**7}, "expert weights loaded per re-plan"
                        ),
                    },
                    description="the live loop: re-plan every every_s from the replicas' loads",
                ),
            },
            required=("experts", "layers", "slots_per_device"),
            description="expert placement of an MoE model, re-planned live (docs/moe.md)",
        )
        props["autoscale"] = _autoscale()
    else:
        props["tasks"] = _d(_COUNT, "tasks, all or nothing (a gang)")
        if kind == "TrainingJob":
            props["min_tasks"] = _d(_COUNT, "elastic: runs with at least this many tasks")
    props.update(
        {
            "devices": devices,
            "cpu": _d(
                {"type": ["number", "string"], "minimum": 0, "pattern": CPU_PATTERN}, "cores per task: 8, 0.5 or '500m'"
            ),
            "memory": _d(_SIZE, "host memory per task (e.g. 64Gi)"),
            "within": _d(
                {"type": "string", "pattern": TIER_PATTERN},
                "the fabric tier the tasks share: node, group, supernode, rack, a tier's name, or any (default)",
            ),
            "queue": _d(_TEXT, "queue name (default: default)"),
            "priority_class": _d(_TEXT, "low, normal (default), high, system"),
            "expected_duration_seconds": _d(
                {"type": "number", "exclusiveMinimum": 0}, "estimated run time; lets backfill use reserved devices"
            ),
            "domain_block": _d(
                _COUNT, "devices per block, each block inside one domain (Ascend 910C: the logical super-pod)"
            ),
            "grace_period_s": _d(
                _SECONDS,
                "seconds between SIGTERM (with the XPOD_PREEMPT_NOTICE file touched) and SIGKILL when a task "
                "must stop (default 30)",
            ),
            "node_selector": _d(
                {"type": "object", "additionalProperties": {"type": "string"}, "propertyNames": {"minLength": 1}},
                'labels a node must carry, each with this value (e.g. {xpod/simulated: "false"})',
            ),
            "command": _command("argv of every task (no shell), e.g. [python, train.py]"),
            "env": _env("extra environment variables (string values)"),
            "workdir": _d(_TEXT, "current directory of every task"),
            "restart": _obj(
                {"max_restarts": _d({"type": "integer", "minimum": -1}, "restarts after failures (-1 = unlimited)")},
                description="what happens when a task fails",
            ),
            "simulate": _obj(
                {
                    "duration_s": _d(
                        _SECONDS,
                        f"a simulated task succeeds after this long (default {DEFAULT_SIMULATED_DURATION_S:g})",
                    ),
                    "fail_after_s": _d(_SECONDS, "... or fails after this long"),
                    "exit_code": _d({"type": "integer", "minimum": 1, "maximum": 255}, "exit code of that failure"),
                },
                description="how a simulated node plays each task",
            ),
        }
    )
    return _obj(props, description="what to place and what to run")


_PATTERN_WORDS = {
    NAME_PATTERN: "must be 1..63 of a-z, 0-9, '-', '.', starting and ending with a letter or digit",
    SIZE_PATTERN: "is not a size: give bytes, or a number with K, M, G, T (x1000) or Ki, Mi, Gi, Ti (x1024), e.g. 64Gi",
    CPU_PATTERN: "is not a number of cores: give 8, 0.5 or '500m'",
    TIER_PATTERN: "is not a tier name: node, group, a topology level (supernode, rack), a tier's name, or any",
    ROLE_PATTERN: "is not a role name: 1..32 of a-z, 0-9, '-', starting and ending with a letter or digit",
    ENV_NAME_PATTERN: "is not an environment variable name (letters, digits, '_'; not starting with a digit)",
}


def pattern_message(path: tuple, value: object, pattern: str) -> str | None:
    """What a value failing one of these schemas' patterns should have been (``hal.yamldoc``)."""
    words = _PATTERN_WORDS.get(pattern)
    if words is None:
        return None
    return f"{fmt_path(path)}: {value!r} {words}"


def schema(kind: str) -> dict[str, Any]:
    """The schema of one job kind (``TrainingJob``, ``ServingJob`` or ``BatchJob``), a fresh copy."""
    if kind not in KINDS:
        raise KeyError(kind)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"xpod {kind}",
        **_obj(
            {
                "apiVersion": _d({"const": API_VERSION}, "optional; only xpod/v1"),
                "kind": {"const": kind},
                "metadata": _obj(
                    {
                        "name": _d(
                            {"type": "string", "pattern": NAME_PATTERN},
                            "1..63 of a-z, 0-9, '-', '.', starting and ending alphanumeric",
                        ),
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    required=("name",),
                ),
                "spec": _spec(kind),
            },
            required=("kind", "metadata", "spec"),
        ),
    }


def all_kinds_schema() -> dict[str, Any]:
    """One schema for every job file: the kind's own schema, chosen by ``kind``."""
    defs = {}
    for kind in KINDS:
        one = schema(kind)
        del one["$schema"]
        defs[kind] = one
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "xpod job",
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": list(KINDS)}},
        "allOf": [
            {"if": {"properties": {"kind": {"const": kind}}}, "then": {"$ref": f"#/$defs/{kind}"}} for kind in KINDS
        ],
        "$defs": defs,
    }


def envelope_schema() -> dict[str, Any]:
    """What every job file has before its kind is known (to report a bad or missing kind)."""
    return {
        "type": "object",
        "properties": {"kind": {"enum": list(KINDS)}},
        "required": ["kind"],
    }
