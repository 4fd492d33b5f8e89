"""The agent <-> server contract: the words both sides use, defined once (no protobuf here).

``JobKind`` (a document's ``kind`` and the core's word for it), ``DeviceRecord`` / ``NodeRecord``
(a node as an agent registers it; the server fills in the catalog facts, ``service.nodes``),
``TaskState`` (an agent's report), and the task keys of a job's ``spec`` (``command``, ``env``,
``workdir``, ``restart``, ``simulate``, ``moe``; docs/reference/job-spec.md): what a node agent
starts, checked at submission (``parse_task_fields``) so a typo is an INVALID_ARGUMENT naming the
field, never a task failing later on a node. The core (``scheduler.core.spec``) decides *where* a
job goes; these keys say *what* runs there, in which torch.distributed world (``task_worlds``,
which every node computes alike). A job with no ``command`` runs nothing on a real node: its
tasks succeed at once, or sleep ``simulate.duration_s`` when given (a trace replays alike on real
and simulated nodes).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import re
from typing import Any, Iterable, Mapping

from xpod.hal.device import Health


class JobKind(str, enum.Enum):
    """A job document's ``kind``; ``label`` is the scheduler core's (and the metrics') word."""

    TRAINING = "TrainingJob"
    SERVING = "ServingJob"
    BATCH = "BatchJob"

    @property
    def label(self) -> str:
        return self.value[: -len("Job")].lower()


def kind_label(kind: str) -> str:
    """``TrainingJob`` -> ``training``; an unknown word as it is, lower case."""
    try:
        return JobKind(kind).label
    except ValueError:
        return kind.lower()


class TaskState(str, enum.Enum):
    """An agent's report about its part of a job (all of the job's tasks on one node)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclasses.dataclass(frozen=True)
class TaskReport:
    """An agent's report about its part of a job on one node."""

    job_id: str
    node: str
    state: TaskState
    message: str = ""
    exit_code: int = 0
    failed_tasks: tuple[int, ...] = ()  # with FAILED: the failed tasks there (empty: all)


@dataclasses.dataclass(frozen=True)
class TaskAllocation:
    """One task of a job on a node: what an executor starts."""

    task: int
    devices: tuple[str, ...]  # "node/index"


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Start (``run``) or stop one job's tasks on one node, as an agent is told."""

    node: str
    job_id: str
    run: bool
    tasks: tuple[TaskAllocation, ...] = ()  # the job's tasks on this node (empty when stopping)
    document: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the job document
    queue: str = ""
    kind: str = ""  # TrainingJob | ServingJob | BatchJob
    placements: tuple[tuple[int, str], ...] = ()  # (task, node) of every task of the job
    world_key: str = ""  # the job's submission time (ns): with its id, what its worlds' ports hash
    state: str = ""  # the job's state (QUEUED, CANCELLED, ...): why a stop comes (preempted or ended)


#: node label: "true" on a node whose agent simulates its tasks (``xpod agent --simulate``, the pod
#: of ``xpod up``); the server sets "false" on every other node, and a job with a ``command``
#: selects "false": it never lands on a simulated node
SIMULATED_LABEL = "xpod/simulated"


@dataclasses.dataclass(frozen=True)
class DeviceRecord:
    """One schedulable device of a node as its agent registers it (a die on Ascend 910C)."""

    index: int  # 0..N-1 on the node: the scheduler's ``node/index``
    vendor: str
    model: str  # catalog model id; the server looks its facts (BF16, memory) up in the catalog
    memory_total_bytes: int = 0
    health: Health = Health.OK
    simulated: bool = False

    def to_json(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict (a deep copy): a pod's registration writes 15,360 of them
        return {
            "index": self.index,
            "vendor": self.vendor,
            "model": self.model,
            "memory_total_bytes": self.memory_total_bytes,
            "health": self.health.value,
            "simulated": self.simulated,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "DeviceRecord":
        return cls(
            int(d["index"]),
            d["vendor"],
            d["model"],
            int(d.get("memory_total_bytes", 0)),
            Health.parse(d.get("health", "ok")),
            bool(d.get("simulated", False)),
        )


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """A node as an agent registers it, or as a cluster file declares it."""

    name: str
    devices: tuple[DeviceRecord, ...]
    labels: tuple[tuple[str, str], ...] = ()  # sorted pairs; "supernode" and "failure_domain" reach the core
    cpu_milli: int = 0  # host CPU jobs may request, thousandths of a core (0: not a constraint)
    memory_bytes: int = 0  # host memory jobs may request (0: not a constraint)

    @property
    def simulated(self) -> bool:
        return dict(self.labels).get(SIMULATED_LABEL) == "true"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "devices": [d.to_json() for d in self.devices],
            "labels": dict(self.labels),
            "cpu_milli": self.cpu_milli,
            "memory_bytes": self.memory_bytes,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NodeRecord":
        return cls(
            d["name"],
            tuple(DeviceRecord.from_json(x) for x in d["devices"]),
            tuple(sorted((str(k), str(v)) for k, v in d.get("labels", {}).items())),
            int(d.get("cpu_milli", 0)),
            int(d.get("memory_bytes", 0)),
        )


def record_of(node: Any, simulated: bool = False) -> NodeRecord:
    """The ``NodeRecord`` of a ``scheduler.core.model.Node`` (a cluster file's node, as
    ``cluster_records`` reads them)."""
    from xpod.scheduler.core.from_cluster import UNBOUNDED_CPU_MILLI, UNBOUNDED_MEMORY_BYTES

    labels = {str(k): str(v) for k, v in dict(node.labels).items()}
    if node.domains.get("supernode"):
        labels["supernode"] = node.domains["supernode"]
    if node.failure_domain:
        labels["failure_domain"] = node.failure_domain
    devices = tuple(
        DeviceRecord(d.index, d.vendor, d.model, d.memory_bytes, Health.OK, simulated) for d in node.devices
    )
    cpu = 0 if node.cpu_milli >= UNBOUNDED_CPU_MILLI else node.cpu_milli
    memory = 0 if node.memory_bytes >= UNBOUNDED_MEMORY_BYTES else node.memory_bytes
    return NodeRecord(node.name, devices, tuple(sorted(labels.items())), cpu, memory)


def cluster_records(cluster: Any, simulated: bool = False) -> list[NodeRecord]:
    """The nodes a loaded ``hal.cluster.Cluster`` declares, as records (the core's own reading of
    the descriptor: a die per device on 910C, memory per unit)."""
    from xpod.scheduler.core.from_cluster import nodes_from_cluster

    return [record_of(n, simulated) for n in nodes_from_cluster(cluster)]


# --- the task keys of a job document ------------------------------------------------------------

#: the keys of ``spec`` this module owns (the core's parser never sees them)
TASK_KEYS = ("command", "env", "workdir", "restart", "simulate")
#: keys of a ServingJob's ``spec`` this module owns besides ``TASK_KEYS``
SERVING_TASK_KEYS = ("moe",)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: variables the agent sets itself; a job may not override them
RESERVED_ENV = tuple(
    "XPOD_JOB_ID XPOD_TASK_INDEX XPOD_DEVICES XPOD_REPLICA_INDEX RANK WORLD_SIZE LOCAL_RANK"
    " LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT NODE_RANK GROUP_RANK ROLE_RANK TORCHELASTIC_RUN_ID"
    " XPOD_MOE_LOAD_FILE XPOD_MOE_PLAN XPOD_MOE_PLAN_SGLANG".split()
)


def is_reserved_env(name: str) -> bool:
    """Whether a job's ``spec.env`` may not set ``name``: the rendezvous variables
    (``RESERVED_ENV``), anything ``XPOD_*``, and every backend's visible-devices variables
    (``hal.registry.device_env_vars``: CUDA_VISIBLE_DEVICES, ASCEND_RT_VISIBLE_DEVICES, ...)."""
    from xpod.hal.registry import device_env_vars

    return name in RESERVED_ENV or name.upper().startswith("XPOD_") or name in device_env_vars()


#: default restart budget per kind; -1 means unlimited (serving replicas are always replaced)
DEFAULT_MAX_RESTARTS = {"TrainingJob": 3, "BatchJob": 3, "ServingJob": -1}
#: how long a task runs on a simulated node when its job gives no ``spec.simulate.duration_s``
#: (a simulated job always ends; a real node runs a job without ``command`` only when given one)
DEFAULT_SIMULATED_DURATION_S = 60.0


class TaskFieldError(Exception):
    """A bad field of a job document: ``field`` is its dotted path from the document's root
    (``spec.restart.max_restarts``), ``message`` what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Simulation:
    """How a simulated node plays a task: it succeeds after ``duration_s`` unless
    ``fail_after_s`` comes first, when it fails with ``exit_code``."""

    duration_s: float | None = None
    fail_after_s: float | None = None
    exit_code: int = 1


#: the variables the agent sets in every task of a job with ``moe`` (docs/moe.md, "In the product"):
#: where the task writes its expert loads, and where it reads the plan in force (xpod's plan JSON,
#: and the same plan as SGLang's ``--init-expert-location`` file)
MOE_LOAD_FILE_ENV = "XPOD_MOE_LOAD_FILE"
MOE_PLAN_ENV = "XPOD_MOE_PLAN"
MOE_PLAN_SGLANG_ENV = "XPOD_MOE_PLAN_SGLANG"
#: the file the agent touches when a task must stop (preempted, shrunk, scaled down, cancelled):
#: at notice time, with SIGTERM; SIGKILL follows after the job's ``grace_period_s``
PREEMPT_NOTICE_ENV = "XPOD_PREEMPT_NOTICE"
#: a task's SIGTERM-to-SIGKILL grace unless its job sets ``grace_period_s`` (the same default as
#: ``scheduler.core.model``'s, which the agent may not import; a test holds them equal)
DEFAULT_GRACE_PERIOD_S = 30.0


def grace_period_s(spec: Mapping[str, Any]) -> float:
    """A job document's ``spec.grace_period_s`` (validated at submission), else the default."""
    v = spec.get("grace_period_s", DEFAULT_GRACE_PERIOD_S)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else DEFAULT_GRACE_PERIOD_S


#: the largest load report (layers x experts counts) a server takes; DeepSeek-V3 is 61 x 256
MAX_MOE_LOAD_VALUES = 256 * 1024
#: the largest load file an agent reads (bytes)
MAX_MOE_LOAD_FILE_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class MoeSpec:
    """A ServingJob's ``moe`` block: the model's MoE shape, the slots each device of a replica
    holds per layer, and how often the server re-plans (``runtime.moe.rebalance``). Every
    replica runs the same plan: its expert-parallel ranks are its tasks' devices."""

    experts: int
    layers: int
    slots_per_device: int
    every_s: float = 60.0
    max_moves: int = 1200


@dataclasses.dataclass(frozen=True)
class TaskFields:
    """The validated task keys of one job document."""

    command: tuple[str, ...] = ()  # empty: nothing to start (see the module docstring)
    env: tuple[tuple[str, str], ...] = ()  # sorted pairs
    workdir: str | None = None
    max_restarts: int = 3  # -1 = unlimited
    simulate: Simulation = Simulation()
    moe: MoeSpec | None = None  # ServingJob only


def _whole(field: str, v: Any, low: int, high: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise TaskFieldError(field, f"{v!r} must be a whole number in {low}..{high}")
    return v


def _block(field: str, v: Any, allowed: tuple[str, ...]) -> dict:
    """``v`` when it is a mapping of ``allowed`` keys only; else ``TaskFieldError`` naming the field."""
    if not isinstance(v, dict):
        raise TaskFieldError(field, f"a mapping: {{{', '.join(allowed)}}}")
    for k in v:
        if k not in allowed:
            raise TaskFieldError(f"{field}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
    return v


def moe_ep_devices(spec: Mapping[str, Any]) -> int:
    """The expert-parallel ranks of one replica of a ServingJob: ``tasks_per_replica`` times
    ``devices.count`` (a count of 1 when absent or fractional)."""

    def whole(v: Any) -> int:
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else 1

    d = spec.get("devices")
    return whole(spec.get("tasks_per_replica", 1)) * whole(d.get("count", 1) if isinstance(d, dict) else 1)


def parse_moe(kind: str, spec: Mapping[str, Any]) -> MoeSpec | None:
    """The ``moe`` block of a job's ``spec`` (None without one). Raises ``TaskFieldError``
    naming the field: unknown keys, a value out of range, or slots that cannot hold every expert
    on one replica's devices."""
    if "moe" not in spec:
        return None
    m = spec["moe"]
    if kind != "ServingJob":
        raise TaskFieldError("spec.moe", f"only a ServingJob carries moe (this is a {kind or 'job'})")
    _block("spec.moe", m, ("experts", "layers", "slots_per_device", "rebalance"))
    for k in ("experts", "layers", "slots_per_device"):
        if k not in m:
            raise TaskFieldError(f"spec.moe.{k}", "is required")
    experts = _whole("spec.moe.experts", m["experts"], 2, 4096)
    layers = _whole("spec.moe.layers", m["layers"], 1, 1024)
    slots = _whole("spec.moe.slots_per_device", m["slots_per_device"], 1, 4096)
    if experts * layers > MAX_MOE_LOAD_VALUES:
        raise TaskFieldError("spec.moe", f"{layers} layers x {experts} experts exceeds {MAX_MOE_LOAD_VALUES} values")
    r = _block("spec.moe.rebalance", m.get("rebalance", {}), ("every_s", "max_moves"))
    every = r.get("every_s", MoeSpec.every_s)
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0.5 <= every <= 86400:
        raise TaskFieldError("spec.moe.rebalance.every_s", f"{every!r} must be a number of seconds in 0.5..86400")
    moves = _whole("spec.moe.rebalance.max_moves", r.get("max_moves", MoeSpec.max_moves), 0, 10**7)
    ep = moe_ep_devices(spec)
    if slots * ep < experts:
        raise TaskFieldError(
            "spec.moe.slots_per_device",
            f"{slots} slots on each of a replica's {ep} devices hold {slots * ep} experts, fewer than the "
            f"{experts} experts; raise it to at least {-(-experts // ep)}",
        )
    return MoeSpec(experts, layers, slots, float(every), moves)


def _number(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise TaskFieldError(field, f"{v!r} must be a number of seconds >= 0")
    return float(v)


def parse_task_fields(kind: str, spec: Mapping[str, Any]) -> TaskFields:
    """Validate the task keys of ``spec`` (a job document's ``spec`` mapping). Unknown sub-keys
    are errors. Raises ``TaskFieldError`` naming the field."""
    command: tuple[str, ...] = ()
    if "command" in spec:
        c = spec["command"]
        if not isinstance(c, list) or not c or not all(isinstance(x, str) for x in c) or not c[0]:
            raise TaskFieldError(
                "spec.command", "a non-empty list of strings (argv, no shell), e.g. [python, train.py]"
            )
        command = tuple(c)
    env: dict[str, str] = {}
    if "env" in spec:
        e = spec["env"]
        if not isinstance(e, dict):
            raise TaskFieldError("spec.env", "a mapping of variable names to strings")
        for k, v in e.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise TaskFieldError("spec.env", f"{k!r} is not a variable name")
            if is_reserved_env(k):
                raise TaskFieldError(
                    f"spec.env.{k}",
                    "is reserved: xpod sets the visible-devices, rendezvous and XPOD_* variables itself; remove it",
                )
            if not isinstance(v, str):
                raise TaskFieldError(f"spec.env.{k}", f"{v!r} must be a string (quote it in YAML)")
            env[k] = v
    workdir = spec.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir):
        raise TaskFieldError("spec.workdir", f"{workdir!r} is not a directory path")
    max_restarts = DEFAULT_MAX_RESTARTS.get(kind, 3)
    if "restart" in spec:
        r = _block("spec.restart", spec["restart"], ("max_restarts",))
        m = r.get("max_restarts", max_restarts)
        if isinstance(m, bool) or not isinstance(m, int) or m < -1:
            raise TaskFieldError(
                "spec.restart.max_restarts", f"{m!r} must be a whole number >= 0 (or -1 for unlimited)"
            )
        max_restarts = m
    sim = Simulation()
    if "simulate" in spec:
        s = _block("spec.simulate", spec["simulate"], ("duration_s", "fail_after_s", "exit_code"))
        code = _whole("spec.simulate.exit_code", s.get("exit_code", 1), 1, 255)
        sim = Simulation(
            duration_s=_number("spec.simulate.duration_s", s["duration_s"]) if "duration_s" in s else None,
            fail_after_s=_number("spec.simulate.fail_after_s", s["fail_after_s"]) if "fail_after_s" in s else None,
            exit_code=code,
        )
    return TaskFields(command, tuple(sorted(env.items())), workdir, max_restarts, sim, parse_moe(kind, spec))


def split_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` without the task keys (what the core's parser reads)."""
    return {k: v for k, v in spec.items() if k not in TASK_KEYS and k not in SERVING_TASK_KEYS}


# --- expert loads and plans (a ServingJob's ``moe``) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class MoeLoadReport:
    """One replica's expert loads as its agent forwards them (``ReportExpertLoads``): token
    counts ``[layers][experts]`` flattened row-major in ``counts``; empty ``counts`` only asks for
    the plan. ``known_plan`` is the plan revision the agent holds (0: none)."""

    job_id: str
    node: str
    replica: int
    layers: int
    experts: int
    counts: tuple[float, ...] = ()
    known_plan: int = 0


@dataclasses.dataclass(frozen=True)
class MoePlanAnswer:
    """The plan in force for a job, as the server answers a load report: ``revision`` 0 while
    there is none; the documents are empty when the agent already holds ``revision``."""

    revision: int
    plan_json: str = ""  # xpod's plan JSON (what ``xpod moe place --out`` writes)
    sglang_json: str = ""  # SGLang's --init-expert-location document of the same plan


# --- a serving replica's load (a ServingJob's ``autoscale``) -------------------------------------------

#: the port the agent gives every task of an autoscaled ServingJob (a free one on its node): the
#: replica serves there, with its Prometheus text at ``/metrics`` (SGLang ``--port P
#: --enable-metrics``, vLLM ``--port P``), which the agent scrapes on the replica's rank-0 task
SERVE_PORT_ENV = "XPOD_SERVE_PORT"
#: the counters whose summed rate is a replica's load, per ``autoscale.metric``: SGLang's and
#: vLLM's names (a server exposes one family; the others are absent and count nothing)
LOAD_COUNTERS = {
    "tokens_per_s": (
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
    ),
    "requests_per_s": ("sglang:num_requests_total", "vllm:request_success_total"),
}


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """One serving replica's load as its agent forwards it (``ReportLoad``), in its job's
    ``autoscale.metric`` units (the rate of ``LOAD_COUNTERS`` between two scrapes)."""

    job_id: str
    node: str
    replica: int
    value: float
    role: str = ""  # a job with roles: the reporting replica's role (``replica`` counts within it)


def load_scope(spec: Mapping[str, Any], task: int) -> Mapping[str, Any]:
    """Where the ``autoscale`` that applies to job task ``task`` is written: its role's mapping
    in a job with roles (``spec.roles[i]``), else ``spec`` (``load_metric``, ``load_counters``
    read it)."""
    for span in role_spans(spec):
        if span.first <= task < span.first + span.tasks:
            role = spec["roles"][span.index]
            return role if isinstance(role, Mapping) else {}
    return spec


def load_metric(kind: str, spec: Mapping[str, Any]) -> str | None:
    """The ``autoscale.metric`` of a ServingJob document's ``spec`` (None: not autoscaled)."""
    a = spec.get("autoscale") if kind == "ServingJob" else None
    metric = a.get("metric") if isinstance(a, Mapping) else None
    return metric if metric in LOAD_COUNTERS else None


#: a Prometheus metric name (``autoscale.counters``)
COUNTER_NAME_PATTERN = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
#: at most this many ``autoscale.counters``
MAX_LOAD_COUNTERS = 16


def load_counters(kind: str, spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The counters whose summed rate the agent reports as a replica's load: the job's
    ``autoscale.counters`` when it names them (a server of its own, or SGLang/vLLM under other
    names), else ``LOAD_COUNTERS`` of its ``autoscale.metric``; () when not autoscaled. The
    server checked the names when it accepted the job."""
    metric = load_metric(kind, spec)
    if metric is None:
        return ()
    names = spec["autoscale"].get("counters")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return LOAD_COUNTERS[metric]


# --- the torch.distributed world of each task ---------------------------------------------------

#: a job with roles: the file (JSON, ``role_addresses``) where each of its tasks finds where every
#: role's replicas run now; the agent replaces it whole (a temporary file renamed over it) whenever
#: the job's placement changes (a role scaled up or down), while the static ``XPOD_ROLE_*``
#: variables keep what held when the task started
ROLES_FILE_ENV = "XPOD_ROLES_FILE"

#: MASTER_PORT range: 20000..39999 (a world's rank 0 listens there, on the master node)
PORT_BASE, PORT_SPAN = 20000, 20000


def rendezvous_port(job_id: str, replica: int = 0, key: str = "") -> int:
    """MASTER_PORT of a job's world (of its serving replica ``replica``): every node computes the
    same number without talking to the others. The replicas of one job get consecutive ports
    (modulo the range), so two of its replicas whose first tasks share a node never collide.
    ``key`` (``Assignment.world_key``, the job's submission time) goes into the hash too: every
    fresh server numbers its jobs from job-1, and two of them on one host (tests side by side,
    or ``xpod up`` beside a server) would otherwise hand out the same ports."""
    h = int.from_bytes(hashlib.sha256(f"{job_id}@{key}".encode() if key else job_id.encode()).digest()[:4], "big")
    return PORT_BASE + (h + replica) % PORT_SPAN


@dataclasses.dataclass(frozen=True)
class TaskWorld:
    """The torch.distributed world one task of a job joins, and its place in it: what the node
    agent puts in RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT and
    XPOD_REPLICA_INDEX (``runtime.launch.rank_env`` has the same meaning for one host)."""

    task: int  # the job's task number (XPOD_TASK_INDEX)
    rank: int  # RANK: 0..world_size-1 inside its world
    world_size: int  # WORLD_SIZE
    local_rank: int  # LOCAL_RANK: its place among the tasks of its world on its node
    local_world_size: int  # LOCAL_WORLD_SIZE: tasks of its world on its node
    master_node: str  # the scheduler's name of the node of the world's rank-0 task
    master_port: int  # MASTER_PORT (``rendezvous_port``)
    replica: int | None  # serving: the replica (XPOD_REPLICA_INDEX); None for training and batch
    role: str | None = None  # a job with roles: the task's role (XPOD_ROLE); each role is a world
    # a job with roles: every role's addresses (``role_env``), the same for all its tasks
    role_env: tuple[tuple[str, str], ...] = ()
    serve_port: int = (
        0  # rank 0 of an autoscaled role's replica: its XPOD_SERVE_PORT (``role_serve_port``; 0: any free one)
    )


#: what a role may set for its own tasks, over the job's ``spec`` (the node agent's keys)
ROLE_TASK_KEYS = ("command", "env", "workdir")


@dataclasses.dataclass(frozen=True)
class RoleSpan:
    """A role of a job with ``roles``: its tasks are the job's tasks ``first .. first+tasks-1``
    (the roles in the order the document lists them). A ServingJob's role with ``replicas`` or
    ``autoscale`` spans its max replicas x ``per_replica`` tasks (the role's ``tasks``), replica
    r being tasks ``first + r * per_replica ..``; any other role is one gang (``per_replica``
    None)."""

    index: int
    name: str
    first: int
    tasks: int
    per_replica: int | None = None
    autoscaled: bool = False  # the role has ``autoscale`` (its replicas serve on ``role_serve_port``)

    def replica_of(self, task: int) -> int | None:
        """The role's replica that job task ``task`` belongs to (None: the role is one gang)."""
        return None if self.per_replica is None else (task - self.first) // self.per_replica


def _count(v: Any, default: int = 1) -> int:
    """A positive whole number of a checked document, ``default`` for anything else."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else default


def max_replicas(replicas: Any) -> int:
    """The most replicas ``replicas: N | {min, max}`` allows (1 when absent)."""
    if isinstance(replicas, Mapping):
        return _count(replicas.get("max", replicas.get("min", 1)))
    return _count(replicas)


def role_spans(spec: Mapping[str, Any]) -> tuple[RoleSpan, ...]:
    """The roles of a job document's ``spec`` (empty without ``roles``)."""
    roles = spec.get("roles")
    if not isinstance(roles, list):
        return ()
    out, first = [], 0
    for i, role in enumerate(roles):
        role = role if isinstance(role, Mapping) else {}
        n = _count(role.get("tasks", 1))  # the core's default, as for a job
        per = None
        if "replicas" in role or "autoscale" in role:
            per, n = n, n * max_replicas(role.get("replicas", 1))
        out.append(RoleSpan(i, str(role.get("name", i)), first, n, per, isinstance(role.get("autoscale"), Mapping)))
        first += n
    return tuple(out)


def task_spec(spec: Mapping[str, Any], task: int) -> Mapping[str, Any]:
    """The ``spec`` task ``task`` runs with: its role's command, env and workdir over the job's
    (a job without roles: ``spec`` itself)."""
    for span in role_spans(spec):
        if span.first <= task < span.first + span.tasks:
            role = spec["roles"][span.index]
            own = {k: role[k] for k in ROLE_TASK_KEYS if isinstance(role, Mapping) and k in role}
            return {**{k: v for k, v in spec.items() if k != "roles"}, **own}
    return spec


def role_env_name(role: str, what: str) -> str:
    """``XPOD_ROLE_<ROLE>_<WHAT>``: the role's name upper-cased, '-' as '_' (``prefill-a`` ->
    ``XPOD_ROLE_PREFILL_A_HOSTS``)."""
    return f"XPOD_ROLE_{role.upper().replace('-', '_')}_{what}"


def role_env(
    job_id: str, spans: tuple[RoleSpan, ...], where: Mapping[int, str], key: str = ""
) -> tuple[tuple[str, str], ...]:
    """Where every role of a job runs, as every task of it sees it: ``XPOD_ROLES`` (the role
    names, in order), and per role ``XPOD_ROLE_<ROLE>_HOSTS`` (the node of each of its placed
    tasks, in task order, comma-separated) and ``XPOD_ROLE_<ROLE>_MASTER`` (``node:port`` of its
    world's rank 0: its MASTER_ADDR and MASTER_PORT; a role with replicas: its lowest placed
    replica's). A role with replicas changes while its tasks run: ``role_addresses`` is the
    current picture (the agent's ``XPOD_ROLES_FILE``)."""
    env = {"XPOD_ROLES": ",".join(s.name for s in spans)}
    for s in spans:
        tasks = [t for t in range(s.first, s.first + s.tasks) if t in where]
        env[role_env_name(s.name, "HOSTS")] = ",".join(where[t] for t in tasks)
        if tasks:
            master, port = _role_master(job_id, s, where, tasks[0], key)
            env[role_env_name(s.name, "MASTER")] = f"{master}:{port}"
    return tuple(sorted(env.items()))


def _role_master(job_id: str, s: RoleSpan, where: Mapping[int, str], task: int, key: str) -> tuple[str, int]:
    """(node, port) of the rank 0 of the world of placed task ``task`` of role ``s``."""
    replica = s.replica_of(task)
    if replica is None:
        return where.get(s.first, where[task]), rendezvous_port(job_id, s.index, key)
    assert s.per_replica is not None
    first = s.first + replica * s.per_replica
    return where.get(first, where[task]), rendezvous_port(f"{job_id}/{s.name}", replica, key)


def role_serve_port(job_id: str, role: str, replica: int, key: str = "") -> int:
    """``XPOD_SERVE_PORT`` of a replica of an autoscaled role: computed alike on every node (as
    ``rendezvous_port``), so that the other roles learn where it serves (``role_addresses``)."""
    return rendezvous_port(f"{job_id}/{role}/serve", replica, key)


def role_addresses(job_id: str, spans: tuple[RoleSpan, ...], where: Mapping[int, str], key: str = "") -> dict[str, Any]:
    """Where every role of a job runs now, as JSON (what the agent writes to ``XPOD_ROLES_FILE``):
    ``{"job": ID, "roles": {ROLE: {"replicas": [{"replica": R, "tasks": [T, ...], "hosts":
    [NODE, ...], "master": "NODE:PORT", "serve": "NODE:PORT"}, ...]}}}``, each role's placed
    replicas in order (a role without replicas: one entry, replica 0, of its placed tasks).
    ``serve`` (an autoscaled role's replicas only): where its rank 0 serves (``XPOD_SERVE_PORT``).
    Nodes are the scheduler's node names; task numbers are the job's."""
    roles: dict[str, Any] = {}
    for s in spans:
        groups: dict[int, list[int]] = {}
        for t in range(s.first, s.first + s.tasks):
            if t in where:
                groups.setdefault(s.replica_of(t) or 0, []).append(t)
        replicas = []
        for r, tasks in sorted(groups.items()):
            master, port = _role_master(job_id, s, where, tasks[0], key)
            one = {"replica": r, "tasks": tasks, "hosts": [where[t] for t in tasks], "master": f"{master}:{port}"}
            if s.autoscaled:
                one["serve"] = f"{master}:{role_serve_port(job_id, s.name, r, key)}"
            replicas.append(one)
        roles[s.name] = {"replicas": replicas}
    return {"job": job_id, "roles": roles}


def tasks_per_replica(kind: str, spec: Mapping[str, Any]) -> int | None:
    """Tasks per world of a job document's ``kind`` and ``spec``: a ServingJob's
    ``tasks_per_replica`` (default 1: every replica its own one-task world); None for training
    and batch jobs, whose tasks all join one world."""
    if kind != "ServingJob":
        return None
    n = spec.get("tasks_per_replica", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # the submit path refused it already
        raise TaskFieldError("spec.tasks_per_replica", f"{n!r} must be a whole number >= 1")
    return n


def task_worlds(
    job_id: str, kind: str, spec: Mapping[str, Any], placements: Iterable[tuple[int, str]], key: str = ""
) -> dict[int, TaskWorld]:
    """The world of every placed task of a job, by task number (in task order). ``placements``
    are its (task number, node) pairs: every allocation of the job, not only one node's, so
    every node computes the same worlds.

    * Training and batch: one world for the whole gang; RANK is the task's place among the placed
      tasks (its task number when the gang is whole), WORLD_SIZE the number placed, and the master
      is task 0's node (the lowest placed task's).
    * Serving with ``tasks_per_replica: N``: task ``t`` is rank ``t mod N`` of replica ``t // N``,
      a world of N tasks whose master is the node of the replica's first task (``N * (t // N)``;
      the lowest placed one if that one is missing, which the scheduler never does: a replica is
      bound whole), on the replica's own port. N = 1: every replica is a world of one.

    * A job with ``roles``: each role is a world of its own tasks (rank ``t - first``, the role's
      own port), and every task also gets where every role runs (``role_env``).

    LOCAL_RANK / LOCAL_WORLD_SIZE count the tasks of the same world on the same node, in task
    order, as ``launch.launch`` numbers the processes it starts on one host. ``key``: see
    ``rendezvous_port``."""
    where = dict(placements)
    spans = role_spans(spec)
    if spans:
        return _role_worlds(job_id, spans, where, key)
    size = tasks_per_replica(kind, spec)
    groups: dict[int | None, list[int]] = {}
    for t in sorted(where):
        groups.setdefault(None if size is None else t // size, []).append(t)
    out: dict[int, TaskWorld] = {}
    for replica, tasks in groups.items():
        if replica is None:
            ranks, world = {t: i for i, t in enumerate(tasks)}, len(tasks)
            master = where[tasks[0]]
        else:
            assert size is not None
            ranks, world = {t: t % size for t in tasks}, size
            master = where.get(replica * size, where[tasks[0]])
        port = rendezvous_port(job_id, replica or 0, key)
        on_node: dict[str, list[int]] = {}
        for t in tasks:  # in task order
            on_node.setdefault(where[t], []).append(t)
        for local in on_node.values():
            for i, t in enumerate(local):
                out[t] = TaskWorld(t, ranks[t], world, i, len(local), master, port, replica)
    return dict(sorted(out.items()))  # in task order


def _role_worlds(job_id: str, spans: tuple[RoleSpan, ...], where: dict[int, str], key: str) -> dict[int, TaskWorld]:
    """A job with roles: each role is a world of its tasks (rank = task - the role's first, its
    own port), a role with replicas one world per replica (rank = the task's place in its
    replica, the replica's own port, ``XPOD_REPLICA_INDEX`` the replica's number in its role);
    every task is told every role's addresses (``role_env``)."""
    env = role_env(job_id, spans, where, key)
    out: dict[int, TaskWorld] = {}
    for s in spans:
        per = s.per_replica or s.tasks
        tasks = [t for t in range(s.first, s.first + s.tasks) if t in where]
        on_node: dict[tuple[str, int | None], list[int]] = {}
        for t in tasks:
            on_node.setdefault((where[t], s.replica_of(t)), []).append(t)
        for (_, replica), local in on_node.items():
            for i, t in enumerate(local):
                master, port = _role_master(job_id, s, where, t, key)
                rank = (t - s.first) % per
                # only rank 0 serves where the other roles look (role_addresses); the replica's other
                # tasks, maybe on the same node, take any free port (0), as a role-less replica's do
                published = s.autoscaled and replica is not None and rank == 0
                serve = role_serve_port(job_id, s.name, replica, key) if published else 0
                out[t] = TaskWorld(t, rank, per, i, len(local), master, port, replica, s.name, env, serve)
    return dict(sorted(out.items()))
