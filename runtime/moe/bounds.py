"""Upper bounds on balancedness: how well *any* placement can do, per relaxation.

Balancedness is ``sum_l mean_l / sum_l max_l`` where ``mean_l = total_l / D`` is fixed by the
loads (``D`` devices, idle ones included), so a bound on balance is a lower bound on each
layer's max device load. Two facts give it, for any placement with ``S`` slots in a layer:

* ``max_l >= mean_l`` (the max is at least the mean);
* ``max_l >= w_e / r_e`` for every expert ``e`` with ``r_e`` replicas: the ``r_e`` devices that
  hold ``e`` (distinct: no device holds two replicas of one expert) carry all of ``w_e``
  between them, *whatever the token shares*, so one of them carries at least ``w_e / r_e``.
  Minimised over replica counts with ``sum_e r_e = S``, ``r_e >= 1``, ``max_e w_e / r_e`` is
  ``M(S)`` = the ``(S - E + 1)``-th largest value of the multiset ``{w_e / j : e, j >= 1}``
  (the apportionment greedy adds one replica at a time to the largest ``w_e / r_e``; after
  ``S - E`` additions the values ``w_e / j, j < r_e`` it has passed are the ``S - E`` largest,
  and the next one is the max), or ``max_e w_e / cap`` if larger when an expert may have at
  most ``cap`` replicas (``cap`` = devices, as a device holds at most one of each).

So ``max_l >= B_l(S) = max(M_l(S), mean_l)``. Per relaxation (:class:`Relaxation`):

* ``EVEN`` (S = D x slots per device in every layer, tokens split evenly): ``B_l(D x spd)``.
  With one slot per device it is exact: a device holds one replica, its load is ``w_e / r_e``,
  and the apportionment counts reach ``M(S)``; this is what EPLB's replication computes.
* ``SHARES`` (the same layout, uneven shares): the same bound, since the ``w_e / r_e``
  argument holds for any shares. With one slot per device uneven shares cannot help at all:
  the devices of expert ``e`` hold nothing else, so the even split minimises their max.
* ``BUDGET`` (per-layer budgets: a device holds ``layers x spd`` weights over all layers, but a
  layer may give it 0 .. ``cap`` slots): ``min sum_l B_l(S_l)`` over ``S_l`` with
  ``sum_l S_l = layers x D x spd``, ``E <= S_l <= cap x D``, solved exactly by dynamic
  programming over layers (min-plus convolution). Any such ``S_l`` is realisable with equal
  per-device totals (round robin of the extra slots, as ``placement._layout_budget`` does).
* ``BUDGET_SHARES``: the same bound as ``BUDGET`` (shares do not change ``B_l``).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from xpod.hal.errors import XpodError


class Relaxation(enum.Enum):
    """Which constraints of a placement are relaxed (memory per device is never relaxed)."""

    EVEN = "even"  # the same slots per device in every layer; even token split
    SHARES = "shares"  # the same slots per device in every layer; any token shares
    BUDGET = "budget"  # per-layer slot budgets, equal total weights per device over layers
    BUDGET_SHARES = "budget+shares"  # both


def per_replica_max(w: np.ndarray, max_slots: int, cap: int) -> np.ndarray:
    """``[layers, max_slots - E + 1]``: ``M_l(S)`` for ``S = E .. max_slots``, the least possible
    largest load per replica with ``S`` replicas (at most ``cap`` per expert)."""
    w = np.asarray(w, dtype=np.float64)
    layers, experts = w.shape
    if max_slots < experts:
        raise XpodError(f"bounds: {max_slots} slots cannot hold {experts} experts")
    extra = max_slots - experts
    # Without a cap, M(S) is the (S - E + 1)-th largest of {w_e / j : j >= 1}; with at most
    # ``cap`` replicas it is max(that, max_e w_e / cap) (clip the uncapped optimum at the cap and
    # hand the surplus to other experts). Values w_e / j with j > cap are below max_e w_e / cap,
    # so j <= cap is enough.
    k = max(1, min(cap, extra + 1))
    vals = (w[:, :, None] / np.arange(1, k + 1)[None, None, :]).reshape(layers, -1)
    merged = np.concatenate([-np.sort(-vals, axis=1), np.zeros((layers, max(0, extra + 1 - vals.shape[1])))], axis=1)
    floor = (w / cap).max(axis=1)[:, None]
    return np.maximum(merged[:, : extra + 1], floor)


def _min_plus_over_layers(cost: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``best[t] = min sum_l cost[l, x_l]`` over ``0 <= x_l < cost.shape[1]`` with
    ``sum_l x_l = t``, for every ``t = 0 .. total`` (dynamic programming over layers, min-plus
    convolution); also the choices table that :func:`_backtrack` reads the ``x_l`` from."""
    layers, n = cost.shape
    width = total + 1
    best = np.full(width, np.inf)
    m = min(n, width)
    best[:m] = cost[0, :m]
    choice = np.zeros((layers, width), dtype=np.int64)
    choice[0, :m] = np.arange(m)
    for layer in range(1, layers):
        new = np.full(width, np.inf)
        pick = np.zeros(width, dtype=np.int64)
        for x in range(min(n, width)):
            cand = best[: width - x] + cost[layer, x]
            better = cand < new[x:]
            new[x:][better] = cand[better]
            pick[x:][better] = x
        best, choice[layer] = new, pick
    return best, choice


def _backtrack(choice: np.ndarray, total: int) -> np.ndarray:
    xs = np.zeros(choice.shape[0], dtype=np.int64)
    for layer in range(choice.shape[0] - 1, -1, -1):
        xs[layer] = choice[layer, total]
        total -= xs[layer]
    return xs


@dataclasses.dataclass(frozen=True)
class BalanceBound:
    """An upper bound on balancedness for one load matrix, pod size and relaxation."""

    relaxation: Relaxation
    balancedness: float  # sum_l mean_l / min sum_l B_l(S_l): no placement does better
    slots_per_layer: np.ndarray  # [layers] the S_l that attain it


def _budget_curve(w: np.ndarray, num_devices: int, max_slots: int) -> np.ndarray:
    mean = w.sum(axis=1) / num_devices
    return np.maximum(per_replica_max(w, max_slots, cap=num_devices), mean[:, None])


def balance_upper_bound(
    w: np.ndarray, num_devices: int, slots_per_device: int, relaxation: Relaxation | str, cap: int = 2
) -> BalanceBound:
    """The highest balancedness any placement can reach under ``relaxation`` (module docstring).
    With the budget relaxations a layer may give a device at most ``cap x slots_per_device``
    slots (2: a device holds 0, 1 or 2 x its share in a layer)."""
    relaxation = Relaxation(relaxation)
    w = np.asarray(w, dtype=np.float64)
    layers, experts = w.shape
    total = num_devices * slots_per_device
    if total < experts:
        raise XpodError(f"bounds: {num_devices} x {slots_per_device} slots < {experts} experts")
    mean = w.sum(axis=1) / num_devices
    if relaxation in (Relaxation.EVEN, Relaxation.SHARES):
        bound = np.maximum(per_replica_max(w, total, cap=num_devices)[:, -1], mean)
        return BalanceBound(relaxation, float(mean.sum() / bound.sum()), np.full(layers, total))
    if cap < 1:
        raise XpodError(f"bounds: cap must be >= 1, got {cap}")
    need = (total - experts) * layers
    curve = _budget_curve(w, num_devices, min(cap * total, experts + need))
    best, choice = _min_plus_over_layers(curve, need)
    return BalanceBound(relaxation, float(mean.sum() / best[need]), experts + _backtrack(choice, need))


def budget_bound_by_memory(
    w: np.ndarray, num_devices: int, slots_per_device: int, extra_slots_per_layer: int, cap: int = 2
) -> np.ndarray:
    """``[x + 1]``: the BUDGET bound on balancedness with ``x = 0 .. extra_slots_per_layer`` more
    slots per layer on average (``x / (D x spd)`` more expert memory per device), a device
    taking at most ``cap x slots_per_device`` slots in a layer: how much memory a balance needs."""
    w = np.asarray(w, dtype=np.float64)
    layers, experts = w.shape
    total = num_devices * slots_per_device
    mean = w.sum(axis=1) / num_devices
    need = (total - experts) * layers
    top = need + extra_slots_per_layer * layers
    curve = _budget_curve(w, num_devices, min(cap * total, experts + top))
    best, _ = _min_plus_over_layers(curve, top)
    return mean.sum() / best[need + np.arange(extra_slots_per_layer + 1) * layers]
