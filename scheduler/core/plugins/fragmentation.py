"""``fragmentation``: FGD-class, fragmentation-aware scoring, the default for device requests.

The node and device for a task are the ones that raise the cluster's fragmentation the least,
FGD's objective (``scheduler.core.frag``; Weng et al., USENIX ATC'23), with three terms FGD does
not have. The cost of a placement, in device milli, is

    cost = dF + cpu_weight * dStranded + hole_weight * dHole - credit(node, device)

* ``dF``: the change of the node's FGD fragmentation against the typical pods.
* ``dStranded``: CPU stranding. A placement that uses up a node's CPU strands its remaining
  devices: ``stranded = max(0, free_milli - cpu_left / rho)``, ``rho`` the workload's CPU per
  device milli (typical pods, CPU-only ones included) x ``rho_scale``: the device milli this
  node cannot fill before its CPU runs out if future tasks look like past ones.
* ``dHole`` (sharing tasks, on the chosen device): how much harder the device's remainder gets
  to fill with the workload's plentiful sharing sizes (``hole_waste``): a 470-milli task
  joining a 530-milli hole (60 left) costs nothing, joining a 680-milli hole (210 left, where a
  common 650-milli task would have left 30) costs 180.
* ``credit``: a sharing task opening an empty device on a node that keeps CPU for its other
  devices earns ``empty_credit * W * (1 - z) ** 2`` milli, ``W`` the fragmentation an empty
  device's usual taker leaves (``empty_device_fragmentation``) and ``z`` the share of
  empty-device demand from whole-device tasks (``whole_device_share``): when most devices are
  taken by tasks that leave an unusable remainder, packing sharing tasks on their own devices
  keeps those devices for better fits. It applies only under load (the "no harm" gate):
  scaled from 0 at device allocation ``credit_from`` to 1 at ``credit_full`` (fractions of the
  cluster's usable device milli), so below ``credit_from`` the plugin never spreads a sharing
  task onto an empty device and a pod the cluster can hold is placed as FGD would place it.

Scores are ``-cost`` in buckets of ``bucket_milli`` (near-equal placements tie); ties go to the
tighter device (least milli left after the task), then to one end of the node list (``ties``).
Typical pods come from the scheduler's history and every submitted job (recomputed when the
jobs seen grew by ``refresh_share``).

Constants: chosen on the six openb pod lists without published results (cpu0, cpu037,
cpu072, cpu300, gpushare20, gpuspec05) and synthetic lists derived from them, against our own
FGD (bench/tune_openb.py); the 14 published lists are the test (bench/replay_openb.py).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..framework import register
from ..frag import PodShape, TypicalPods, Workload, fragmentation, typical_pods
from ..model import MILLI, Job
from ._scored import ArrayScorer
from .fgd import frag_after

#: a sharing size counts as plentiful for ``hole_waste`` when at least this share of the typical
#: sharing tasks has it
PLENTIFUL_SHARE = 0.03


@register
class FragmentationPlugin(ArrayScorer):
    name = "fragmentation"
    ARGS = {
        "ties": "smallest-name",
        "cpu_weight": 1.0,
        "rho_scale": 0.8,
        "hole_weight": 6.0,
        "plentiful_share": PLENTIFUL_SHARE,
        "empty_credit": 0.0,
        "credit_from": 0.0,
        "credit_full": 0.0,
        "bucket_milli": 40.0,
        "fit_ties": 0.0,
        "scarcity_weight": 1.0,
        "refresh_share": 0.05,
        "min_jobs": 32,
        "window_jobs": 20_000,
    }
    ties: str
    cpu_weight: float
    rho_scale: float
    hole_weight: float
    plentiful_share: float
    empty_credit: float
    credit_from: float
    credit_full: float
    bucket_milli: float
    fit_ties: float
    scarcity_weight: float
    refresh_share: float
    min_jobs: int
    window_jobs: int

    def __init__(self, **args) -> None:
        super().__init__(**args)
        self.workload = Workload(refresh_share=self.refresh_share, window=self.window_jobs)

    def _cache_token(self) -> tuple:
        if self.workload.total >= self.min_jobs:
            self.tp = self.workload.typical(self.arrays.models)
            return (self.workload.version, self._credit_level())
        # too few jobs seen to know the workload: no typical pods, best fit alone
        self.tp = typical_pods(Counter(), self.arrays.models)
        return (-1, 0.0)

    def _credit_level(self) -> float:
        """0..1: how far the device allocation is into the credit's ramp, in 1/64 steps (the
        score caches keep for a step)."""
        if self.empty_credit <= 0:
            return 0.0
        arr = self.arrays
        cap = float((arr.model >= 0).sum()) * MILLI
        if cap <= 0:
            return 0.0
        used = 1.0 - float(arr.free.sum()) / cap
        lo, hi = self.credit_from, max(self.credit_full, self.credit_from)
        if used < lo:
            return 0.0
        level = 1.0 if hi <= lo else min(1.0, (used - lo) / (hi - lo))
        return round(level * 64) / 64

    def _prepare(self) -> None:
        arr, tp = self.arrays, self.tp
        self.f_now = fragmentation(arr.cpu_left, arr.free, arr.model, tp)
        self.cpu_per_milli = cpu_per_milli(tp)
        self.rho = self.cpu_per_milli * self.rho_scale
        self.stranded_now = self._stranded(arr.cpu_left.astype(np.float64), arr.free.sum(axis=1))
        self.hole_waste = hole_waste(tp, self.plentiful_share)
        self.pressure = model_pressure(tp, arr)
        self.credit_milli = (
            self._credit_level()
            * self.empty_credit
            * empty_device_fragmentation(tp)
            * (1.0 - whole_device_share(tp)) ** 2
        )

    def _refresh(self, rows: np.ndarray) -> None:
        arr = self.arrays
        self.f_now[rows] = fragmentation(arr.cpu_left[rows], arr.free[rows], arr.model[rows], self.tp)
        self.stranded_now[rows] = self._stranded(arr.cpu_left[rows].astype(np.float64), arr.free[rows].sum(axis=1))

    def _stranded(self, cpu_left, free_total):
        if self.rho <= 0:
            return np.zeros(np.shape(free_total), dtype=np.float64)
        return np.maximum(0.0, free_total - cpu_left / self.rho)

    def _score_rows(self, shape: PodShape, job: Job, rows: np.ndarray):
        ok, usable = self._feasible(shape, job, rows)
        score = np.full(len(rows), -np.inf)
        device = np.full(len(rows), -1)
        if not ok.any():
            return score, device
        arr = self.arrays
        sub = rows[ok]
        f_after, variant_ok = frag_after(arr, self.tp, shape, sub, usable[ok] if usable is not None else None)
        cpu_after = (arr.cpu_left[sub] - shape.cpu_milli).astype(np.float64)
        left_after = (arr.free[sub].sum(axis=1) - shape.count * shape.milli)[:, None].astype(np.float64)
        cost = (f_after - self.f_now[sub][:, None]) + self.cpu_weight * (
            self._stranded(cpu_after[:, None], left_after) - self.stranded_now[sub][:, None]
        )
        if self.scarcity_weight:
            # devices other tasks can use only here: a task that could go elsewhere pays for the
            # devices it takes and for the CPU it takes from them (in device milli at the
            # workload's CPU per device milli), so it leaves those nodes to the tasks that need them
            models = arr.model[sub]
            dev_pressure = np.where(models >= 0, self.pressure[np.maximum(models, 0)], 0.0)
            cpu_as_milli = shape.cpu_milli / self.cpu_per_milli if self.cpu_per_milli > 0 else 0.0
            if variant_ok is None:
                take = shape.count * shape.milli + cpu_as_milli
                cost = cost + (self.scarcity_weight * take) * dev_pressure[:, :1]
            else:
                cost = cost + (self.scarcity_weight * (shape.milli + cpu_as_milli)) * dev_pressure
        # inside a bucket: the tighter device (sharing tasks), then the node left with the least
        # free device milli (best fit, as binpack fills used nodes first); with no typical pods
        # yet every cost is 0 and best fit alone decides
        node_left = (self.fit_ties if len(self.tp) else 1.0) * left_after[:, 0]
        if variant_ok is None:
            s = -cost[:, 0]
            if self.bucket_milli > 0:
                s = np.floor(s / self.bucket_milli)
            score[ok] = s * 1e9 - node_left
            return score, device
        free = arr.free[sub]
        if self.credit_milli > 0:
            opens = free == MILLI
            keeps_cpu = cpu_after[:, None] >= self.rho * left_after
            cost = cost - self.credit_milli * (opens & keeps_cpu)
        if self.hole_weight:
            after = np.maximum(free - shape.milli, 0)
            cost = cost + self.hole_weight * (self.hole_waste[after] - self.hole_waste[free])
        s = -cost
        if self.bucket_milli > 0:
            s = np.floor(s / self.bucket_milli)
        tight = np.where(variant_ok, s * 1e9 - (free - shape.milli) * 1e5, -np.inf)
        best = tight.argmax(axis=1)
        tight = tight - node_left[:, None]
        score[ok] = tight[np.arange(len(sub)), best]
        device[ok] = best
        return score, device


def model_pressure(tp: TypicalPods, arr) -> np.ndarray:
    """Per device model: the share of its capacity that typical tasks restricted to a few models
    claim, over the share of the cluster the whole workload claims (0 where no restricted task
    may use the model). A task that may run elsewhere should leave high-pressure models to the
    tasks that can run nowhere else. Restricted demand is split over the allowed models by
    capacity."""
    models = len(arr.models)
    cap = np.array([float((arr.model == m).sum()) for m in range(models)]) * MILLI
    demand = tp.p * tp.milli * tp.count  # (K,) expected device milli per task
    total_demand, total_cap = float(demand.sum()), float(cap.sum())
    out = np.zeros(max(models, 1))
    if total_demand <= 0 or total_cap <= 0:
        return out
    claim = np.zeros(max(models, 1))
    for k in range(len(tp)):
        allowed = tp.access[k] & (cap > 0)
        if demand[k] <= 0 or allowed.all() or not allowed.any():
            continue
        claim[: len(cap)] += demand[k] * np.where(allowed, cap, 0.0) / cap[allowed].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        out[: len(cap)] = np.where(cap > 0, (claim[: len(cap)] / cap) / (total_demand / total_cap), 0.0)
    return out


def cpu_per_milli(tp: TypicalPods) -> float:
    """The workload's CPU milli per device milli (typical pods, CPU-only ones included)."""
    demand = float((tp.p * tp.milli * tp.count).sum())
    return float((tp.p * tp.cpu_milli).sum()) / demand if demand > 0 else 0.0


def empty_device_fragmentation(tp: TypicalPods) -> float:
    """Expected FGD fragmentation (milli) left on an empty device by the task that takes it.

    Takers are the typical device tasks that cannot share a half-used device (more than 500
    milli, whole or multi-device), weighted by frequency. A taker of ``m`` milli leaves
    ``1000 - m``, whose fragmentation is ``(1000 - m) * P(a typical device task needs more)``;
    whole-device takers leave nothing.
    """
    dev = tp.milli > 0
    if not dev.any():
        return 0.0
    q = tp.p[dev] / tp.p[dev].sum()
    milli, count = tp.milli[dev], tp.count[dev]
    takers = (milli > MILLI // 2) | (count > 1)
    if not takers.any():
        return 0.0
    hole = np.where(count > 1, 0, MILLI - milli)
    frag = hole * (q[None, :] * (milli[None, :] > hole[:, None])).sum(axis=1)
    return float((q[takers] * frag[takers]).sum() / q[takers].sum())


def whole_device_share(tp: TypicalPods) -> float:
    """Share of the typical demand for empty devices (in devices) from whole-device tasks."""
    dev = tp.milli > 0
    takers = dev & ((tp.milli > MILLI // 2) | (tp.count > 1))
    demand = float((tp.p[takers] * np.maximum(tp.count[takers], 1)).sum())
    if demand <= 0:
        return 1.0
    whole = dev & (tp.milli == MILLI)
    return float((tp.p[whole] * tp.count[whole]).sum()) / demand


def hole_waste(tp: TypicalPods, share_min: float = PLENTIFUL_SHARE) -> np.ndarray:
    """``D[h]`` for h = 0..1000: the milli of a device hole of ``h`` that no sum of plentiful
    sharing sizes fills, ``h - max{s <= h : s a sum of plentiful sizes, repeats allowed}``.

    Plentiful sizes: every milli held by at least ``share_min`` of the typical sharing tasks
    (one device, under 1000 milli), plus 1000 when a one-device whole task is typical. Under
    load the common sizes keep arriving, so a hole is eventually offered its best common
    completion; rare sizes are not (there are more such holes than such tasks).
    """
    single = (tp.milli > 0) & (tp.count == 1)
    sharing = single & (tp.milli < MILLI)
    shares: dict[int, float] = {}
    total = float(tp.p[sharing].sum())
    for m, w in zip(tp.milli[sharing].tolist(), tp.p[sharing].tolist()):
        shares[m] = shares.get(m, 0.0) + w / total
    sizes = [m for m, w in shares.items() if w >= share_min]
    if (single & (tp.milli == MILLI)).any():
        sizes.append(MILLI)
    reach = np.zeros(MILLI + 1, dtype=bool)
    reach[0] = True
    for v in range(1, MILLI + 1):
        reach[v] = any(v >= m and reach[v - m] for m in sizes)
    best = np.maximum.accumulate(np.where(reach, np.arange(MILLI + 1), 0))
    return (np.arange(MILLI + 1) - best).astype(np.float64)
