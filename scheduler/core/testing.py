"""Fluent builders for scheduler tests (in the package so every area's tests can use them).

    node("n1").devices("ascend-910c", 16).supernode("sp0").build()
    job("j1").training(tasks=2).devices("ascend-910c", 16).within("supernode").build()

Builders name the topology level ``supernode`` (``NodeBuilder.supernode``; ``level`` for any
other) and give 910B NPUs device groups of 4 and 910C dies packages of 2, as descriptors do.

Device facts per model come from a small table (per schedulable device: 910C dies carry half a
package's memory and BF16), enough for tests; real clusters come from descriptors
(``scheduler.from_cluster``).
"""

from __future__ import annotations

from .model import MILLI, Autoscale, Device, DeviceRequest, Job, JobKind, LoadMetric, Node

GiB = 2**30

#: model -> (vendor, memory_bytes per device, bf16 TFLOPS per device)
MODEL_FACTS = {
    "ascend-910c": ("ascend", 64 * GiB, 376.0),
    "ascend-910b3": ("ascend", 64 * GiB, 256.0),
    "ascend-910b2": ("ascend", 64 * GiB, 320.0),
    "nvidia-h100-sxm": ("cuda", 80 * GiB, 989.0),
    "nvidia-a100-40gb": ("cuda", 40 * GiB, 312.0),
    "cambricon-mlu370-x8": ("cambricon", 24 * GiB, 96.0),
    "gpu": ("cuda", 16 * GiB, 100.0),
}


class NodeBuilder:
    def __init__(self, name: str) -> None:
        self._name = name
        self._cpu = 256_000
        self._mem = 2048 * GiB
        self._devices: list[Device] = []
        self._domains: dict[str, str] = {}
        self._domain: str | None = None
        self._labels: dict[str, str] = {}

    def devices(self, model: str, count: int) -> "NodeBuilder":
        vendor, mem, tflops = MODEL_FACTS.get(model, ("cuda", 16 * GiB, 100.0))
        base = len(self._devices)
        for k in range(count):
            i = base + k
            self._devices.append(
                Device(
                    index=i,
                    model=model,
                    vendor=vendor,
                    memory_bytes=mem,
                    bf16_tflops=tflops,
                    group=i // 4 if model.startswith("ascend-910b") else None,
                    package=i // 2 if model.startswith("ascend-910c") else None,
                )
            )
        return self

    def cpu(self, cores: float) -> "NodeBuilder":
        self._cpu = int(cores * 1000)
        return self

    def memory_gib(self, gib: float) -> "NodeBuilder":
        self._mem = int(gib * GiB)
        return self

    def supernode(self, name: str | None) -> "NodeBuilder":
        """The node's super-node (the ``supernode`` topology level); None: none."""
        return self.level("supernode", name)

    def level(self, level: str, name: str | None) -> "NodeBuilder":
        """The node's domain at a topology level (None: none at that level)."""
        if name is None:
            self._domains.pop(level, None)
        else:
            self._domains[level] = name
        return self

    def domain(self, name: str) -> "NodeBuilder":
        self._domain = name
        return self

    def labels(self, **labels: str) -> "NodeBuilder":
        """Node labels (``xpod_simulated="true"`` is the label ``xpod/simulated``: ``_`` -> ``/``)."""
        self._labels.update({k.replace("_", "/"): v for k, v in labels.items()})
        return self

    def build(self) -> Node:
        return Node(
            self._name,
            self._cpu,
            self._mem,
            tuple(self._devices),
            dict(self._domains),
            self._domain,
            dict(self._labels),
        )


class JobBuilder:
    def __init__(self, job_id: str) -> None:
        self._kw: dict = {"id": job_id, "kind": JobKind.BATCH, "tasks": 1, "devices": None}

    def training(self, tasks: int = 1, min_tasks: int | None = None) -> "JobBuilder":
        self._kw.update(kind=JobKind.TRAINING, tasks=tasks, min_tasks=min_tasks)
        return self

    def serving(self, min_replicas: int, max_replicas: int, tasks_per_replica: int = 1) -> "JobBuilder":
        """Replicas of ``tasks_per_replica`` tasks each (the task counts scale, as the spec's)."""
        t = tasks_per_replica
        self._kw.update(kind=JobKind.SERVING, tasks=max_replicas * t, min_tasks=min_replicas * t, replica_tasks=t)
        return self

    def batch(self, tasks: int = 1) -> "JobBuilder":
        self._kw.update(kind=JobKind.BATCH, tasks=tasks)
        return self

    def devices(self, model: str | None, count: int = 1, milli: int = MILLI, **caps) -> "JobBuilder":
        self._kw["devices"] = DeviceRequest(count=count, model=model, milli=milli, **caps)
        return self

    def cpu(self, cores: float) -> "JobBuilder":
        self._kw["cpu_milli"] = int(cores * 1000)
        return self

    def within(self, w: str) -> "JobBuilder":
        self._kw["within"] = w
        return self

    def queue(self, q: str) -> "JobBuilder":
        self._kw["queue"] = q
        return self

    def priority(self, cls: str) -> "JobBuilder":
        self._kw["priority_class"] = cls
        return self

    def duration(self, seconds: float) -> "JobBuilder":
        self._kw["expected_duration_seconds"] = seconds
        return self

    def submitted(self, t: float) -> "JobBuilder":
        self._kw["submit_time"] = t
        return self

    def selector(self, **labels: str) -> "JobBuilder":
        """Required node labels (``_`` in a keyword is ``/`` in the label, as in ``labels``)."""
        self._kw["node_selector"] = tuple(sorted((k.replace("_", "/"), v) for k, v in labels.items()))
        return self

    def domain_block(self, devices: int) -> "JobBuilder":
        self._kw["domain_block"] = devices
        return self

    def autoscale(
        self,
        target_per_replica: float,
        up_after_s: float = 0.0,
        down_after_s: float = 300.0,
        metric: str = "tokens_per_s",
    ) -> "JobBuilder":
        self._kw["autoscale"] = Autoscale(LoadMetric(metric), target_per_replica, up_after_s, down_after_s)
        return self

    def build(self) -> Job:
        return Job(**self._kw)


def node(name: str) -> NodeBuilder:
    return NodeBuilder(name)


def job(job_id: str) -> JobBuilder:
    return JobBuilder(job_id)


def placements(result_or_bindings) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """job id -> [(node, device indices)] in task order, from a CycleResult or bindings."""
    bs = getattr(result_or_bindings, "bindings", result_or_bindings)
    out: dict[str, list] = {}
    for b in sorted(bs, key=lambda b: (b.job_id, b.task)):
        out.setdefault(b.job_id, []).append((b.node, b.device_indices))
    return out


def run_case(case: dict):
    """Run one declarative case: ``nodes`` (builders), optional ``queues``, ``profile`` (dict),
    ``running`` (jobs placed first, at t=0; all must bind) and ``jobs`` submitted after them,
    then one cycle at ``now`` (default 1.0). Returns ``(scheduler, CycleResult)``."""
    from .scheduler import Scheduler
    from .model import Queue
    from .profile import profile_from_dict

    t = [0.0]
    profile = profile_from_dict(case["profile"]) if "profile" in case else None
    s = Scheduler(
        [n.build() for n in case["nodes"]],
        queues=case.get("queues", [Queue("default")]),
        profile=profile,
        clock=lambda: t[0],
    )
    for j in case.get("running", []):
        s.submit(j.build())
    if case.get("running"):
        first = s.cycle()
        assert {b.job_id for b in first.bindings} == {j.build().id for j in case["running"]}, "setup jobs must all run"
    for j in case["jobs"]:
        s.submit(j.build())
    t[0] = case.get("now", 1.0)
    return s, s.cycle()


def assert_supernode_reserve_kept(snapshot, reserve_nodes: int) -> dict[str, int]:
    """Every super-node with a device in use keeps at least ``reserve_nodes`` wholly free nodes
    (MindCluster's reserve); returns the wholly free nodes per super-node."""
    free: dict[str, int] = {}
    used: set[str] = set()
    for state in snapshot.nodes.values():
        sn = state.node.domains.get("supernode")
        if all(f == MILLI for f in state.free_milli):
            free[sn] = free.get(sn, 0) + 1
        else:
            used.add(sn)
    for sn in used:
        assert free.get(sn, 0) >= reserve_nodes, f"{sn} reserve eaten"
    return free


__all__ = [
    "node",
    "job",
    "placements",
    "run_case",
    "assert_supernode_reserve_kept",
    "NodeBuilder",
    "JobBuilder",
    "MODEL_FACTS",
]
