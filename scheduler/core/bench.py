"""``xpod bench scheduler``: placement decisions per second with N jobs queued.

The workload (seeded, deterministic): a mix of training gangs (16 to 256 devices in tasks of a
whole node's worth, ``within: supernode`` when the cluster has super-nodes), serving jobs (2-4
replicas of 1-8 devices), multi-node serving jobs (1-2 replicas of 2 whole-node tasks,
``tasks_per_replica: 2``, ``within: supernode`` when the cluster has super-nodes, else
``any``), fractional jobs (100-900 milli of one device) and single-device batch jobs, on the
cluster's most common device model. Each job has a seeded submit time spread over the hour
before the first cycle (the clock starts at ``BENCH_START_SECONDS``) and a seeded priority
class (``PRIORITY_MIX``), so the queue order mixes the kinds as a real queue does (with equal
priorities and submit times it would fall to the job ids). Phase 1 (cold pass) runs one cycle
over the whole queue. Phase 2 (steady state) repeatedly completes the earliest-ending quarter
of the running jobs and runs a cycle, until the queue is empty or ``max_cycles`` passed.

``decisions`` counts jobs a cycle either bound or gave a pending reason (with numbers);
``placements`` counts jobs bound (per cycle, so a job placed again after an eviction counts
again), ``placed_by_kind`` the same per kind of job. Both are reported; the rate is per second
of cycle time (the Python scheduling work only: no gRPC, no store).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

from .scheduler import Scheduler
from .model import CLUSTER, Device, DeviceRequest, Job, JobKind, Node


@dataclasses.dataclass(frozen=True)
class BenchResult:
    nodes: int
    devices: int
    pending: int
    cold_cycle_seconds: float
    cold_decisions: int
    cold_placements: int
    cycles: int
    decisions: int
    placements: int
    cycle_seconds: float
    p50_cycle_seconds: float
    p99_cycle_seconds: float
    left_pending: int
    # kind -> placements of that kind (training, serving, serving-multinode, fractional, batch)
    placed_by_kind: dict = dataclasses.field(default_factory=dict)
    evictions: int = 0  # jobs preempted or reclaimed in the measured cycles

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.cycle_seconds if self.cycle_seconds else 0.0

    @property
    def placements_per_s(self) -> float:
        return self.placements / self.cycle_seconds if self.cycle_seconds else 0.0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["decisions_per_s"] = round(self.decisions_per_s, 1)
        d["placements_per_s"] = round(self.placements_per_s, 1)
        d["cold_decisions_per_s"] = (
            round(self.cold_decisions / self.cold_cycle_seconds, 1) if self.cold_cycle_seconds else 0.0
        )
        return d


def synthetic_nodes(
    n: int, devices_per_node: int = 8, model: str = "nvidia-h100-sxm", vendor: str = "cuda"
) -> list[Node]:
    """``n`` identical nodes (kube-scheduler's SchedulingBasic uses 5,000)."""
    devs = tuple(Device(i, model, vendor, 80 * 2**30, 989.0) for i in range(devices_per_node))
    width = len(str(n - 1))
    return [Node(f"node-{i:0{width}d}", 128_000, 2**40, devs, failure_domain=f"rack-{i // 32}") for i in range(n)]


#: the clock at the first cycle: the mixed workload's jobs were submitted over the hour before
BENCH_START_SECONDS = 3600.0

#: (priority class, share of jobs): most work at normal priority, some urgent, some scavenging
PRIORITY_MIX = (("high", 0.15), ("normal", 0.6), ("low", 0.25))

#: job kinds in the mixed workload, in the order of their id prefixes
KINDS = ("training", "serving", "serving-multinode", "fractional", "batch")


def kind_of(job_id: str) -> str:
    """The workload kind a bench job id names (``serving-multinode-12`` -> serving-multinode)."""
    return job_id.rsplit("-", 1)[0]


def mixed_jobs(nodes: list[Node], n: int, seed: int = 0) -> list[Job]:
    """``n`` seeded jobs: 15 % training gangs, 15 % serving, 5 % multi-node serving, 30 %
    fractional, 35 % single-device batch; submit times uniform over the hour before
    ``BENCH_START_SECONDS``, priority classes drawn from ``PRIORITY_MIX``."""
    rng = random.Random(seed)
    models = Counter(d.model for nd in nodes for d in nd.devices)
    model, _ = models.most_common(1)[0]
    per_node = max(len([d for d in nd.devices if d.model == model]) for nd in nodes)
    has_sn = any("supernode" in nd.domains for nd in nodes)
    total = sum(models.values())
    classes = [c for c, _ in PRIORITY_MIX]
    weights = [w for _, w in PRIORITY_MIX]
    jobs = []
    for i in range(n):
        r = rng.random()
        # submit times strictly inside the hour (0 would mean "now" to Scheduler.submit)
        common: dict[str, Any] = dict(
            submit_time=rng.uniform(1.0, BENCH_START_SECONDS), priority_class=rng.choices(classes, weights)[0]
        )
        if r < 0.15 and total >= 16:
            dies = rng.choice([16, 32, 64, 128, 256])
            dies = min(dies, total)
            tasks = max(1, dies // per_node)
            jobs.append(
                Job(
                    f"training-{i}",
                    JobKind.TRAINING,
                    tasks,
                    DeviceRequest(count=per_node, model=model),
                    within="supernode" if has_sn else CLUSTER,
                    expected_duration_seconds=rng.uniform(600, 7200),
                    **common,
                )
            )
        elif r < 0.30:
            k = min(rng.choice([1, 2, 4, 8]), per_node)
            hi = rng.randint(2, 4)
            jobs.append(
                Job(
                    f"serving-{i}",
                    JobKind.SERVING,
                    hi,
                    DeviceRequest(count=k, model=model),
                    min_tasks=rng.randint(1, hi),
                    expected_duration_seconds=rng.uniform(600, 7200),
                    **common,
                )
            )
        elif r < 0.35 and len(nodes) >= 2:
            # replicas of two whole-node tasks (a model sharded over two nodes), placed whole
            hi = rng.randint(1, 2)
            jobs.append(
                Job(
                    f"serving-multinode-{i}",
                    JobKind.SERVING,
                    2 * hi,
                    DeviceRequest(count=per_node, model=model),
                    min_tasks=2,
                    replica_tasks=2,
                    within="supernode" if has_sn else CLUSTER,
                    expected_duration_seconds=rng.uniform(600, 7200),
                    **common,
                )
            )
        elif r < 0.65:
            jobs.append(
                Job(
                    f"fractional-{i}",
                    JobKind.BATCH,
                    1,
                    DeviceRequest(count=1, model=model, milli=rng.choice([100, 250, 300, 500, 700, 900])),
                    cpu_milli=1000,
                    expected_duration_seconds=rng.uniform(60, 3600),
                    **common,
                )
            )
        else:
            jobs.append(
                Job(
                    f"batch-{i}",
                    JobKind.BATCH,
                    1,
                    DeviceRequest(count=1, model=model),
                    cpu_milli=1000,
                    expected_duration_seconds=rng.uniform(60, 3600),
                    **common,
                )
            )
    return jobs


def single_device_jobs(n: int, model: str) -> list[Job]:
    """kube-scheduler SchedulingBasic-like: n pods of one device each."""
    return [Job(f"pod-{i}", JobKind.BATCH, 1, DeviceRequest(count=1, model=model), cpu_milli=1000) for i in range(n)]


def run(
    nodes: list[Node], jobs: list[Job], max_cycles: int = 50, profile=None, progress=None, fabric=None
) -> BenchResult:
    clock = [BENCH_START_SECONDS]
    s = Scheduler(nodes, profile=profile, clock=lambda: clock[0], fabric=fabric)
    for j in jobs:
        s.submit(j)
    times = []
    by_kind: Counter = Counter()
    evictions = 0

    def count(r) -> int:
        nonlocal evictions
        placed = {b.job_id for b in r.bindings}
        by_kind.update(kind_of(j) for j in placed)
        evictions += len(r.evictions)
        return len(placed)

    r = s.cycle()
    cold = r
    times.append(r.seconds)
    decisions, placements = r.decisions, count(r)
    cycles = 1
    while s.pending and cycles < max_cycles:
        # complete the running jobs that end first, then schedule again
        ends = sorted(s.running.items(), key=lambda kv: (kv[1].expected_end or 0.0, kv[0]))
        if not ends:
            break
        batch = max(1, len(ends) // 4)
        for jid, rj in ends[:batch]:
            clock[0] = max(clock[0], rj.expected_end or clock[0])
            s.finish(jid)
        r = s.cycle()
        times.append(r.seconds)
        decisions += r.decisions
        placements += count(r)
        cycles += 1
        if progress:
            progress(cycles, max_cycles)
    times_sorted = sorted(times)
    return BenchResult(
        nodes=len(nodes),
        devices=sum(len(n.devices) for n in nodes),
        pending=len(jobs),
        cold_cycle_seconds=cold.seconds,
        cold_decisions=cold.decisions,
        cold_placements=len({b.job_id for b in cold.bindings}),
        cycles=cycles,
        decisions=decisions,
        placements=placements,
        cycle_seconds=sum(times),
        p50_cycle_seconds=times_sorted[len(times) // 2],
        p99_cycle_seconds=times_sorted[min(len(times) - 1, int(0.99 * len(times)))],
        left_pending=len(s.pending),
        placed_by_kind={
            k: by_kind[k] for k in sorted(by_kind, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))
        },
        evictions=evictions,
    )
