"""The placement's fast paths give exactly the results of the straightforward code they
replaced, kept here as references:

* the packing loop (``placement._pack_free``): same device for every item on random pods, with
  and without home and spread penalties, uneven nodes, per-layer budgets (padding) and dense
  pods where greedy packing gets stuck and must make room;
* the swap passes (``refine.pair_refine``, candidates laid out long-axis-last, duplicates
  checked from the pair's own slots instead of a [layers, devices, experts] table): same
  ``phy2log`` with and without pins and soft pin costs;
* the water-filling (``placement.water_fill_shares``, two-replica experts column by column):
  same shares, bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xpod.runtime.moe import PodShape, place
from xpod.runtime.moe.placement import (
    _items,
    _layout_budget,
    _layout_fixed,
    _pack_free,
    expert_homes,
    layer_budgets,
    replica_counts,
    water_fill_shares,
)
from xpod.runtime.moe.refine import _slot_loads, pair_refine


# The per-item loop as it was before the fast path (boolean masks, 2-D fancy indexing, the
# output written item by item): slow and simple, the reference for the fast one.


def _reference_pack_free(
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
    is the algorithm's cost centre. Same choices as :func:`_pack` with the same arguments."""
    layers, items = item_expert.shape
    num_devices = capacity.shape[1]
    num_nodes = int(device_node.max()) + 1
    rows = np.arange(layers)
    unit = item_load.sum(axis=1) / np.maximum((item_expert >= 0).sum(axis=1), 1)
    order = np.argsort(-item_load, axis=1, kind="stable")
    ex = np.take_along_axis(item_expert, order, axis=1)
    ld = np.take_along_axis(item_load, order, axis=1)
    pr = np.take_along_axis(item_primary, order, axis=1)
    padded = (ex < 0).any(axis=0)
    # cont[p]: in some layer item p is another replica of item p-1's expert (replicas of one
    # expert are consecutive: equal loads). Only then do "devices holding it" need tracking.
    cont = np.zeros(items + 1, dtype=bool)
    cont[1:items] = ((ex[:, 1:] == ex[:, :-1]) & (ex[:, 1:] >= 0)).any(axis=0)
    home = None if soft_homes is None else np.take_along_axis(soft_homes, np.maximum(ex, 0), axis=1)
    tie = 1e-9 * unit[:, None]
    # First replicas pay (a tie-break plus) ``home_penalty`` off their home node; extra replicas
    # lean to the last devices, which the homes fill last.
    off_home = (tie + home_penalty * unit[:, None])[:, :, None]
    tail = tie * (1.0 - np.arange(num_devices) / num_devices)[None, :]
    spread = spread_penalty * unit[:, None]
    dev_load = np.zeros((layers, num_devices))
    eff = np.where(capacity <= 0, np.inf, 0.0)  # the load the argmin sees: +inf once full
    used = np.zeros((layers, num_devices), dtype=np.int64)
    took = np.zeros((layers, num_devices), dtype=bool)  # devices holding the current expert
    took_node = np.zeros((layers, num_nodes), dtype=bool)
    out = np.full((layers, items), -1, dtype=np.int64)
    # updates go through flat views with one index per layer (cheaper than 2-D fancy indexing)
    flat_load, flat_eff, flat_used, flat_took = (
        dev_load.reshape(-1),
        eff.reshape(-1),
        used.reshape(-1),
        took.reshape(-1),
    )
    flat_cap, flat_took_node, flat_out = capacity.reshape(-1), took_node.reshape(-1), out.reshape(-1)
    base_dev, base_node, base_out = rows * num_devices, rows * num_nodes, rows * items
    chunk = 32  # the home costs of 32 items at a time: [layers, 32, devices]
    static = tail
    prev = None
    for p in range(items):
        if home is not None and p % chunk == 0:
            c = slice(p, min(p + chunk, items))
            static_chunk = np.where(
                pr[:, c, None], off_home * (device_node[None, None, :] != home[:, c, None]), tail[:, None, :]
            )
        if home is not None:
            static = static_chunk[:, p % chunk]
        e = ex[:, p]
        cost = eff + static
        if cont[p]:
            # layers where this item continues the previous expert keep its devices blocked
            same = (e == prev)[:, None]
            took &= same
            took_node &= same
            if spread_penalty:
                cost += spread * took_node[:, device_node]
            cost[took] = np.inf
            d = cost.argmin(axis=1)
            stuck = np.isinf(cost[rows, d]) & (e >= 0)
            if stuck.any():
                # every device with room already holds this expert (dense pods): make room
                for layer in np.nonzero(stuck)[0]:
                    d[layer] = _reference_make_room(
                        layer, int(e[layer]), ex, ld, out, order, dev_load, eff, used, capacity
                    )
        else:
            d = cost.argmin(axis=1)
        if padded[p]:
            r = rows[e >= 0]
            dd, item_ld = d[r], ld[r, p]
        else:
            r, dd, item_ld = rows, d, ld[:, p]
        idx = base_dev[r] + dd
        new_load = flat_load[idx] + item_ld
        flat_load[idx] = new_load
        u = flat_used[idx] + 1
        flat_used[idx] = u
        flat_eff[idx] = np.where(u >= flat_cap[idx], np.inf, new_load)
        if cont[p + 1]:
            if not cont[p]:
                took[:] = False
                took_node[:] = False
            flat_took[idx] = True
            flat_took_node[base_node[r] + device_node[dd]] = True
        flat_out[base_out[r] + order[r, p]] = dd
        prev = e
    # Without a replica in flight only full devices are blocked: an argmin that landed on one
    # (all were full) shows as an over-full device.
    if (used > capacity).any():
        raise AssertionError("packing ran out of feasible devices")
    return out


def _reference_make_room(layer, expert, ex, ld, out, order, dev_load, eff, used, capacity) -> int:
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
    rooms = [dev for dev in range(num_devices) if used[layer, dev] < capacity[layer, dev]]
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
                    used[layer, a] += 1
                    used[layer, b] -= 1
                    for dev in (a, b):
                        eff[layer, dev] = np.inf if used[layer, dev] >= capacity[layer, dev] else dev_load[layer, dev]
                    return b
    raise AssertionError("packing ran out of feasible devices")  # more replicas than devices


def _case(seed, pod, budget, homes, home_penalty, spread_penalty):
    devices, nodes, slots, experts = pod
    rng = np.random.default_rng(seed)
    layers = 4
    w = rng.lognormal(0, rng.uniform(0, 2), size=(layers, experts))
    w[rng.random(w.shape) < 0.1] = 0.0
    shape = PodShape(devices, nodes, slots)
    total = devices * slots
    if budget and total > experts:
        budgets = layer_budgets(w, total * layers, devices, cap=devices)
        capacity, _ = _layout_budget(shape, budgets)
    else:
        budgets = np.full(layers, total)
        capacity, _ = _layout_fixed(shape, layers)
    counts = replica_counts(w, budgets, cap=devices)
    item_expert, item_load, item_primary = _items(w, counts, int(budgets.max()))
    soft = expert_homes(w, experts // 8 if experts >= 8 else 1, nodes, total // nodes, fill=True) if homes else None
    return item_expert, item_load, item_primary, capacity, shape.device_node(), soft, home_penalty, spread_penalty


def _check(args):
    fast = _pack_free(*args)
    slow = _reference_pack_free(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    np.testing.assert_array_equal(fast, slow)
    # and the result is a packing: every real item placed, capacities kept, no duplicates
    item_expert, capacity = args[0], args[3]
    valid = item_expert >= 0
    assert ((fast >= 0) == valid).all()
    for layer in range(item_expert.shape[0]):
        used = np.bincount(fast[layer][valid[layer]], minlength=capacity.shape[1])
        assert (used <= capacity[layer]).all()
        pairs = set(zip(fast[layer][valid[layer]].tolist(), item_expert[layer][valid[layer]].tolist()))
        assert len(pairs) == valid[layer].sum()


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    pod=st.sampled_from([(8, 2, 3, 16), (6, 2, 9, 16), (7, 3, 4, 16), (16, 4, 2, 32), (16, 4, 5, 64), (10, 5, 1, 8)]),
    budget=st.booleans(),
    homes=st.booleans(),
    home_penalty=st.sampled_from([0.0, 1.0]),
    spread_penalty=st.sampled_from([0.0, 1.0, 0.3]),
)
def test_fast_packing_matches_reference_loop(seed, pod, budget, homes, home_penalty, spread_penalty):
    _check(_case(seed, pod, budget, homes, home_penalty, spread_penalty))


def test_fast_packing_matches_reference_where_greedy_gets_stuck(monkeypatch):
    # dense pods (most devices hold most experts): for these seeds greedy packing gets stuck
    # and _make_room runs, in the fast loop as in the reference
    from xpod.runtime.moe import placement

    calls = []
    real = placement._make_room
    monkeypatch.setattr(placement, "_make_room", lambda *a: calls.append(a[0]) or real(*a))
    for seed in range(12):
        for pod, budget in (((3, 1, 5, 8), True), ((5, 1, 7, 8), False), ((6, 2, 9, 16), True)):
            for homes, spread in ((False, 0.0), (True, 1.0)):
                _check(_case(seed, pod, budget, homes, 1.0 if homes else 0.0, spread))
    assert len(calls) >= 5  # 8 with these seeds


def test_reference_comparison_reaches_the_make_room_path():
    # the stuck case of test_moe_locality, through both loops
    args = (
        np.array([[0, 1, 2, 2]]),
        np.array([[5.0, 4.0, 3.0, 3.0]]),
        np.array([[True, True, True, False]]),
        np.array([[1, 3]]),
        np.array([0, 0]),
        None,
        0.0,
        0.0,
    )
    fast = _pack_free(*args)
    np.testing.assert_array_equal(fast, _reference_pack_free(*args))
    assert sorted(fast[0].tolist()) == [0, 1, 1, 1] and fast[0, 2] != fast[0, 3]


# The swap passes and the water-filling as they were (boolean [layers, devices, experts] table,
# [L, K, S, S] layout; one padded table for every multi-replica expert).
def _reference_pair_refine(
    w: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    pinned: np.ndarray | None = None,
    passes: int = 12,
    pin_cost: np.ndarray | None = None,
    pairs: int | None = None,
) -> np.ndarray:
    """Bounded vectorised swap passes. In each pass every layer's devices are sorted by load and
    the ``k``-th most loaded device is paired with a light one (the ``k``-th lightest, rotated
    by the pass number so a stuck pair meets other partners); in every pair the one swap of two
    slots' experts that most lowers the pair's larger load is made, all pairs of all layers at
    once. The pairs of a pass share no device, so their swaps are independent, and a swap never
    raises the pair's larger load, so no pass raises a layer's max. Same invariants as
    :func:`swap_refine` (slot layout and per-device counts unchanged, never two replicas of one
    expert on a device, a ``pinned`` replica stays on its node); at most ``passes`` passes, fewer
    when no pair improves. Loads assume an even split over replicas. With ``pin_cost [layers]``
    the pin is soft: a swap that takes a pinned replica off its node must lower the pair's larger
    load by more than ``pin_cost`` per such replica. ``pairs``: pairs per pass (default a
    quarter of the devices)."""
    phy2log = phy2log.copy()
    pinned = None if pinned is None else pinned.copy()
    layers, slots = phy2log.shape
    num_devices = len(device_node)
    if num_devices < 2 or passes <= 0:
        return phy2log
    experts = w.shape[1]
    slot_node = device_node[slot_device]
    sl, _ = _slot_loads(w, phy2log)
    flat = (np.arange(layers)[:, None] * num_devices + slot_device[None, :]).ravel()
    dl = np.bincount(flat, weights=sl.ravel(), minlength=layers * num_devices).reshape(layers, num_devices)
    holds = np.zeros((layers, num_devices, experts), dtype=bool)
    lr, sc = np.nonzero(phy2log >= 0)
    holds[lr, slot_device[sc], phy2log[lr, sc]] = True
    per_dev = np.bincount(slot_device, minlength=num_devices)
    smax = int(per_dev.max())
    first = np.searchsorted(slot_device, np.arange(num_devices))
    dev_slots = np.where(np.arange(smax)[None, :] < per_dev[:, None], first[:, None] + np.arange(smax)[None, :], -1)
    # default: the hottest quarter (measured as good as half, at half the cost)
    pairs = max(1, num_devices // 4) if pairs is None else max(1, min(pairs, num_devices // 2))
    rows = np.arange(layers)[:, None]  # [L, 1]
    for step in range(passes):
        order = np.argsort(dl, axis=1)
        hot = order[:, ::-1][:, :pairs]  # [L, K], hottest first
        light = np.roll(order[:, :pairs], -(step % pairs), axis=1) if step % 2 else order[:, :pairs]
        a_s = dev_slots[hot]  # [L, K, S]
        b_s = dev_slots[light]
        a_ok, b_ok = a_s >= 0, b_s >= 0
        a_s, b_s = np.maximum(a_s, 0), np.maximum(b_s, 0)
        r3 = rows[:, :, None]
        ea, eb = phy2log[r3, a_s], phy2log[r3, b_s]
        a_ok &= ea >= 0
        b_ok &= eb >= 0
        la, lb = sl[r3, a_s], sl[r3, b_s]
        dh = np.take_along_axis(dl, hot, axis=1)[:, :, None, None]
        dli = np.take_along_axis(dl, light, axis=1)[:, :, None, None]
        delta = la[:, :, :, None] - lb[:, :, None, :]  # load moved from hot to light
        worst = np.maximum(dh - delta, dli + delta)
        ok = a_ok[:, :, :, None] & b_ok[:, :, None, :] & (ea[:, :, :, None] != eb[:, :, None, :])
        # no duplicates: b's expert must not be on the hot device already, nor a's on the light one
        ok &= ~holds[r3, hot[:, :, None], np.maximum(eb, 0)][:, :, None, :]
        ok &= ~holds[r3, light[:, :, None], np.maximum(ea, 0)][:, :, :, None]
        if pinned is not None:
            cross = slot_node[a_s][:, :, :, None] != slot_node[b_s][:, :, None, :]
            if pin_cost is None:
                ok &= ~cross | ~(pinned[r3, a_s][:, :, :, None] | pinned[r3, b_s][:, :, None, :])
            else:
                leaving = pinned[r3, a_s][:, :, :, None].astype(np.int8) + pinned[r3, b_s][:, :, None, :]
                worst = worst + pin_cost[:, None, None, None] * (cross * leaving)
        gain = np.where(ok, dh - worst, -np.inf).reshape(layers, pairs, -1)
        best = gain.argmax(axis=2)
        bg = np.take_along_axis(gain, best[:, :, None], axis=2)[:, :, 0]
        good = bg > 1e-9 * np.maximum(dh[:, :, 0, 0], 1e-300)
        if not good.any():
            break
        li, ki = np.nonzero(good)
        ia, ib = np.divmod(best[li, ki], smax)
        sa, sb = a_s[li, ki, ia], b_s[li, ki, ib]
        va, vb = phy2log[li, sa], phy2log[li, sb]
        da, db = slot_device[sa], slot_device[sb]
        moved = sl[li, sa] - sl[li, sb]
        phy2log[li, sa], phy2log[li, sb] = vb, va
        sl[li, sa], sl[li, sb] = sl[li, sb], sl[li, sa] + 0.0
        holds[li, da, va] = False
        holds[li, db, vb] = False
        holds[li, da, vb] = True
        holds[li, db, va] = True
        dl[li, da] -= moved
        dl[li, db] += moved
        if pinned is not None:
            pa, pb = pinned[li, sa], pinned[li, sb]
            pinned[li, sa], pinned[li, sb] = pb, pa
    return phy2log


def _reference_water_fill_shares(
    w: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int, iterations: int = 5
) -> np.ndarray:
    """``[layers, slots]`` shares: per expert with several replicas, split its tokens so the
    devices holding it are as level as possible given the rest of their load (damped Jacobi
    water-filling). Single-replica experts keep share 1; empty slots 0."""
    layers, slots = phy2log.shape
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    rows2 = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    counts = np.zeros(w.shape, dtype=np.int64)
    np.add.at(counts, (rows2[valid], pe[valid]), 1)
    share = np.where(valid, 1.0 / np.maximum(counts[rows2, pe], 1), 0.0)
    multi = valid & (counts[rows2, pe] > 1)
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
    ranks = np.arange(1, rmax + 1)[None, :]
    flat_dev = (rows2 * num_devices + slot_device[None, :]).ravel()
    # flat indices, computed once: the table's slots in ``share`` and its devices in ``dl``
    tab_flat = tab_l * slots + tab_s
    real = ~pad
    real_flat = tab_flat[real]
    tab_dev = tab_l * num_devices + dev
    share_flat = share.reshape(-1)
    ew_flat = ew.ravel()
    last = np.arange(len(start))
    for _ in range(iterations):
        dl = np.bincount(flat_dev, weights=ew_flat * share_flat, minlength=layers * num_devices)
        mine = wexp * share_flat[tab_flat]
        other = np.where(pad, np.inf, dl[tab_dev] - mine)
        srt = np.sort(other, axis=1)
        finite = np.isfinite(srt)
        csum = np.cumsum(np.where(finite, srt, 0.0), axis=1)
        level = (wexp + csum) / ranks
        n_active = np.maximum(((srt < level) & finite).sum(axis=1), 1)
        c = level[last, n_active - 1][:, None]
        new = np.where(pad, 0.0, np.clip(c - other, 0.0, None))
        tot = new.sum(axis=1, keepdims=True)
        frac = np.divide(new, tot, out=np.full_like(new, 0.0), where=tot > 0)
        share_flat[real_flat] = 0.5 * share_flat[real_flat] + 0.5 * frac[real]
    return share


def _random_plan(seed, devices, nodes, slots, experts, layers=3, policy="even"):
    rng = np.random.default_rng(seed)
    w = rng.lognormal(0, rng.uniform(0.2, 2), size=(layers, experts))
    w[rng.random(w.shape) < 0.05] = 0.0
    plan = place(w, PodShape(devices, nodes, slots), 8 if experts % 8 == 0 else 1, policy=policy, refine_steps=0)
    return rng, w, plan


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    pod=st.sampled_from([(8, 2, 3, 16), (16, 4, 5, 64), (12, 3, 4, 32), (6, 2, 9, 16), (10, 5, 2, 16)]),
    pin=st.sampled_from(["none", "hard", "soft"]),
    passes=st.integers(1, 6),
    pairs=st.sampled_from([None, 1, 3]),
    policy=st.sampled_from(["even", "budget"]),
)
def test_fast_swap_passes_match_reference(seed, pod, pin, passes, pairs, policy):
    # "budget": per-layer slot counts, so devices have different slot counts and empty slots
    rng, w, plan = _random_plan(seed, *pod, policy=policy)
    device_node = plan.shape.device_node()
    pinned = None if pin == "none" else (rng.random(plan.phy2log.shape) < 0.5) & (plan.phy2log >= 0)
    pin_cost = rng.uniform(0, 0.2, w.shape[0]) * w.sum(axis=1) / plan.phy2log.shape[1] if pin == "soft" else None
    args = (w, plan.phy2log, plan.slot_device, device_node, pinned)
    fast = pair_refine(*args, passes=passes, pin_cost=pin_cost, pairs=pairs)
    slow = _reference_pair_refine(*args, passes=passes, pin_cost=pin_cost, pairs=pairs)
    np.testing.assert_array_equal(fast, slow)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    pod=st.sampled_from([(8, 2, 3, 16), (16, 4, 5, 64), (32, 4, 9, 256), (20, 4, 1, 16), (17, 1, 1, 16)]),
)
def test_fast_water_filling_matches_reference(seed, pod):
    # (20, 4, 1, 16): only experts with one or two replicas; (17, 1, 1, 16): exactly one of two
    _, w, plan = _random_plan(seed, *pod)
    args = (w, plan.phy2log, plan.slot_device, plan.shape.num_devices)
    np.testing.assert_array_equal(water_fill_shares(*args), _reference_water_fill_shares(*args))
