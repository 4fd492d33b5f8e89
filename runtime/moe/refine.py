"""Local search on a written placement: swap two slots' experts, or re-point one slot.

Used twice: after packing (to win back balance the locality penalty cost) and for incremental
rebalancing from a previous placement under a budget of expert-weight moves. Every step keeps
the invariants: slot layout and per-device slot counts unchanged, no device holds two replicas
of one expert, every expert keeps at least one replica. Vectorised over layers: each step
improves, in every layer at once, that layer's most loaded device.
"""

from __future__ import annotations

import numpy as np


def _slot_loads(w: np.ndarray, phy2log: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    layers, experts = w.shape
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    counts = np.zeros((layers, experts), dtype=np.int64)
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    np.add.at(counts, (rows[valid], pe[valid]), 1)
    per = w / np.maximum(counts, 1)
    return np.where(valid, np.take_along_axis(per, pe, axis=1), 0.0), counts


def swap_refine(
    w: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    pinned: np.ndarray | None,
    steps: int = 48,
    candidates: int = 12,
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
    rows = np.arange(layers)
    slot_node = device_node[slot_device]
    moved = 0
    # slots of each device, padded: [devices, smax]
    per_dev = np.bincount(slot_device, minlength=num_devices)
    smax = int(per_dev.max())
    dev_slots = np.full((num_devices, smax), -1, dtype=np.int64)
    first = np.searchsorted(slot_device, np.arange(num_devices))
    for k in range(smax):
        has = per_dev > k
        dev_slots[has, k] = first[has] + k
    mates = int(np.bincount(device_node).min())
    for _ in range(steps):
        if move_budget is not None and moved + 2 > move_budget:
            break
        sl, _ = _slot_loads(w, phy2log)
        dl = np.zeros((layers, num_devices))
        np.add.at(dl, (slice(None), slot_device), sl)
        hot = dl.argmax(axis=1)
        light = np.argsort(dl, axis=1)[:, :candidates]
        same = device_node[None, :] == device_node[hot][:, None]
        node_mates = np.argsort(np.where(same, dl, np.inf), axis=1)[:, :mates]
        cand_dev = np.concatenate([light, node_mates], axis=1)  # [L, C]
        a_slots = dev_slots[hot]  # [L, smax]
        b_slots = dev_slots[cand_dev].reshape(layers, -1)  # [L, C*smax]
        a_ok = a_slots >= 0
        b_ok = (b_slots >= 0) & (slot_device[np.maximum(b_slots, 0)] != hot[:, None])
        a_s, b_s = np.maximum(a_slots, 0), np.maximum(b_slots, 0)
        ea = np.take_along_axis(phy2log, a_s, axis=1)
        eb = np.take_along_axis(phy2log, b_s, axis=1)
        b_ok &= eb >= 0
        a_ok &= ea >= 0
        la = np.take_along_axis(sl, a_s, axis=1)
        lb = np.take_along_axis(sl, b_s, axis=1)
        bdev = slot_device[b_s]
        new_hot = dl[rows, hot][:, None, None] - la[:, :, None] + lb[:, None, :]
        new_oth = np.take_along_axis(dl, bdev, axis=1)[:, None, :] - lb[:, None, :] + la[:, :, None]
        worst = np.maximum(new_hot, new_oth)
        ok = a_ok[:, :, None] & b_ok[:, None, :] & (ea[:, :, None] != eb[:, None, :])
        # no duplicates: b's expert must not already be on the hot device, nor a's on b's device
        hot_has = np.zeros((layers, experts + 1), dtype=bool)
        np.put_along_axis(hot_has, np.where(a_ok, ea, experts), True, axis=1)
        hot_has[:, experts] = False
        ok &= ~np.take_along_axis(hot_has, np.where(eb >= 0, eb, experts), axis=1)[:, None, :]
        # a's expert on b's device: compare against every slot of b's device
        bdev_slots = dev_slots[bdev]  # [L, B, smax]
        bdev_exp = np.where(bdev_slots >= 0, np.take_along_axis(phy2log, np.maximum(bdev_slots, 0).reshape(layers, -1), axis=1).reshape(bdev_slots.shape), -2)
        ok &= ~(bdev_exp[:, None, :, :] == ea[:, :, None, None]).any(axis=3)
        if pinned is not None:
            cross = slot_node[a_s][:, :, None] != slot_node[b_s][:, None, :]
            pa = np.take_along_axis(pinned, a_s, axis=1)
            pb = np.take_along_axis(pinned, b_s, axis=1)
            ok &= ~cross | ~(pa[:, :, None] | pb[:, None, :])
        gain = dl[rows, hot][:, None, None] - worst
        gain = np.where(ok, gain, -np.inf)
        flat = gain.reshape(layers, -1)
        best = flat.argmax(axis=1)
        good = flat[rows, best] > 1e-9 * np.maximum(dl[rows, hot], 1e-300)
        if move_budget is not None:
            room = (move_budget - moved) // 2
            idx = np.nonzero(good)[0]
            if len(idx) > room:
                keep = idx[np.argsort(-flat[idx, best[idx]])[:room]]
                good = np.zeros_like(good)
                good[keep] = True
        if not good.any():
            break
        ia, ib = np.divmod(best, b_slots.shape[1])
        r = rows[good]
        sa, sb = a_s[r, ia[good]], b_s[r, ib[good]]
        va, vb = phy2log[r, sa].copy(), phy2log[r, sb].copy()
        phy2log[r, sa], phy2log[r, sb] = vb, va
        if pinned is not None:
            pa, pb = pinned[r, sa].copy(), pinned[r, sb].copy()
            pinned[r, sa], pinned[r, sb] = pb, pa
        moved += 2 * int(good.sum())
    return phy2log, moved
