"""The EPLB baseline: DeepSeek's expert-parallelism load balancer, written from its description.

Sources: the README of github.com/deepseek-ai/EPLB (commit d52c72d) and research/moe.md §1.2.
No code of that project is used here; this module follows what the README says the algorithm
does, and is checked against the README's published example output
(``tests/moe/test_moe_eplb.py``) and against EPLB figures recorded on the real loads
(``bench/data/moe/eplb_reference.json``).

What the README describes:

* **hierarchical** policy (used when the number of nodes divides the number of expert
  groups): first pack the expert groups onto nodes so node loads are balanced, each node taking
  the same number of groups; then replicate experts *within* each node; then pack the node's
  replicas onto its devices, each device taking the same number of slots;
* **global** policy (otherwise): replicate experts over the whole pod regardless of groups,
  then pack the replicas onto devices.

The three steps, as research/moe.md §1.2 details them:

1. *Equal-count packing* (groups to nodes, replicas to devices): items by load, heaviest first,
   each into the lightest bin that still has room for it (ties: the lower bin index); every bin
   ends with exactly ``items / bins`` items. A bin's items keep the order they arrived in.
2. *Replication*: every expert starts with one replica; each extra slot goes, one at a time, to
   the expert whose load per replica ``w / r`` is largest (ties: the lower index). This greedy
   minimises ``max_e w_e / r_e``.
3. Experts are laid out node by node: a node's experts are its groups in arrival order, each
   group's experts in id order; replicas of a node are numbered originals first, then the extra
   replicas in the order they were added, and that numbering breaks ties between equal replica
   loads in step 1 (stable sort).

Slot ``s`` of the result lives on device ``s // (slots / devices)``, device ``d`` on node
``d // (devices / nodes)``. Tokens of an expert are split evenly over its replicas (EPLB's
model). Like the original, nothing stops two replicas of one expert from landing on one device.

Everything is vectorised over rows (layers, or layers x nodes): the loops run over items, not
over layers, so a 58-layer call takes milliseconds (the original's per-layer Python loop takes
0.3-3 s; research/moe.md §1.3). Its figures are the same; its run time is not what EPLB costs
in DeepSeek's Python.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

from xpod.hal.errors import XpodError


class EplbPolicy(enum.Enum):
    """Which of EPLB's two policies runs."""

    AUTO = "auto"  # hierarchical when the nodes divide the groups, else global (EPLB's own rule)
    HIERARCHICAL = "hierarchical"  # groups to nodes, replicas stay in their node
    GLOBAL = "global"  # one pool of experts and devices


@dataclasses.dataclass(frozen=True)
class EplbPlan:
    """EPLB's answer for every layer."""

    phy2log: np.ndarray  # [layers, slots] logical expert in each physical slot
    replicas: np.ndarray  # [layers, experts] replica count of each expert
    slot_device: np.ndarray  # [slots] device of each slot (contiguous blocks)
    policy: EplbPolicy  # the policy that ran (never AUTO)


def equal_count_pack(loads: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 for every row of ``loads [rows, items]``: ``(bin, position)`` of each item, both
    ``[rows, items]``. Heaviest item first (stable: equal loads keep index order), each into the
    lightest bin with fewer than ``items / num_bins`` items (lowest bin on ties); ``position``
    is the item's arrival rank inside its bin."""
    rows, items = loads.shape
    if items % num_bins:
        raise XpodError(f"eplb: {items} items do not split evenly into {num_bins} bins")
    per_bin = items // num_bins
    order = np.argsort(-loads, axis=1, kind="stable")
    bin_of = np.empty((rows, items), dtype=np.int64)
    position = np.empty((rows, items), dtype=np.int64)
    bin_load = np.zeros((rows, num_bins))
    filled = np.zeros((rows, num_bins), dtype=np.int64)
    r = np.arange(rows)
    for step in range(items):
        item = order[:, step]
        choice = np.where(filled < per_bin, bin_load, np.inf).argmin(axis=1)
        bin_of[r, item] = choice
        position[r, item] = filled[r, choice]
        bin_load[r, choice] += loads[r, item]
        filled[r, choice] += 1
    return bin_of, position


def replicate(loads: np.ndarray, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 for every row of ``loads [rows, experts]``: ``(slot_expert [rows, num_slots],
    counts [rows, experts])``. Slots ``0 .. experts - 1`` hold each expert once, the later
    slots the extra replicas in the order the greedy added them."""
    rows, experts = loads.shape
    extra = num_slots - experts
    if extra < 0:
        raise XpodError(f"eplb: {num_slots} slots cannot hold {experts} experts")
    counts = np.ones((rows, experts), dtype=np.int64)
    slot_expert = np.empty((rows, num_slots), dtype=np.int64)
    slot_expert[:, :experts] = np.arange(experts)
    r = np.arange(rows)
    for k in range(extra):
        pick = (loads / counts).argmax(axis=1)
        slot_expert[:, experts + k] = pick
        counts[r, pick] += 1
    return slot_expert, counts


def rebalance(
    loads: np.ndarray,
    num_slots: int,
    num_groups: int,
    num_nodes: int,
    num_devices: int,
    policy: EplbPolicy | str = EplbPolicy.AUTO,
) -> EplbPlan:
    """EPLB's placement of ``loads [layers, experts]`` on ``num_slots`` slots per layer over
    ``num_devices`` devices in ``num_nodes`` nodes (module docstring). Raises ``XpodError``
    for shapes EPLB cannot take: slots not a multiple of devices, devices not a multiple of
    nodes, experts not a multiple of groups, or (hierarchical) groups not a multiple of nodes."""
    policy = EplbPolicy(policy)
    w = np.asarray(loads, dtype=np.float64)
    if w.ndim != 2:
        raise XpodError(f"eplb: loads must be [layers, experts], got shape {w.shape}")
    layers, experts = w.shape
    if num_slots % num_devices or num_devices % num_nodes or experts % num_groups:
        raise XpodError(
            f"eplb: needs slots ({num_slots}) % devices ({num_devices}) == 0, devices % nodes ({num_nodes}) == 0 "
            f"and experts ({experts}) % groups ({num_groups}) == 0"
        )
    if num_slots < experts:
        raise XpodError(f"eplb: {num_slots} slots cannot hold {experts} experts")
    if policy is EplbPolicy.AUTO:
        policy = EplbPolicy.HIERARCHICAL if num_groups % num_nodes == 0 else EplbPolicy.GLOBAL
    if policy is EplbPolicy.GLOBAL:
        groups, nodes = 1, 1
    else:
        if num_groups % num_nodes:
            raise XpodError(f"eplb: hierarchical policy needs nodes ({num_nodes}) to divide groups ({num_groups})")
        groups, nodes = num_groups, num_nodes
    group_size = experts // groups
    groups_per_node = groups // nodes
    slots_per_node = num_slots // nodes
    devices_per_node = num_devices // nodes
    if slots_per_node < experts // nodes:
        raise XpodError(f"eplb: {slots_per_node} slots per node cannot hold the node's {experts // nodes} experts")

    # 1. groups to nodes; a node's experts are its groups in arrival order, ids ascending inside
    group_load = w.reshape(layers, groups, group_size).sum(axis=2)
    node_of_group, rank_in_node = equal_count_pack(group_load, nodes)
    # layout position of each group: node-major, then arrival rank
    group_at = np.empty((layers, groups), dtype=np.int64)
    np.put_along_axis(group_at, node_of_group * groups_per_node + rank_in_node, np.arange(groups)[None, :], axis=1)
    # node_expert[l, n, j]: logical id of the j-th expert of node n
    node_expert = (group_at[:, :, None] * group_size + np.arange(group_size)[None, None, :]).reshape(
        layers, nodes, experts // nodes
    )
    node_loads = np.take_along_axis(w, node_expert.reshape(layers, experts), axis=1).reshape(layers * nodes, -1)

    # 2. replicas inside each node (rows = layer x node)
    local_of_slot, counts = replicate(node_loads, slots_per_node)
    replica_load = np.take_along_axis(node_loads / counts, local_of_slot, axis=1)

    # 3. a node's replicas onto its devices, then written device by device
    device_of, position = equal_count_pack(replica_load, devices_per_node)
    per_device = slots_per_node // devices_per_node
    local_slot = np.empty_like(local_of_slot)
    np.put_along_axis(local_slot, device_of * per_device + position, local_of_slot, axis=1)
    phy2log = np.take_along_axis(node_expert.reshape(layers * nodes, -1), local_slot, axis=1).reshape(layers, num_slots)

    replicas = np.zeros((layers, experts), dtype=np.int64)
    rows = np.broadcast_to(np.arange(layers)[:, None], phy2log.shape)
    np.add.at(replicas, (rows, phy2log), 1)
    return EplbPlan(
        phy2log=phy2log,
        replicas=replicas,
        slot_device=np.repeat(np.arange(num_devices), num_slots // num_devices),
        policy=policy,
    )
