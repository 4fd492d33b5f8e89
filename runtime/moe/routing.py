"""Choosing a replica for every (token, expert) pair: locality first, then load-aware.

Shared by the token dispatcher (``dispatch``) and the traffic simulation (``simulate``), so the
traffic figures describe what the dispatcher does.

Rule, for a token on source device ``s`` (node ``n``) that needs expert ``e``:

1. if ``e`` has replicas on node ``n``, use one of them (no inter-node send);
2. otherwise, if ``e`` has a replica on a node this token already sends to, use that node
   (DeepEP-style dispatch sends a token once per remote node, so this is free);
3. otherwise pick a remote node with probability proportional to the share of ``e``'s tokens
   its replicas take.

Within the chosen node the slot is drawn with probability proportional to its ``slot_share``
(the load-aware split the placement planned). Experts whose replicas all sit on one node are
resolved first, so rule 2 can reuse their nodes.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerReplicas:
    """One layer's replica table, built once per placement and layer."""

    node_share: np.ndarray  # [experts, nodes] share of the expert's tokens served on each node
    slot_table: np.ndarray  # [experts, nodes, rmax] slots of e on n, -1 padded
    slot_cum: np.ndarray  # [experts, nodes, rmax] cumulative share within (e, n), ends at 1
    slot_device: np.ndarray  # [slots]
    device_node: np.ndarray  # [devices]

    @classmethod
    def build(
        cls,
        phy2log_row: np.ndarray,
        slot_device: np.ndarray,
        device_node: np.ndarray,
        num_experts: int,
        share_row: np.ndarray | None = None,
    ) -> "LayerReplicas":
        phy2log_row = np.asarray(phy2log_row)
        slot_device = np.asarray(slot_device)
        device_node = np.asarray(device_node)
        num_nodes = int(device_node.max()) + 1
        valid = phy2log_row >= 0
        if share_row is None:
            counts = np.bincount(phy2log_row[valid], minlength=num_experts)
            share_row = np.where(valid, 1.0 / np.maximum(counts[np.where(valid, phy2log_row, 0)], 1), 0.0)
        share_row = np.asarray(share_row, dtype=np.float64)
        slots = np.nonzero(valid)[0]
        e = phy2log_row[slots]
        n = device_node[slot_device[slots]]
        node_share = np.zeros((num_experts, num_nodes))
        np.add.at(node_share, (e, n), share_row[slots])
        key = e * num_nodes + n
        order = np.lexsort((slots, key))
        key_s = key[order]
        start = np.r_[0, np.nonzero(np.diff(key_s))[0] + 1] if len(key_s) else np.zeros(0, dtype=np.int64)
        size = np.diff(np.r_[start, len(key_s)])
        rmax = int(size.max()) if len(size) else 1
        grp = np.repeat(np.arange(len(start)), size)
        col = np.arange(len(key_s)) - start[grp]
        table = np.full((num_experts * num_nodes, rmax), -1, dtype=np.int64)
        sh = np.zeros((num_experts * num_nodes, rmax))
        table[key_s, col] = slots[order]
        sh[key_s, col] = share_row[slots[order]]
        tot = sh.sum(axis=1, keepdims=True)
        # a zero-share replica is never chosen, unless every replica on that node has share 0
        sh = np.where(tot > 0, sh, (table >= 0).astype(float))
        cum = np.cumsum(sh, axis=1) / np.maximum(sh.sum(axis=1, keepdims=True), 1e-300)
        cum = np.where(table >= 0, cum, 2.0)
        return cls(
            node_share=node_share,
            slot_table=table.reshape(num_experts, num_nodes, rmax),
            slot_cum=cum.reshape(num_experts, num_nodes, rmax),
            slot_device=slot_device,
            device_node=device_node,
        )


def route(topk_ids: np.ndarray, source_device: np.ndarray, rep: LayerReplicas, rng: np.random.Generator) -> np.ndarray:
    """``[tokens, k]`` physical slot for each (token, expert) pair (see the module docstring).
    ``source_device [tokens]`` is the device each token comes from."""
    topk_ids = np.asarray(topk_ids)
    tokens, k = topk_ids.shape
    num_experts, num_nodes, _ = rep.slot_table.shape
    src_node = rep.device_node[np.asarray(source_device)]
    present = rep.node_share > 0  # [E, N] (zero-share replicas are still usable as a last resort)
    present |= rep.slot_table[:, :, 0] >= 0
    chosen = np.full((tokens, k), -1, dtype=np.int64)
    t = np.arange(tokens)
    local = present[topk_ids, src_node[:, None]]
    chosen[local] = np.broadcast_to(src_node[:, None], (tokens, k))[local]
    n_cand = present.sum(axis=1)
    forced = ~local & (n_cand[topk_ids] == 1)
    chosen[forced] = present[topk_ids[forced]].argmax(axis=1)
    sends = np.zeros((tokens, num_nodes), dtype=bool)
    rows_f = np.nonzero(forced)[0]
    sends[rows_f, chosen[forced]] = True
    for j in range(k):
        todo = chosen[:, j] < 0
        if not todo.any():
            continue
        tt = t[todo]
        e = topk_ids[todo, j]
        cand = present[e]  # [n, N]
        reuse = cand & sends[tt]
        has_reuse = reuse.any(axis=1)
        pick = np.where(has_reuse, reuse.argmax(axis=1), -1)
        need = ~has_reuse
        if need.any():
            w = np.where(cand[need], rep.node_share[e[need]] + 1e-12, 0.0)
            cum = np.cumsum(w, axis=1)
            u = rng.random(int(need.sum()))[:, None] * cum[:, -1:]
            pick[need] = np.minimum((cum <= u).sum(axis=1), num_nodes - 1)
        chosen[todo, j] = pick
        sends[tt, pick] = True
    # slot within the chosen node, by share
    cum = rep.slot_cum[topk_ids, chosen]  # [T, k, rmax]
    u = rng.random((tokens, k))[:, :, None]
    idx = np.minimum((cum <= u).sum(axis=2), cum.shape[2] - 1)
    return np.take_along_axis(rep.slot_table[topk_ids, chosen], idx[:, :, None], axis=2)[:, :, 0]
