"""DeepSeek EPLB, re-implemented from its published description, for comparison only.

This is the baseline, not part of the product. It follows the algorithm described in the
DeepSeek EPLB README and summarised in research/moe.md §1.2 (deepseek-ai/EPLB, commit d52c72d):

* hierarchical policy (used when ``num_groups % num_nodes == 0``):
  1. pack expert groups onto nodes with ``balanced_packing`` (sort by load descending, each
     item into the lightest pack that has fewer than its cardinality);
  2. inside each node, replicate: start at one replica per expert and repeatedly add one to
     the expert with the largest load per replica;
  3. pack replicas (load ``w/r``) onto the node's GPUs with ``balanced_packing``, exactly
     ``R / D`` per GPU.
* global policy: the same with one group and one node.

Like the original, the packing is a Python loop over layers and items (that loop is where its
run time goes), and nothing stops two replicas of one expert from landing on one GPU.
"""

from __future__ import annotations

import numpy as np
import torch


def balanced_packing(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``n`` weighted items per row into ``num_packs`` packs of exactly ``n / num_packs``
    items each: items by load descending, each into the lightest pack that still has room.

    Returns ``(pack_index, rank_in_pack)``, both ``[layers, n]``.
    """
    num_layers, num_items = weight.shape
    assert num_items % num_packs == 0
    per_pack = num_items // num_packs
    if per_pack == 1:
        pack_index = torch.arange(num_items, dtype=torch.int64).expand(num_layers, -1).clone()
        return pack_index, torch.zeros_like(pack_index)
    indices = weight.float().sort(-1, descending=True).indices.cpu()
    pack_index = torch.full_like(weight, -1, dtype=torch.int64, device="cpu")
    rank_in_pack = torch.full_like(pack_index, -1)
    for i in range(num_layers):
        pack_weights = [0.0] * num_packs
        pack_items = [0] * num_packs
        for group in indices[i].tolist():
            pack = min(
                (p for p in range(num_packs) if pack_items[p] < per_pack),
                key=pack_weights.__getitem__,
            )
            pack_index[i, group] = pack
            rank_in_pack[i, group] = pack_items[pack]
            pack_weights[pack] += float(weight[i, group])
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: torch.Tensor, num_phy: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy replication: ``num_phy - num_log`` times add a replica to the expert with the
    largest load per replica. Returns ``(phy2log, rank, logcnt)``."""
    n, num_log = weight.shape
    num_redundant = num_phy - num_log
    assert num_redundant >= 0
    phy2log = torch.arange(num_phy, dtype=torch.int64).repeat(n, 1)
    rank = torch.zeros(n, num_phy, dtype=torch.int64)
    logcnt = torch.ones(n, num_log, dtype=torch.int64)
    arangen = torch.arange(n, dtype=torch.int64)
    for i in range(num_log, num_phy):
        redundant_indices = (weight / logcnt).max(dim=-1).indices
        phy2log[:, i] = redundant_indices
        rank[:, i] = logcnt[arangen, redundant_indices]
        logcnt[arangen, redundant_indices] += 1
    return phy2log, rank, logcnt


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv.scatter_(1, perm, torch.arange(perm.size(1), dtype=torch.int64).expand(perm.shape))
    return inv


def rebalance_experts_hierarchical(
    weight: torch.Tensor, num_physical_experts: int, num_groups: int, num_nodes: int, num_gpus: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_layers, num_logical_experts = weight.shape
    assert num_logical_experts % num_groups == 0
    group_size = num_logical_experts // num_groups
    assert num_groups % num_nodes == 0
    groups_per_node = num_groups // num_nodes
    assert num_gpus % num_nodes == 0
    assert num_physical_experts % num_gpus == 0
    phy_experts_per_gpu = num_physical_experts // num_gpus

    # Step 1: groups to nodes.
    tokens_per_group = weight.unflatten(-1, (num_groups, group_size)).sum(-1)
    group_pack_index, group_rank_in_pack = balanced_packing(tokens_per_group, num_nodes)
    log2mlog = (
        ((group_pack_index * groups_per_node + group_rank_in_pack) * group_size).unsqueeze(-1)
        + torch.arange(group_size, dtype=torch.int64)
    ).flatten(-2)
    mlog2log = _inverse(log2mlog)

    # Step 2: replicas inside each node.
    tokens_per_mlog = weight.gather(-1, mlog2log).view(-1, num_logical_experts // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical_experts // num_nodes)

    # Step 3: replicas to GPUs inside each node.
    tokens_per_phy = (tokens_per_mlog / mlogcnt).gather(-1, phy2mlog)
    pack_index, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    phy2pphy = pack_index * phy_experts_per_gpu + rank_in_pack
    pphy2phy = _inverse(phy2pphy)

    pphy2mlog = phy2mlog.gather(-1, pphy2phy)
    pphy2mlog = (
        pphy2mlog.view(num_layers, num_nodes, -1)
        + torch.arange(0, num_logical_experts, num_logical_experts // num_nodes).view(1, -1, 1)
    ).flatten(-2)
    pphy2log = mlog2log.gather(-1, pphy2mlog)
    pphyrank = phyrank.gather(-1, pphy2phy).view(num_layers, -1)
    logcnt = mlogcnt.view(num_layers, -1).gather(-1, log2mlog)
    return pphy2log, pphyrank, logcnt


def rebalance_experts(
    weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int, policy: str = "auto"
) -> np.ndarray:
    """EPLB's entry point; returns ``phy2log [layers, num_replicas]`` (GPU ``g`` holds slots
    ``[g*R/D, (g+1)*R/D)``). ``policy``: ``auto`` (EPLB's own choice), ``hierarchical``,
    ``global``."""
    w = torch.as_tensor(np.asarray(weight), dtype=torch.float32)
    if policy == "auto":
        policy = "hierarchical" if num_groups % num_nodes == 0 else "global"
    if policy == "hierarchical":
        phy2log, _, _ = rebalance_experts_hierarchical(w, num_replicas, num_groups, num_nodes, num_gpus)
    elif policy == "global":
        phy2log, _, _ = rebalance_experts_hierarchical(w, num_replicas, 1, 1, num_gpus)
    else:
        raise ValueError(f"unknown EPLB policy {policy!r}")
    return phy2log.numpy()


README_WEIGHT = np.array(
    [
        [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
        [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
    ]
)
README_PHY2LOG = np.array(
    [
        [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
        [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
    ]
)
