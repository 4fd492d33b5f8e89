"""Token dispatch and combine for expert parallelism over all-to-all.

One MoE layer on one rank (rank ``r`` is device ``r`` of the placement):

1. **route**: each (token, expert) pair of the router's top-k gets a physical slot under one
   :class:`routing.DispatchRule`: by default ``shares`` when the plan carries ``slot_share``
   (each replica takes exactly its planned share of every batch, rounding carried over) and
   ``even`` when it does not (what SGLang and vLLM do); ``local-first`` on request;
2. **dispatch**: pairs are sorted by the rank that owns their slot; split sizes are exchanged
   (one all-to-all of counts), then the slot ids and the hidden rows go out in one all-to-all
   each;
3. **compute**: the receiving rank checks every slot is its own and runs the slot's logical
   expert on the rows sent to it;
4. **combine**: the outputs travel back with the reversed splits and are summed per token,
   weighted by the router's top-k weights.

The all-to-all goes through a communicator with ``rank``, ``world_size`` and
``all_to_all(tensor, input_split_sizes=..., output_split_sizes=...)``: the HAL's
``xpod.hal.collectives.Communicator`` has exactly that; :class:`TorchAllToAll` is the same
shape over a bare ``torch.distributed`` process group.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from .routing import DispatchRule, LayerReplicas, Router


class AllToAll(Protocol):
    rank: int
    world_size: int

    def all_to_all(
        self, tensor, *, input_split_sizes: Sequence[int] | None = None, output_split_sizes: Sequence[int] | None = None
    ): ...


class TorchAllToAll:
    """``AllToAll`` over the default ``torch.distributed`` group (already initialised)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_to_all(self, tensor, *, input_split_sizes=None, output_split_sizes=None):
        import torch

        ins = list(input_split_sizes)
        if output_split_sizes is None:
            send = torch.tensor(ins, dtype=torch.int64)
            recv = torch.empty(self.world_size, dtype=torch.int64)
            self._dist.all_to_all_single(recv, send)
            output_split_sizes = recv.tolist()
        outs = [int(s) for s in output_split_sizes]
        out = torch.empty((sum(outs), *tensor.shape[1:]), dtype=tensor.dtype)
        self._dist.all_to_all_single(out, tensor.contiguous(), output_split_sizes=outs, input_split_sizes=ins)
        return out


class MoEDispatcher:
    """Dispatch/combine for one MoE layer under a placement (one row of ``phy2log``), its
    replicas chosen by ``rule`` (default: ``shares`` with a ``slot_share`` row, else ``even``).

    ``expert_fn(logical_expert, rows) -> rows`` runs one expert; every replica of an expert
    computes the same function (the replicas hold copies of the same weights).
    """

    def __init__(
        self,
        comm: AllToAll,
        phy2log_row: np.ndarray,
        slot_device: np.ndarray,
        device_node: np.ndarray,
        num_experts: int,
        slot_share: np.ndarray | None = None,
        seed: int = 0,
        rule: DispatchRule | str | None = None,
    ) -> None:
        slot_device = np.asarray(slot_device)
        if int(slot_device.max()) + 1 != comm.world_size or len(device_node) != comm.world_size:
            raise ValueError(
                f"placement has {len(device_node)} devices but the communicator has {comm.world_size} ranks"
            )
        self.comm = comm
        self.phy2log = np.asarray(phy2log_row)
        self.slot_device = slot_device
        self.replicas = LayerReplicas.build(self.phy2log, slot_device, np.asarray(device_node), num_experts, slot_share)
        if rule is None:
            rule = DispatchRule.EVEN if slot_share is None else DispatchRule.SHARES
        self.router = Router(self.replicas, rule, seed=seed + comm.rank)
        self.last_sent_rows: int = 0  # pairs this rank sent in the last forward (for tests/metrics)

    def forward(self, x, topk_ids, topk_weights, expert_fn: Callable):
        """``x [tokens, hidden]``, ``topk_ids [tokens, k]`` (logical experts),
        ``topk_weights [tokens, k]`` -> ``[tokens, hidden]``. Collective: every rank calls it,
        with any number of tokens (zero included)."""
        import torch

        tokens, k = topk_ids.shape
        world = self.comm.world_size
        ids = topk_ids.cpu().numpy().astype(np.int64)
        src = np.full(tokens, self.comm.rank, dtype=np.int64)
        slots = self.router.route(ids, src) if tokens else np.zeros((0, k), dtype=np.int64)
        dest = self.slot_device[slots].reshape(-1)
        order = np.argsort(dest, kind="stable")
        send_counts = np.bincount(dest, minlength=world).tolist()
        token_of_pair = torch.as_tensor(np.repeat(np.arange(tokens), k)[order])
        send_rows = x.index_select(0, token_of_pair) if tokens else x.new_zeros((0, x.shape[1]))
        send_slots = torch.as_tensor(slots.reshape(-1)[order], dtype=torch.int64)
        ones = [1] * world
        recv_counts = [
            int(c)
            for c in self.comm.all_to_all(
                torch.tensor(send_counts, dtype=torch.int64), input_split_sizes=ones, output_split_sizes=ones
            ).tolist()
        ]
        recv_slots = self.comm.all_to_all(send_slots, input_split_sizes=send_counts, output_split_sizes=recv_counts)
        recv_rows = self.comm.all_to_all(send_rows, input_split_sizes=send_counts, output_split_sizes=recv_counts)
        self.last_sent_rows = int(len(order))
        # compute: every received slot must live on this rank
        rs = recv_slots.numpy()
        if len(rs) and not np.all(self.slot_device[rs] == self.comm.rank):
            raise AssertionError("received a token for a slot this rank does not hold")
        out_rows = torch.empty_like(recv_rows)
        experts = self.phy2log[rs]
        for e in np.unique(experts):
            idx = torch.as_tensor(np.nonzero(experts == e)[0])
            out_rows[idx] = expert_fn(int(e), recv_rows.index_select(0, idx))
        back = self.comm.all_to_all(out_rows, input_split_sizes=recv_counts, output_split_sizes=send_counts)
        weights = topk_weights.reshape(-1)[torch.as_tensor(order)].to(back.dtype) if tokens else back.new_zeros(0)
        out = torch.zeros_like(x)
        if tokens:
            out.index_add_(0, token_of_pair, back * weights[:, None])
        return out


def reference_moe(x, topk_ids, topk_weights, expert_fn: Callable):
    """Single-process reference: ``sum_j w[t, j] * expert_{ids[t, j]}(x[t])``."""
    import torch

    out = torch.zeros_like(x)
    ids = topk_ids.cpu().numpy()
    for e in np.unique(ids):
        t, j = np.nonzero(ids == e)
        tt = torch.as_tensor(t)
        out.index_add_(0, tt, expert_fn(int(e), x.index_select(0, tt)) * topk_weights[tt, torch.as_tensor(j)][:, None])
    return out
