"""``xpod demo``: the whole system end to end on this one machine (what ``make demo`` runs).

1. This host: the devices every available backend finds, and what `xpod doctor` says.
2. The embedded system: ``xpod up`` as a child process (scheduler with SQLite, an agent for this
   host's real devices, a simulated CloudMatrix384 pod of 768 dies) on loopback ports.
3. A real training job on this machine: one task holding the host's CPU device runs
   ``xpod run --nproc 3`` of ``xpod.runtime.cli.demo.train`` (data-parallel training whose gradients
   go through ``xpod.hal.collectives``); its log shows the loss falling.
4. An MoE serving job on the simulated pod: expert placement for DeepSeek-V3 from SGLang's
   recorded expert loads, scored beside DeepSeek's EPLB (``xpod.runtime.moe.eplb``, written from its
   description), then a ServingJob submitted for the dies it needs.
5. A slice of the Microsoft Philly trace replayed into the simulated pod at accelerated time,
   with utilisation and queue length printed as it runs.
6. Serving and training on one pod: twenty virtual minutes of ``xpod replay mix`` (the scheduler
   core over virtual time, ``xpod.scheduler.sim.mix``) on the simulated CloudMatrix384: an
   Azure conversation trace's demand scaled to a 40-replica peak, Philly training behind it,
   the default profile beside the static-partition and reactive-HPA baselines.
7. Where the metrics are; then a clean shutdown (SIGTERM, exit code checked).
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import resources


from xpod.hal.errors import XpodError
from xpod.runtime.cli.output import console as make_console
from xpod.runtime.cli.output import print_table
from xpod.runtime.cli.output import table as Table  # noqa: N812 (cells wrap, never cut)
from xpod.runtime.client import job_state

console = make_console()
DATA = "data"  # runtime/cli/demo/data, shipped as package data


def _data_path(name: str) -> str:
    return str(resources.files("xpod.runtime.cli.demo").joinpath(DATA, name))


def _free_port() -> int:
    from xpod.runtime.agent.launch import free_port

    return free_port()


def _stage(n: int, title: str) -> None:
    console.rule(f"[bold cyan]{n}. {title}")


class Embedded:
    """``xpod up`` as a child process; ``stop()`` sends SIGTERM and checks it exits 0."""

    def __init__(self, state_dir: str, node_timeout_s: float = 10.0) -> None:
        self.addr = f"127.0.0.1:{_free_port()}"
        self.metrics = f"127.0.0.1:{_free_port()}"
        self.state_dir = state_dir
        self.log_path = os.path.join(state_dir, "xpod-up.log")
        self._log = open(self.log_path, "w")
        cmd = [
            sys.executable,
            "-m",
            "xpod",
            "up",
            "--listen",
            self.addr,
            "--metrics",
            self.metrics,
            "--state-dir",
            state_dir,
            "--node-timeout",
            str(node_timeout_s),
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        from xpod.runtime.client import Client, resolve_target

        deadline = time.monotonic() + timeout_s
        last = ""
        token = os.path.join(self.state_dir, "admin-token")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise XpodError(f"xpod up exited with code {self.proc.returncode}; see {self.log_path}")
            if os.path.exists(token):
                os.environ["XPOD_TOKEN_FILE"] = token  # this demo's clients and the CLI it runs
            try:
                with Client(resolve_target(self.addr), timeout_s=2.0) as c:
                    nodes = c.list_nodes()
                # Ready once every node is (the agent registered this host's real CPU device
                # and the simulated pod's Ascend dies).
                vendors = {d.vendor for n in nodes for d in n.devices}
                if nodes and all(n.ready for n in nodes) and {"cpu", "ascend"} <= vendors:
                    return
            except XpodError as err:
                last = str(err)
            time.sleep(0.5)
        raise XpodError(f"xpod up did not become ready within {timeout_s:.0f} s ({last}); see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _client(addr: str):
    from xpod.runtime.client import Client, resolve_target

    return Client(resolve_target(addr), timeout_s=10.0)


def _wait_job(addr: str, job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    state = "?"
    with _client(addr) as c:
        while time.monotonic() < deadline:
            state = job_state(c.get(job_id).job)
            if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return state
            time.sleep(0.5)
    raise XpodError(f"job {job_id} still {state} after {timeout_s:.0f} s")


# -- stages ------------------------------------------------------------------------------


def host_devices() -> None:
    from xpod.hal.registry import probe_all

    statuses = probe_all()
    table = Table(title="devices on this host")
    for col in ("backend", "index", "model", "memory", "health", "detail"):
        table.add_column(col)
    for s in statuses:
        if s.backend is None or s.backend.simulated:
            continue
        for d in s.backend.devices():
            mem = "-" if d.memory_total_bytes is None else f"{d.memory_total_bytes / 2**30:.1f} GiB"
            detail = d.name or ""
            if d.vendor == "cpu":
                detail = f"{d.name}; {d.extra.get('cores')} cpus, NUMA node {d.numa_node}"
            table.add_row(s.name, str(d.index), d.model or "-", mem, d.health.value, detail)
    print_table(table)
    down = [s for s in statuses if s.backend is None]
    for s in down:
        console.print(f"  [dim]{s.name}: unavailable: {s.reason}[/]")


def training_job(addr: str, state_dir: str, steps: int) -> None:
    doc = {
        "apiVersion": "xpod/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "demo-ddp"},
        "spec": {
            "tasks": 1,
            "devices": {"count": 1, "vendor": "cpu"},
            "command": [
                sys.executable,
                "-m",
                "xpod",
                "run",
                "--nproc",
                "3",
                "-m",
                "xpod.runtime.cli.demo.train",
                "--steps",
                str(steps),
            ],
            "restart": {"max_restarts": 0},
        },
    }
    with _client(addr) as c:
        job = c.submit(doc).job
    console.print(f"submitted {job.id}: TrainingJob 'demo-ddp' (1 task on this host's CPU device, 3 DDP ranks)")
    state = _wait_job(addr, job.id, timeout_s=240)
    log_dir = os.path.join(state_dir, "logs", job.id)
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        with open(os.path.join(log_dir, name)) as f:
            for line in f:
                if "loss" in line or "exited" in line:
                    console.print(f"  {line.rstrip()}", markup=False, highlight=False)
    if state != "SUCCEEDED":
        raise XpodError(f"training job {job.id} ended {state}; logs in {log_dir}")
    console.print(f"{job.id} SUCCEEDED")


def moe_serving(addr: str, workload: str = "") -> None:
    import numpy as np

    from xpod.runtime.moe.io import load_workload
    from xpod.runtime.moe.placement import PodShape, place
    from xpod.runtime.moe.score import score

    npz = _data_path("deepseek_v3_sglang_expert_load.npz")
    if not workload:
        with np.load(npz) as f:
            workload = sorted(k for k in f.files)[0]
    loads = load_workload(npz, workload)
    # EP64 on 4 CloudMatrix384 nodes (16 dies each), 5 expert slots per die: 320 slots per layer.
    devices, nodes, slots, groups = 64, 4, 5, 8
    shape = PodShape(devices, nodes, slots)
    t0 = time.perf_counter()
    placement = place(loads, shape, num_groups=groups)
    ours_s = time.perf_counter() - t0
    ours = score(loads, placement.phy2log, placement.slot_device, shape.device_node(), placement.slot_share, groups)
    table = Table(
        title=f"DeepSeek-V3 expert placement, workload '{workload}', EP{devices} on {nodes} nodes, {devices * slots} slots"
    )
    for col in ("policy", "balancedness", "worst layer", "duplicates", "nodes per group", "seconds"):
        table.add_column(col)
    table.add_row(
        "xpod",
        f"{ours.balancedness:.4f}",
        f"{ours.worst_layer_balancedness:.3f}",
        str(ours.duplicates),
        f"{ours.group_spread:.2f}",
        f"{ours_s:.3f}",
    )
    from xpod.runtime.moe.eplb import rebalance

    for pol in ("hierarchical", "global"):
        t0 = time.perf_counter()
        plan = rebalance(loads, devices * slots, groups, nodes, devices, policy=pol)
        secs = time.perf_counter() - t0
        s = score(loads, plan.phy2log, plan.slot_device, shape.device_node(), None, groups)
        table.add_row(
            f"EPLB {pol}",
            f"{s.balancedness:.4f}",
            f"{s.worst_layer_balancedness:.3f}",
            str(s.duplicates),
            f"{s.group_spread:.2f}",
            f"{secs:.3f}",
        )
    print_table(table)
    doc = {
        "apiVersion": "xpod/v1",
        "kind": "ServingJob",
        "metadata": {"name": "deepseek-v3-ep64"},
        "spec": {
            # Four one-node replicas of 16 dies, one per node of the EP group, each its own
            # world of one task. One EP64 instance over the 4 nodes would be `replicas: 1,
            # tasks_per_replica: 4, within: supernode`: a world of 4 tasks placed whole in one
            # super-node (examples/jobs/deepseek-serving-supernode.yaml); the demo keeps this shape.
            "replicas": {"min": nodes, "max": nodes},
            "devices": {"count": devices // nodes, "model": "ascend-910c"},
            "within": "node",
            "simulate": {"duration_s": 3600},
        },
    }
    with _client(addr) as c:
        job = c.submit(doc).job
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = c.get(job.id).job
            if job.allocations:
                break
            time.sleep(0.3)
    nodes_used = sorted({a.node for a in job.allocations})
    console.print(
        f"submitted {job.id}: ServingJob 'deepseek-v3-ep64' ({nodes} replicas x {devices // nodes} dies) -> {job_state(job)} on "
        f"{len(nodes_used)} simulated node(s): {', '.join(nodes_used) or '(pending)'}"
    )


def replay_trace(addr: str, seconds: float = 20.0, max_jobs: int = 400) -> None:
    with open(_data_path("philly_slice.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:max_jobs]
    t_first = int(rows[0]["submit_s"])
    span = max(1, int(rows[-1]["submit_s"]) - t_first)
    speedup = span / seconds
    console.print(
        f"Philly trace slice: {len(rows)} jobs over {span / 3600:.1f} h, replayed {speedup:.0f}x faster "
        f"(1 GPU -> one Ascend 910C package = 2 dies)"
    )
    docs = []
    for r in rows:
        dies = 2 * int(r["num_devices"])
        tasks = max(1, math.ceil(dies / 16))
        per_task = dies if tasks == 1 else 16
        docs.append(
            (
                (int(r["submit_s"]) - t_first) / speedup,
                {
                    "apiVersion": "xpod/v1",
                    "kind": "TrainingJob",
                    "metadata": {"name": r["job_id"]},
                    "spec": {
                        "tasks": tasks,
                        "devices": {"count": per_task, "model": "ascend-910c"},
                        "within": "node" if tasks == 1 else "supernode",
                        "queue": "default",
                        "simulate": {"duration_s": round(min(30.0, max(0.2, int(r["duration_s"]) / speedup)), 2)},
                    },
                },
            )
        )
    submitted: list[str] = []
    errors: list[str] = []

    def submitter() -> None:
        start = time.monotonic()
        with _client(addr) as c:
            for at, doc in docs:
                delay = at - (time.monotonic() - start)
                if delay > 0:
                    time.sleep(delay)
                try:
                    submitted.append(c.submit(doc).job.id)
                except XpodError as err:
                    errors.append(str(err))

    th = threading.Thread(target=submitter, daemon=True)
    th.start()
    table = Table(title="simulated CloudMatrix384 pod under the Philly slice")
    for col in ("t (s)", "submitted", "queued", "running", "done", "dies allocated", "utilisation"):
        table.add_column(col, justify="right")
    start = time.monotonic()
    peak = 0.0
    with _client(addr) as c:
        while True:
            time.sleep(2.0)
            devs = [d for d in c.list_devices() if d.model == "ascend-910c"]
            used = sum(d.allocated_milli for d in devs) / 1000
            util = used / max(1, len(devs))
            peak = max(peak, util)
            counts = {"QUEUED": 0, "RUNNING": 0, "SCHEDULED": 0, "SUCCEEDED": 0, "FAILED": 0, "CANCELLED": 0}
            for j in c.list():
                if j.name.startswith("philly-"):
                    counts[job_state(j)] += 1
            done = counts["SUCCEEDED"] + counts["FAILED"] + counts["CANCELLED"]
            table.add_row(
                f"{time.monotonic() - start:.0f}",
                str(len(submitted)),
                str(counts["QUEUED"]),
                str(counts["RUNNING"] + counts["SCHEDULED"]),
                str(done),
                f"{used:.0f} / {len(devs)}",
                f"{util:.0%}",
            )
            if (not th.is_alive() and counts["QUEUED"] == 0) or time.monotonic() - start > seconds + 40:
                break
    print_table(table)
    console.print(
        f"peak utilisation {peak:.0%}; {len(submitted)} jobs submitted"
        + (f", {len(errors)} refused: {errors[0]}" if errors else "")
    )


def mix_replay(minutes: float = 20.0) -> None:
    """``xpod replay mix`` for a few virtual minutes, its numbers as a table (what its plot shows)."""
    from xpod.scheduler.sim import mix

    cluster = str(resources.files("xpod.hal") / "clusters" / "cloudmatrix384.yaml")
    profiles = mix.profiles_to_compare()
    settings = mix.MixSettings(hour_s=minutes * 60.0, training_from_s=30 * 86400.0)
    console.print(
        f"{minutes:.0f} virtual minutes: Azure conversation trace (demand per 10 s, peak = 40 replicas x 8 dies), "
        "Philly jobs of day 30 behind it, on the simulated CloudMatrix384 (768 dies)"
    )
    table = Table(title="xpod replay mix: the default profile and the two baselines (scheduler/sim/profiles/)")
    for col in (
        "profile",
        "SLO attainment",
        "scale-up p99 s",
        "serving dev-h",
        "training dev-h",
        "restarts",
        "preempted",
    ):
        table.add_column(col, justify="left" if col == "profile" else "right")
    for name, prof in profiles:
        r = mix.run_mix(
            cluster,
            _data_path("mix_azure_conv.csv.gz"),
            _data_path("mix_chat.yaml"),
            40,
            _data_path("mix_philly_day30_20min.csv"),
            prof,
            name,
            settings,
        )
        table.add_row(
            name,
            f"{r.slo_attainment:.3f}",
            f"{r.scale_up_p99_s:.0f}",
            f"{r.serving_device_hours:.1f}",
            f"{r.training_device_hours:.1f}",
            str(r.gang_restarts),
            str(r.preemptions),
        )
    print_table(table)
    console.print("the whole hour and its plot: xpod replay mix ... --plot mix.png (README, bench/replay_mix.py)")


def run_demo(state_dir: str | None = None, steps: int = 60, replay_seconds: float = 20.0) -> int:
    """The stages above. A temporary state directory (no ``state_dir``) is removed at the end,
    unless the demo failed: then it is kept for its logs, and its path is printed."""
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    own = state_dir is None
    state_dir = state_dir or tempfile.mkdtemp(prefix="xpod-demo-")
    os.makedirs(state_dir, exist_ok=True)
    t_start = time.monotonic()
    code, failed = 1, True
    try:
        _stage(1, "this host")
        host_devices()
        _stage(2, "the embedded system: scheduler + local agent + simulated CloudMatrix384 pod")
        emb = Embedded(state_dir)
        try:
            emb.wait_ready()
            with _client(emb.addr) as c:
                nodes = c.list_nodes()
            console.print(f"xpod up (a child process, until the demo ends): {len(nodes)} nodes registered")
            _stage(3, "a real training job on this machine")
            training_job(emb.addr, state_dir, steps)
            _stage(4, "MoE serving on the simulated pod, placement from real expert loads")
            moe_serving(emb.addr)
            _stage(5, "a real trace replayed into the simulated pod")
            replay_trace(emb.addr, seconds=replay_seconds)
            _stage(6, "serving that follows its demand, training that yields (virtual time)")
            mix_replay()
            _stage(7, "metrics")
            console.print(
                "scheduler metrics, as Prometheus scrapes them from `xpod up --metrics` "
                "(config: deploy/prometheus/prometheus.yml):"
            )
            import urllib.request

            with urllib.request.urlopen(f"http://{emb.metrics}/metrics", timeout=5) as resp:
                body = resp.read().decode()
            for line in body.splitlines():
                if line.startswith(
                    ("xpod_scheduler_pending_jobs", "xpod_scheduler_devices{", "xpod_scheduler_schedule_attempts_total")
                ):
                    console.print(f"  {line}", markup=False, highlight=False)
            failed = False
        except KeyboardInterrupt:
            failed = False  # nothing to look into: the temporary directory goes too
            raise
        finally:
            code = emb.stop()
    finally:
        kept = not own or (failed or code != 0)
        if own and not kept:
            shutil.rmtree(state_dir, ignore_errors=True)
        console.print(
            f"xpod up stopped (exit code {code}); demo took {time.monotonic() - t_start:.0f} s; "
            + (f"state kept in {state_dir}" if kept else "its temporary state directory is removed")
            + "; for a system that stays up: xpod up"
        )
    return 0 if code == 0 else 1
