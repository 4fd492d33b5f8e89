"""MoE expert placement: which logical expert each physical slot holds, on which device.

Input: per-layer per-expert token loads ``[layers, experts]`` (or a history of windows
``[windows, layers, experts]``), the expert groups (``num_groups`` contiguous id blocks, as in
DeepSeek-V3's group-limited routing) and the pod's shape (devices, nodes, super-nodes, slots
per device or a memory budget). Output: a :class:`Placement` with ``phy2log [layers][slots]``,
``slot_device [slots]`` and ``slot_share [layers][slots]``.

The algorithm (all steps vectorised over layers with numpy; no Python loop over layers):

1. **Load estimate.** A history of windows is normalised per layer and averaged with
   exponentially decaying weights; optionally mixed with the per-layer uniform load
   (``hedge``; measured in bench/moe_vs_eplb.py: it does not help on the real stale pairs).
2. **Replica counts.** Per layer, the replica counts that minimise the largest load per
   replica for the slot budget (the apportionment greedy, computed in one shot by bisecting
   a threshold), capped at one replica per device. With ``Policy.BUDGET`` the slot budget
   differs per layer: a Lagrangian split of the total slots that lowers the sum over layers
   of each layer's bound ``max(max_e w_e / r_e, total / devices)``.
3. **Packing with locality.** Longest-processing-time over replicas (heaviest first) into
   devices with a slot capacity, a masked argmin over ``[layers, devices]`` per item; devices
   that already hold the expert are excluded, so a device never holds two replicas of one
   expert. With more than 2 slots per device the cost of a device adds ``locality`` mean
   replica loads when an expert's first replica leaves its home node (groups laid hot-next-to-
   cold on a line and filled into nodes in order, so a group sits on one or two nodes) or when
   a second replica of an expert lands on a node that already holds one (it would save no node
   send). Measured in bench/moe_vs_eplb.py (even rule, ``DEFAULT_LOCALITY``): fewer simulated
   remote-node sends than EPLB-global at EP64/EP72, at balance above EPLB-global's.
4. **Refinement.** Bounded vectorised swap passes (``refine.pair_refine``): every pass pairs the
   hottest quarter of each layer's devices with light ones and makes the best swap in every
   pair at once; a replica on its home node leaves it only for a gain above ``HOME_PIN_COST``.
   (With <= 2 slots per device, ``refine.swap_refine``: one hot device per step.)
5. **Optional pinned plan** (``balance_tolerance > 0``): a second plan pins first replicas to
   home nodes cut by load, and layers switch to it cheapest-first within the tolerance.
   ``Policy.WRAP`` instead is hierarchical: experts to nodes by McNaughton's wrap-around rule
   (:func:`wrap_homes`, every group on at most the nodes its run of the line crosses), extra
   replicas kept with their group by a penalty, swaps inside nodes, then swaps across nodes
   (``WRAP_NODE_LEAVE_COST``) taken by the layers while the mean nodes per group stays <= 2.
6. **Uneven shares** (``balanced`` and ``budget`` only). For experts with several replicas,
   the token share of each replica is water-filled so the devices holding that expert end up
   as level as possible (damped Jacobi). The ``shares`` dispatch rule (``routing``) delivers
   them exactly; SGLang and vLLM cannot (they split evenly), so the default ``even`` policy
   writes no shares.

Relaxed constraint of ``Policy.BUDGET``: each device holds the same total number of expert
weights summed over all layers as with ``slots_per_device`` slots in every layer (so total
memory per device is unchanged), but per layer a device may hold ``floor`` or ``ceil`` of the
layer's slots / devices; a device's unused slot positions are written as ``-1``.
"""

from __future__ import annotations

import dataclasses
import enum
import time

import numpy as np

from xpod.hal.errors import XpodError

from .refine import pair_refine, swap_refine
from .score import PlacementScore, device_loads, score, weight_moves


# What the refinement charges, in mean replica loads, for taking a replica off its expert's
# home node (main plan, ``locality`` 1). Measured on the real loads (bench/moe_vs_eplb.py,
# 3 workloads): 0.03 keeps EP64/EP72 balance at 0.994/0.986 with 17%/16% fewer remote-node
# sends than EPLB-global, 0.06 gives 0.991/0.977 at 18%/18%, a hard pin 0.959/0.940.
HOME_PIN_COST = 0.04

# ``locality`` when none is given (every policy but wrap). Chosen for the even split on the 6
# prefill workloads at EP64 and EP72 (bench/moe_vs_eplb.py), checked on the 3 decode workloads:
# locality 1 keeps balance within 0.003 of EPLB-global's (one decode workload below it at EP72),
# 0.5 gives +0.006 to +0.012 over EPLB on every workload with about 6% fewer simulated remote
# node sends than EPLB under the even rule, 0 gives +0.009 to +0.015 with 2-4% fewer.
DEFAULT_LOCALITY = 0.5


class Policy(enum.Enum):
    """How slots are budgeted and split."""

    AUTO = "auto"  # BUDGET when a device has at most 2 slots per layer, else BALANCED
    BALANCED = "balanced"  # the same slots per device in every layer; uneven replica shares
    EVEN = "even"  # as BALANCED, but tokens split evenly over replicas (no slot_share)
    BUDGET = "budget"  # per-layer redundancy budgets (same total weights per device) + shares
    WRAP = "wrap"  # hierarchical: groups cut into nodes by McNaughton's rule, replicas stay in their node


@dataclasses.dataclass(frozen=True)
class PodShape:
    """The devices expert parallelism runs on. Device ``d`` is on node ``d * nodes // devices``
    and super-node ``node * super_nodes // nodes`` (contiguous blocks, as ranks are laid out)."""

    num_devices: int  # expert-parallel ranks
    num_nodes: int  # hosts; the intra-node link is the fast one
    slots_per_device: int  # expert weights per device per layer
    num_super_nodes: int = 1  # e.g. CloudMatrix384 = 1 super-node of 48 nodes

    def __post_init__(self) -> None:
        for name in ("num_devices", "num_nodes", "slots_per_device", "num_super_nodes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise XpodError(f"pod shape: {name} must be a positive integer, got {value!r}")
        if self.num_nodes > self.num_devices:
            raise XpodError(
                f"pod shape: {self.num_nodes} nodes for {self.num_devices} devices; use --nodes <= --devices"
            )
        if self.num_super_nodes > self.num_nodes:
            raise XpodError(
                f"pod shape: {self.num_super_nodes} super-nodes for {self.num_nodes} nodes; use fewer super-nodes"
            )

    @classmethod
    def from_memory(
        cls,
        num_devices: int,
        num_nodes: int,
        expert_memory_budget_bytes: int,
        expert_bytes: int,
        num_layers: int,
        num_super_nodes: int = 1,
    ) -> "PodShape":
        """Slots per device from a per-device memory budget for routed-expert weights
        (``expert_bytes`` per expert per layer, e.g. 44 MB for DeepSeek-V3 in FP8)."""
        if expert_bytes <= 0 or num_layers <= 0:
            raise XpodError("pod shape: expert_bytes and num_layers must be positive")
        slots = int(expert_memory_budget_bytes // (expert_bytes * num_layers))
        if slots < 1:
            raise XpodError(
                f"pod shape: a budget of {expert_memory_budget_bytes} bytes holds no expert of {expert_bytes} bytes "
                f"in each of {num_layers} layers; raise the budget or use more devices"
            )
        return cls(num_devices, num_nodes, slots, num_super_nodes)

    def device_node(self) -> np.ndarray:
        return np.arange(self.num_devices) * self.num_nodes // self.num_devices

    def node_super_node(self) -> np.ndarray:
        return np.arange(self.num_nodes) * self.num_super_nodes // self.num_nodes

    @classmethod
    def from_topology(cls, topology, slots_per_device: int, num_super_nodes: int = 1) -> "PodShape":
        """Adapter for ``xpod.hal.topology.Topology``: every device of the cluster is one
        expert-parallel rank, in the topology's device order (node by node). Nodes must hold
        the same number of devices, as ranks are laid out in equal contiguous blocks."""
        per_node = [len(topology.devices_of_node(n)) for n in topology.nodes()]
        per_node = [c for c in per_node if c]
        if not per_node:
            raise XpodError("topology: no devices to place experts on")
        if len(set(per_node)) > 1:
            raise XpodError(
                f"topology: nodes hold {sorted(set(per_node))} devices; expert placement needs the same count on every node"
            )
        return cls(sum(per_node), len(per_node), slots_per_device, num_super_nodes)


@dataclasses.dataclass(frozen=True)
class Placement:
    """One placement for every layer. Arrays are numpy; ``to_json`` gives the CLI contract."""

    phy2log: np.ndarray  # [layers, slots] logical expert per physical slot; -1 = empty slot
    slot_device: np.ndarray  # [slots] device of each slot (the same in every layer)
    slot_share: np.ndarray | None  # [layers, slots] fraction of the expert's tokens; None = even
    shape: PodShape  # the devices it was made for
    num_groups: int  # expert groups used for locality
    policy: Policy  # the policy that made it
    seconds: float  # algorithm wall time
    weight_moves: int | None = None  # expert weights loaded relative to a previous placement

    @property
    def device_node(self) -> np.ndarray:
        return self.shape.device_node()

    @property
    def num_experts(self) -> int:
        """Logical experts per layer (every one has a replica in every layer)."""
        return int(self.phy2log.max()) + 1

    def score(self, loads: np.ndarray) -> PlacementScore:
        return score(loads, self.phy2log, self.slot_device, self.device_node, self.slot_share, self.num_groups)

    def to_json(self) -> dict:
        out = {
            "phy2log": self.phy2log.astype(int).tolist(),
            "slot_device": self.slot_device.astype(int).tolist(),
            "seconds": self.seconds,
            "policy": self.policy.value,
            "num_devices": self.shape.num_devices,
            "num_nodes": self.shape.num_nodes,
            "num_super_nodes": self.shape.num_super_nodes,
            "slots_per_device": self.shape.slots_per_device,
            "num_groups": self.num_groups,
            "num_experts": self.num_experts,
        }
        if self.slot_share is not None:
            out["slot_share"] = np.round(self.slot_share, 6).tolist()
        if self.weight_moves is not None:
            out["weight_moves"] = self.weight_moves
        return out


# --------------------------------------------------------------------------------------------
# validation


def _validate_loads(loads: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(loads)
    if arr.ndim not in (2, 3):
        raise XpodError(f"{what}: expected [layers, experts] or [windows, layers, experts], got shape {arr.shape}")
    if arr.size == 0:
        raise XpodError(f"{what}: empty load array {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise XpodError(f"{what}: loads must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise XpodError(f"{what}: loads contain NaN or infinity; clean the statistics first")
    if np.any(arr < 0):
        raise XpodError(f"{what}: loads must be >= 0 (token counts), found {arr.min()}")
    return arr


def _validate(loads: np.ndarray, shape: PodShape, num_groups: int) -> None:
    layers, experts = loads.shape[-2:]
    total = shape.num_devices * shape.slots_per_device
    if experts % num_groups:
        raise XpodError(
            f"groups: {experts} experts do not split into {num_groups} equal groups; use a divisor of {experts}"
        )
    if shape.slots_per_device > experts:
        raise XpodError(
            f"slots: {shape.slots_per_device} slots per device > {experts} experts, but a device never holds two replicas "
            f"of one expert; use at most {experts} slots per device"
        )
    if total < experts:
        raise XpodError(
            f"slots: {shape.num_devices} devices x {shape.slots_per_device} slots = {total} < {experts} experts; "
            f"use at least {-(-experts // shape.num_devices)} slots per device"
        )


# --------------------------------------------------------------------------------------------
# step 1: load estimate


def estimate_loads(history: np.ndarray, half_life_windows: float = 2.0, hedge: float = 0.0) -> np.ndarray:
    """Planning loads ``[layers, experts]`` from ``[layers, experts]`` or a history
    ``[windows, layers, experts]`` (oldest first).

    Each window is normalised per layer to its mean total (so a busy window does not drown the
    others), windows are averaged with weights halving every ``half_life_windows``, and the
    result is mixed with the uniform load: ``(1 - hedge) * w + hedge * mean(w)``.
    """
    h = np.asarray(history, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    totals = h.sum(axis=2, keepdims=True)
    scale = totals.mean(axis=0, keepdims=True)
    norm = np.divide(h, totals, out=np.zeros_like(h), where=totals > 0) * scale
    if h.shape[0] == 1:
        est = norm[0]
    else:
        age = np.arange(h.shape[0])[::-1]
        weights = 0.5 ** (age / max(half_life_windows, 1e-9))
        est = np.einsum("w,wle->le", weights / weights.sum(), norm)
    if hedge:
        est = (1.0 - hedge) * est + hedge * est.mean(axis=1, keepdims=True)
    return est


# --------------------------------------------------------------------------------------------
# step 2: replica counts


def _sorted_per_replica_loads(w: np.ndarray, max_extra: int, cap: int) -> np.ndarray:
    """``[layers, experts * k]`` of ``w_e / (j + 1)`` for j = 1..k (the load per replica
    after adding the j-th extra replica), sorted descending per layer; k = min(cap-1, max_extra)."""
    k = max(0, min(cap - 1, max_extra))
    if k == 0:
        return np.zeros((w.shape[0], 0))
    vals = w[:, :, None] / np.arange(2, k + 2)[None, None, :]
    return -np.sort(-vals.reshape(w.shape[0], -1), axis=1)


def replica_counts(w: np.ndarray, slots_per_layer: np.ndarray, cap: int) -> np.ndarray:
    """``[layers, experts]`` replica counts: one each, plus ``slots - experts`` extra replicas
    going to the largest ``w_e / r_e`` (the optimal min-max apportionment, i.e. the greedy that
    adds one replica at a time), at most ``cap`` replicas per expert.

    Computed in one shot: the greedy's result is ``r_e = clip(ceil(w_e / t), 1, cap)`` for the
    right threshold ``t`` (bisected for all layers at once); ties at the threshold are then
    handed out one at a time to the largest ``w_e / r_e``.
    """
    layers, experts = w.shape
    target = np.asarray(slots_per_layer, dtype=np.int64)
    lo = np.zeros(layers)
    hi = w.max(axis=1) + 1.0
    # sum_e ceil(w_e / t) <= sum(w) / t + experts, so t = sum(w) / (target - experts) already
    # fits: a tighter start, so 36 halvings reach the precision the leftover loop needs
    spare = target - experts
    hi = np.where(spare > 0, np.minimum(hi, w.sum(axis=1) / np.maximum(spare, 1) + 1e-300), hi)

    def counts_at(t: np.ndarray) -> np.ndarray:
        # t > 0, so w / t is finite or +inf (clipped to cap), never NaN; float counts are exact
        with np.errstate(over="ignore", divide="ignore"):
            return np.clip(np.ceil(w / t[:, None]), 1, cap)

    # invariant: counts_at(hi) sums to <= target; counts_at(lo) (t -> 0) exceeds it or is capped
    for _ in range(36):
        mid = 0.5 * (lo + hi)
        over = counts_at(np.maximum(mid, 1e-300)).sum(axis=1) > target
        lo = np.where(over, mid, lo)
        hi = np.where(over, hi, mid)
    counts = counts_at(np.maximum(hi, 1e-300)).astype(np.int64)  # the t the loop tested
    left = target - counts.sum(axis=1)
    rows = np.arange(layers)
    while (left > 0).any():
        per = np.where(counts < cap, w / counts, -1.0)
        # equal loads (e.g. zero-load experts) go to the expert with fewer replicas first
        # (relative to the layer's largest load, so tiny loads are not swamped)
        per = per - 1e-12 * counts * w.max(axis=1, keepdims=True)
        e = per.argmax(axis=1)
        todo = left > 0
        counts[rows[todo], e[todo]] += 1
        left -= todo
    return counts


def layer_budgets(w: np.ndarray, total_slots: int, num_devices: int, cap: int) -> np.ndarray:
    """Per-layer slot counts summing to ``total_slots`` that lower ``sum_l max(M_l(R_l), mean_l)``,
    where ``M_l(R)`` is the layer's largest load per replica with ``R`` slots.

    A Lagrangian split: for a price per slot ``lam`` each layer takes the ``R`` minimising
    ``bound_l(R) + lam * R``; ``lam`` is bisected to meet the total, the remainder goes to the
    layers with the largest marginal gain.
    """
    layers, experts = w.shape
    need = total_slots - layers * experts  # extra replicas over all layers
    max_extra = need
    if max_extra <= 0:
        return np.full(layers, experts)
    # No layer takes more than twice its even share of slots, nor gives one expert more than
    # 64 replicas: this bounds the curves computed below without changing real choices.
    max_extra = min(max_extra, total_slots // layers)
    cap = min(cap, 65)
    sorted_vals = _sorted_per_replica_loads(w, max_extra, cap)
    # m[l, n]: the largest load per replica after n extra replicas = the (n+1)-th largest of
    # {w_e} U {w_e / j : j >= 2}; once every expert is at the cap it stops falling.
    merged = -np.sort(-np.concatenate([w, sorted_vals], axis=1), axis=1)
    n = min(max_extra, sorted_vals.shape[1])
    m = np.empty((layers, max_extra + 1))
    m[:, : n + 1] = merged[:, : n + 1]
    m[:, n + 1 :] = merged[:, n : n + 1]
    bound = np.maximum(m, (w.sum(axis=1) / num_devices)[:, None])
    cap_extra = min(bound.shape[1] - 1, experts * (cap - 1))
    bound = bound[:, : cap_extra + 1]
    n_idx = np.arange(bound.shape[1])[None, :]

    def take(lam: float) -> np.ndarray:
        return np.argmin(bound + lam * n_idx, axis=1)

    lo, hi = 0.0, float(bound.max()) + 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if take(mid).sum() > need:
            lo = mid
        else:
            hi = mid
    extra = take(hi)
    left = need - int(extra.sum())
    while left > 0:
        can = extra < cap_extra
        gain = np.where(
            can, bound[np.arange(layers), extra] - bound[np.arange(layers), np.minimum(extra + 1, cap_extra)], -1
        )
        # Prefer layers with the most left to gain; ties go to the heaviest layer.
        best = int(np.lexsort((-w.sum(axis=1), -gain))[0])
        extra[best] += 1
        left -= 1
    return experts + extra


# --------------------------------------------------------------------------------------------
# step 3: packing


def expert_homes(w: np.ndarray, num_groups: int, num_nodes: int, node_slots: int, fill: bool = False) -> np.ndarray:
    """``[layers, experts]`` home node of each expert's first replica.

    Groups are laid on a line (hottest, coldest, second hottest, second coldest, ... so a hot
    group shares its node with a cold one) and the line of experts is cut into ``num_nodes``
    equal runs of ``experts / nodes`` experts. A group's first replicas thus sit on one node,
    or two where a cut falls inside it, as in EPLB's hierarchical policy; unlike it, the
    extra replicas are free to go to any node, which is what lets load balance.
    """
    layers, experts = w.shape
    gs = experts // num_groups
    gl = w.reshape(layers, num_groups, gs).sum(axis=2)
    by_load = np.argsort(-gl, axis=1, kind="stable")
    zig = np.empty(num_groups, dtype=np.int64)
    zig[0::2] = np.arange((num_groups + 1) // 2)
    zig[1::2] = num_groups - 1 - np.arange(num_groups // 2)
    line = by_load[:, zig]  # [layers, groups]: the group at each position of the line
    position = np.empty_like(line)
    np.put_along_axis(position, line, np.arange(num_groups)[None, :].repeat(layers, axis=0), axis=1)
    # expert e's place on the line: its group's position * group size + its index in the group
    place_on_line = position[:, np.arange(experts) // gs] * gs + np.arange(experts) % gs
    # Cut the line by load, not by count: node n takes experts until it holds 1/nodes of the
    # load, but never more than ``node_slots`` experts nor so few that the rest cannot fit.
    line_experts = np.argsort(place_on_line, axis=1)
    cum = np.cumsum(np.take_along_axis(w, line_experts, axis=1), axis=1)
    total = cum[:, -1:]
    cut = np.zeros((layers, num_nodes + 1), dtype=np.int64)
    for n in range(num_nodes - 1):
        by_load = (cum < total * (n + 1) / num_nodes).sum(axis=1) + 1
        lo = np.maximum(cut[:, n], experts - (num_nodes - n - 1) * node_slots)
        hi = cut[:, n] + node_slots
        cut[:, n + 1] = np.clip(by_load, lo, np.minimum(hi, experts))
    cut[:, num_nodes] = experts
    if fill:
        # tie-break homes: fill whole nodes in line order (fewest nodes per group)
        cut = np.minimum(np.arange(num_nodes + 1) * node_slots, experts)[None, :].repeat(layers, axis=0)
        cut[:, num_nodes] = experts
    rank = np.arange(experts)[None, :]
    node_of_rank = (rank[:, :, None] >= cut[:, None, 1:]).sum(axis=2)
    homes = np.empty((layers, experts), dtype=np.int64)
    np.put_along_axis(homes, line_experts, node_of_rank, axis=1)
    return homes


def _pack_free(
    item_expert: np.ndarray,
    item_load: np.ndarray,
    item_primary: np.ndarray,
    capacity: np.ndarray,
    device_node: np.ndarray,
    soft_homes: np.ndarray | None,
    home_penalty: float,
    spread_penalty: float,
) -> np.ndarray:
    """:func:`_pack` without pinned homes and without the group penalty (the main plan's case),
    with the per-item work cut to a few ``[layers, devices]`` operations: this loop over items
    is the algorithm's cost centre. Same choices as :func:`_pack` with the same arguments.

    What keeps the loop short (every line below runs once per item, 320 times at EP64):
    the static cost of an item (home penalty or tie-break) is one row gather from a per-layer
    table of ``nodes + 1`` possible rows; the "already holds this expert" block and the
    replica-spread penalty live in one additive ``[layers, devices]`` array (``inf`` or the
    penalty) instead of boolean masks; the chosen devices are kept per item and written to the
    output once at the end; all per-layer updates go through flat indices."""
    layers, items = item_expert.shape
    num_devices = capacity.shape[1]
    num_nodes = int(device_node.max()) + 1
    rows = np.arange(layers)
    unit = item_load.sum(axis=1) / np.maximum((item_expert >= 0).sum(axis=1), 1)
    order = np.argsort(-item_load, axis=1, kind="stable")
    ex = np.take_along_axis(item_expert, order, axis=1)
    ld = np.take_along_axis(item_load, order, axis=1)
    pr = np.take_along_axis(item_primary, order, axis=1)
    valid = ex >= 0
    padded = (~valid).any(axis=0)
    # cont[p]: in some layer item p is another replica of item p-1's expert (replicas of one
    # expert are consecutive: equal loads). Only then do "devices holding it" need tracking.
    cont = np.zeros(items + 1, dtype=bool)
    cont[1:items] = ((ex[:, 1:] == ex[:, :-1]) & valid[:, 1:]).any(axis=0)
    ex_t = np.ascontiguousarray(ex.T)  # [items, layers]: one contiguous row per item
    ld_t = np.ascontiguousarray(ld.T)
    tie = 1e-9 * unit[:, None]
    # Extra replicas lean to the last devices, which the homes fill last.
    tail = tie * (1.0 - np.arange(num_devices) / num_devices)[None, :]
    base_dev = rows * num_devices
    if soft_homes is None:
        static_rows = None
    else:
        # First replicas pay (a tie-break plus) ``home_penalty`` off their home node: row n of
        # a layer's table is the cost with home node n, row ``num_nodes`` the extra replicas'.
        off_home = (tie + home_penalty * unit[:, None])[:, :, None]
        table = np.empty((layers, num_nodes + 1, num_devices))
        table[:, :num_nodes] = off_home * (device_node[None, None, :] != np.arange(num_nodes)[None, :, None])
        table[:, num_nodes] = tail
        static_rows = table.reshape(layers * (num_nodes + 1), num_devices)
        home = np.take_along_axis(soft_homes, np.maximum(ex, 0), axis=1)
        static_idx = np.ascontiguousarray((rows[:, None] * (num_nodes + 1) + np.where(pr, home, num_nodes)).T)
    spread = spread_penalty * unit
    spread_col = spread[:, None]
    node_members = None
    if spread_penalty:
        # node_members[l * devices + d]: flat indices of the devices on d's node in layer l
        # (padded with the node's first device, so uneven nodes work too)
        members = [np.nonzero(device_node == n)[0] for n in range(num_nodes)]
        width = max(len(m) for m in members)
        pad = np.array([np.r_[m, np.full(width - len(m), m[0])] for m in members])
        node_members = (base_dev[:, None, None] + pad[device_node][None, :, :]).reshape(layers * num_devices, width)
    dev_load = np.zeros((layers, num_devices))
    eff = np.where(capacity <= 0, np.inf, 0.0)  # the load the argmin sees: +inf once full
    room = capacity.astype(np.int64)  # free slots per device
    # full_cost[room left]: 0.0 (adding it is exact) while a device has room, +inf once it has
    # none; negative indices (an over-full device, only after a failed argmin, reported below)
    # wrap to the +inf tail
    cap_max = int(max(capacity.max(), 0))
    full_cost = np.full(cap_max + 2 + items, np.inf)
    full_cost[1 : cap_max + 1] = 0.0
    # block: +inf on devices holding the current expert, the spread penalty on the other
    # devices of their nodes, 0 elsewhere; rows are cleared where a layer's expert changes
    block = np.zeros((layers, num_devices))
    flat_load, flat_eff, flat_room, flat_block = (
        dev_load.reshape(-1),
        eff.reshape(-1),
        room.reshape(-1),
        block.reshape(-1),
    )
    flat_cost = np.empty(layers * num_devices)
    cost = flat_cost.reshape(layers, num_devices)
    out = np.full((layers, items), -1, dtype=np.int64)
    chosen = []  # per item from ``written`` on: [layers] device (garbage in padded layers)
    written = 0
    for p in range(items):
        if static_rows is None:
            np.add(eff, tail, out=cost)
        else:
            if p % 32 == 0:  # the static rows of the next 32 items in one gather
                static_chunk = np.take(static_rows, static_idx[p : p + 32], axis=0)
            np.add(eff, static_chunk[p % 32], out=cost)
        e = ex_t[p]
        if cont[p]:
            # layers where this item continues the previous expert keep its devices blocked
            changed = e != ex_t[p - 1]
            block[changed] = 0.0
            cost += block
            d = cost.argmin(axis=1)
            at = flat_cost[base_dev + d]
            if at.max() == np.inf:
                stuck = np.isinf(at) & valid[:, p]
                if stuck.any():
                    # every device with room already holds this expert (dense pods): make room;
                    # the earlier choices go to ``out`` first, as _make_room moves one of them
                    if chosen:
                        _write_chosen(out, order, valid, chosen, written)
                        written, chosen = p, []
                    for layer in np.nonzero(stuck)[0]:
                        d[layer] = _make_room(layer, int(e[layer]), ex, ld, out, order, dev_load, eff, room, capacity)
        else:
            d = cost.argmin(axis=1)
        if padded[p]:
            r = rows[valid[:, p]]
            dd, item_ld = d[r], ld_t[p, r]
            idx = base_dev[r] + dd
        else:
            r, dd, item_ld = rows, d, ld_t[p]
            idx = base_dev + d
        new_load = flat_load[idx]
        new_load += item_ld
        flat_load[idx] = new_load
        left = flat_room[idx]
        left -= 1
        flat_room[idx] = left
        flat_eff[idx] = new_load + full_cost[left]
        if cont[p + 1]:
            if not cont[p]:
                block.fill(0.0)
            if node_members is not None:
                mates = np.take(node_members, idx, axis=0)
                flat_block[mates] = np.maximum(flat_block[mates], spread_col if r is rows else spread[r][:, None])
            flat_block[idx] = np.inf
        chosen.append(d)
    _write_chosen(out, order, valid, chosen, written)
    # Without a replica in flight only full devices are blocked: an argmin that landed on one
    # (all were full) shows as an over-full device.
    if (room < 0).any():
        raise AssertionError("packing ran out of feasible devices")
    return out


def _write_chosen(out: np.ndarray, order: np.ndarray, valid: np.ndarray, chosen: list, start: int) -> None:
    """Write the devices chosen for sorted items ``start..start + len(chosen)`` into ``out``
    (indexed by original item position); padding items stay -1."""
    if not chosen:
        return
    stop = start + len(chosen)
    dev = np.stack(chosen, axis=1)
    cols = order[:, start:stop]
    np.put_along_axis(out, cols, np.where(valid[:, start:stop], dev, -1), axis=1)


def _make_room(layer, expert, ex, ld, out, order, dev_load, eff, room, capacity) -> int:
    """Greedy packing got stuck in ``layer``: every device with a free slot already holds
    ``expert``. Move some other expert ``f`` from a full device ``b`` that lacks ``expert`` to
    a device ``a`` with room that lacks ``f``; ``b`` then takes ``expert``. Returns ``b``."""
    num_devices = capacity.shape[1]
    placed = out[layer] >= 0  # indexed by original item position
    item_dev = out[layer]
    item_exp = np.full(len(item_dev), -1)
    item_ld = np.zeros(len(item_dev))
    item_exp[order[layer]] = ex[layer]
    item_ld[order[layer]] = ld[layer]
    held = [set(item_exp[placed & (item_dev == dev)].tolist()) for dev in range(num_devices)]
    rooms = [dev for dev in range(num_devices) if room[layer, dev] > 0]
    for b in range(num_devices):
        if expert in held[b] or capacity[layer, b] <= 0:
            continue
        for item in np.nonzero(placed & (item_dev == b))[0]:
            f = int(item_exp[item])
            for a in rooms:
                if f not in held[a]:
                    out[layer, item] = a
                    dev_load[layer, a] += item_ld[item]
                    dev_load[layer, b] -= item_ld[item]
                    room[layer, a] -= 1
                    room[layer, b] += 1
                    for dev in (a, b):
                        eff[layer, dev] = np.inf if room[layer, dev] <= 0 else dev_load[layer, dev]
                    return b
    raise AssertionError("packing ran out of feasible devices")  # more replicas than devices


def _pack(
    item_expert: np.ndarray,
    item_load: np.ndarray,
    item_primary: np.ndarray,
    capacity: np.ndarray,
    device_node: np.ndarray,
    node_super: np.ndarray,
    homes: np.ndarray | None,
    group_size: int,
    locality: float,
    pinned_first: bool = False,
    soft_homes: np.ndarray | None = None,
    home_penalty: float = 0.0,
    spread_penalty: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Heaviest-first packing of ``[layers, items]`` replicas (``item_expert == -1`` = padding)
    into devices with ``capacity [layers, devices]`` slots. Returns ``[layers, items]`` device
    and ``[layers]`` layers where pinned first replicas made the packing infeasible.

    Cost of a device = its load, plus (when ``homes`` is given) an infinite cost for an
    expert's first replica off its home node, plus ``locality`` mean replica loads when an
    extra replica would bring its group to a node that does not hold it yet (half that for a
    new super-node). A device already holding the expert, or full, is never chosen.

    Without pinned ``homes``, ``soft_homes`` adds ``home_penalty`` mean replica loads when an
    expert's first replica leaves its home node (groups stay together, so a token's experts
    sit on few nodes) and ``spread_penalty`` when an extra replica lands on a node that already
    holds one of the expert (a second replica on one node saves no node send)."""
    if homes is None and not locality:
        out = _pack_free(
            item_expert, item_load, item_primary, capacity, device_node, soft_homes, home_penalty, spread_penalty
        )
        return out, np.zeros(out.shape[0], dtype=bool)
    layers, items = item_expert.shape
    num_devices = capacity.shape[1]
    num_nodes = int(device_node.max()) + 1
    num_super = int(node_super.max()) + 1
    experts = int(item_expert.max()) + 1
    num_groups = -(-experts // group_size)
    rows = np.arange(layers)
    dev_load = np.zeros((layers, num_devices))
    used = np.zeros((layers, num_devices), dtype=np.int64)
    holds = np.zeros((layers, num_devices, experts), dtype=bool) if homes is not None else None
    group_on_node = np.zeros((layers, num_groups, num_nodes), dtype=bool)
    group_on_super = np.zeros((layers, num_groups, num_super), dtype=bool)
    device_super = node_super[device_node]
    valid_items = (item_expert >= 0).sum(axis=1)
    # The penalty is in units of this layer's mean replica load: a device may be up to
    # ``locality`` replicas-worth heavier and still win if it keeps the group on fewer nodes.
    unit = item_load.sum(axis=1) / np.maximum(valid_items, 1)
    pen_node = locality * unit
    pen_super = 0.5 * locality * unit
    out = np.full((layers, items), -1, dtype=np.int64)
    failed = np.zeros(layers, dtype=bool)
    # Heaviest first (LPT). With ``pinned_first``, all pinned first replicas go first, so the
    # free extra replicas see which nodes the pinned ones overload and fill the others (fewer
    # node sends, worse balance: measured in bench/moe_vs_eplb.py).
    key = (
        -item_load
        if homes is None or not pinned_first
        else np.where(item_primary, -item_load - 2.0 * item_load.max(), -item_load)
    )
    order = np.argsort(key, axis=1, kind="stable")
    ex_sorted = np.take_along_axis(item_expert, order, axis=1)
    ld_sorted = np.take_along_axis(item_load, order, axis=1)
    pr_sorted = np.take_along_axis(item_primary, order, axis=1)
    full = capacity <= 0
    tail = 1.0 - np.arange(num_devices) / num_devices
    # Without homes, replicas of one expert have equal loads and are consecutive in the sorted
    # order, so "holds this expert" is just "took the previous replica of this expert".
    prev_e = np.full(layers, -1)
    took = np.zeros((layers, num_devices), dtype=bool)
    took_node = np.zeros((layers, num_nodes), dtype=bool)
    for p in range(items):
        e = ex_sorted[:, p]
        ok = e >= 0
        if not ok.any():
            break
        ec = np.where(ok, e, 0)
        if homes is None:
            same = (ec == prev_e)[:, None]
            took &= same
            took_node &= same
            blocked = full | took
        else:
            blocked = full | holds[rows, :, ec]
        cost = np.where(blocked, np.inf, dev_load)
        if locality:
            g = ec // group_size
            cost += pen_node[:, None] * ~group_on_node[rows, g][:, device_node]
            if num_super > 1:
                cost += pen_super[:, None] * ~group_on_super[rows, g][:, device_super]
        if homes is not None:
            off_home = device_node[None, :] != homes[rows, ec][:, None]
            cost[off_home & pr_sorted[:, p][:, None]] += 1e300
        elif soft_homes is not None:
            # a tie-break only: among equally loaded devices, prefer the expert's home node
            # (extra replicas lean the other way, to the last devices, which homes fill last)
            prim = pr_sorted[:, p][:, None]
            off = np.where(prim, device_node[None, :] != soft_homes[rows, ec][:, None], tail[None, :])
            cost += (1e-9 * unit)[:, None] * off
            if home_penalty:
                cost += (home_penalty * unit)[:, None] * (
                    prim & (device_node[None, :] != soft_homes[rows, ec][:, None])
                )
            if spread_penalty:
                cost += (spread_penalty * unit)[:, None] * took_node[:, device_node]
        d = np.argmin(cost, axis=1)
        stuck = ok & np.isinf(cost[rows, d])
        if stuck.any():
            # Only possible when first replicas are pinned: the free slots left are all on
            # devices that hold this expert. The caller falls back to the unpinned plan.
            if homes is None:
                raise AssertionError("packing ran out of feasible devices")  # counts are capped at devices
            failed |= stuck
        ok &= ~failed
        r = rows[ok]
        dd = d[ok]
        dev_load[r, dd] += ld_sorted[ok, p]
        used[r, dd] += 1
        full[r, dd] = used[r, dd] >= capacity[r, dd]
        if homes is None:
            took[r, dd] = True
            took_node[r, device_node[dd]] = True
            prev_e = ec
        else:
            holds[r, dd, ec[ok]] = True
        if locality:
            group_on_node[r, g[ok], device_node[dd]] = True
            group_on_super[r, g[ok], device_super[dd]] = True
        out[r, order[ok, p]] = dd
    return out, failed


# --------------------------------------------------------------------------------------------
# the hierarchical alternative: McNaughton's wrap-around rule


def wrap_homes(
    w: np.ndarray, num_groups: int, num_nodes: int, slots_per_device: int, devices_per_node: int
) -> np.ndarray:
    """``[layers, experts]`` node of every expert, by McNaughton's wrap-around rule.

    Groups are laid end to end (cold and hot alternating, each group's experts consecutive,
    coldest first) and
    the line of expert loads is cut into ``num_nodes`` runs of equal load, an expert going to the
    node that holds the larger half of it. A run is contiguous, so every group spans at most the
    nodes its run crosses: the sum over groups of nodes spanned is at most
    ``groups + nodes - 1`` (each cut splits at most one group), i.e. a group spread of at most
    ``(groups + nodes - 1) / groups`` (11/8 for 8 groups on 4 nodes).

    Slots bound the cuts, moved by whole experts: a node's experts may not ask for more than
    its ``slots_per_device * devices_per_node`` slots, counting ``ceil(w_e / mean device load)``
    slots for expert ``e`` (the replicas it needs so no device carries more than the mean);
    every node keeps at least ``slots_per_device`` experts (else its devices could not be filled
    without two replicas of one expert on a device) and at most its slot count.
    """
    layers, experts = w.shape
    gs = experts // num_groups
    node_slots = slots_per_device * devices_per_node
    if not num_nodes * slots_per_device <= experts <= num_nodes * node_slots:
        raise XpodError(
            f"wrap policy: {experts} experts cannot fill {num_nodes} nodes of {node_slots} slots with at most "
            f"{devices_per_node} replicas of an expert per node; use another --policy"
        )
    gl = w.reshape(layers, num_groups, gs).sum(axis=2)
    by_load = np.argsort(-gl, axis=1, kind="stable")
    # coldest, hottest, second coldest, second hottest, ...: the first node starts on a cold
    # group and every hot group sits between cold ones (measured, EP32 on 4 nodes: 0.967 at 1.90
    # nodes per group, against 0.962 at 1.98 starting with the hottest and 0.903 at 2.28 in
    # plain descending order)
    zig = np.empty(num_groups, dtype=np.int64)
    zig[0::2] = num_groups - 1 - np.arange((num_groups + 1) // 2)
    zig[1::2] = np.arange(num_groups // 2)
    # inside a group, coldest first: a cut then leaves the cold experts with the node before
    # and carries the hot ones on (measured: 0.963 against 0.946 hottest first, EP32 4 nodes)
    inner = np.argsort(w.reshape(layers, num_groups, gs), axis=2, kind="stable")
    inner = np.take_along_axis(inner, by_load[:, zig][:, :, None], axis=1)
    line = (by_load[:, zig][:, :, None] * gs + inner).reshape(layers, experts)
    wl = np.take_along_axis(w, line, axis=1)
    cum = np.cumsum(wl, axis=1)
    mid = cum - 0.5 * wl
    total = cum[:, -1]
    mean_device = np.maximum(total / (num_nodes * devices_per_node), 1e-300)
    demand = np.maximum(np.ceil(wl / mean_device[:, None] - 1e-9), 1.0)
    cq = np.concatenate([np.zeros((layers, 1)), np.cumsum(demand, axis=1)], axis=1)  # cq[:, j]: demand of the first j
    rows = np.arange(layers)
    cut = np.zeros((layers, num_nodes + 1), dtype=np.int64)
    for n in range(num_nodes - 1):
        by_load_end = (mid < (total * (n + 1) / num_nodes)[:, None]).sum(axis=1)
        fits = (cq[:, 1:] <= (cq[rows, cut[:, n]] + node_slots)[:, None]).sum(axis=1)
        end = np.minimum(by_load_end, fits)
        lo = np.maximum(cut[:, n] + slots_per_device, experts - (num_nodes - n - 1) * node_slots)
        hi = np.minimum(cut[:, n] + node_slots, experts - (num_nodes - n - 1) * slots_per_device)
        cut[:, n + 1] = np.clip(end, lo, hi)
    cut[:, num_nodes] = experts
    node_of_rank = (np.arange(experts)[None, :, None] >= cut[:, None, 1:]).sum(axis=2)
    homes = np.empty((layers, experts), dtype=np.int64)
    np.put_along_axis(homes, line, node_of_rank, axis=1)
    return homes


# The wrap policy's price, in mean replica loads, for a replica that brings its group to a node
# that does not hold it yet (times ``locality``). Measured on the real loads, EP32 on 4 nodes,
# with the hot-first line: 3 gave balance 0.963 at 2.02 nodes per group, 3.5 gave 0.962 at
# 1.98, 5 gave 0.950 at 1.89.
WRAP_GROUP_PENALTY = 3.5

# What the wrap policy's cross-node swap passes charge, in mean replica loads, for taking a
# replica to another node. Inside a node the wrap plan is level (max device / node mean
# 1.000-1.002 on the real loads); what it loses is node balance (0.78 in its worst layer). Chosen
# on the 6 prefill workloads at EP32 on 4 nodes with the spread cap of 2 (mean balance, even
# split: 0.05 -> 0.970, 0.1 -> 0.973, 0.2 -> 0.971 with the worst workload highest, 0.4 -> 0.964),
# checked on the 3 decode workloads (0.968-0.974).
WRAP_NODE_LEAVE_COST = 0.2


def _plan_wrap(
    w: np.ndarray, shape: PodShape, num_groups: int, refine_steps: int, locality: float, max_group_spread: float
) -> np.ndarray:
    """``phy2log`` of the wrap policy. Every expert's first replica is pinned to its node from
    :func:`wrap_homes`; the extra replicas (the same counts as the other policies) are packed
    heaviest first and pay ``WRAP_GROUP_PENALTY * locality`` mean replica loads for bringing a
    group to a new node, so they stay with their group unless a node is overloaded by more than
    that (the slot bounds can force a node over its share). Swap passes then run inside every
    node (all nodes of all layers at once, as ``layers * nodes`` rows). Last, swap passes over
    the whole layer may move replicas between nodes for ``WRAP_NODE_LEAVE_COST * locality`` mean
    replica loads each, and layers take those moves (best balance gain per (group, node) pair
    added first) while the mean nodes per group stays within ``max_group_spread``."""
    layers, experts = w.shape
    nodes = shape.num_nodes
    per_node = shape.num_devices // nodes
    spd = shape.slots_per_device
    node_slots = per_node * spd
    total = shape.num_devices * spd
    homes = wrap_homes(w, num_groups, nodes, spd, per_node)
    counts = replica_counts(w, np.full(layers, total), cap=shape.num_devices)
    item_expert, item_load, item_primary = _items(w, counts, total)
    capacity, slot_device = _layout_fixed(shape, layers)
    device_node = shape.device_node()
    device, failed = _pack(
        item_expert,
        item_load,
        item_primary,
        capacity,
        device_node,
        shape.node_super_node(),
        homes,
        experts // num_groups,
        WRAP_GROUP_PENALTY * locality,
    )
    device[failed] = 0  # rewritten below
    phy2log = _write_slots(item_expert, device, slot_device, shape.num_devices)
    if refine_steps:
        # Rows are (layer, node); an expert's per-row load is scaled so that dividing it by its
        # replicas in the node gives its load per replica over the whole layer.
        rows = phy2log.reshape(layers * nodes, node_slots)
        valid = rows >= 0
        in_node = np.zeros((layers * nodes, experts))
        rr = np.broadcast_to(np.arange(layers * nodes)[:, None], rows.shape)
        np.add.at(in_node, (rr[valid], rows[valid]), 1)
        w_rows = np.repeat(w / counts, nodes, axis=0) * in_node
        local_slots = np.repeat(np.arange(per_node), spd)
        rows = pair_refine(
            w_rows,
            rows,
            local_slots,
            np.zeros(per_node, dtype=np.int64),
            passes=refine_steps,
            pairs=max(1, per_node // 2),
        )
        phy2log = rows.reshape(layers, -1)
        ok = ~failed  # the stuck layers are replaced below
        cost = WRAP_NODE_LEAVE_COST * locality * w[ok].sum(axis=1) / total
        base = phy2log[ok]
        crossed = pair_refine(w[ok], base, slot_device, device_node, base >= 0, passes=refine_steps, pin_cost=cost)
        phy2log[ok] = _within_group_spread(
            w[ok], base, crossed, slot_device, device_node, experts // num_groups, max_group_spread
        )
    if failed.any():
        # A layer whose last extra replicas found only devices already holding their expert
        # (not seen on the real loads) takes the even policy's plan instead.
        fallback = place(w[failed], shape, num_groups, Policy.EVEN, locality=locality, refine_steps=refine_steps)
        phy2log[failed] = fallback.phy2log
    return phy2log


def _within_group_spread(
    w: np.ndarray,
    base: np.ndarray,
    better: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    group_size: int,
    max_group_spread: float,
) -> np.ndarray:
    """Per layer ``base`` or ``better`` (better balanced, maybe on more nodes per group): layers
    switch to ``better`` in order of max-device-load gain per (group, node) pair it adds, while
    the pairs over all layers stay within ``max_group_spread`` per (layer, group)."""
    layers = w.shape[0]
    num_devices = len(device_node)
    pairs_base = _group_node_pairs(base, slot_device, device_node, group_size)
    pairs_better = _group_node_pairs(better, slot_device, device_node, group_size)
    added = pairs_better - pairs_base
    gain = device_loads(w, base, slot_device, num_devices).max(axis=1)
    gain -= device_loads(w, better, slot_device, num_devices).max(axis=1)
    allowed = max_group_spread * layers * (w.shape[1] // group_size) - pairs_base.sum()
    useful = gain > 0
    # free layers (no pair added) first, then the best gain per pair added
    order = np.lexsort((-gain / np.maximum(added, 1), added > 0))
    spent = np.cumsum(np.where(useful[order], np.maximum(added[order], 0), 0))
    take = np.zeros(layers, dtype=bool)
    take[order] = useful[order] & (spent <= allowed)
    return np.where(take[:, None], better, base)


# --------------------------------------------------------------------------------------------
# step 4: uneven shares


def water_fill_shares(
    w: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int, iterations: int = 5
) -> np.ndarray:
    """``[layers, slots]`` shares: per expert with several replicas, split its tokens so the
    devices holding it are as level as possible given the rest of their load (damped Jacobi
    water-filling). Single-replica experts keep share 1; empty slots 0."""
    layers, slots = phy2log.shape
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    rows2 = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    counts = np.bincount((rows2 * w.shape[1] + pe)[valid], minlength=w.size).reshape(w.shape)
    slot_count = np.take_along_axis(counts, pe, axis=1)
    share = np.where(valid, 1.0 / np.maximum(slot_count, 1), 0.0)
    multi = valid & (slot_count > 1)
    if not multi.any():
        return share
    # Replicas of multi-replica experts as a padded table [experts_with_replicas, rmax] of slots.
    ml, ms = np.nonzero(multi)
    key = ml * w.shape[1] + pe[ml, ms]
    order = np.argsort(key, kind="stable")
    ml, ms, key = ml[order], ms[order], key[order]
    start = np.r_[0, np.nonzero(np.diff(key))[0] + 1]
    size = np.diff(np.r_[start, len(key)])
    rmax = int(size.max())
    grp = np.repeat(np.arange(len(start)), size)
    col = np.arange(len(key)) - start[grp]
    tab_l = np.zeros((len(start), rmax), dtype=np.int64)
    tab_s = np.zeros((len(start), rmax), dtype=np.int64)
    pad = np.ones((len(start), rmax), dtype=bool)
    tab_l[grp, col], tab_s[grp, col], pad[grp, col] = ml, ms, False
    wexp = w.ravel()[key[start]][:, None]
    dev = slot_device[tab_s]
    ew = np.where(valid, np.take_along_axis(w, pe, axis=1), 0.0)
    flat_dev = (rows2 * num_devices + slot_device[None, :]).ravel()
    # flat indices, computed once: the table's slots in ``share`` and its devices in ``dl``
    tab_flat = tab_l * slots + tab_s
    tab_dev = tab_l * num_devices + dev
    share_flat = share.reshape(-1)
    ew_flat = ew.ravel()
    # Most experts with replicas have exactly two (about 80% at EP64): their rows are done
    # column by column (the same operations on the same values, without the sort and the
    # padding: sort = min/max, level_1 = (w + s0) / 1, level_2 = (w + (s0 + s1)) / 2), the rest
    # in the padded table. Rows are independent, and every part reads only its own slots'
    # shares, so updating the parts in turn is still a Jacobi step.
    two = size == 2
    pair = rest = None
    if two.any():
        pair = (tab_flat[two, 0], tab_flat[two, 1], tab_dev[two, 0], tab_dev[two, 1], wexp[two, 0])
    if not two.all():
        many = ~two
        r_pad = pad[many]
        rest = (
            tab_flat[many],
            tab_dev[many],
            r_pad,
            ~r_pad,
            tab_flat[many][~r_pad],
            wexp[many],
            np.arange(1, rmax + 1)[None, :],
            np.arange(int(many.sum())),
            bool(r_pad.any()),
        )
    for _ in range(iterations):
        dl = np.bincount(flat_dev, weights=ew_flat * share_flat, minlength=layers * num_devices)
        if pair is not None:
            f0, f1, v0, v1, wp = pair
            o0 = dl[v0] - wp * share_flat[f0]
            o1 = dl[v1] - wp * share_flat[f1]
            s0, s1 = np.minimum(o0, o1), np.maximum(o0, o1)
            level1 = wp + s0
            level2 = (wp + (s0 + s1)) / 2
            c = np.where((s0 < level1).astype(np.int64) + (s1 < level2) >= 2, level2, level1)
            n0, n1 = np.clip(c - o0, 0.0, None), np.clip(c - o1, 0.0, None)
            tot = n0 + n1
            frac0 = np.divide(n0, tot, out=np.zeros_like(n0), where=tot > 0)
            frac1 = np.divide(n1, tot, out=np.zeros_like(n1), where=tot > 0)
            share_flat[f0] = 0.5 * share_flat[f0] + 0.5 * frac0
            share_flat[f1] = 0.5 * share_flat[f1] + 0.5 * frac1
        if rest is not None:
            b_flat, b_dev, b_pad, b_real, b_real_flat, b_w, ranks, last, padded = rest
            mine = b_w * share_flat[b_flat]
            if padded:
                other = np.where(b_pad, np.inf, dl[b_dev] - mine)
                srt = np.sort(other, axis=1)
                finite = np.isfinite(srt)
                csum = np.cumsum(np.where(finite, srt, 0.0), axis=1)
                level = (b_w + csum) / ranks
                n_active = np.maximum(((srt < level) & finite).sum(axis=1), 1)
                c = level[last, n_active - 1][:, None]
                new = np.where(b_pad, 0.0, np.clip(c - other, 0.0, None))
            else:
                other = dl[b_dev] - mine
                srt = np.sort(other, axis=1)
                level = (b_w + np.cumsum(srt, axis=1)) / ranks
                n_active = np.maximum((srt < level).sum(axis=1), 1)
                c = level[last, n_active - 1][:, None]
                new = np.clip(c - other, 0.0, None)
            tot = new.sum(axis=1, keepdims=True)
            frac = np.divide(new, tot, out=np.full_like(new, 0.0), where=tot > 0)
            share_flat[b_real_flat] = 0.5 * share_flat[b_real_flat] + 0.5 * (frac[b_real] if padded else frac.ravel())
    return share


# --------------------------------------------------------------------------------------------
# the entry point


def _items(w: np.ndarray, counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicas as items, padded to ``width`` per layer: ``item_expert`` (-1 = padding),
    ``item_load`` (``w_e / r_e``) and ``item_primary`` (the first replica of its expert)."""
    layers, experts = w.shape
    rep = counts.ravel()
    it_layer = np.repeat(np.repeat(np.arange(layers), experts), rep)
    it_exp = np.repeat(np.tile(np.arange(experts), layers), rep)
    it_load = np.repeat((w / counts).ravel(), rep)
    per_layer = counts.sum(axis=1)
    pos = np.arange(len(it_layer)) - np.repeat(np.cumsum(per_layer) - per_layer, per_layer)
    item_expert = np.full((layers, width), -1, dtype=np.int64)
    item_load = np.zeros((layers, width))
    item_expert[it_layer, pos] = it_exp
    item_load[it_layer, pos] = it_load
    # the first replica of each expert (its items are consecutive) is its primary
    first_of_expert = np.r_[True, (it_exp[1:] != it_exp[:-1]) | (it_layer[1:] != it_layer[:-1])]
    item_primary = np.zeros((layers, width), dtype=bool)
    item_primary[it_layer, pos] = first_of_expert
    return item_expert, item_load, item_primary


def _layout_fixed(shape: PodShape, layers: int) -> tuple[np.ndarray, np.ndarray]:
    capacity = np.full((layers, shape.num_devices), shape.slots_per_device, dtype=np.int64)
    slot_device = np.repeat(np.arange(shape.num_devices), shape.slots_per_device)
    return capacity, slot_device


def _layout_budget(shape: PodShape, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer device capacities (floor or ceil of budget / devices) such that every device's
    total over layers is exactly ``layers * slots_per_device``; the extra slot of each layer
    goes to the devices that had the fewest extras so far (round robin)."""
    d = shape.num_devices
    base = budgets // d
    extra = budgets - base * d
    capacity = np.repeat(base[:, None], d, axis=1)
    got = np.zeros(d, dtype=np.int64)
    # Largest extras first so the round robin can always finish level.
    for layer in np.argsort(-extra, kind="stable"):
        n = int(extra[layer])
        if n:
            pick = np.argsort(got, kind="stable")[:n]
            capacity[layer, pick] += 1
            got[pick] += 1
    per_device = capacity.max(axis=0)
    slot_device = np.repeat(np.arange(d), per_device)
    return capacity, slot_device


def _write_slots(
    item_expert: np.ndarray, item_device: np.ndarray, slot_device: np.ndarray, num_devices: int
) -> np.ndarray:
    """``phy2log`` from item -> device: each device's items fill its slot positions in order."""
    layers, items = item_expert.shape
    experts = int(item_expert.max()) + 1
    slots = len(slot_device)
    first_slot = np.searchsorted(slot_device, np.arange(num_devices))
    phy2log = np.full((layers, slots), -1, dtype=np.int64)
    valid = item_expert >= 0
    dev = np.where(valid, item_device, num_devices)  # padding sorts last
    order = np.argsort(dev * (experts + 1) + np.where(valid, item_expert, 0), axis=1, kind="stable")
    dsorted = np.take_along_axis(dev, order, axis=1)
    esorted = np.take_along_axis(item_expert, order, axis=1)
    rows = np.broadcast_to(np.arange(layers)[:, None], order.shape)
    counts = np.bincount((rows * (num_devices + 1) + dsorted).ravel(), minlength=layers * (num_devices + 1))
    counts = counts.reshape(layers, num_devices + 1)
    begin = np.cumsum(counts, axis=1) - counts
    rank = np.arange(items)[None, :] - np.take_along_axis(begin, dsorted, axis=1)
    ok = dsorted < num_devices
    slot = first_slot[np.where(ok, dsorted, 0)] + rank
    phy2log[rows[ok], slot[ok]] = esorted[ok]
    return phy2log


def _plan(
    w,
    items,
    capacity,
    slot_device,
    shape: PodShape,
    num_groups: int,
    locality: float,
    refine_steps: int,
    pin: bool,
    penalty: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pack and refine one candidate ``phy2log``; ``pin`` pins first replicas to home nodes.
    Unpinned, ``penalty`` is the soft home and replica-spread penalty of :func:`_pack`."""
    item_expert, item_load, item_primary = items
    experts = w.shape[1]
    device_node = shape.device_node()
    node_slots = shape.num_devices * shape.slots_per_device // shape.num_nodes
    homes = expert_homes(w, num_groups, shape.num_nodes, node_slots, fill=not pin)
    item_device, failed = _pack(
        item_expert,
        item_load,
        item_primary,
        capacity,
        device_node,
        shape.node_super_node(),
        homes if pin else None,
        experts // num_groups,
        locality,
        soft_homes=None if pin else homes,
        home_penalty=0.0 if pin else penalty,
        spread_penalty=0.0 if pin else penalty,
    )
    # Rows where pinning made packing infeasible are written as garbage (all on device 0) and
    # discarded by the caller, which keeps the balance-only plan for those layers.
    item_device[failed] = 0
    phy2log = _write_slots(item_expert, item_device, slot_device, shape.num_devices)
    if refine_steps:
        pin_cost = None
        if pin:
            pinned = _pinned_slots(phy2log, item_expert, item_device, item_primary, slot_device)
        elif penalty:
            # A replica on its expert's home node leaves it only for a clear balance gain: the
            # refinement would otherwise trade back the locality the packing paid for (measured
            # at EP64: 3.58 -> 3.73 remote nodes per token without this soft pin).
            valid = phy2log >= 0
            home_of_slot = np.take_along_axis(homes, np.where(valid, phy2log, 0), axis=1)
            pinned = valid & (device_node[slot_device][None, :] == home_of_slot)
            pin_cost = HOME_PIN_COST * penalty * w.sum(axis=1) / len(slot_device)
        else:
            pinned = None
        if shape.slots_per_device <= 2:
            # With 1-2 slots per device the layer's max is one hot device: the single-device
            # search (8 light partners per step, 3 steps per pass) measured 0.002 better at EP144.
            phy2log, _ = swap_refine(w, phy2log, slot_device, device_node, pinned, steps=3 * refine_steps)
        else:
            phy2log = pair_refine(w, phy2log, slot_device, device_node, pinned, passes=refine_steps, pin_cost=pin_cost)
    return phy2log, failed


def _group_node_pairs(
    phy2log: np.ndarray, slot_device: np.ndarray, device_node: np.ndarray, group_size: int
) -> np.ndarray:
    """``[layers]`` number of distinct (group, node) pairs holding a replica."""
    num_nodes = int(device_node.max()) + 1
    valid = phy2log >= 0
    key = np.where(valid, (phy2log // group_size) * num_nodes + device_node[slot_device][None, :], -1)
    key = np.sort(key, axis=1)
    distinct = (np.diff(key, axis=1) != 0) & (key[:, 1:] >= 0)
    return distinct.sum(axis=1) + (key[:, 0] >= 0)


def _pinned_slots(phy2log, item_expert, item_device, item_primary, slot_device) -> np.ndarray:
    """``[layers, slots]``: the slot holds its expert's primary (home-node) replica."""
    layers = phy2log.shape[0]
    experts = int(item_expert.max()) + 1
    prim_dev = np.full((layers, experts), -1, dtype=np.int64)
    r, c = np.nonzero(item_primary & (item_expert >= 0))
    prim_dev[r, item_expert[r, c]] = item_device[r, c]
    valid = phy2log >= 0
    return valid & (np.take_along_axis(prim_dev, np.where(valid, phy2log, 0), axis=1) == slot_device[None, :])


def align_to_previous(
    phy2log: np.ndarray, previous: np.ndarray, slot_device: np.ndarray, num_devices: int
) -> np.ndarray:
    """Permute each device's slots so experts the device already held stay in their old slot
    positions (no weight copy for them). Same multiset per device, so balance is unchanged."""
    out = phy2log.copy()
    for d in range(num_devices):
        cols = np.nonzero(slot_device == d)[0]
        for layer in range(phy2log.shape[0]):
            new = phy2log[layer, cols].tolist()
            old = previous[layer, cols].tolist()
            keep = set(new) & set(old) - {-1}
            rest = [e for e in new if e not in keep]
            row = [e if e in keep else None for e in old]
            it = iter(rest)
            out[layer, cols] = [e if e is not None else next(it) for e in row]
    return out


def place(
    loads: np.ndarray,
    shape: PodShape,
    num_groups: int = 8,
    policy: Policy | str = Policy.AUTO,
    locality: float | None = None,
    hedge: float = 0.0,
    half_life_windows: float = 2.0,
    previous: Placement | None = None,
    max_moves: int | None = None,
    refine_steps: int = 16,
    balance_tolerance: float = 0.0,
    max_replicas: int | None = None,
    max_group_spread: float = 2.0,
) -> Placement:
    """Place the experts of every layer. ``loads`` is ``[layers, experts]`` or a history
    ``[windows, layers, experts]`` (oldest first). With ``locality > 0`` a second, group-local
    plan is made (each expert's first replica pinned to a home node so each group's first
    replicas sit on one or two nodes; ``locality`` also weighs, in mean replica loads, bringing
    a group to a new node), and layers switch to it cheapest-first while the summed max device
    load stays within ``1 + balance_tolerance`` of the balance-only plan's. ``hedge`` in
    [0, 1) mixes the load estimate with the uniform load. ``locality`` None is
    ``DEFAULT_LOCALITY`` (the wrap policy: 1, its penalties are scaled to it). ``max_replicas`` caps replicas per
    expert (default: one per device). ``max_group_spread`` (wrap policy only) caps the mean
    number of nodes holding a group: a placement property, so it holds on any loads.

    With ``previous`` (same pod shape), slots are aligned so unchanged experts do not move; with
    ``max_moves`` as well, at most that many expert weights are loaded in total (the plan is
    improved from ``previous`` by the best single-slot changes until the budget is spent).
    """
    t0 = time.perf_counter()
    policy = Policy(policy) if not isinstance(policy, Policy) else policy
    if locality is None:
        locality = 1.0 if policy is Policy.WRAP else DEFAULT_LOCALITY
    arr = _validate_loads(loads, "loads")
    _validate(arr, shape, num_groups)
    if not 0.0 <= hedge < 1.0:
        raise XpodError(f"hedge must be in [0, 1), got {hedge}")
    if locality < 0:
        raise XpodError(f"locality must be >= 0, got {locality}")
    if max_moves is not None and max_moves < 0:
        raise XpodError(f"--max-moves must be >= 0, got {max_moves}")
    if previous is None and max_moves is not None:
        raise XpodError("--max-moves needs --previous FILE (the placement the moves are counted from)")
    w = estimate_loads(arr, half_life_windows, hedge)
    layers, experts = w.shape
    total = shape.num_devices * shape.slots_per_device
    if policy is Policy.AUTO:
        # A fixed layout and an even split: a plan SGLang and vLLM can load (``budget`` gains
        # balance at <= 2 slots per device only with a layout they cannot run).
        policy = Policy.EVEN
    if previous is not None and previous.phy2log.shape[0] != layers:
        raise XpodError(f"previous placement: {previous.phy2log.shape[0]} layers, the loads have {layers}")
    if policy is Policy.BUDGET and previous is not None and previous.phy2log.shape[1] != total:
        # Incremental with per-layer budgets: keep the previous plan's layout (which device has
        # how many slots in which layer), so weights move only where experts change.
        slot_device = np.asarray(previous.slot_device)
        if slot_device.max() + 1 != shape.num_devices:
            raise XpodError(f"previous placement: made for {slot_device.max() + 1} devices, not {shape.num_devices}")
        capacity = np.stack(
            [(previous.phy2log[:, slot_device == d] >= 0).sum(axis=1) for d in range(shape.num_devices)], axis=1
        )
        budgets = capacity.sum(axis=1)
    elif policy is Policy.BUDGET:
        budgets = layer_budgets(w, total * layers, shape.num_devices, cap=shape.num_devices)
        capacity, slot_device = _layout_budget(shape, budgets)
    else:
        budgets = np.full(layers, total)
        capacity, slot_device = _layout_fixed(shape, layers)
    if policy is Policy.WRAP:
        if shape.num_devices % shape.num_nodes:
            raise XpodError(
                f"wrap policy: {shape.num_devices} devices do not split evenly over {shape.num_nodes} nodes"
            )
        phy2log = _plan_wrap(w, shape, num_groups, refine_steps, locality, max_group_spread)
        return _finish(w, phy2log, slot_device, shape, num_groups, policy, previous, max_moves, t0)
    counts = replica_counts(w, budgets, cap=min(shape.num_devices, max_replicas or shape.num_devices))
    items = _items(w, counts, int(budgets.max()))
    device_node = shape.device_node()
    # The main plan breaks ties between equally loaded devices towards nodes that already hold
    # the group (free locality: with one slot per device every choice is a tie). With more than
    # 2 slots per device it also pays ``locality`` mean replica loads for a first replica off its
    # home node or a second replica of an expert on one node: measured in bench/moe_vs_eplb.py,
    # this cuts simulated remote-node sends by 16-18% against EPLB-global at EP64/EP72 for
    # about 0.01 of balance. With <= 2 slots per device there is no room to trade.
    local_pen = locality if shape.num_nodes > 1 and shape.slots_per_device > 2 else 0.0
    phy2log, _ = _plan(
        w, items, capacity, slot_device, shape, num_groups, 0.0, refine_steps, pin=False, penalty=local_pen
    )
    # Optionally (``balance_tolerance > 0``) a second, pinned plan; same room condition.
    if locality and balance_tolerance > 0 and shape.num_nodes > 1 and shape.slots_per_device > 2:
        # A plan that keeps each group's first replicas on one or two nodes; per layer it is
        # taken where it costs at most ``balance_tolerance`` of that layer's max device load.
        local, failed = _plan(w, items, capacity, slot_device, shape, num_groups, locality, refine_steps, pin=True)
        mx_bal = device_loads(w, phy2log, slot_device, shape.num_devices).max(axis=1)
        mx_loc = device_loads(w, local, slot_device, shape.num_devices).max(axis=1)
        # Layers trade balance for locality like a knapsack: the gain of a layer is how many
        # (group, node) pairs the local plan saves, its cost the rise of its max device load;
        # the cheapest per pair saved are taken while the summed max load (the denominator of
        # balancedness) stays within ``balance_tolerance`` of the balance-only plan's.
        gain = _group_node_pairs(phy2log, slot_device, device_node, experts // num_groups) - _group_node_pairs(
            local, slot_device, device_node, experts // num_groups
        )
        cost = mx_loc - mx_bal
        usable = ~failed & (gain > 0)
        ratio = np.where(usable, np.maximum(cost, 0.0) / np.maximum(gain, 1), np.inf)
        order = np.argsort(ratio, kind="stable")
        spent = np.cumsum(np.where(usable[order], cost[order], 0.0))
        allowed = balance_tolerance * mx_bal.sum()
        take = np.zeros(layers, dtype=bool)
        take[order] = usable[order] & (spent <= allowed)
        phy2log = np.where(take[:, None], local, phy2log)
    return _finish(w, phy2log, slot_device, shape, num_groups, policy, previous, max_moves, t0)


def _finish(
    w,
    phy2log,
    slot_device,
    shape: PodShape,
    num_groups: int,
    policy: Policy,
    previous: Placement | None,
    max_moves: int | None,
    t0: float,
) -> Placement:
    """Shares, alignment with ``previous`` and the move budget: the last steps of every policy."""
    device_node = shape.device_node()
    uneven = policy in (Policy.BALANCED, Policy.BUDGET)  # the policies that carry slot_share
    share = None
    if uneven:
        share = water_fill_shares(w, phy2log, slot_device, shape.num_devices)
    moves = None
    if previous is not None:
        if previous.phy2log.shape != phy2log.shape or not np.array_equal(previous.slot_device, slot_device):
            raise XpodError(
                f"previous placement: slot layout {previous.phy2log.shape} differs from the new one {phy2log.shape}; "
                "use the same --devices/--slots/--policy as the previous plan"
            )
        phy2log = align_to_previous(phy2log, previous.phy2log, slot_device, shape.num_devices)
        if share is not None:
            share = water_fill_shares(w, phy2log, slot_device, shape.num_devices)
        moves = weight_moves(previous.phy2log, phy2log, slot_device, shape.num_devices)
        if max_moves is not None and moves > max_moves:
            from .incremental import improve_within_budget

            phy2log, moves = improve_within_budget(w, previous.phy2log, slot_device, device_node, max_moves)
            share = water_fill_shares(w, phy2log, slot_device, shape.num_devices) if uneven else None
    return Placement(
        phy2log=phy2log,
        slot_device=slot_device,
        slot_share=share,
        shape=shape,
        num_groups=num_groups,
        policy=policy,
        seconds=time.perf_counter() - t0,
        weight_moves=moves,
    )
