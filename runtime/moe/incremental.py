"""Incremental rebalancing: improve a previous placement with at most ``max_moves`` expert
weights loaded (a slot whose expert changes costs one load of that expert's weights, e.g.
44 MB per DeepSeek-V3 expert in FP8).

Two kinds of step, each taken where it lowers a layer's largest load:

* **re-point** (1 load): a slot of an expert with spare replicas (``w_y / (r_y - 1)`` still
  below the layer's max) is given to the expert with the largest load per replica, on a device
  that does not hold that expert yet;
* **swap** (2 loads): :func:`refine.swap_refine` with the remaining budget.

The slot layout never changes, so the memory per device is the same as before.
"""

from __future__ import annotations

import numpy as np

from .refine import swap_refine
from .score import weight_moves


def _repoint_step(w: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int, room: int) -> int:
    layers, experts = w.shape
    rows = np.arange(layers)
    valid = phy2log >= 0
    pe = np.where(valid, phy2log, 0)
    counts = np.zeros((layers, experts), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(rows[:, None], pe.shape)[valid], pe[valid]), 1)
    per = w / np.maximum(counts, 1)
    hot = per.argmax(axis=1)
    hot_load = per[rows, hot]
    # donor slot: expert with >= 2 replicas whose load per replica after losing one is least
    after = np.where(
        valid, np.take_along_axis(w, pe, axis=1) / np.maximum(np.take_along_axis(counts, pe, axis=1) - 1, 1), np.inf
    )
    after = np.where(valid & (np.take_along_axis(counts, pe, axis=1) >= 2), after, np.inf)
    # the receiving device must not hold the hot expert already
    holds_hot = np.zeros((layers, num_devices), dtype=bool)
    hr, hc = np.nonzero(phy2log == hot[:, None])
    holds_hot[hr, slot_device[hc]] = True
    after = np.where(holds_hot[:, slot_device], np.inf, after)
    slot = after.argmin(axis=1)
    new_hot = w[rows, hot] / (counts[rows, hot] + 1)
    good = np.maximum(after[rows, slot], new_hot) < hot_load * (1 - 1e-9)
    idx = np.nonzero(good)[0]
    if len(idx) > room:
        gain = hot_load - np.maximum(after[rows, slot], new_hot)
        idx = idx[np.argsort(-gain[idx])[:room]]
    phy2log[idx, slot[idx]] = hot[idx]
    return len(idx)


def improve_within_budget(
    w: np.ndarray, previous: np.ndarray, slot_device: np.ndarray, device_node: np.ndarray, max_moves: int
) -> tuple[np.ndarray, int]:
    """``(phy2log, weight_moves)`` reachable from ``previous`` with at most ``max_moves`` loads."""
    phy2log = previous.copy()
    num_devices = len(device_node)
    spent = 0
    # Half the budget for re-pointing (fixes replica counts), the rest for swaps (fixes packing).
    while spent < max_moves // 2:
        n = _repoint_step(w, phy2log, slot_device, num_devices, max_moves // 2 - spent)
        if n == 0:
            break
        spent += n
    phy2log, used = swap_refine(w, phy2log, slot_device, device_node, None, steps=10_000, move_budget=max_moves - spent)
    moves = weight_moves(previous, phy2log, slot_device, num_devices)
    assert moves <= max_moves, (moves, max_moves)
    return phy2log, moves
