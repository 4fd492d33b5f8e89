"""Local search on a written placement: swap two slots' experts, or re-point one slot.

Used twice: after packing (to win back balance the locality penalty cost) and for incremental
rebalancing from a previous placement under a budget of expert-weight moves. Every step keeps
the invariants: slot layout and per-device slot counts unchanged, no device holds two replicas
of one expert, every expert keeps at least one replica. Vectorised over layers: each step
improves, in every layer at once, that layer's most loaded device.
"""

from __future__ import annotations

import numpy as np


def device_slots(slot_device: np.ndarray, num_devices: int) -> np.ndarray:
    """[devices, max slots per device]: the slot indices of each device, padded with -1
    (``slot_device`` is sorted: a device's slots are consecutive)."""
    per_dev = np.bincount(slot_device, minlength=num_devices)
    smax = int(per_dev.max())
    first = np.searchsorted(slot_device, np.arange(num_devices))
    k = np.arange(smax)[None, :]
    return np.where(k < per_dev[:, None], first[:, None] + k, -1)


def _slot_loads(w: np.ndarray, phy2log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    layers, experts = w.shape
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    counts = np.bincount((rows * experts + pe)[valid], minlength=layers * experts).reshape(layers, experts)
    per = w / np.maximum(counts, 1)
    return np.where(valid, np.take_along_axis(per, pe, axis=1), 0.0), counts


def swap_refine(
    w: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    pinned: np.ndarray | None,
    steps: int = 48,
    candidates: int = 8,
    move_budget: int | None = None,
) -> tuple[np.ndarray, int]:
    """Swap experts between the most loaded device's slots and slots on light devices while
    that lowers the layer's max device load (even split). With ``pinned [layers, slots]``
    (a replica that must stay on its node) a pinned replica only swaps inside its node; the
    flag travels with the replica. ``move_budget`` caps the expert weights loaded (2 per swap) over all layers.
    Returns ``(phy2log, weights_moved)``."""
    phy2log = phy2log.copy()
    pinned = None if pinned is None else pinned.copy()
    layers, slots = phy2log.shape
    num_devices = len(device_node)
    experts = w.shape[1]
    slot_node = device_node[slot_device]
    moved = 0
    active = np.ones(layers, dtype=bool)
    # holds[l, d, e]: device d holds expert e in layer l (kept up to date across swaps)
    holds = np.zeros((layers, num_devices, experts), dtype=bool)
    lr, sc = np.nonzero(phy2log >= 0)
    holds[lr, slot_device[sc], phy2log[lr, sc]] = True
    # slots of each device, padded: [devices, smax]
    dev_slots = device_slots(slot_device, num_devices)
    mates = int(np.bincount(device_node).min())
    for _ in range(steps):
        if move_budget is not None and moved + 2 > move_budget:
            break
        # Only layers that still improved last step are worked on.
        act = np.nonzero(active)[0]
        if len(act) == 0:
            break
        P, Wt = phy2log[act], w[act]
        PIN = pinned[act] if pinned is not None else None
        L = len(act)
        rws = np.arange(L)
        sl, _ = _slot_loads(Wt, P)
        dl = np.bincount(
            (np.arange(L)[:, None] * num_devices + slot_device[None, :]).ravel(),
            weights=sl.ravel(),
            minlength=L * num_devices,
        ).reshape(L, num_devices)
        hot = dl.argmax(axis=1)
        light = np.argsort(dl, axis=1)[:, :candidates]
        same = device_node[None, :] == device_node[hot][:, None]
        node_mates = np.argsort(np.where(same, dl, np.inf), axis=1)[:, :mates]
        cand_dev = np.concatenate([light, node_mates], axis=1)  # [L, C]
        a_slots = dev_slots[hot]  # [L, smax]
        b_slots = dev_slots[cand_dev].reshape(L, -1)  # [L, C*smax]
        a_ok = a_slots >= 0
        b_ok = (b_slots >= 0) & (slot_device[np.maximum(b_slots, 0)] != hot[:, None])
        a_s, b_s = np.maximum(a_slots, 0), np.maximum(b_slots, 0)
        ea = np.take_along_axis(P, a_s, axis=1)
        eb = np.take_along_axis(P, b_s, axis=1)
        b_ok &= eb >= 0
        a_ok &= ea >= 0
        la = np.take_along_axis(sl, a_s, axis=1)
        lb = np.take_along_axis(sl, b_s, axis=1)
        bdev = slot_device[b_s]
        new_hot = dl[rws, hot][:, None, None] - la[:, :, None] + lb[:, None, :]
        new_oth = np.take_along_axis(dl, bdev, axis=1)[:, None, :] - lb[:, None, :] + la[:, :, None]
        worst = np.maximum(new_hot, new_oth)
        ok = a_ok[:, :, None] & b_ok[:, None, :] & (ea[:, :, None] != eb[:, None, :])
        # no duplicates: b's expert must not already be on the hot device, nor a's on b's device
        H = holds[act]
        ok &= ~H[rws[:, None], hot[:, None], np.maximum(eb, 0)][:, None, :]
        ok &= ~H[rws[:, None, None], bdev[:, None, :], np.maximum(ea, 0)[:, :, None]]
        if pinned is not None:
            cross = slot_node[a_s][:, :, None] != slot_node[b_s][:, None, :]
            pa = np.take_along_axis(PIN, a_s, axis=1)
            pb = np.take_along_axis(PIN, b_s, axis=1)
            ok &= ~cross | ~(pa[:, :, None] | pb[:, None, :])
        gain = dl[rws, hot][:, None, None] - worst
        gain = np.where(ok, gain, -np.inf)
        flat = gain.reshape(L, -1)
        best = flat.argmax(axis=1)
        good = flat[rws, best] > 1e-9 * np.maximum(dl[rws, hot], 1e-300)
        if move_budget is not None:
            room = (move_budget - moved) // 2
            idx = np.nonzero(good)[0]
            if len(idx) > room:
                keep = idx[np.argsort(-flat[idx, best[idx]])[:room]]
                good = np.zeros_like(good)
                good[keep] = True
        active[act[~good]] = False
        if not good.any():
            break
        ia, ib = np.divmod(best, b_slots.shape[1])
        r = rws[good]
        sa, sb = a_s[r, ia[good]], b_s[r, ib[good]]
        full = act[r]
        va, vb = phy2log[full, sa].copy(), phy2log[full, sb].copy()
        phy2log[full, sa], phy2log[full, sb] = vb, va
        da, db = slot_device[sa], slot_device[sb]
        holds[full, da, va] = False
        holds[full, db, vb] = False
        holds[full, da, vb] = True
        holds[full, db, va] = True
        if pinned is not None:
            pa, pb = pinned[full, sa].copy(), pinned[full, sb].copy()
            pinned[full, sa], pinned[full, sb] = pb, pa
        moved += 2 * int(good.sum())
    return phy2log, moved


def pair_refine(
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
    slot_node = device_node[slot_device]
    sl, _ = _slot_loads(w, phy2log)
    flat = (np.arange(layers)[:, None] * num_devices + slot_device[None, :]).ravel()
    dl = np.bincount(flat, weights=sl.ravel(), minlength=layers * num_devices).reshape(layers, num_devices)
    dev_slots = device_slots(slot_device, num_devices)
    smax = dev_slots.shape[1]
    # default: the hottest quarter (measured as good as half, at half the cost)
    pairs = max(1, num_devices // 4) if pairs is None else max(1, min(pairs, num_devices // 2))
    # The candidate swaps of a pass are laid out [hot slot, light slot, layer * pair]: the long
    # axis last, so every elementwise step runs over long contiguous rows (with [L, K, S, S] the
    # inner loops were S = 5 long and dominated the cost). Same values, same first-best order.
    lk = layers * pairs
    lk_layer = np.repeat(np.arange(layers), pairs)  # layer of every (layer, pair) column
    lk_slot, lk_dev = lk_layer * slots, lk_layer * num_devices
    lk_cols = np.arange(lk)
    dev_slots_t = np.ascontiguousarray(dev_slots.T)  # [S, devices]
    flat_p2l, flat_sl = phy2log.reshape(-1), sl.reshape(-1)
    lk_pin_cost = None if pin_cost is None else pin_cost[lk_layer][None, :]
    delta = np.empty((smax, smax, lk))
    worst = np.empty_like(delta)
    tmp = np.empty_like(delta)
    for step in range(passes):
        order = np.argsort(dl, axis=1)
        hot = order[:, ::-1][:, :pairs]  # [L, K], hottest first
        light = np.roll(order[:, :pairs], -(step % pairs), axis=1) if step % 2 else order[:, :pairs]
        hot, light = hot.ravel(), light.ravel()
        a_s = dev_slots_t[:, hot]  # [S, LK]
        b_s = dev_slots_t[:, light]
        a_ok, b_ok = a_s >= 0, b_s >= 0
        a_s, b_s = np.maximum(a_s, 0), np.maximum(b_s, 0)
        fa, fb = lk_slot + a_s, lk_slot + b_s
        ea, eb = flat_p2l[fa], flat_p2l[fb]
        a_ok &= ea >= 0
        b_ok &= eb >= 0
        la, lb = flat_sl[fa], flat_sl[fb]
        dl_flat = dl.reshape(-1)
        dh = dl_flat[lk_dev + hot]  # [LK]
        dli = dl_flat[lk_dev + light]
        np.subtract(la[:, None, :], lb[None, :, :], out=delta)  # load moved from hot to light
        np.subtract(dh, delta, out=worst)
        np.add(dli, delta, out=tmp)
        np.maximum(worst, tmp, out=worst)
        # No duplicates: b's expert must not be on the hot device already, nor a's on the light
        # one. A device holds exactly the experts of its slots, so "the hot device holds b's
        # expert" is "some slot of the pair's hot side holds it" (and the same expert on both
        # sides is excluded with it).
        both = a_ok[:, None, :] & b_ok[None, :, :]
        same = (ea[:, None, :] == eb[None, :, :]) & both
        hot_has_b = same[0].copy()  # [S (light slot), LK]; OR over slabs: any() over a short axis is slow
        light_has_a = same[:, 0].copy()  # [S (hot slot), LK]
        for k in range(1, smax):
            hot_has_b |= same[k]
            light_has_a |= same[:, k]
        ok = both & ~(hot_has_b[None, :, :] | light_has_a[:, None, :])
        if pinned is not None:
            cross = slot_node[a_s][:, None, :] != slot_node[b_s][None, :, :]
            flat_pin = pinned.reshape(-1)
            pa, pb = flat_pin[fa], flat_pin[fb]
            if pin_cost is None:
                ok &= ~cross | ~(pa[:, None, :] | pb[None, :, :])
            else:
                # pin_cost times the pinned replicas leaving their node (0, 1 or 2; 2 * c == c + c)
                np.add((lk_pin_cost * pa)[:, None, :], (lk_pin_cost * pb)[None, :, :], out=tmp)
                np.multiply(tmp, cross, out=tmp)
                np.add(worst, tmp, out=worst)
        np.subtract(dh, worst, out=tmp)
        gain = np.where(ok, tmp, -np.inf).reshape(smax * smax, lk)
        best = gain.argmax(axis=0)
        bg = gain[best, lk_cols]
        good = bg > 1e-9 * np.maximum(dh, 1e-300)
        if not good.any():
            break
        g = np.nonzero(good)[0]
        li = lk_layer[g]
        ia, ib = np.divmod(best[g], smax)
        sa, sb = a_s[ia, g], b_s[ib, g]
        va, vb = phy2log[li, sa], phy2log[li, sb]
        da, db = slot_device[sa], slot_device[sb]
        moved = sl[li, sa] - sl[li, sb]
        phy2log[li, sa], phy2log[li, sb] = vb, va
        sl[li, sa], sl[li, sb] = sl[li, sb], sl[li, sa] + 0.0
        dl[li, da] -= moved
        dl[li, db] += moved
        if pinned is not None:
            pa, pb = pinned[li, sa], pinned[li, sb]
            pinned[li, sa], pinned[li, sb] = pb, pa
    return phy2log
