"""Scoring a written placement: device loads, balancedness, duplicates, group spread, moves.

Everything here is recomputed from the placement arrays alone (``phy2log``, ``slot_device``,
``slot_share``), so the same function scores xpod's placements and the EPLB baseline's.

Definitions (research/moe.md §1.3):

* device load (layer ``l``, device ``d``) = sum over the slots ``s`` of ``d`` of
  ``load[l, phy2log[l, s]] * share[l, s]``; the default share is an even split over the
  expert's replicas in that layer;
* balancedness = sum over layers of the mean device load / sum over layers of the max device
  load (1.0 is perfect);
* an empty slot (``phy2log == -1``) holds no weights and takes no tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def even_shares(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``[layers, slots]`` share of each slot when tokens are split evenly over replicas."""
    phy2log = np.asarray(phy2log)
    layers = phy2log.shape[0]
    valid = phy2log >= 0
    counts = np.zeros((layers, num_experts), dtype=np.int64)
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    np.add.at(counts, (rows[valid], phy2log[valid]), 1)
    share = np.zeros(phy2log.shape, dtype=np.float64)
    share[valid] = 1.0 / counts[rows[valid], phy2log[valid]]
    return share


def device_loads(
    loads: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    num_devices: int,
    slot_share: np.ndarray | None = None,
) -> np.ndarray:
    """``[layers, devices]`` token load of every device under the placement."""
    loads = np.asarray(loads, dtype=np.float64)
    phy2log = np.asarray(phy2log)
    layers, num_experts = loads.shape
    share = even_shares(phy2log, num_experts) if slot_share is None else np.asarray(slot_share, dtype=np.float64)
    valid = phy2log >= 0
    slot_load = np.where(valid, np.take_along_axis(loads, np.where(valid, phy2log, 0), axis=1), 0.0) * share
    idx = np.arange(layers)[:, None] * num_devices + np.asarray(slot_device)[None, :]
    return np.bincount(idx.ravel(), weights=slot_load.ravel(), minlength=layers * num_devices).reshape(
        layers, num_devices
    )


@dataclasses.dataclass(frozen=True)
class PlacementScore:
    """What a placement does to one load matrix."""

    balancedness: float  # sum_l mean_d load / sum_l max_d load
    worst_layer_balancedness: float  # min over layers of mean_d / max_d
    worst_layer: int  # index of that layer
    max_over_mean: float  # mean over layers of max_d / mean_d
    node_balancedness: float  # the same as balancedness, at node level
    duplicates: int  # slots holding an expert that already has a replica on the same device
    missing_experts: int  # (layer, expert) pairs with no replica at all
    group_spread: float  # mean over (layer, group) of the number of nodes holding the group
    slots_per_device_min: int  # non-empty slots summed over layers, least-loaded device
    slots_per_device_max: int  # the same, most-loaded device

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def duplicate_count(phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int, num_experts: int) -> int:
    """Slots whose expert already has another replica on the same device (per layer)."""
    phy2log = np.asarray(phy2log)
    layers = phy2log.shape[0]
    valid = phy2log >= 0
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    dev = np.broadcast_to(np.asarray(slot_device)[None, :], phy2log.shape)
    counts = np.zeros((layers, num_devices, num_experts), dtype=np.int64)
    np.add.at(counts, (rows[valid], dev[valid], phy2log[valid]), 1)
    return int(np.clip(counts - 1, 0, None).sum())


def score(
    loads: np.ndarray,
    phy2log: np.ndarray,
    slot_device: np.ndarray,
    device_node: np.ndarray,
    slot_share: np.ndarray | None = None,
    num_groups: int = 1,
) -> PlacementScore:
    """Score ``phy2log``/``slot_device``/``slot_share`` against ``loads [layers, experts]``.

    ``device_node[d]`` is the node of device ``d``. Groups are ``num_groups`` contiguous
    blocks of expert ids (DeepSeek-V3: 8 groups of 32).
    """
    loads = np.asarray(loads, dtype=np.float64)
    phy2log = np.asarray(phy2log)
    device_node = np.asarray(device_node)
    slot_device = np.asarray(slot_device)
    layers, num_experts = loads.shape
    num_devices = len(device_node)
    num_nodes = int(device_node.max()) + 1
    dev = device_loads(loads, phy2log, slot_device, num_devices, slot_share)
    mean = dev.mean(axis=1)
    mx = dev.max(axis=1)
    per_layer = np.divide(mean, mx, out=np.ones_like(mean), where=mx > 0)
    node = np.zeros((layers, num_nodes))
    np.add.at(node, (slice(None), device_node), dev)
    valid = phy2log >= 0
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    present = np.zeros((layers, num_experts), dtype=bool)
    present[rows[valid], phy2log[valid]] = True
    group_size = num_experts // num_groups
    slot_node = device_node[slot_device]
    on_node = np.zeros((layers, num_groups, num_nodes), dtype=bool)
    on_node[rows[valid], phy2log[valid] // group_size, np.broadcast_to(slot_node, phy2log.shape)[valid]] = True
    per_device_slots = np.bincount(slot_device, weights=valid.sum(axis=0), minlength=num_devices)
    return PlacementScore(
        balancedness=float(mean.sum() / mx.sum()) if mx.sum() > 0 else 1.0,
        worst_layer_balancedness=float(per_layer.min()),
        worst_layer=int(per_layer.argmin()),
        max_over_mean=float(np.mean(np.divide(mx, mean, out=np.ones_like(mx), where=mean > 0))),
        node_balancedness=float(node.mean(axis=1).sum() / node.max(axis=1).sum()) if node.sum() > 0 else 1.0,
        duplicates=duplicate_count(phy2log, slot_device, num_devices, num_experts),
        missing_experts=int((~present).sum()),
        group_spread=float(on_node.sum(axis=2).mean()),
        slots_per_device_min=int(per_device_slots.min()),
        slots_per_device_max=int(per_device_slots.max()),
    )


def weight_moves(previous_phy2log: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int) -> int:
    """Expert weights that must be loaded to go from ``previous_phy2log`` to ``phy2log`` (same
    slot layout): per layer and device, the experts of the new set that the device did not
    already hold. Reordering slots inside a device costs nothing here, as the slot contents
    are permuted in place by :func:`align_to_previous`."""
    prev = np.asarray(previous_phy2log)
    new = np.asarray(phy2log)
    moves = 0
    slot_device = np.asarray(slot_device)
    for d in range(num_devices):
        cols = np.nonzero(slot_device == d)[0]
        for layer in range(new.shape[0]):
            old_set = set(prev[layer, cols].tolist()) - {-1}
            moves += sum(1 for e in new[layer, cols].tolist() if e >= 0 and e not in old_set)
    return moves
