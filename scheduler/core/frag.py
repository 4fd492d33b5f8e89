"""GPU-sharing fragmentation, as FGD measures it, over numpy arrays of nodes.

Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation
Gradient Descent", USENIX ATC'23 (research/scheduler.md section 2.1), define a node's
fragmentation against the workload's *typical pods*, the most frequent pod shapes that together
make up 95 % of the pods: for a typical pod ``k``, ``frag_k(node)`` is all the idle device milli
of the node when ``k`` cannot run there (wrong model, too little CPU, too few devices with
enough milli left), and otherwise only the milli on the devices ``k`` could not use. A CPU-only
typical pod counts all idle device milli. The node's fragmentation is
``F = sum_k p_k * frag_k`` (``p_k`` = the shape's share of the typical pods), and the cluster's
is the sum over nodes (the paper's Fig. 7 plots it in % of device capacity).

This module holds the pure pieces: ``Workload`` (typical pods learnt from the jobs seen),
``NodeArrays`` (the snapshot's free resources as arrays, kept current from the snapshot's change
journal) and ``fragmentation`` (F for many node states at once). The scoring plugins and the
replays' metrics use them. Units: CPU in milli-cores, devices in milli (1000 = one device).
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from .model import MILLI, DeviceRequest, Job
from .snapshot import Snapshot

#: typical pods are the most frequent shapes covering this share of the pods (FGD's setting)
TYPICAL_POD_POPULARITY = 0.95


@dataclasses.dataclass(frozen=True)
class PodShape:
    """What fragmentation depends on in a task: CPU, device milli per device, device count and
    the device models it may use (empty = any)."""

    cpu_milli: int
    milli: int  # per device; 0 for a CPU-only task
    count: int  # devices; 0 for a CPU-only task
    models: tuple[str, ...] = ()  # allowed models, sorted; () = any

    @property
    def fractional(self) -> bool:
        return self.count == 1 and self.milli < MILLI


def shape_of(job: Job) -> PodShape:
    req = job.devices
    if req is None or req.count == 0:
        return PodShape(job.cpu_milli, 0, 0)
    return PodShape(job.cpu_milli, req.milli, req.count, allowed_models(req))


def allowed_models(req: DeviceRequest) -> tuple[str, ...]:
    """The models a request names (one, or a choice), sorted; () when it names none."""
    if req.model_choices:
        return tuple(sorted(req.model_choices))
    return (req.model,) if req.model is not None else ()


@dataclasses.dataclass(frozen=True)
class TypicalPods:
    """FGD's typical pods as arrays (K shapes). ``access[k, m]``: shape k may use model m of
    ``models``; ``p`` sums to 1."""

    models: tuple[str, ...]
    cpu_milli: np.ndarray  # (K,)
    milli: np.ndarray  # (K,) per device, 0 for CPU-only shapes
    count: np.ndarray  # (K,)
    access: np.ndarray  # (K, M) bool
    p: np.ndarray  # (K,) float

    def __len__(self) -> int:
        return len(self.p)

    @functools.cached_property
    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The shapes' distinct (milli, access) pairs: which devices a shape can use depends on
        them alone, so ``fragmentation`` finds the usable devices once per pair. Returns the
        pairs' milli (U,), access (U, M) and each shape's pair (K,)."""
        index: dict[tuple, int] = {}  # pair -> its number
        firsts: list[int] = []  # each pair's first shape
        of: list[int] = []
        for k, (m, a) in enumerate(zip(self.milli.tolist(), self.access)):
            key = (m, a.tobytes())
            if key not in index:
                index[key] = len(firsts)
                firsts.append(k)
            of.append(index[key])
        sel = np.array(firsts, dtype=np.int64)
        return self.milli[sel], self.access[sel].reshape(len(sel), len(self.models)), np.array(of, dtype=np.int64)


def typical_pods(counts: Counter, models: Sequence[str], popularity: float = TYPICAL_POD_POPULARITY) -> TypicalPods:
    """The most frequent shapes of ``counts`` (PodShape -> jobs) covering ``popularity`` of them,
    most frequent first, equal counts in a fixed order (runs are reproducible)."""
    shapes = sorted(counts.items(), key=lambda kv: (-kv[1], dataclasses.astuple(kv[0])))
    total = sum(counts.values())
    chosen: list[tuple[PodShape, int]] = []
    cum = 0
    for shape, c in shapes:
        if cum >= popularity * total:
            break
        chosen.append((shape, c))
        cum += c
    p = np.array([c for _, c in chosen], dtype=np.float64)
    access = np.array([[not s.models or m in s.models for m in models] for s, _ in chosen], dtype=bool).reshape(
        len(chosen), len(models)
    )
    return TypicalPods(
        models=tuple(models),
        cpu_milli=np.array([s.cpu_milli for s, _ in chosen], dtype=np.int64),
        milli=np.array([s.milli for s, _ in chosen], dtype=np.int64),
        count=np.array([s.count for s, _ in chosen], dtype=np.int64),
        access=access,
        p=p / p.sum() if len(p) else p,
    )


class NodeArrays:
    """The snapshot's nodes as arrays over node rows (``NodeState.row``, never reused).

    ``cpu_left``, ``memory_left`` (N,); ``free`` (N, G) device milli free (0 for a device that
    is not usable and for the padding of nodes with fewer than G devices); ``model`` (N, G)
    index into ``models`` (-1 for padding and for removed nodes); ``version`` (N,) bumped on
    every change of the row; ``cpu_total`` (N,); ``free_total`` (N,) the row sum of ``free``
    and ``device_milli`` (N,) the node's devices x 1000, kept with the row. Cordons are not mirrored: the placer checks
    every node it takes. ``sync(snap)`` drains the snapshot's ``watch`` set and returns the rows
    that changed; a node of a model not seen before rebuilds everything (``generation``).
    """

    def __init__(self) -> None:
        self.models: tuple[str, ...] = ()
        self.generation = 0
        self._snap: Snapshot | None = None
        self._changed: set[str] = set()
        self._row_of: dict[str, int] = {}
        self._model_id: dict[str, int] = {}
        self._alloc(0, 1)

    def _alloc(self, n: int, g: int) -> None:
        self._access: dict[tuple[str, ...], np.ndarray] = {}
        self.cpu_left = np.zeros(n, dtype=np.int64)
        self.memory_left = np.zeros(n, dtype=np.int64)
        self.free = np.zeros((n, g), dtype=np.int64)
        self.model = np.full((n, g), -1, dtype=np.int64)
        self.version = np.zeros(n, dtype=np.int64)
        self.cpu_total = np.zeros(n, dtype=np.int64)
        self.free_total = np.zeros(n, dtype=np.int64)
        self.device_milli = np.zeros(n, dtype=np.int64)

    def sync(self, snap: Snapshot) -> np.ndarray:
        if snap is not self._snap:
            self._snap = snap
            self._changed = snap.watch()
            self._rebuild(snap)
            return np.arange(len(self.version))
        if not self._changed:
            return np.empty(0, dtype=np.int64)
        names = list(self._changed)
        self._changed.clear()
        rows = []
        for name in names:
            st = snap.nodes.get(name)
            if st is None:  # removed: its row holds nothing any more
                row = self._row_of.pop(name, None)
                if row is not None:
                    self.free[row] = 0
                    self.model[row] = -1
                    self._access.clear()
                    self.cpu_left[row] = self.memory_left[row] = 0
                    self.free_total[row] = self.device_milli[row] = 0
                    rows.append(row)
                continue
            if any(d.model not in self._model_id for d in st.node.devices) or len(st.free_milli) > self.free.shape[1]:
                self._rebuild(snap)
                return np.arange(len(self.version))
            self._place(st)
            rows.append(st.row)
        out = np.array(sorted(set(rows)), dtype=np.int64)
        self.version[out] += 1
        return out

    def _rebuild(self, snap) -> None:
        self.generation += 1  # every cache keyed on the arrays is stale
        states = list(snap.nodes.values())
        self.models = tuple(sorted({d.model for st in states for d in st.node.devices}))
        self._model_id = {m: i for i, m in enumerate(self.models)}
        n = max((st.row for st in states), default=-1) + 1
        g = max((len(st.node.devices) for st in states), default=0)
        self._alloc(n, max(g, 1))
        self._row_of = {}
        for st in states:
            self._place(st)

    def _place(self, st) -> None:
        i = st.row
        if i >= len(self.version):  # a node added since: grow by doubling
            extra = max(i + 1, 2 * len(self.version)) - len(self.version)
            g = self.free.shape[1]
            self.cpu_left = np.concatenate([self.cpu_left, np.zeros(extra, dtype=np.int64)])
            self.memory_left = np.concatenate([self.memory_left, np.zeros(extra, dtype=np.int64)])
            self.free = np.concatenate([self.free, np.zeros((extra, g), dtype=np.int64)])
            self.model = np.concatenate([self.model, np.full((extra, g), -1, dtype=np.int64)])
            self.version = np.concatenate([self.version, np.zeros(extra, dtype=np.int64)])
            self.cpu_total = np.concatenate([self.cpu_total, np.zeros(extra, dtype=np.int64)])
            self._access.clear()
            self.free_total = np.concatenate([self.free_total, np.zeros(extra, dtype=np.int64)])
            self.device_milli = np.concatenate([self.device_milli, np.zeros(extra, dtype=np.int64)])
        self._row_of[st.node.name] = i
        self.cpu_total[i] = st.node.cpu_milli
        self.cpu_left[i] = st.cpu_left
        self.memory_left[i] = st.memory_left
        k = len(st.free_milli)
        models = [self._model_id[d.model] for d in st.node.devices]
        if self._access and self.model[i, :k].tolist() != models:
            self._access.clear()  # a node joined (or changed): the masks are stale
        self.model[i, :k] = models
        free = [f if u else 0 for f, u in zip(st.free_milli, st.usable)]
        self.free[i, :k] = free
        self.free_total[i] = sum(free)
        self.device_milli[i] = k * MILLI

    def access(self, models: tuple[str, ...]) -> np.ndarray:
        """(N, G) bool: devices of an allowed model (() = any real device). Kept per models
        until a row's models change (read-only: callers index it)."""
        hit = self._access.get(models)
        if hit is None:
            if not models:
                hit = self.model >= 0
            else:
                hit = np.isin(self.model, [self._model_id[m] for m in models if m in self._model_id])
            self._access[models] = hit
        return hit


def fragmentation(cpu_left: np.ndarray, free: np.ndarray, model: np.ndarray, tp: TypicalPods) -> np.ndarray:
    """FGD's node fragmentation F (milli) of S node states at once.

    ``cpu_left`` (S,), ``free`` (S, G) device milli free, ``model`` (S, G) model index into
    ``tp.models`` (-1: no device) -> (S,). Rounded to 1e-6 so the same node state gives the
    same F whether it is computed alone or among thousands (sum order depends on the shape, and
    integer-truncated scores would turn that noise into different decisions). Many states
    repeat (empty nodes of one kind, one node's device variants): a large batch is computed
    once per distinct state."""
    if len(tp) == 0:
        return np.zeros(len(cpu_left))
    if len(cpu_left) > DEDUP_MIN_STATES:
        key = np.concatenate([cpu_left[:, None], free, model], axis=1)
        uniq, inverse = np.unique(key, axis=0, return_inverse=True)
        if 2 * len(uniq) <= len(key):
            g = free.shape[1]
            return _fragmentation(uniq[:, 0], uniq[:, 1 : 1 + g], uniq[:, 1 + g :], tp)[inverse.reshape(-1)]
    return _fragmentation(cpu_left, free, model, tp)


#: batches of more states than this are deduplicated first (``np.unique`` costs more than it
#: saves on small ones)
DEDUP_MIN_STATES = 256


def _fragmentation(cpu_left: np.ndarray, free: np.ndarray, model: np.ndarray, tp: TypicalPods) -> np.ndarray:
    total = free.sum(axis=1)  # (S,)
    g_milli, g_access, of = tp.groups  # U distinct (milli, access) pairs of the K shapes
    acc = g_access[:, np.maximum(model, 0)] & (model >= 0)[None]  # (U, S, G)
    usable = acc & (free[None] >= g_milli[:, None, None])  # (U, S, G)
    count = usable.sum(axis=2)[of]  # (K, S)
    unusable_milli = (total[None, :] - (free[None] * usable).sum(axis=2))[of]  # (K, S)
    fits = (tp.milli[:, None] > 0) & (count >= tp.count[:, None]) & (cpu_left[None, :] >= tp.cpu_milli[:, None])
    frag = np.where(fits, unusable_milli, total[None, :])  # (K, S)
    return np.round((frag * tp.p[:, None]).sum(axis=0), 6)


def take_whole(free: np.ndarray, usable: np.ndarray, count: int) -> np.ndarray:
    """(S, G) mask of the first ``count`` usable devices per row, lowest index first."""
    return usable & (np.cumsum(usable, axis=1) <= count)


class Workload:
    """The shapes of the last ``window`` jobs a scheduler has seen, for typical pods.

    ``observe(job)`` counts a job once (by id, while it is in the window); ``typical(models)``
    gives the typical pods, recomputed only when ``refresh_share`` of the window's jobs are new
    since the last time (or the model list changed), so scores computed against them stay
    cached meanwhile. ``version`` changes whenever ``typical`` returns new typical pods. Memory
    is bounded by the window, however long the scheduler runs."""

    def __init__(self, refresh_share: float = 0.0, window: int = 20_000) -> None:
        self.counts: Counter = Counter()
        self._recent: dict[str, PodShape] = {}  # job id -> shape, oldest first
        self.refresh_share = refresh_share
        self.window = max(1, int(window))
        self.version = 0
        self._tp: TypicalPods | None = None
        self._new = 0  # jobs observed since the typical pods were computed

    def observe(self, job: Job) -> None:
        if job.id in self._recent:
            return
        shape = shape_of(job)
        self._recent[job.id] = shape
        self.counts[shape] += 1
        self._new += 1
        if len(self._recent) > self.window:
            old = self._recent.pop(next(iter(self._recent)))
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]

    def observe_all(self, jobs: Iterable[Job]) -> None:
        for j in jobs:
            self.observe(j)

    @property
    def total(self) -> int:
        """Jobs in the window."""
        return len(self._recent)

    def typical(self, models: tuple[str, ...]) -> TypicalPods:
        tp = self._tp
        if tp is None or tp.models != models or (self._new > 0 and self._new > self.refresh_share * self.total):
            self._tp = typical_pods(self.counts, models)
            self._new = 0
            self.version += 1
        return self._tp  # type: ignore[return-value]
