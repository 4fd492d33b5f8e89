"""Robust expert placement: plan on the windows you have, serve the window that comes next.

A placement is computed from recorded loads (the latest window A, optionally other recorded
windows) but served on the next window B, which differs: on SGLang's DeepSeek-V3 recordings
the per-expert log-load differs by a standard deviation of 0.16-0.32 between workloads
(research/moe.md, "Stale statistics"), and a plan that is near-perfect on A drops to about
0.7 balancedness on B.

This planner never sees B. It plans against a weighted ensemble of scenarios and minimises,
per layer, the expected maximum device load over them:

1. **Scenarios** (:func:`drift_scenarios`): A and every history window (each normalised per
   layer to A's totals), weighted ``anchor_weight`` for A and the rest equally (default: all
   windows equally, a plain moving average). Optionally ``jitter`` draws of each window times
   an independent log-normal factor per expert, ``exp(sigma z - sigma^2 / 2)``. Off by
   default: i.i.d. drift of sigma 0.3 costs even a plan centred on the true loads about 0.3
   of balance at EP72 (4 slots per device: each device sums 4 noisy loads, and the max of 72
   such sums sits about 2.4 standard deviations up), and no placement of the same 4 slots
   avoids that; swaps fitted to draws only fit the draws (measured: in-sample 0.68 -> 0.75,
   fresh draws 0.67 -> 0.66). What real windows add is the *direction* of drift.
2. **Replica counts** from the weighted ``quantile`` of each expert's load over the
   scenarios, not its mean, so an expert that turns hot in some window already has replicas
   (the apportionment greedy of :func:`placement.place` on those loads).
3. **Packing** by :func:`placement.place` on the quantile loads (balance, locality, 0
   duplicates), then a **robust swap search**, vectorised over layers: swap two slots'
   experts (on different devices, never creating a duplicate) when that lowers the weighted
   mean over scenarios of the layer's max device load. It relieves, each step, the device
   that is most often (weighted by its excess) the max, so hot and possibly-hot experts end up
   on devices whose other slots are cold in every window.
4. **Shares**: tokens split evenly over an expert's replicas (``slot_share`` None): shares
   fitted to the recorded windows are not trusted on the next one.

Measured (bench/moe_stale.py and the stale rows of bench/moe_vs_eplb.py; EP72, 9 nodes, 288
slots; README "Stale statistics"): with A alone there is nothing to learn the drift from and
the plan scores like EPLB's (0.691 against 0.699 on the 4 pairs of research/moe.md); with A's
phase as history 0.774, with every other recorded window 0.827 (0.885 on 24 other pairs,
where EPLB on A scores 0.674). ``quantile`` 0.9 and equal window weights were chosen on the 4
named pairs and checked on the others (during development, same protocol: quantile 0.75 scored
0.02-0.03 lower, an anchor weight of 0.5 0.003-0.015 lower).
Slot layout, slots per device and replicas per layer are those of :func:`place` for the same
pod shape and policy (so with ``policy="budget"`` the per-layer budgets, each device's total
weights over the layers unchanged).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from xpod.hal.errors import XpodError

from .placement import Placement, PodShape, Policy, _validate_loads, place
from .refine import device_slots


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """Knobs of :func:`robust_place`."""

    anchor_weight: float | None = None  # weight of the latest window; None = same as each history window
    quantile: float = 0.9  # replica counts follow this weighted quantile of an expert's scenario loads
    jitter: int = 0  # log-normal draws per window (measured: they add nothing on the real pairs)
    sigma: float = 0.25  # per-expert log-load drift of the draws (research/moe.md: 0.15-0.3 between workloads)
    swap_steps: int = 300  # robust swap steps at most (each improves every still-improving layer)
    seed: int = 0  # the draws (the plan is deterministic for a seed)

    def __post_init__(self) -> None:
        if self.anchor_weight is not None and not 0.0 < self.anchor_weight <= 1.0:
            raise XpodError(f"robust: anchor_weight must be in (0, 1], got {self.anchor_weight}")
        if not 0.0 <= self.quantile <= 1.0:
            raise XpodError(f"robust: quantile must be in [0, 1], got {self.quantile}")
        if self.jitter < 0:
            raise XpodError(f"robust: jitter must be >= 0, got {self.jitter}")
        if not 0.0 <= self.sigma <= 2.0:
            raise XpodError(f"robust: sigma must be in [0, 2], got {self.sigma}")
        if self.swap_steps < 0:
            raise XpodError(f"robust: swap_steps must be >= 0, got {self.swap_steps}")


def _normalise(windows: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Scale each window's layers to ``totals [layers]`` (the per-layer shape is what matters)."""
    s = windows.sum(axis=-1, keepdims=True)
    return np.divide(windows, s, out=np.zeros_like(windows), where=s > 0) * totals[None, :, None]


def drift_sigma(anchor: np.ndarray, history: np.ndarray | None) -> float | None:
    """Root-mean-square over history windows of the per-expert log-load standard deviation
    between the window and ``anchor`` (per layer, then averaged); None without history. Experts
    with no tokens are floored at 1e-6 of the layer total (a log needs a positive value)."""
    if history is None or len(history) == 0:
        return None
    a = anchor / np.maximum(anchor.sum(axis=-1, keepdims=True), 1e-300)
    h = history / np.maximum(history.sum(axis=-1, keepdims=True), 1e-300)
    diff = np.log(np.maximum(h, 1e-6)) - np.log(np.maximum(a, 1e-6))[None]
    return float(np.sqrt(np.mean(diff.std(axis=-1) ** 2)))


def drift_scenarios(
    anchor: np.ndarray, history: np.ndarray | None, config: RobustConfig = RobustConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """``(X [scenarios, layers, experts], weights [scenarios])``: the anchor and the history
    windows normalised per layer to the anchor's totals, then the log-normal draws (mean
    preserving) of each window in turn. A window and its draws share the window's weight."""
    hist = np.zeros((0,) + anchor.shape) if history is None else np.asarray(history, dtype=np.float64)
    base = np.concatenate([anchor[None], _normalise(hist, anchor.sum(axis=-1))], axis=0)
    n = len(base)
    a = config.anchor_weight if config.anchor_weight is not None else 1.0 / n
    if n == 1:
        a = 1.0
    base_w = np.r_[a, np.full(n - 1, (1.0 - a) / max(n - 1, 1))]
    jitter = config.jitter
    if jitter == 0 or config.sigma == 0.0:
        return base, base_w
    rng = np.random.default_rng(config.seed)
    of = np.arange(jitter * n) % n
    sig = config.sigma
    draws = base[of] * np.exp(sig * rng.standard_normal((len(of),) + anchor.shape) - 0.5 * sig * sig)
    per = base_w / (1 + jitter)
    return np.concatenate([base, draws], axis=0), np.r_[per, per[of]]


def weighted_quantile(X: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per element of ``X [scenarios, ...]``: the smallest value whose weighted share of
    scenarios at or below it reaches ``q`` (``q = 1``: the max; ``q = 0``: the min)."""
    order = np.argsort(X, axis=0, kind="stable")
    srt = np.take_along_axis(X, order, axis=0)
    cw = np.cumsum(weights[order], axis=0)
    idx = np.minimum((cw < q * cw[-1] - 1e-12).sum(axis=0), len(X) - 1)
    return np.take_along_axis(srt, idx[None], axis=0)[0]


def expected_max_load(
    X: np.ndarray, weights: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int
) -> np.ndarray:
    """``[layers]`` weighted mean over scenarios of the layer's max device load (even split):
    the objective of the robust swap search."""
    K, L, E = X.shape
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    counts = np.zeros((L, E))
    np.add.at(counts, (np.broadcast_to(np.arange(L)[:, None], pe.shape)[valid], pe[valid]), 1)
    per = X / np.maximum(counts, 1)[None]
    x = np.take_along_axis(per, np.broadcast_to(pe[None], (K, L, pe.shape[1])), axis=2) * valid[None]
    idx = (np.arange(K * L)[:, None] * num_devices + slot_device[None, :]).ravel()
    dl = np.bincount(idx, weights=x.reshape(K * L, -1).ravel(), minlength=K * L * num_devices).reshape(
        K, L, num_devices
    )
    return np.einsum("k,kl->l", weights, dl.max(axis=2))


def robust_swaps(
    X: np.ndarray, weights: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int, steps: int
) -> np.ndarray:
    """Swap slot experts while the weighted mean over scenarios of each layer's max device
    load falls (all layers at once; a layer stops when no swap of its most critical device
    helps). ``X [scenarios, layers, experts]``. Replica counts, the slot layout and "no two
    replicas of one expert on one device" are kept. Returns the new ``phy2log``."""
    phy2log = phy2log.copy()
    K, L, E = X.shape
    S = phy2log.shape[1]
    valid_all = phy2log >= 0
    pe = np.where(valid_all, phy2log, 0)
    rows = np.broadcast_to(np.arange(L)[:, None], pe.shape)
    counts = np.zeros((L, E))
    np.add.at(counts, (rows[valid_all], pe[valid_all]), 1)
    per = X / np.maximum(counts, 1)[None]  # [K, L, E] load of one replica under even split
    holds = np.zeros((L, num_devices, E), dtype=bool)
    holds[rows[valid_all], np.broadcast_to(slot_device[None, :], pe.shape)[valid_all], pe[valid_all]] = True
    dev_slots = device_slots(slot_device, num_devices)
    smax = dev_slots.shape[1]
    wk = weights[:, None]
    active = np.ones(L, dtype=bool)
    for _ in range(steps):
        act = np.nonzero(active)[0]
        if len(act) == 0:
            break
        La = len(act)
        la = np.arange(La)
        P = phy2log[act]
        V = P >= 0
        Pc = np.where(V, P, 0)
        x = np.take_along_axis(per[:, act], np.broadcast_to(Pc[None], (K, La, S)), axis=2) * V[None]  # [K, La, S]
        idx = (np.arange(K * La)[:, None] * num_devices + slot_device[None, :]).ravel()
        dl = np.bincount(idx, weights=x.reshape(K * La, S).ravel(), minlength=K * La * num_devices).reshape(
            K, La, num_devices
        )
        # zero-load stand-ins when there are fewer than 3 devices: loads are >= 0, so they
        # never change a max, and they hold no slot a swap could pick
        padded = dl if num_devices >= 3 else np.concatenate([dl, np.zeros((K, La, 3 - num_devices))], axis=2)
        top = np.argsort(-padded, axis=2, kind="stable")[:, :, :3]
        tv = np.take_along_axis(padded, top, axis=2)
        F = (wk * tv[:, :, 0]).sum(axis=0)  # [La]
        # the device to relieve: most often the max, weighted by how far it is above the next
        hit = np.zeros((La, num_devices))
        np.add.at(
            hit,
            (np.broadcast_to(la[None, :], (K, La)), top[:, :, 0]),
            wk * (tv[:, :, 0] - tv[:, :, 1] + 1e-9 * tv[:, :, 0]),
        )
        a = hit.argmax(axis=1)  # [La]
        # per scenario, the max over devices other than a and b (from the top 3)
        a0 = top[:, :, 0] == a[None, :]
        a1 = top[:, :, 1] == a[None, :]
        ex_val = np.where(a0, tv[:, :, 1], tv[:, :, 0])
        ex_idx = np.where(a0, top[:, :, 1], top[:, :, 0])
        ex_second = np.where(a0 | a1, tv[:, :, 2], tv[:, :, 1])
        bdev = slot_device  # [S] device of each candidate slot
        m_ab = np.where(
            ex_idx[:, :, None] == bdev[None, None, :], ex_second[:, :, None], ex_val[:, :, None]
        )  # [K, La, S]
        ia = dev_slots[a]  # [La, smax]
        ia_c = np.maximum(ia, 0)
        ia_ok = (ia >= 0) & np.take_along_axis(V, ia_c, axis=1)
        xi = np.take_along_axis(x, np.broadcast_to(ia_c[None], (K, La, smax)), axis=2)  # [K, La, smax]
        load_a = np.take_along_axis(dl, a[None, :, None].repeat(K, axis=0), axis=2)[:, :, 0]  # [K, La]
        load_b = dl[:, :, bdev]  # [K, La, S]
        delta = x[:, :, None, :] - xi[:, :, :, None]  # [K, La, smax, S]: change of a's load
        new_max = np.maximum(
            np.maximum(load_a[:, :, None, None] + delta, load_b[:, :, None, :] - delta), m_ab[:, :, None, :]
        )
        gain = F[:, None, None] - np.einsum("k,klij->lij", weights, new_max)  # [La, smax, S]
        ea = np.take_along_axis(P, ia_c, axis=1)  # [La, smax]
        ok = ia_ok[:, :, None] & (V & (bdev[None, :] != a[:, None]))[:, None, :]
        ok &= ea[:, :, None] != P[:, None, :]
        H = holds[act]
        ok &= ~H[la[:, None], a[:, None], Pc][:, None, :]  # b's expert not already on a
        ok &= ~H[la[:, None, None], bdev[None, None, :], ea[:, :, None]]  # a's expert not already on b
        gain = np.where(ok, gain, -np.inf).reshape(La, -1)
        best = gain.argmax(axis=1)
        # a relative floor: steps that gain less than 1e-4 of the max are noise, not balance
        good = gain[la, best] > 1e-4 * F
        active[act[~good]] = False
        if not good.any():
            break
        i, j = np.divmod(best[good], S)
        lg = act[good]
        si = ia[good, i]
        e_i, e_j = phy2log[lg, si].copy(), phy2log[lg, j].copy()
        phy2log[lg, si], phy2log[lg, j] = e_j, e_i
        da, db = slot_device[si], slot_device[j]
        holds[lg, da, e_i] = False
        holds[lg, db, e_j] = False
        holds[lg, da, e_j] = True
        holds[lg, db, e_i] = True
    return phy2log


def robust_place(
    loads: np.ndarray,
    shape: PodShape,
    num_groups: int = 8,
    history: np.ndarray | None = None,
    config: RobustConfig = RobustConfig(),
    **place_kwargs,
) -> Placement:
    """Place the experts for the *next* window. ``loads [layers, experts]`` is the latest
    window A; ``history [windows, layers, experts]`` (or ``[layers, experts]``) are other
    recorded windows, never the one to be served. ``place_kwargs`` go to :func:`place`
    (policy, locality, balance_tolerance, max_replicas). Returns a :class:`Placement` with the
    slot layout :func:`place` makes for ``shape``, ``slot_share`` None (even split) and
    ``seconds`` covering the whole robust plan."""
    t0 = time.perf_counter()
    anchor = _validate_loads(loads, "loads")
    if anchor.ndim != 2:
        raise XpodError(
            f"loads: robust planning takes the latest window [layers, experts], got shape {anchor.shape}; "
            "pass older windows as history"
        )
    hist = None
    if history is not None:
        hist = _validate_loads(history, "history")
        if hist.ndim == 2:
            hist = hist[None]
        if hist.shape[1:] != anchor.shape:
            raise XpodError(f"history: windows of shape {hist.shape[1:]} do not match the loads {anchor.shape}")
    for key in ("previous", "max_moves", "hedge", "half_life_windows"):
        if key in place_kwargs:
            raise XpodError(
                f"robust planning does not take {key!r}; plan from scratch, then align with place(previous=...)"
            )
    X, weights = drift_scenarios(anchor, hist, config)
    q = weighted_quantile(X, weights, config.quantile)
    base = place(q, shape, num_groups, **place_kwargs)
    phy2log = robust_swaps(X, weights, base.phy2log, base.slot_device, shape.num_devices, config.swap_steps)
    policy = Policy.BUDGET if base.policy is Policy.BUDGET else Policy.EVEN
    return dataclasses.replace(base, phy2log=phy2log, slot_share=None, policy=policy, seconds=time.perf_counter() - t0)


def stale_history(names: list[str], anchor: str, target: str, scope: str = "all") -> list[str]:
    """The history windows for planning on ``anchor`` and serving ``target``: every recorded
    window except the anchor and the target (``scope="all"``), or only those of the anchor's
    phase, the name's prefix before the first ``_`` such as ``prefill`` or ``decode``
    (``scope="phase"``), or none (``scope="none"``). The target is never in it."""
    if scope not in ("all", "phase", "none"):
        raise XpodError(f"history scope must be all, phase or none, got {scope!r}")
    if scope == "none":
        return []
    phase = anchor.split("_", 1)[0]
    return [n for n in names if n not in (anchor, target) and (scope == "all" or n.split("_", 1)[0] == phase)]


def plan_for_next_window(
    windows,
    anchor: str,
    target: str,
    shape: PodShape,
    num_groups: int = 8,
    scope: str = "all",
    config: RobustConfig = RobustConfig(),
    **place_kwargs,
) -> tuple[Placement, list[str]]:
    """The stale-statistics experiment's planner side: from ``windows`` (a mapping of window
    name to ``[layers, experts]`` loads) plan on ``anchor`` with the history
    :func:`stale_history` picks, to serve ``target``. Only the anchor and those history windows
    are read (``windows[target]`` never is). Returns the placement and the history names."""
    names = stale_history(list(windows.keys()), anchor, target, scope)
    a = np.asarray(windows[anchor], dtype=np.float64)
    hist = np.stack([np.asarray(windows[n], dtype=np.float64) for n in names]) if names else None
    return robust_place(a, shape, num_groups, history=hist, config=config, **place_kwargs), names
