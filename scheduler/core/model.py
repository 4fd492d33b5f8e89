"""Values the scheduler core works on: nodes, devices, jobs, queues, decisions.

Everything here is a frozen dataclass or an enum. The mutable allocation state lives in
``scheduler.snapshot``; the service (a later issue) stores these values and hands them to the
``Scheduler`` facade in ``scheduler.core``. Units: memory in bytes, CPU in milli-cores, device
shares in milli-devices (1000 = one whole device), time in seconds since an epoch the injected
clock defines.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Mapping

MILLI = 1000


class JobKind(str, enum.Enum):
    TRAINING = "training"  # a gang: all tasks or none (or at least min_tasks when elastic)
    SERVING = "serving"  # replicas: at least min_tasks, up to tasks; spread across failure domains
    BATCH = "batch"  # independent tasks; each placed when it fits


#: ``Job.within`` words every cluster knows: one node, anywhere (the whole cluster). A cluster's
#: fabric adds its own (``scheduler.core.fabric``): ``group`` (a device group inside a node),
#: its topology levels (``rack``, ``supernode``, ...) and its tier names (``ub-l2``).
NODE = "node"
CLUSTER = "cluster"
ANY = "any"  # the same as "cluster"


class LoadMetric(str, enum.Enum):
    """What a serving job's replicas report and its autoscaling follows (KServe/Knative's
    scale metric): generated plus prompt tokens per second, or requests per second."""

    TOKENS_PER_S = "tokens_per_s"
    REQUESTS_PER_S = "requests_per_s"


@dataclasses.dataclass(frozen=True)
class Autoscale:
    """How a serving job follows its demand (``scheduler.core.autoscale`` decides).

    The replicas report their load in ``metric`` units; the job wants
    ``ceil(demand / target_per_replica)`` replicas (at the profile's target utilisation), kept between
    its min and max replicas. A rise is acted on once it has lasted ``scale_up_after_s``, a fall
    once it has lasted ``scale_down_after_s`` (the highest need seen in that window is kept:
    Kubernetes HPA's stabilisation window), so a noisy load does not flap the replicas."""

    metric: LoadMetric
    target_per_replica: float  # load one replica serves at its target, in metric units (> 0)
    scale_up_after_s: float = 0.0
    scale_down_after_s: float = 300.0
    # the forecast rule's (``core.autoscale``; the default profile's): spare capacity sized by the
    # rises of the load seen within the scale-up lead time
    lead_s: float = 40.0  # a scale-up decision to a serving replica: report age + freeing devices + model load
    basis_s: float = 600.0  # the forecast's basis: the highest load of this trailing window
    history_s: float = 1800.0  # rises of the last this long size the spare capacity
    rise_quantile: float = 1.0  # which of them (1.0: the largest seen)
    min_rises_s: float = 300.0  # until rises span this long, at least the profile's fixed margin
    # the error budget (``core.autoscale``): the share of ``slo_interval_s`` intervals whose ready
    # capacity must cover the load over any ``slo_window_s``; None: no SLO, rise_quantile as given
    slo_attainment: float | None = None
    slo_window_s: float = 3600.0
    slo_interval_s: float = 10.0


#: what a task gets between SIGTERM (and the notice file) and SIGKILL, unless its job says
DEFAULT_GRACE_PERIOD_S = 30.0


@dataclasses.dataclass(frozen=True)
class Device:
    """One schedulable device: a package, or a die where dies are the unit (the catalog says)."""

    index: int  # index on its node, 0-based; what a binding names
    model: str  # catalog id, e.g. "ascend-910c", "nvidia-h100-sxm"
    vendor: str  # backend id: ascend, cuda, cambricon, ...
    memory_bytes: int  # memory of this device (per die when dies are the unit)
    bf16_tflops: float = 0.0  # dense BF16 per device; 0 = unknown
    group: int | None = None  # its device group inside the node (a descriptor tier of scope "group")
    package: int | None = None  # the package it is a die of, when dies are the unit (None: it is one)


@dataclasses.dataclass(frozen=True)
class Node:
    """A machine and what the scheduler may place on it."""

    name: str
    cpu_milli: int
    memory_bytes: int
    devices: tuple[Device, ...] = ()
    # level -> the domain of that topology level holding this node ({"supernode": "cm-a", "rack":
    # "cm-a-r00"}); the cluster's fabric (``scheduler.core.fabric``) says which levels are tiers
    domains: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    failure_domain: str | None = None  # rack / zone serving replicas spread across; default: node
    # what a job's node selector matches (``Job.node_selector``): the cluster file's node-group
    # labels, an agent's registered labels (e.g. ``xpod/simulated: "true"``)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def domain(self) -> str:
        return self.failure_domain or self.name


@dataclasses.dataclass(frozen=True)
class DeviceRequest:
    """The devices one task asks for.

    Either ``model`` (and optionally ``vendor``) names the device, or ``model_choices`` names
    several models any one of which will do (the Alibaba trace's ``gpu_spec``), or the request
    is by capability: any accelerator with at least ``min_memory_bytes`` and ``min_bf16_tflops``.
    ``count`` whole devices, or (``count == 1``) a fraction ``milli`` < 1000 of one device with
    a memory slice ``memory_bytes`` (as HAMi and the Alibaba trace share GPUs).
    """

    count: int = 1
    vendor: str | None = None
    model: str | None = None
    min_memory_bytes: int = 0
    min_bf16_tflops: float = 0.0
    milli: int = MILLI  # per device; < 1000 only with count == 1
    memory_bytes: int = 0  # memory slice for a fractional device (0 = proportional)
    model_choices: frozenset[str] = frozenset()  # any one of these models (empty: no such rule)

    @property
    def fractional(self) -> bool:
        return self.milli < MILLI

    def matches(self, dev: Device) -> bool:
        if self.model is not None and dev.model != self.model:
            return False
        if self.model_choices and dev.model not in self.model_choices:
            return False
        if self.vendor is not None and dev.vendor != self.vendor:
            return False
        return dev.memory_bytes >= self.min_memory_bytes and dev.bf16_tflops >= self.min_bf16_tflops

    def describe(self) -> str:
        what = (
            self.model
            or (self.model_choices and " or ".join(sorted(self.model_choices)))
            or (self.vendor and f"{self.vendor} device")
            or "accelerator"
        )
        if self.model is None and (self.min_memory_bytes or self.min_bf16_tflops):
            caps = []
            if self.min_memory_bytes:
                caps.append(f">= {self.min_memory_bytes / 2**30:g} GiB")
            if self.min_bf16_tflops:
                caps.append(f">= {self.min_bf16_tflops:g} BF16 TFLOPS")
            what += " (" + ", ".join(caps) + ")"
        if self.fractional:
            return f"{self.milli}m of one {what}"
        return f"{self.count} {what}"


def slice_bytes(job: "Job", device_memory: int) -> int:
    """The memory slice a fractional task of ``job`` takes on a device of ``device_memory``
    bytes (its request's ``memory_bytes``, else the share of the device its milli is); 0 for
    whole devices."""
    req = job.devices
    if req is None or not req.fractional:
        return 0
    return req.memory_bytes or device_memory * req.milli // MILLI


@dataclasses.dataclass(frozen=True)
class PriorityClass:
    name: str
    value: int  # higher is more important
    preemptible: bool = True  # may be evicted for higher-priority work


@dataclasses.dataclass(frozen=True)
class Queue:
    """A tenant's queue. Shares are in devices (whole-device equivalents)."""

    name: str
    weight: float = 1.0  # relative share when queues compete (DRF divides usage by it)
    guaranteed: float = 0.0  # devices never reclaimed from this queue
    deserved: float | None = None  # fair share; usage above it may be reclaimed (None: weight-based)
    max: float | None = None  # hard cap on devices in use (None: no cap)


@dataclasses.dataclass(frozen=True)
class Job:
    """A unit of admission: ``tasks`` identical tasks.

    Training: a gang; placed only when ``min_tasks`` (default: all) tasks fit at once.
    Serving: a replica is ``replica_tasks`` tasks (default 1); ``tasks`` = max replicas x
    ``replica_tasks``, ``min_tasks`` = min replicas x ``replica_tasks``. Task ``t`` belongs to
    replica ``t // replica_tasks``. A replica is placed whole or not at all: a one-task replica
    on one node; a multi-task replica inside the tightest domain its ``within`` allows (one
    node, else one domain of the fabric's tiers; a block rule plugin may make each replica one
    block: an Ascend 910C replica of 16-die tasks is one logical super-pod inside one physical
    super-pod). Replicas spread across failure domains.
    Batch: each task placed on its own.
    """

    id: str
    kind: JobKind
    tasks: int
    devices: DeviceRequest | None  # per task; None = CPU-only
    cpu_milli: int = 0  # per task
    memory_bytes: int = 0  # per task
    min_tasks: int | None = None  # elastic minimum / min replicas; None = tasks
    # how tightly the tasks sit: a level or tier name of the cluster's fabric (``node``,
    # ``supernode``, ``rack``, ``group``: each task's devices in one device group), or ``cluster``
    # (anywhere; placement still prefers fewer tiers crossed). ``Scheduler.submit`` resolves a
    # tier name or ``any`` to its level.
    within: str = CLUSTER
    queue: str = "default"
    priority_class: str = "normal"
    priority: int = 0  # resolved value of priority_class
    submit_time: float = 0.0
    expected_duration_seconds: float | None = None  # estimated starts; backfill on reserved devices needs it
    # devices per block: the tasks are placed in blocks, each inside one domain, as a block rule
    # plugin says (``plugins/ascend``: MindCluster's sp-block, a logical super-pod of 910C dies
    # inside one physical super-pod beside its reserve nodes); no plugin acting on it: refused
    domain_block: int | None = None
    replica_tasks: int = 1  # serving: tasks per replica (a replica larger than one node)
    # labels a node must carry, every one with this value, to run a task of the job (Kubernetes'
    # nodeSelector): e.g. {"xpod/simulated": "false"} keeps a job that runs a real command off
    # simulated nodes. Sorted (key, value) pairs, so jobs stay hashable.
    node_selector: tuple[tuple[str, str], ...] = ()
    autoscale: Autoscale | None = None  # serving: follow the reported load (None: up to max replicas)
    # seconds a task that must stop (preempted, shrunk, scaled down) gets between SIGTERM, with
    # its notice file touched, and SIGKILL
    grace_period_s: float = DEFAULT_GRACE_PERIOD_S
    # a role of a job with several roles (prefill/decode, actor/learner): ``group`` is that job's
    # id and ``group_size`` its number of roles; the roles are placed in one cycle or none, each
    # whole (a gang across roles), and evicted together
    group: str | None = None
    group_size: int = 0

    def selects(self, node: "Node") -> bool:
        """Whether ``node`` carries every label of the job's node selector."""
        labels = node.labels
        return all(labels.get(k) == v for k, v in self.node_selector)

    @property
    def min_required(self) -> int:
        if self.kind is JobKind.BATCH:
            return 1
        return self.tasks if self.min_tasks is None else self.min_tasks

    @property
    def replica_size(self) -> int:
        """Tasks per replica for serving jobs, 1 for the other kinds (the unit placed whole
        besides the gang)."""
        return self.replica_tasks if self.kind is JobKind.SERVING else 1

    @property
    def devices_per_task(self) -> float:
        if self.devices is None:
            return 0.0
        return self.devices.count * self.devices.milli / MILLI

    @property
    def total_devices(self) -> float:
        return self.tasks * self.devices_per_task


@dataclasses.dataclass(frozen=True)
class Binding:
    """Task ``task`` of job ``job_id`` runs on ``node`` with these device indices."""

    job_id: str
    task: int
    node: str
    device_indices: tuple[int, ...]
    milli: int = MILLI  # per device
    cpu_milli: int = 0
    memory_bytes: int = 0
    device_memory_bytes: int = 0  # memory slice per device for fractional tasks


@dataclasses.dataclass(frozen=True)
class Eviction:
    job_id: str
    reason: str  # e.g. "preempted by job j7 (priority 100 > 10)"
    preemptor: str | None = None


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Serving replica ``task`` of ``job_id`` lost its place on ``node`` (node gone, device
    unhealthy, task failed) and was released alone; the job keeps running and the next cycle
    places the replica again, elsewhere when the node is gone."""

    job_id: str
    task: int
    node: str
    reason: str  # e.g. "node n2 removed"

    @property
    def message(self) -> str:
        return f"replica {self.task} replaced: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Resize:
    """A running job changed its number of tasks without leaving the running set: an elastic
    training gang shrunk for more important work or regrown to its size (its tasks restart once
    with the new world size: a gang restart), or a serving job scaled down (``Scheduler``'s
    autoscaling). ``released``: the tasks that stop (their bindings are gone); ``added``: the
    tasks this cycle's bindings start."""

    job_id: str
    tasks_before: int
    tasks_after: int
    reason: str  # e.g. "shrunk for serving job chat (priority 1000 > 100)"
    released: tuple[int, ...] = ()
    restart: bool = False  # the gang restarts with the new world size (training)
    by: str | None = None  # the job that took the devices (shrink)


class ReasonCode(str, enum.Enum):
    """Why a job is still pending. ``NEVER_FITS`` cannot be fixed by waiting."""

    UNSCHEDULABLE = "Unschedulable"  # does not fit now
    NEVER_FITS = "NeverFits"  # larger than anything the cluster could offer, even empty
    QUEUE_OVER_MAX = "QueueOverMax"  # the queue's maximum share would be exceeded
    WAITING_BEHIND = "WaitingBehind"  # resources held for a job ahead (no backfill allowed)
    NOT_CONSIDERED = "NotConsidered"  # the cycle stopped before this job (no allocate action)


@dataclasses.dataclass(frozen=True)
class NeverFits:
    """Why a job can never fit this cluster, even empty (``Scheduler.never_fits``): waiting
    cannot help; only more (or repaired) devices, or a smaller job, can."""

    message: str  # one line: what it needs, where, and what the whole cluster has there
    need_devices: int  # devices it needs at once in one domain (its gang, one replica, one block)
    reserve_devices: int  # devices that domain must keep free beside it (a plugin's reserve nodes)
    cluster_devices: int  # healthy matching devices of the largest such domain of the whole cluster
    where: str  # the domain: "one node", "one super-node", "the cluster", ...


@dataclasses.dataclass(frozen=True)
class PendingReason:
    """Why a job waits, with the numbers behind it."""

    job_id: str
    code: ReasonCode
    message: str  # one line a user reads: what it needs, what is free, how many jobs ahead
    queue_position: int  # 1 = next in its queue
    jobs_ahead: int
    # clock time (a walk of the queue: ``scheduler.estimates``); None when unknown (a running
    # job or a job ahead has no expected duration) or past the profile's estimate_depth
    estimated_start: float | None
    numbers: Mapping[str, float] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class CycleResult:
    """What one scheduling cycle decided. Bindings are committed in the snapshot already."""

    time: float
    bindings: tuple[Binding, ...]
    evictions: tuple[Eviction, ...]
    pending: Mapping[str, PendingReason]
    decisions: int  # jobs the cycle decided on (placed, evicted for, or given a reason)
    seconds: float  # wall time the cycle took
    preemption_attempts: int = 0  # jobs the preempt/reclaim actions tried to evict for
    replacements: tuple[Replacement, ...] = ()  # serving replicas released alone since the last cycle
    resizes: tuple[Resize, ...] = ()  # running jobs shrunk, regrown or scaled down by this cycle
