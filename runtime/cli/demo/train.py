"""A small data-parallel training job, run by ``xpod demo`` (and usable on its own with
``xpod run --nproc N -m xpod.runtime.cli.demo.train``).

Each rank holds a replica of a two-layer MLP and its own shard of a synthetic regression
task; after every backward pass the gradients are averaged with one bucketed ``all_reduce``
through ``xpod.hal.collectives`` (what DDP does), so the replicas stay identical and the loss
falls. Rank 0 prints the loss; every rank checks at the end that its weights equal rank 0's.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xpod.runtime.cli.demo.train")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--print-every", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    from xpod.hal.collectives import Communicator

    torch.set_num_threads(1)
    comm = Communicator.from_env()
    rank, world = comm.rank, comm.world_size

    torch.manual_seed(0)  # identical initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, args.hidden), torch.nn.Tanh(), torch.nn.Linear(args.hidden, 1))
    teacher = torch.nn.Linear(16, 1)  # the function to learn, the same on every rank
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    data_gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data shard

    params = [p for p in model.parameters()]
    first_loss = last_loss = None
    for step in range(1, args.steps + 1):
        x = torch.randn(args.batch, 16, generator=data_gen)
        with torch.no_grad():
            y = teacher(x) + 0.01 * torch.randn(args.batch, 1, generator=data_gen)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        # One bucket for all gradients, averaged across ranks (DDP's all-reduce).
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        comm.all_reduce(flat, op="avg")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
        opt.step()
        # The global loss, for printing: the mean over ranks.
        report = loss.detach().reshape(1).clone()
        comm.all_reduce(report, op="avg")
        if first_loss is None:
            first_loss = float(report)
        last_loss = float(report)
        if rank == 0 and (step == 1 or step % args.print_every == 0 or step == args.steps):
            print(
                f"step {step:4d}  loss {last_loss:.5f}  ({world} ranks, backend {comm.backend.dist_backend})",
                flush=True,
            )

    # Replicas must not have drifted apart: compare every rank's weights with rank 0's.
    weights = torch.cat([p.detach().reshape(-1) for p in params])
    reference = weights.clone()
    comm.broadcast(reference, src=0)
    drift = float((weights - reference).abs().max())
    if drift > 1e-5:
        print(f"rank {rank}: weights differ from rank 0 by {drift:g}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"loss {first_loss:.5f} -> {last_loss:.5f}; replicas identical on {world} ranks", flush=True)
    comm.close()
    return 0 if last_loss < first_loss else 1


if __name__ == "__main__":
    raise SystemExit(main())
