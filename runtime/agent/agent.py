"""The node agent: the devices of the nodes it serves, their heartbeats, and the processes (or
simulated tasks) of the jobs bound to them.

One ``Agent`` per process speaks ``xpod.v1.NodeService`` to the scheduler through the one
client (``runtime.client``), over ONE connection for every node it serves: one registration
call, one heartbeat call per interval, one assignment stream, one report call per poll, however
many nodes (a simulated pod of 20 CloudMatrix384s is 960 nodes in one process). Each node is a
``NodeRuntime``: its devices, its executor (real processes or simulated tasks) and its jobs.
Contracts:

* **Discovery and registration.** A real agent finds its devices through the HAL
  (``hal.registry.available_backends``; ``--sim-devices`` adds simulated ones), numbers them
  0..N-1 on the node and registers the node under this host's name (or the descriptor node
  whose name is the host's short name; ``--node`` overrides). A simulated pod
  (``simulated_pod``) registers every node of a cluster descriptor with its devices, each node
  labelled ``xpod/simulated=true`` (``scheduler.contract.SIMULATED_LABEL``): the scheduler never
  sends it a job with a ``command``.
* **Heartbeats** every ``heartbeat_interval_s`` (or the server's interval if shorter), on a
  thread of their own (slow starts or reports never delay them), carry a device's health
  (``Backend.health``) when it changed; a node the server answers it does not know is
  registered again.
* **Assignments** arrive over ``WatchAssignments`` for all the nodes, in batches. ``run=True``
  starts the job's tasks on that node that are not running yet; ``run=False`` ends them.
* **Stops with notice.** Every process task gets ``XPOD_PREEMPT_NOTICE``, a file path
  (``STATE/notice/JOB/task-N``, absent while it may run). A task that must go has that file
  touched (a JSON line: notice time, grace) and SIGTERM to its process group at the same moment,
  then SIGKILL after the job's ``grace_period_s`` (default 30) when it was preempted, shrunk or
  scaled down, or after the agent's own ``grace_s`` when the job was cancelled or is over; a
  cancel that comes during a long grace cuts it to ``grace_s`` (``launch.LaunchedGroup.terminate``).
* **Resizes.** A task whose torch.distributed world changed (an elastic gang shrunk or regrown:
  WORLD_SIZE, RANK or the master moved) is stopped with notice like one that goes, and starts
  again in the new world once every stopping task of its gang on this node has exited (a serving
  replica waits only for its own earlier process): the gang restarts once, with the new size.
* **Tasks** run with the launcher's variables (``launch.rank_env``) for the task's
  torch.distributed world (``scheduler.contract.task_worlds``, computed from the job's whole
  allocation list so every node agrees): a training or batch job is ONE world (RANK = task
  index, WORLD_SIZE = tasks placed, master = task 0's node); a serving job is one world PER
  REPLICA (``tasks_per_replica: N``: RANK = t mod N, WORLD_SIZE = N, master = the node of the
  replica's first task, MASTER_PORT distinct per replica, and ``XPOD_REPLICA_INDEX`` = t // N;
  N = 1 gives every replica a world of one; a job with roles is one world PER ROLE, each task
  also told where every role runs: ``XPOD_ROLE``, ``XPOD_ROLES``, ``XPOD_ROLE_<ROLE>_HOSTS``,
  ``XPOD_ROLE_<ROLE>_MASTER``, ``contract.role_env``, as they were when the task started; a
  ServingJob's role with replicas is one world per replica, ``XPOD_REPLICA_INDEX`` its number in
  the role; and ``XPOD_ROLES_FILE``, ``STATE/roles/JOB.json``, where every role's replicas run
  *now* (``contract.role_addresses``: hosts, master, and an autoscaled role's ``serve``
  address), replaced whole (renamed into place) on every assignment of the job, so a router
  follows a role that scales on other nodes without restarting, and removed once no task of
  the job runs on the node (finished, failed, preempted, cancelled; a stop under way keeps it
  until its tasks have exited); a role's command, env and
  workdir are its own, ``contract.task_spec``). LOCAL_RANK / LOCAL_WORLD_SIZE count the tasks of
  the same world on this node. MASTER_ADDR is 127.0.0.1 on the master node itself, else the
  master node's name. Also the vendor's visible-devices variable for exactly the
  task's devices (``Backend.visible_env``), plus ``XPOD_JOB_ID``, ``XPOD_TASK_INDEX`` and
  ``XPOD_DEVICES`` (the scheduler's device ids, ``node/index``, comma-separated). Each task's
  stdout and stderr go to ``STATE/logs/JOB/task-N.log`` (``xpod logs``), appended per attempt,
  ending with a ``=== xpod: task N exited with code C`` line.
* **Reports**: per job, RUNNING once its tasks here started, SUCCEEDED when all exited 0,
  FAILED at the first non-zero exit, naming the failed tasks (``failed_tasks``; the scheduler
  applies the restart policy: a serving job's other replicas here keep running).
* **Task sets change**: a ``run=True`` assignment lists the job's tasks on this node; a task
  running here that it no longer lists (a serving replica replaced alone) is stopped alone, and
  a listed task not running here is started.
* **MoE loads and plans** (a ServingJob with ``spec.moe``, docs/moe.md): each task gets
  ``XPOD_MOE_LOAD_FILE`` (``STATE/moe/JOB/task-N.loads.json``), where it writes its expert
  loads since its previous write (SGLang's ``{"logical_count": [layers][experts]}``, written
  whole: a temporary file renamed over it), and ``XPOD_MOE_PLAN`` / ``XPOD_MOE_PLAN_SGLANG``
  (``STATE/moe/JOB/replica-R/plan.json`` and ``expert_location.json``), the plan in force for
  its replica. The agent forwards each new version of a load file (``ReportExpertLoads``; a
  refused one is named once in the task's log), asks for the plan at least every
  ``MOE_PLAN_POLL_S``, and writes a newer plan's files (renamed into place) for every replica
  of the job on the node.
* **Serving load** (a ServingJob with ``spec.autoscale``): each task gets ``XPOD_SERVE_PORT``,
  a free port of its node, where the replica serves with its Prometheus text at ``/metrics``
  (SGLang ``--port $XPOD_SERVE_PORT --enable-metrics``; vLLM ``--port $XPOD_SERVE_PORT``).
  Every ``LOAD_REPORT_S`` the agent scrapes each replica's rank-0 task and reports the rate of
  its load counters since the previous scrape (``contract.load_counters``: the job's
  ``autoscale.counters`` when it names them, else prompt plus generated tokens, or requests, per
  second under SGLang's or vLLM's names) as the replica's load (``ReportLoad``); a refused report
  is named once in the task's log. A job with roles: each autoscaled role's replicas report for
  their role (``LoadReport.role``, its own metric and counters, ``contract.load_scope``) and
  serve on a port every node computes alike (``contract.role_serve_port``).
* **Simulated tasks** (``SimExecutor``) "run" ``spec.simulate.duration_s``, or
  ``DEFAULT_SIMULATED_DURATION_S`` when the job does not say: a simulated job always ends.
* **Scheduler restarts**: a lost connection is retried with exponential backoff (0.2 s to 1 s,
  or the server's RetryInfo); tasks keep running meanwhile. On reconnecting the agent
  heartbeats every node (registering again only the nodes the server does not know, so nothing
  is evicted), re-subscribes, and re-reports every job it runs; a job the server answers
  NOT_ASSIGNED for is ended (it was cancelled or moved while we were away) — nothing else is
  killed.
* **Tasks never outlive their agent.** Each task runs under a small supervisor
  (``runtime/agent/supervisor.py``, its own session) that the kernel signals when the agent dies
  (``PR_SET_PDEATHSIG``, even on ``kill -9``): it SIGTERMs the task's whole process group and
  SIGKILLs it after ``grace_s``. So after a lost node's gang is restarted elsewhere, no second
  copy keeps running on the old node.
* **Agent restarts**: task (supervisor) pids are recorded under ``STATE/tasks``; a new agent
  still ends any process group a previous one left behind (a supervisor killed with it, a
  non-Linux host) and registers the node again, which makes the scheduler requeue the jobs that
  ran here, whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

from xpod.hal.device import Health
from xpod.hal.errors import XpodError
from xpod.scheduler.contract import (
    DEFAULT_SIMULATED_DURATION_S,
    MAX_MOE_LOAD_FILE_BYTES,
    MOE_LOAD_FILE_ENV,
    MOE_PLAN_ENV,
    MOE_PLAN_SGLANG_ENV,
    PREEMPT_NOTICE_ENV,
    ROLES_FILE_ENV,
    SERVE_PORT_ENV,
    SIMULATED_LABEL,
    Assignment,
    DeviceRecord,
    LoadReport,
    MoeLoadReport,
    NodeRecord,
    TaskReport,
    TaskState,
    grace_period_s,
    kind_label,
    task_spec,
    load_counters,
    load_metric,
    load_scope,
    role_addresses,
    role_spans,
    parse_task_fields,
    task_worlds,
)

DEFAULT_HEARTBEAT_S = 2.0
DEFAULT_GRACE_S = 5.0
#: longest wait between reconnection attempts: well under the scheduler's NotReady bound (10 s)
RECONNECT_MAX_S = 1.0
POLL_S = 0.1  # how often task exits and queued assignments are looked at
#: the per-task supervisor, run as a script (stdlib only, no site) so it starts fast
SUPERVISOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")


def default_state_dir() -> str:
    """``$XPOD_STATE_DIR`` or ``~/.local/state/xpod``."""
    return os.environ.get("XPOD_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".local", "state", "xpod")


def roles_file_path(state_dir: str, job_id: str) -> str:
    """``XPOD_ROLES_FILE`` of the tasks of a job with roles on this node (one per job)."""
    log_path(state_dir, job_id, 0)  # checks the id
    return os.path.join(state_dir, "roles", f"{job_id}.json")


def write_roles_file(state_dir: str, job_id: str, addresses: dict[str, Any]) -> None:
    """Replace the job's roles file whole (a temporary file renamed over it): a task reading it
    sees the old picture or the new one, never a part. Unchanged content is not rewritten."""
    path = roles_file_path(state_dir, job_id)
    text = json.dumps(addresses, sort_keys=True)
    with contextlib.suppress(OSError):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def remove_roles_file(state_dir: str, job_id: str) -> None:
    """Remove the job's roles file and any temporary file an agent killed inside
    ``write_roles_file`` left of it (none there: nothing to do)."""
    path = roles_file_path(state_dir, job_id)
    for name in (path, *glob.glob(f"{glob.escape(path)}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def log_path(state_dir: str, job_id: str, task: int) -> str:
    """Where a task's output goes; ``job_id`` is a server-assigned id (``job-N``), never a path."""
    if not job_id or "/" in job_id or job_id in (".", "..") or "\0" in job_id:
        raise XpodError(f"{job_id[:80]!r} is not a job id")
    return os.path.join(state_dir, "logs", job_id, f"task-{int(task)}.log")


#: the agent asks for a job's MoE plan at least this often (and looks at load files as often)
MOE_PLAN_POLL_S = 0.5
#: how often the agent scrapes each autoscaled serving replica and reports its load (ReportLoad)
LOAD_REPORT_S = 1.0
#: the most of a replica's /metrics page the agent reads
MAX_METRICS_BYTES = 4 * 1024 * 1024


def scrape_counters(url: str, names: Sequence[str], timeout_s: float = 1.0) -> float | None:
    """The sum of the samples named ``names`` on a Prometheus text page (None: unreachable,
    unreadable, or none of them there). No proxy: the replica is on this host."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            text = resp.read(MAX_METRICS_BYTES).decode("utf-8", "replace")
        found = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name in names]
    except (OSError, ValueError):
        return None
    return float(sum(found)) if found else None


def notice_path(state_dir: str, job_id: str, task: int) -> str:
    """The file a task's ``XPOD_PREEMPT_NOTICE`` names (``STATE/notice/JOB/task-N``): absent while
    the task may run, touched when it must stop."""
    log_path(state_dir, job_id, task)  # the same check of the job id
    return os.path.join(state_dir, "notice", job_id, f"task-{int(task)}")


#: job states in which a stop is final (cancelled or over): the agent's short grace, not the job's
ENDED_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def moe_paths(state_dir: str, job_id: str, task: int, replica: int) -> dict[str, str]:
    """The MoE files of one task of a job with ``spec.moe`` (module docstring), by variable."""
    folder = os.path.join(state_dir, "moe", job_id)
    return {
        MOE_LOAD_FILE_ENV: os.path.join(folder, f"task-{task}.loads.json"),
        MOE_PLAN_ENV: os.path.join(folder, f"replica-{replica}", "plan.json"),
        MOE_PLAN_SGLANG_ENV: os.path.join(folder, f"replica-{replica}", "expert_location.json"),
    }


def _log(prefix: str, text: str) -> None:
    print(f"{prefix}: {text}", file=sys.stderr, flush=True)


# --- devices ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LocalDevice:
    """One device of this node as registered: its node index and the backend that owns it."""

    index: int  # 0..N-1 on the node (what the scheduler calls node/index)
    vendor: str
    model: str
    memory_total_bytes: int
    simulated: bool
    backend: Any = dataclasses.field(default=None, compare=False)  # hal Backend; None in a simulated pod
    local_index: int = 0  # the backend's own logical index of the package (for visible_env and health)
    die: int | None = None  # which die of the package, when its dies are scheduled apart (Ascend 910C)
    # the die's runtime logical id for the visible-devices variable (the HAL's ``logical_ids``
    # of the package, else package p, die k = p * dies + k); None for a whole package
    die_visible_id: int | None = None


def discover_devices(sim_spec: str | None = None) -> list[LocalDevice]:
    """Every device the HAL finds on this host (real backends), plus simulated ones from
    ``sim_spec`` (``"ascend-910c:2"``), numbered 0..N-1 in backend order. A package whose dies
    are scheduled apart (Ascend 910C) is one device per die, each with its share of the memory,
    as the scheduler's cluster descriptors and the device exporter count them."""
    from xpod.hal.registry import available_backends

    backends = list(available_backends())
    if sim_spec:
        from xpod.backends.sim import SimBackend, parse_spec

        backends.append(SimBackend(parse_spec(sim_spec)))
    from xpod.runtime.agent.exporter import units_of

    out: list[LocalDevice] = []
    for b in backends:
        for d in b.devices():
            units = units_of(d)
            ids = list(d.extra.get("logical_ids") or [])
            if len(ids) != units:
                ids = [d.index * units + k for k in range(units)]
            die_memory = d.extra.get("die_memory_bytes")  # [[used, total], ...] where the tool prints each die
            for k in range(units):
                memory = int(d.memory_total_bytes or 0) // units
                if isinstance(die_memory, list) and len(die_memory) == units:
                    memory = int(die_memory[k][1])
                out.append(
                    LocalDevice(
                        len(out),
                        d.vendor,
                        d.model,
                        memory,
                        bool(d.simulated),
                        b,
                        d.index,
                        die=k if units > 1 else None,
                        die_visible_id=int(ids[k]) if units > 1 else None,
                    )
                )
    return out


# --- tasks ------------------------------------------------------------------------------------


class TaskHandle:
    """One started task. ``poll()`` is None while it runs, else its exit code."""

    task: int

    def poll(self) -> int | None:
        raise NotImplementedError

    def terminate(self, grace_s: float) -> None:
        raise NotImplementedError


class ProcessTask(TaskHandle):
    """A real process in its own session (the launcher's contract), output to a log file."""

    def __init__(self, task: int, group: Any, log_file: Any, pid_file: str, notice: str = "") -> None:
        self.task = task
        self.group = group  # launch.LaunchedGroup of one process
        self._log_file = log_file
        self._pid_file = pid_file
        self.notice = notice  # its XPOD_PREEMPT_NOTICE file, touched when it must stop
        self.load_url = ""  # an autoscaled serving replica's rank 0: where its /metrics page is

    @property
    def popen(self) -> subprocess.Popen:
        return self.group.procs[0].popen

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code  # a signal -N reads as 128+N, as a shell reports it

    def terminate(self, grace_s: float) -> None:
        self.group.terminate(grace_s=grace_s)

    def close(self, code: int | None) -> None:
        try:
            self._log_file.write(f"=== xpod: task {self.task} exited with code {code}\n".encode())
            self._log_file.close()
        except (OSError, ValueError):
            pass
        try:
            os.unlink(self._pid_file)
        except OSError:
            pass


class SimTask(TaskHandle):
    """A simulated task: no process; it ends at its deadline (``spec.simulate``)."""

    def __init__(
        self, task: int, exit_at_s: float | None, exit_code: int, clock: Callable[[], float], log: str
    ) -> None:
        self.task = task
        self._exit_at_s = exit_at_s  # None: runs until stopped
        self._exit_code = exit_code
        self._clock = clock
        self._stopped: int | None = None
        self._log = log

    def poll(self) -> int | None:
        if self._stopped is not None:
            return self._stopped
        if self._exit_at_s is not None and self._clock() >= self._exit_at_s:
            return self._exit_code
        return None

    def terminate(self, grace_s: float) -> None:
        self._stopped = 128 + signal.SIGTERM

    def close(self, code: int | None) -> None:
        _append(self._log, f"=== xpod: task {self.task} exited with code {code} (simulated)\n")


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole: a reader sees the old file or the new one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _notify(path: str, grace_s: float) -> None:
    """Touch a task's notice file (written whole: the time it must be gone by)."""
    with contextlib.suppress(OSError):
        _write_atomic(path, json.dumps({"notice_time_s": time.time(), "grace_period_s": grace_s}) + "\n")


def _append(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


@dataclasses.dataclass
class JobRun:
    """This node's part of one job."""

    job_id: str
    tasks: dict[int, TaskHandle]  # task index -> handle
    exits: dict[int, int] = dataclasses.field(default_factory=dict)  # task index -> exit code
    reported: TaskState | None = None  # the last state the server acknowledged (None: report again)
    moe: Any = None  # the job's ``contract.MoeSpec`` (None without spec.moe)
    replicas: dict[int, int] = dataclasses.field(default_factory=dict)  # task -> serving replica
    moe_seen: dict[int, tuple[int, int]] = dataclasses.field(
        default_factory=dict
    )  # task -> load file (mtime, size) sent
    moe_plan: int = 0  # the plan revision whose files are written here
    moe_asked_s: float = 0.0  # when the plan was last asked for
    # task -> the world it was started in (``_world_shape``): a task whose world changes (an
    # elastic gang shrunk or regrown) is stopped and started again in the new one
    worlds: dict[int, tuple] = dataclasses.field(default_factory=dict)
    hurry_at: float | None = None  # monotonic time the job ended while this run was stopping: cut its grace
    # task -> the counters whose rate is its replica's load (``contract.load_counters``; only the
    # tasks of an autoscaled serving job, or of a job's autoscaled role)
    load_counters: dict[int, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    roles: dict[int, str] = dataclasses.field(default_factory=dict)  # task -> its role (a job with roles)
    load_seen: dict[int, tuple[float, float]] = dataclasses.field(default_factory=dict)  # task -> (time, counters)
    load_refused: bool = False  # a ReportLoad of it was refused (named once in the task's log)

    def failed_tasks(self) -> list[int]:
        """Tasks here that exited non-zero (the report's ``failed_tasks``)."""
        return sorted(t for t, code in self.exits.items() if code != 0)

    def state(self) -> tuple[TaskState, int, str]:
        """(state, exit code, message) of this node's tasks of the job."""
        for t, code in sorted(self.exits.items()):
            if code != 0:
                why = getattr(self.tasks.get(t), "reason", "")
                return TaskState.FAILED, code, f"task {t} " + (why or f"exited with code {code}")
        if self.tasks and len(self.exits) == len(self.tasks):
            return TaskState.SUCCEEDED, 0, ""
        return TaskState.RUNNING, 0, ""


# --- executors ----------------------------------------------------------------------------------


class Executor:
    """Starts tasks for a node agent."""

    def start(self, job: dict[str, Any], job_id: str, alloc: Any, world: Any, master_addr: str) -> TaskHandle:
        """Start task ``alloc.task`` of ``job`` (the job document) in ``world`` (a
        ``scheduler.contract.TaskWorld``) whose rank 0 listens on ``master_addr``."""
        raise NotImplementedError


def world_text(world: Any, master_addr: str) -> str:
    """The task's world in a log header: ``replica 1, rank 1 of 2, master n3:30951``."""
    text = f"rank {world.rank} of {world.world_size}, master {master_addr}:{world.master_port}"
    if getattr(world, "role", None) is not None:
        return f"role {world.role}, {text}"
    return text if world.replica is None else f"replica {world.replica}, {text}"


#: the agent's own variables a task inherits: where programs and home are, the locale. Nothing
#: else of the agent's environment (its token, its credentials, its proxies) reaches a task.
INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL", "TERM")


def base_task_env() -> dict[str, str]:
    """What a task's environment starts from: ``INHERITED_ENV`` of the agent's, nothing else
    (the job's ``spec.env`` and xpod's variables go on top, ``task_env``)."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    return env


def task_env(
    job_id: str,
    alloc: Any,
    world: Any,
    master_addr: str,
    backend_name: str,
    visible: dict[str, str],
    user_env: Sequence[tuple[str, str]] = (),
) -> dict[str, str]:
    """The variables xpod sets for one task (on top of ``base_task_env``, never the agent's whole
    environment): the
    launcher's rank variables for its ``world`` (``TaskWorld``), the visible-devices variable,
    the job's ``spec.env`` and the XPOD_* identity variables (which the job cannot override)."""
    from xpod.runtime.agent.launch import rank_env

    env = rank_env(
        world.rank,
        world.world_size,
        world.local_rank,
        world.local_world_size,
        master_addr,
        world.master_port,
        backend_name,
        visible,
    )
    env.update(dict(user_env))
    env.update({"XPOD_JOB_ID": job_id, "XPOD_TASK_INDEX": str(alloc.task), "XPOD_DEVICES": ",".join(alloc.devices)})
    if world.replica is not None:
        env["XPOD_REPLICA_INDEX"] = str(world.replica)
    if world.role is not None:
        env["XPOD_ROLE"] = world.role
        env.update(dict(world.role_env))
    return env


class ProcessExecutor(Executor):
    """Real processes through the launcher's environment contract."""

    def __init__(
        self, node: str, devices: Sequence[LocalDevice], state_dir: str, grace_s: float = DEFAULT_GRACE_S
    ) -> None:
        self.node = node
        self.devices = {d.index: d for d in devices}
        self.state_dir = state_dir
        self.grace_s = grace_s  # SIGTERM-to-SIGKILL grace of a task whose agent died

    def start(self, job, job_id, alloc, world, master_addr) -> TaskHandle:
        from xpod.runtime.agent.launch import LaunchedGroup, RankProcess

        fields = parse_task_fields(job.get("kind", ""), task_spec(job.get("spec", {}), alloc.task))
        indices = [int(d.rsplit("/", 1)[1]) for d in alloc.devices]
        visible: dict[str, str] = {}
        backend_name = "cpu"
        by_backend: dict[int, tuple[Any, list[LocalDevice]]] = {}
        for i in indices:
            dev = self.devices.get(i)
            if dev is None:
                raise XpodError(
                    f"job {job_id}: device {self.node}/{i} is not on this node (it has {len(self.devices)})"
                )
            if dev.backend is not None:
                by_backend.setdefault(id(dev.backend), (dev.backend, []))[1].append(dev)
        for backend, devs in by_backend.values():
            visible.update(_visible_env(backend, devs))
            backend_name = backend.name
        env = task_env(job_id, alloc, world, master_addr, backend_name, visible, fields.env)
        if fields.moe is not None:
            env.update(moe_paths(self.state_dir, job_id, alloc.task, world.replica or 0))
            os.makedirs(os.path.dirname(env[MOE_PLAN_ENV]), exist_ok=True)
        serve_port = 0
        if load_metric(job.get("kind", ""), load_scope(job.get("spec", {}), alloc.task)) is not None:
            from xpod.runtime.agent.launch import free_port

            serve_port = world.serve_port or free_port()
            env[SERVE_PORT_ENV] = str(serve_port)
        if world.role is not None:
            env[ROLES_FILE_ENV] = roles_file_path(self.state_dir, job_id)
        notice = env[PREEMPT_NOTICE_ENV] = notice_path(self.state_dir, job_id, alloc.task)
        os.makedirs(os.path.dirname(notice), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notice)  # a notice of an earlier attempt is not one for this one
        command = list(fields.command)
        if not command:
            # nothing to run: sleep the simulated duration (0 by default) so traces replay alike
            command = [sys.executable, "-c", f"import time; time.sleep({fields.simulate.duration_s or 0.0!r})"]
        path = log_path(self.state_dir, job_id, alloc.task)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        log = open(path, "ab", buffering=0)
        log.write(
            f"=== xpod: task {alloc.task} of job {job_id} starting on {self.node} ({world_text(world, master_addr)}): "
            f"{' '.join(command)}\n".encode()
        )
        full_env = {**base_task_env(), **env}
        problem = _cannot_exec(command[0], full_env.get("PATH", os.defpath), fields.workdir)
        try:
            if problem:
                raise OSError(0, problem)
            # the supervisor (its own session: its pid is the task's group) ends the task's whole
            # group when this agent dies, even by kill -9 (runtime/agent/supervisor.py). It runs
            # isolated (-I, an empty environment): the task's environment reaches it on stdin
            # and only the task's exec uses it, so a job's PYTHONPATH or LD_PRELOAD never runs
            # inside the supervisor.
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", SUPERVISOR, str(os.getpid()), repr(self.grace_s), "--", *command],
                env={},
                cwd=fields.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
            assert popen.stdin is not None
            try:
                popen.stdin.write(json.dumps(full_env).encode())
                popen.stdin.close()
            except BrokenPipeError:  # it died at once; its exit code tells the task's end
                pass
        except OSError as err:
            log.write(f"=== xpod: cannot start {command[0]!r}: {err.strerror}\n".encode())
            log.close()
            raise XpodError(f"job {job_id}: cannot start {command[0]!r}: {err.strerror}") from None
        # one file per process: a stopping attempt and its replacement may overlap for the grace period
        pid_file = os.path.join(self.state_dir, "tasks", f"{job_id}.{alloc.task}.{popen.pid}.json")
        os.makedirs(os.path.dirname(pid_file), exist_ok=True)
        with open(pid_file, "w", encoding="utf-8") as f:
            json.dump({"job": job_id, "task": alloc.task, "pid": popen.pid, "start": _start_ticks(popen.pid)}, f)
        handle = ProcessTask(
            alloc.task, LaunchedGroup([RankProcess(world.rank, world.local_rank, popen, env)]), log, pid_file, notice
        )
        if serve_port and world.rank == 0:
            handle.load_url = f"http://127.0.0.1:{serve_port}/metrics"
        return handle


class SimExecutor(Executor):
    """Simulated tasks: durations and failures from ``spec.simulate``; nothing is started."""

    def __init__(self, node: str, state_dir: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.state_dir = state_dir
        self.clock = clock

    def start(self, job, job_id, alloc, world, master_addr) -> TaskHandle:
        sim = parse_task_fields(job.get("kind", ""), job.get("spec", {})).simulate
        now = self.clock()
        exit_at, code = now + (DEFAULT_SIMULATED_DURATION_S if sim.duration_s is None else sim.duration_s), 0
        if sim.fail_after_s is not None and now + sim.fail_after_s < exit_at:
            exit_at, code = now + sim.fail_after_s, sim.exit_code
        path = log_path(self.state_dir, job_id, alloc.task)
        _append(
            path,
            f"=== xpod: task {alloc.task} of job {job_id} starting on {self.node} (simulated; {world_text(world, master_addr)}) "
            f"devices {','.join(alloc.devices)}\n",
        )
        return SimTask(alloc.task, exit_at, code, self.clock, path)


def _visible_env(backend: Any, devs: Sequence[LocalDevice]) -> dict[str, str]:
    """The vendor's visible-devices variable for exactly ``devs`` of one backend: whole packages
    through ``Backend.visible_env``, single dies of a die-scheduled package by their logical id."""
    env = dict(backend.visible_env(sorted({d.local_index for d in devs if d.die is None})))
    dies = [d.die_visible_id for d in devs if d.die is not None]
    var = getattr(backend.visible_vars, "process", None)
    if dies and var:
        ids = [x for x in env.get(var, "").split(",") if x] + [str(i) for i in dies]
        env[var] = ",".join(sorted(set(ids), key=int))
    return env


def _cannot_exec(program: str, path: str, workdir: str | None) -> str:
    """Why ``program`` cannot be executed (the supervisor's exec would fail), or ''. Checked
    here so a job whose command is missing fails at start with the reason, as before."""
    if os.sep in program:
        where = program if os.path.isabs(program) or not workdir else os.path.join(workdir, program)
        if not os.path.exists(where):
            return os.strerror(2)  # No such file or directory
        if os.path.isdir(where) or not os.access(where, os.X_OK):
            return os.strerror(13)  # Permission denied
        return ""
    if shutil.which(program, path=path) is None:
        return os.strerror(2)
    return ""


def _start_ticks(pid: int) -> str:
    """The process's start time from /proc (tells a pid from a reused one); '' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def end_leftover_tasks(state_dir: str, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """End the process groups a previous agent left under ``state_dir/tasks`` (kill -9 of the
    agent leaves its tasks running, unsupervised) and remove its roles files (no task of theirs
    runs any more; a job still bound here gets its file again with its assignment). Returns
    ``job.task`` names it ended."""
    with contextlib.suppress(OSError):
        # JOB.json and JOB.json.PID.tmp: one job each
        for job_id in {name.split(".json", 1)[0] for name in os.listdir(os.path.join(state_dir, "roles"))}:
            with contextlib.suppress(OSError, XpodError):
                remove_roles_file(state_dir, job_id)
    folder = os.path.join(state_dir, "tasks")
    ended = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return ended
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
            pid = int(rec["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            os.unlink(path)
            continue
        if rec.get("start") and _start_ticks(pid) == rec["start"]:
            _kill_group(pid, grace_s)
            ended.append(f"{rec.get('job')}.{rec.get('task')}")
        os.unlink(path)
    return ended


def _kill_group(pid: int, grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)


# --- the agent ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """What an agent registers for one node."""

    name: str
    devices: tuple[LocalDevice, ...]
    labels: tuple[tuple[str, str], ...] = ()

    def record(self, health: dict[int, Health]) -> NodeRecord:
        devices = tuple(
            DeviceRecord(d.index, d.vendor, d.model, d.memory_total_bytes, health.get(d.index, Health.OK), d.simulated)
            for d in self.devices
        )
        return NodeRecord(self.name, devices, self.labels)


#: stops a run's tasks with a grace (None: the agent's) on a thread of its own, which it returns
Stopper = Callable[[JobRun, "float | None"], "threading.Thread | None"]


def _world_shape(world: Any) -> tuple:
    """What a task's environment says of its world: a change means a restart."""
    return (
        world.rank,
        world.world_size,
        world.local_rank,
        world.local_world_size,
        world.master_node,
        world.master_port,
    )


class SessionLost(Exception):
    """The connection to the scheduler broke; reconnect."""


class NodeRuntime:
    """One node an agent serves: its executor and the tasks of the jobs bound to it."""

    def __init__(self, spec: NodeSpec, executor: Executor, log_prefix: str = "xpod agent") -> None:
        self.spec = spec
        self.executor = executor
        self.log_prefix = log_prefix
        self.runs: dict[str, JobRun] = {}
        self.held: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # job -> (queue, kind, device indices)
        self.stopping: dict[str, list[tuple[JobRun, threading.Thread]]] = {}  # job -> stops under way
        self.deferred: dict[str, Assignment] = {}  # job -> its latest assignment, while tasks of it wait
        self.roles_files: set[str] = set()  # jobs whose roles file this node wrote and has not removed

    @property
    def name(self) -> str:
        return self.spec.name

    def assign(self, a: Assignment, stopper: Stopper) -> None:
        """Start what ``a`` lists and is not running here; stop what it no longer lists."""
        if a.run:
            self.start(a, stopper)
            indices = tuple(int(d.rsplit("/", 1)[1]) for t in a.tasks for d in t.devices)
            self.held[a.job_id] = (a.queue, a.kind, indices)
            return
        self.held.pop(a.job_id, None)
        self.deferred.pop(a.job_id, None)
        run = self.runs.pop(a.job_id, None)
        # cancelled or over: the agent's short grace, also for stops of the job already under way;
        # preempted (queued again): the job's grace_period_s
        ended = a.state in ENDED_STATES or not a.state
        if ended:
            for stale, _ in self.stopping.get(a.job_id, ()):
                stale.hurry_at = time.monotonic()
        if run is not None:
            _log(self.log_prefix, f"{self.name}: stopping job {a.job_id}")
            self.stop(run, stopper, None if ended else grace_period_s(a.document.get("spec", {})))

    def stop(self, run: JobRun, stopper: Stopper, grace_s: float | None = None) -> None:
        """Stop ``run``'s tasks (``stopper``: notice, SIGTERM, SIGKILL after ``grace_s``, None: the
        agent's); until they have exited no task of the job that needs them gone starts here."""
        thread = stopper(run, grace_s)
        if thread is not None:
            self.stopping.setdefault(run.job_id, []).append((run, thread))

    def _stopping_tasks(self, job_id: str) -> set[int]:
        """Tasks of ``job_id`` whose stop is still under way here."""
        live = [(r, t) for r, t in self.stopping.get(job_id, ()) if t.is_alive()]
        if live:
            self.stopping[job_id] = live
        else:
            self.stopping.pop(job_id, None)
        return {task for r, _ in live for task in r.tasks}

    def start(self, a: Assignment, stopper: Stopper = lambda run, grace_s: None, resumed: bool = False) -> None:
        mine = sorted(a.tasks, key=lambda t: t.task)
        placed = dict(a.placements)  # every task of the job (all nodes): every agent computes the same worlds
        placed.update({t.task: self.name for t in mine})
        kind, spec = a.document.get("kind", ""), a.document.get("spec", {})
        world_error: Exception | None = None
        try:
            worlds = task_worlds(a.job_id, kind, spec, placed.items(), a.world_key)
        except Exception as err:  # noqa: BLE001 - the server accepted the job: its tasks fail to start, named
            worlds, world_error = {}, err
        run = self.runs.setdefault(a.job_id, JobRun(a.job_id, {}))
        try:
            run.moe = parse_task_fields(kind, spec).moe if isinstance(self.executor, ProcessExecutor) else None
        except Exception:  # noqa: BLE001 - the server accepted it; a task that cannot start says why
            run.moe = None
        run.replicas.update({t: w.replica or 0 for t, w in worlds.items()})
        run.load_counters = {t: c for t in worlds if (c := load_counters(kind, load_scope(spec, t)))}
        run.roles = {t: w.role for t, w in worlds.items() if w.role is not None}
        if run.roles and isinstance(self.executor, ProcessExecutor):
            # where every role runs now, for the tasks here (a role scaled elsewhere changes it)
            write_roles_file(
                self.executor.state_dir, a.job_id, role_addresses(a.job_id, role_spans(spec), placed, a.world_key)
            )
            self.roles_files.add(a.job_id)
        keys = {t: _world_shape(w) for t, w in worlds.items()}
        # Tasks here the assignment no longer lists (a serving replica replaced alone, a shrunk
        # gang's) end alone; so do tasks whose world changed (an elastic gang resized: they start
        # again in the new world once the old one has ended here). The others keep running.
        listed = {t.task for t in mine}
        changed = {t for t in run.tasks if t in listed and t not in run.exits and run.worlds.get(t) != keys.get(t)}
        gone = {t: h for t, h in run.tasks.items() if t not in listed or t in changed}
        if gone:
            stale = JobRun(a.job_id, gone, {t: c for t, c in run.exits.items() if t in gone})
            for t in gone:
                run.tasks.pop(t)
                run.exits.pop(t, None)
                run.worlds.pop(t, None)
            what = "restarting" if changed else "stopping"
            _log(self.log_prefix, f"{self.name}: {what} job {a.job_id} task(s) {', '.join(map(str, sorted(gone)))}")
            self.stop(stale, stopper, grace_period_s(spec))
        # A task starts once its earlier process here has exited (its port, its files); a task of
        # a gang (one world) once every stopping task of the gang has.
        busy = self._stopping_tasks(a.job_id)
        gang = any(w.replica is None for w in worlds.values())
        waiting = False
        for alloc in mine:
            if alloc.task in run.tasks:
                continue  # already running (a re-sent assignment after a reconnect)
            if busy and (gang or alloc.task in busy):
                waiting = True
                continue
            try:
                if world_error is not None:
                    raise world_error
                world = worlds[alloc.task]
                master = "127.0.0.1" if world.master_node == self.name else world.master_node
                run.tasks[alloc.task] = self.executor.start(a.document, a.job_id, alloc, world, master)
                run.worlds[alloc.task] = keys[alloc.task]
            except Exception as err:  # noqa: BLE001 - one bad job must not stop the node; it reads as a failed start
                _log(self.log_prefix, f"{self.name}: job {a.job_id} task {alloc.task} cannot start: {err}")
                run.tasks[alloc.task] = _Failed(
                    alloc.task, f"could not start: {str(err).removeprefix(f'job {a.job_id}: ')}"
                )
            resumed = False  # something started: report again
        if waiting:
            self.deferred[a.job_id] = a
        else:
            self.deferred.pop(a.job_id, None)
        if not resumed:
            run.reported = None

    def resume(self, stopper: Stopper) -> None:
        """Start the tasks that waited for earlier processes of their job to exit."""
        for a in list(self.deferred.values()):
            if a.job_id in self.runs:
                self.start(a, stopper, resumed=True)
            else:
                self.deferred.pop(a.job_id, None)

    def drop_roles_files(self) -> None:
        """Remove the roles file of every job none of whose tasks runs here any more: all exited
        (finished, failed), stopped (preempted, cancelled, moved) and no stop of them under way,
        none waiting to start. While one task of the job runs here, its file stays."""
        state_dir = getattr(self.executor, "state_dir", None)
        for job_id in sorted(self.roles_files):
            run = self.runs.get(job_id)
            if run is not None and any(t not in run.exits for t in run.tasks):
                continue
            if job_id in self.deferred or self._stopping_tasks(job_id):
                continue
            if state_dir is not None:
                remove_roles_file(state_dir, job_id)
            self.roles_files.discard(job_id)

    def reap(self) -> None:
        for run in self.runs.values():
            for t, handle in run.tasks.items():
                if t in run.exits:
                    continue
                code = handle.poll()
                if code is not None:
                    run.exits[t] = code
                    close = getattr(handle, "close", None)
                    if close:
                        close(code)
                    _log(self.log_prefix, f"{self.name}: job {run.job_id} task {t} exited with code {code}")

    def health(self) -> dict[int, Health]:
        """Each device's health as its backend reads it (simulated devices: ok)."""
        out: dict[int, Health] = {}
        cache: dict[int, dict[int, Any]] = {}
        for d in self.spec.devices:
            if d.backend is None:
                out[d.index] = Health.OK
                continue
            if id(d.backend) not in cache:
                try:
                    cache[id(d.backend)] = d.backend.health()
                except Exception:  # noqa: BLE001 - a broken vendor tool must not stop heartbeats
                    cache[id(d.backend)] = {}
            h = cache[id(d.backend)].get(d.local_index)
            out[d.index] = h if isinstance(h, Health) else Health.UNKNOWN
        return out


class Agent:
    """The node agent of one process: every node it serves over ONE connection (see the module
    docstring). ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(
        self,
        client: Any,
        nodes: Sequence[NodeRuntime],
        *,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_S,
        grace_s: float = DEFAULT_GRACE_S,
        log_prefix: str = "xpod agent",
        poll_s: float = POLL_S,
        on_allocations: Callable[[dict[tuple[str, int], tuple[str, str, str]]], None] | None = None,
    ) -> None:
        self.client = client  # runtime.client.Client
        self.nodes = {n.name: n for n in nodes}
        self.heartbeat_interval_s = heartbeat_interval_s
        self.grace_s = grace_s
        self.log_prefix = log_prefix
        self.poll_s = poll_s
        # called with {(node, device index): (job id, queue, kind)} whenever that map changes
        # (the device exporter's allocation-info join series)
        self.on_allocations = on_allocations
        self._published: dict | None = None
        self._assignments: queue.Queue = queue.Queue()
        self._broken = threading.Event()
        self._stream: Any = None
        self.connected = threading.Event()
        self.sessions = 0  # successful (re)connections
        self._beats_sent: dict[str, dict[int, Health]] = {}  # health the server has, per node

    # --- connection ---

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.2
        while not stop.is_set():
            beats = loads = None
            try:
                self._connect()
                backoff_s = 0.2
                beats = threading.Thread(target=self._beat, args=(stop,), name="xpod-heartbeat", daemon=True)
                beats.start()
                loads = threading.Thread(target=self._report_loads, args=(stop,), name="xpod-load", daemon=True)
                loads.start()
                self._serve(stop)
            except (SessionLost, XpodError) as err:
                if self.connected.is_set():
                    _log(self.log_prefix, f"lost the scheduler ({str(err)[:200]}); reconnecting")
                self.connected.clear()
                self._close_stream()
                wait_s = getattr(err, "retry_after_s", None) or backoff_s
                stop.wait(wait_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
            finally:
                self._broken.set()  # ends the heartbeat thread of this session
                if beats is not None:
                    beats.join(timeout=self.heartbeat_interval_s + 5)
                if loads is not None:
                    loads.join(timeout=LOAD_REPORT_S + 15)
        self._close_stream()
        # the agent is going away: its tasks go with it (all jobs in parallel: one grace period)
        now = time.monotonic()
        for n in self.nodes.values():  # stops under way (a job's long grace) end within the agent's
            for stops in n.stopping.values():
                for stale, _ in stops:
                    stale.hurry_at = now
        stoppers = [self._stopper(run) for n in self.nodes.values() for run in n.runs.values()]
        # and the stops under way (hurried above) are waited for too: their tasks must be gone
        # before the agent exits and before their jobs' roles files go
        stoppers += [t for n in self.nodes.values() for stops in n.stopping.values() for _, t in stops]
        for t in stoppers:
            t.join(timeout=self.grace_s + 5)
        for n in self.nodes.values():  # the tasks have ended (their runs' exits say so): so do their roles files
            n.deferred.clear()
            n.drop_roles_files()

    def _connect(self) -> None:
        """Register every node (a fresh server, or one that lost them, learns them again; one
        that knows them keeps their jobs: a node is registered again only when it says it does
        not know it), open the one assignment stream, and re-report every job."""
        if not self.sessions:
            self._register(list(self.nodes))
        else:
            self._heartbeat(full=True)
        self._broken.clear()
        self._stream = self.client.watch_assignments(list(self.nodes))
        threading.Thread(target=self._watch, args=(self._stream,), name="xpod-assignments", daemon=True).start()
        runs = 0
        for n in self.nodes.values():
            for run in n.runs.values():
                run.reported = None  # the server may have lost what we said: say it again
                runs += 1
        if self.sessions:
            _log(self.log_prefix, f"reconnected to the scheduler; re-reporting {runs} job(s)")
        self.sessions += 1
        self.connected.set()

    def _register(self, names: list[str]) -> None:
        health = {name: self.nodes[name].health() for name in names}
        self.client.register_nodes([self.nodes[name].spec.record(health[name]) for name in names])
        self._beats_sent.update(health)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()

    def _watch(self, stream: Any) -> None:
        try:
            for batch in stream:
                self._assignments.put(batch)
        except XpodError:
            pass
        self._broken.set()  # the stream ended: the server went away (or we cancelled it)

    def _heartbeat(self, full: bool = False) -> float:
        """One heartbeat for every node: the health of a device only when it changed (or
        ``full``), so a beat of a thousand idle nodes is a list of names."""
        beat: dict[str, dict[int, Health]] = {}
        for name, n in self.nodes.items():
            health = n.health()
            sent = self._beats_sent.get(name, {})
            beat[name] = health if full else {i: h for i, h in health.items() if sent.get(i) is not h}
        interval_s, unknown = self.client.heartbeat(beat)
        for name, health in beat.items():
            self._beats_sent.setdefault(name, {}).update(health)
        if unknown:
            self._register(sorted(set(unknown) & set(self.nodes)))  # the server lost them: add them again
        return interval_s

    def _report_loads(self, stop: threading.Event) -> None:
        """Every ``LOAD_REPORT_S``, each autoscaled serving replica's load (the rate of its
        load counters, ``contract.load_counters``, since the last scrape) goes to the scheduler (``ReportLoad``), on a
        thread of its own: a slow replica never delays starts, reports or heartbeats."""
        while not stop.wait(LOAD_REPORT_S) and not self._broken.is_set():
            for n in list(self.nodes.values()):
                for run in list(n.runs.values()):
                    if not run.load_counters:
                        continue
                    for t, h in list(run.tasks.items()):
                        url = getattr(h, "load_url", "")
                        if url and t not in run.exits:
                            self._report_load(n, run, t, url)

    def _report_load(self, n: NodeRuntime, run: JobRun, task: int, url: str) -> None:
        total = scrape_counters(url, run.load_counters.get(task, ()))
        now = time.monotonic()
        if total is None:
            return  # the replica is starting (or serves no such counters): nothing to say yet
        before, run.load_seen[task] = run.load_seen.get(task), (now, total)
        if before is None or total < before[1] or now <= before[0]:
            return  # a first sample, or the counters restarted: a rate needs two samples
        rate = (total - before[1]) / (now - before[0])
        report = LoadReport(run.job_id, n.name, run.replicas.get(task, 0), rate, run.roles.get(task, ""))
        try:
            self.client.report_load(report)
        except XpodError as err:  # a refusal is named once in the task's log; a lost server is the loop's business
            if getattr(err, "code", "") in ("NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"):
                state_dir = getattr(n.executor, "state_dir", None)
                if not run.load_refused and state_dir:
                    self._moe_note(state_dir, run.job_id, task, f"load report refused: {err}")
                run.load_refused = True

    def _beat(self, stop: threading.Event) -> None:
        """Heartbeats on a thread of their own, so slow starts or reports never delay them."""
        interval_s = self.heartbeat_interval_s
        while not stop.wait(interval_s) and not self._broken.is_set():
            try:
                interval_s = min(self.heartbeat_interval_s, self._heartbeat() or self.heartbeat_interval_s)
            except XpodError as err:
                _log(self.log_prefix, f"heartbeat failed ({str(err)[:200]}); trying again")
                interval_s = min(interval_s, 1.0)

    # --- the loop ---

    def _serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self._broken.is_set() and self._assignments.empty():
                raise SessionLost("the assignment stream ended")
            self._drain()
            for n in self.nodes.values():
                n.reap()
                n.resume(self._stopper)
                n.drop_roles_files()
            self._report()
            self._moe()
            self._publish()
            stop.wait(self.poll_s)

    def _drain(self) -> None:
        while True:
            try:
                batch = self._assignments.get_nowait()
            except queue.Empty:
                return
            for a in batch:
                node = self.nodes.get(a.node)
                if node is not None:
                    node.assign(a, self._stopper)

    def _stopper(self, run: JobRun, grace_s: float | None = None) -> threading.Thread:
        t = threading.Thread(target=self._stop_run, args=(run, grace_s), daemon=True)
        t.start()
        return t

    def _publish(self) -> None:
        """Tell ``on_allocations`` what the nodes' devices hold, when that changed."""
        if self.on_allocations is None:
            return
        held = {
            (n.name, i): (job, queue_, kind_label(kind))
            for n in self.nodes.values()
            for job, (queue_, kind, indices) in n.held.items()
            for i in indices
        }
        if held != self._published:
            self._published = held
            self.on_allocations(held)

    def _report(self) -> None:
        """Every job whose state on a node changed, in one call."""
        todo = []
        for n in self.nodes.values():
            for run in n.runs.values():
                state, code, message = run.state()
                if run.reported != state:
                    failed = tuple(run.failed_tasks()) if state is TaskState.FAILED else ()
                    todo.append((n, run, state, TaskReport(run.job_id, n.name, state, message, code, failed)))
        if not todo:
            return
        answers = self.client.report_tasks([r for _, _, _, r in todo])
        for (n, run, state, _), refused in zip(todo, answers):
            if refused is None:
                run.reported = state
            elif refused in ("NOT_ASSIGNED", "JOB_NOT_FOUND"):
                # not bound here any more (cancelled, moved or finished while we were away)
                n.runs.pop(run.job_id, None)
                n.held.pop(run.job_id, None)
                n.deferred.pop(run.job_id, None)
                n.stop(run, self._stopper)

    def _moe(self) -> None:
        """Forward new load files of the tasks of jobs with ``spec.moe``; write newer plans."""
        now = time.monotonic()
        for n in self.nodes.values():
            state_dir = getattr(n.executor, "state_dir", None)
            for run in list(n.runs.values()):
                if run.moe is None or state_dir is None or now - run.moe_asked_s < MOE_PLAN_POLL_S:
                    continue
                run.moe_asked_s = now
                sent = False
                for t in sorted(run.tasks):
                    if t in run.exits:
                        continue
                    replica = run.replicas.get(t, 0)
                    counts = self._moe_loads(state_dir, run, t, replica)
                    if counts is None:
                        continue
                    sent = True
                    self._moe_send(n, run, state_dir, t, MoeLoadReport(
                        run.job_id, n.name, replica, run.moe.layers, run.moe.experts, counts, run.moe_plan
                    ))  # fmt: skip
                if not sent and any(t not in run.exits for t in run.tasks):
                    t = min(t for t in run.tasks if t not in run.exits)
                    report = MoeLoadReport(
                        run.job_id, n.name, run.replicas.get(t, 0), run.moe.layers, run.moe.experts, (), run.moe_plan
                    )
                    self._moe_send(n, run, state_dir, t, report)

    def _moe_loads(self, state_dir: str, run: JobRun, task: int, replica: int) -> tuple[float, ...] | None:
        """The counts of a new version of a task's load file (None: none, or unreadable: named
        once in the task's log)."""
        path = moe_paths(state_dir, run.job_id, task, replica)[MOE_LOAD_FILE_ENV]
        try:
            st = os.stat(path)
        except OSError:
            return None
        version = (st.st_mtime_ns, st.st_size)
        if run.moe_seen.get(task) == version:
            return None
        run.moe_seen[task] = version
        try:
            if st.st_size > MAX_MOE_LOAD_FILE_BYTES:
                raise XpodError(f"{path}: {st.st_size} bytes, more than {MAX_MOE_LOAD_FILE_BYTES}")
            from xpod.runtime.moe.io import load_sglang_dump

            loads = load_sglang_dump(path)
        except XpodError as err:
            self._moe_note(state_dir, run.job_id, task, f"expert loads not sent: {err}")
            return None
        return tuple(float(x) for x in loads.ravel())

    def _moe_send(self, n: NodeRuntime, run: JobRun, state_dir: str, task: int, report: MoeLoadReport) -> None:
        try:
            answer = self.client.report_expert_loads(report)
        except XpodError as err:  # the client's RpcFailure carries the status code
            if getattr(err, "code", "") in ("NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
                if report.counts:
                    self._moe_note(state_dir, run.job_id, task, f"expert loads refused: {err}")
                return
            raise
        if answer.revision > run.moe_plan and answer.plan_json:
            for t, replica in sorted(run.replicas.items()):
                if t in run.tasks:
                    paths = moe_paths(state_dir, run.job_id, t, replica)
                    _write_atomic(paths[MOE_PLAN_SGLANG_ENV], answer.sglang_json)
                    _write_atomic(paths[MOE_PLAN_ENV], answer.plan_json)
            run.moe_plan = answer.revision
            _log(self.log_prefix, f"{n.name}: job {run.job_id}: moe plan {answer.revision} written")

    def _moe_note(self, state_dir: str, job_id: str, task: int, text: str) -> None:
        _log(self.log_prefix, f"job {job_id} task {task}: {text}")
        _append(log_path(state_dir, job_id, task), f"=== xpod: {text}\n")

    def _stop_run(self, run: JobRun, grace_s: float | None = None) -> None:
        """End every task of ``run`` still running: touch each one's ``XPOD_PREEMPT_NOTICE`` file,
        SIGTERM all their process groups at once, SIGKILL what is left after one grace period
        (not one per task): ``grace_s``, the job's ``grace_period_s`` for a preemption or a
        shrink, else (None) the agent's own; cut to the agent's own from ``run.hurry_at`` (the
        job was cancelled meanwhile)."""
        from xpod.runtime.agent.launch import LaunchedGroup

        grace_s = self.grace_s if grace_s is None else grace_s
        live = {t: h for t, h in run.tasks.items() if t not in run.exits}
        procs = [p for h in live.values() if isinstance(h, ProcessTask) for p in h.group.procs]
        for h in live.values():
            if getattr(h, "notice", ""):
                _notify(h.notice, grace_s)
        if procs:
            LaunchedGroup(procs).terminate(
                grace_s=grace_s, sooner=lambda: None if run.hurry_at is None else run.hurry_at + self.grace_s
            )
        for t, handle in live.items():
            if not isinstance(handle, ProcessTask):
                handle.terminate(grace_s)
            code = handle.poll()
            run.exits[t] = code if code is not None else -1
            close = getattr(handle, "close", None)
            if close:
                close(code)


class _Failed(TaskHandle):
    """A task that could not start: reads as exit code 127 (command not found, as a shell says)."""

    def __init__(self, task: int, reason: str) -> None:
        self.task = task
        self.reason = reason  # one line for the job's message

    def poll(self) -> int | None:
        return 127

    def terminate(self, grace_s: float) -> None:
        pass


# --- building agents --------------------------------------------------------------------------


def local_node_name(client: Any, override: str | None = None) -> str:
    """``override``, else the cluster node whose name is this host's name or short name, else the
    host name."""
    if override:
        return override
    host = socket.gethostname()
    short = host.split(".", 1)[0]
    try:
        known = {n.name for n in client.list_nodes()}
    except XpodError:
        known = set()
    for name in (host, short):
        if name in known:
            return name
    return host


def simulated_pod(cluster_file: str | None) -> list[NodeSpec]:
    """Every node of a cluster descriptor (default: the embedded CloudMatrix384) as simulated nodes."""
    from xpod.hal.cluster import load_cluster, load_default_cluster
    from xpod.scheduler.contract import cluster_records

    cluster = load_cluster(cluster_file) if cluster_file else load_default_cluster()
    out = []
    for view in cluster_records(cluster):
        devices = tuple(LocalDevice(d.index, d.vendor, d.model, d.memory_total_bytes, True) for d in view.devices)
        out.append(NodeSpec(view.name, devices, tuple(sorted({**dict(view.labels), SIMULATED_LABEL: "true"}.items()))))
    return out
