"""Choosing a replica for every (token, expert) pair, under one named dispatch rule.

Shared by the token dispatcher (``dispatch``) and the traffic simulation (``simulate``), so
every balance and traffic figure describes what the dispatcher does, and names its rule.

Rules (:class:`DispatchRule`):

* ``even``: each replica of an expert takes an equal share of that expert's pairs. What SGLang
  and vLLM run (both pick a replica uniformly, or by a fixed per-rank map that spreads ranks
  evenly over replicas), and what EPLB's model assumes.
* ``shares``: each replica takes the fraction ``slot_share`` of the plan (xpod's water-filled
  split); with no ``slot_share`` it is ``even``.
* ``local-first``: a replica on the token's own node when there is one, else a node the token
  already sends to (DeepEP-style dispatch sends a token once per remote node), else a node
  drawn by the replicas' shares; within the node a slot drawn by share. Fewer inter-node sends,
  but the split no longer follows the plan: it follows where tokens come from.

``even`` and ``shares`` are deterministic, per batch: :class:`QuotaSplitter` gives replica
``s`` of expert ``e`` exactly ``floor`` or ``ceil`` of ``credit_s + n_e * share_s`` of the
batch's ``n_e`` pairs of ``e`` (largest remainder), and carries the rounding (``credit``,
always in (-1, 1)) to the next batch, so over any run of batches every replica is within one
pair of its planned share. The k-th pair of ``e`` in batch order takes the k-th place of the
replicas' quotas laid out in slot order. ``local-first`` draws from a seeded generator.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np


class DispatchRule(enum.Enum):
    """How a (token, expert) pair picks one of the expert's replicas."""

    EVEN = "even"  # equal share per replica (SGLang, vLLM, EPLB's model)
    SHARES = "shares"  # the plan's slot_share per replica
    LOCAL_FIRST = "local-first"  # a replica on the token's node first; shares only break ties


@dataclasses.dataclass(frozen=True)
class LayerReplicas:
    """One layer's replica table, built once per placement and layer."""

    slot_expert: np.ndarray  # [slots] logical expert of each slot, -1 = empty
    slot_share: np.ndarray  # [slots] planned fraction of its expert's pairs (even split if none was given)
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
        share_row = np.where(valid, np.asarray(share_row, dtype=np.float64), 0.0)
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
            slot_expert=phy2log_row,
            slot_share=share_row,
            node_share=node_share,
            slot_table=table.reshape(num_experts, num_nodes, rmax),
            slot_cum=cum.reshape(num_experts, num_nodes, rmax),
            slot_device=slot_device,
            device_node=device_node,
        )


class QuotaSplitter:
    """The ``even`` / ``shares`` rules for one layer on one source (a rank's dispatcher, or one
    simulated source device): deterministic per-batch quotas with the rounding carried over
    (module docstring). Not thread-safe; one per (rank, layer)."""

    def __init__(self, rep: LayerReplicas, rule: DispatchRule) -> None:
        if rule is DispatchRule.LOCAL_FIRST:
            raise ValueError("QuotaSplitter runs the even and shares rules; local-first is route_local_first")
        valid = rep.slot_expert >= 0
        self.num_experts = rep.slot_table.shape[0]
        if rule is DispatchRule.EVEN:
            counts = np.bincount(rep.slot_expert[valid], minlength=self.num_experts)
            share = np.where(valid, 1.0 / np.maximum(counts[np.where(valid, rep.slot_expert, 0)], 1), 0.0)
        else:
            share = rep.slot_share.copy()
            # shares of an expert sum to 1 (a plan file rounds them to 6 decimals)
            tot = np.bincount(rep.slot_expert[valid], weights=share[valid], minlength=self.num_experts)
            share = np.where(valid, share / np.maximum(tot[np.where(valid, rep.slot_expert, 0)], 1e-300), 0.0)
        # slots grouped by expert, in slot order: the layout the quotas are cut from
        slots = np.nonzero(valid)[0]
        order = np.lexsort((slots, rep.slot_expert[slots]))
        self.slots = slots[order]  # [replicas]
        self.expert = rep.slot_expert[self.slots]  # [replicas], sorted
        self.share = share[self.slots]
        self.first = np.searchsorted(self.expert, np.arange(self.num_experts))  # first replica of each expert
        self.credit = np.zeros(len(self.slots))  # carried rounding, in (-1, 1), sums to 0 per expert

    def split(self, experts: np.ndarray) -> np.ndarray:
        """Slots for a batch of pairs ``experts [pairs]`` (logical ids, batch order); updates the
        carried credit. Deterministic: the same batches in the same order give the same slots."""
        experts = np.asarray(experts, dtype=np.int64).ravel()
        n = np.bincount(experts, minlength=self.num_experts)  # pairs per expert
        target = self.credit + n[self.expert] * self.share
        quota = np.floor(target + 1e-9)
        short = n - np.bincount(self.expert, weights=quota, minlength=self.num_experts).round().astype(np.int64)
        # the ``short`` replicas of each expert with the largest remainder get one more (ties: slot order)
        frac = target - quota
        rank = np.lexsort((np.arange(len(frac)), -frac, self.expert))
        pos_in_expert = np.empty(len(frac), dtype=np.int64)
        pos_in_expert[rank] = np.arange(len(frac)) - self.first[self.expert[rank]]
        quota = (quota + (pos_in_expert < short[self.expert])).astype(np.int64)
        self.credit = target - quota
        # the k-th pair of expert e (batch order) takes place k of e's quotas laid end to end
        place_of_pair = np.empty(len(experts), dtype=np.int64)
        by_expert = np.argsort(experts, kind="stable")
        start = np.cumsum(n) - n
        place_of_pair[by_expert] = np.arange(len(experts)) - start[experts[by_expert]]
        ends = np.cumsum(quota)  # replicas are sorted by expert, so e's quotas start at ends[first[e]] - quota
        base = ends[self.first] - quota[self.first]
        idx = np.searchsorted(ends, base[experts] + place_of_pair, side="right")
        return self.slots[idx]


def route_local_first(
    topk_ids: np.ndarray, source_device: np.ndarray, rep: LayerReplicas, rng: np.random.Generator
) -> np.ndarray:
    """``[tokens, k]`` physical slot for each (token, expert) pair under ``local-first`` (module
    docstring). ``source_device [tokens]`` is the device each token comes from."""
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


class Router:
    """One layer's replica choice under one rule, for one source of tokens (a rank's dispatcher
    or one simulated device). ``even`` and ``shares`` carry their quota credit from batch to
    batch (so keep one Router per rank and layer); ``local-first`` draws from ``seed``."""

    def __init__(self, rep: LayerReplicas, rule: DispatchRule | str, seed: int = 0) -> None:
        self.rule = DispatchRule(rule)
        self.rep = rep
        self._rng = np.random.default_rng(seed)
        self._quota = None if self.rule is DispatchRule.LOCAL_FIRST else QuotaSplitter(rep, self.rule)

    def route(self, topk_ids: np.ndarray, source_device: np.ndarray) -> np.ndarray:
        """``[tokens, k]`` slots for ``topk_ids [tokens, k]`` coming from ``source_device [tokens]``
        (only ``local-first`` looks at the source)."""
        topk_ids = np.asarray(topk_ids, dtype=np.int64)
        if self._quota is None:
            return route_local_first(topk_ids, source_device, self.rep, self._rng)
        return self._quota.split(topk_ids.ravel()).reshape(topk_ids.shape)
