"""The per-rank side of ``xpod bench collectives`` (run by the launcher, one process per rank).

For each size it times xpod's op and, with ``--baseline``, the bare torch.distributed call on the
same buffers, call by call and interleaved so both see the same machine load. A size's time is
the median over ``--iters`` x ``--rounds`` calls, each started after a barrier, and the largest
over ranks (a collective is as slow as its slowest rank). A correctness pass with known inputs counts wrong elements (``#wrong``).
Rank 0 writes the rows as JSON to ``--out``.

Size convention (nccl-tests, doc/PERFORMANCE.md): the buffer for all_reduce and broadcast, the
gathered output for all_gather, the input for reduce_scatter, the bytes one rank sends for
all_to_all. algbw = size / time; busbw = algbw * factor(op, n).
"""

from __future__ import annotations

import argparse
import json
import os
import time

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "int64": "int64"}


def sizes_between(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    out, b = [], min_bytes
    while b <= max_bytes:
        out.append(b)
        b *= factor
    return out


def _args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--op", required=True)
    p.add_argument("--min-bytes", type=int, required=True)
    p.add_argument("--max-bytes", type=int, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--algorithm", default="auto")
    p.add_argument("--tiers", default=None, help="JSON list of tiers (name, groups, bandwidth_bytes_per_s, latency_s)")
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--shm-buffers", action="store_true", help="all_reduce tensors that live in shared memory")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = _args(argv)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # ranks outnumber cores on small hosts
    from xpod.hal.collectives import Algorithm, Communicator, Op, TierSpec
    from xpod.hal.collectives.cost import CostModel

    op = Op(a.op)
    dtype = getattr(torch, DTYPES[a.dtype])
    tiers = [TierSpec(**t) for t in json.loads(a.tiers)] if a.tiers else None
    comm = Communicator.from_env(tiers=tiers, timeout_s=a.timeout_s)
    n, rank = comm.world_size, comm.rank
    elem = torch.empty((), dtype=dtype).element_size()

    calib = None
    if tiers is None and n > 1:
        calib = _calibrate(comm)
        tiers = [TierSpec("host", [list(range(n))], calib["bandwidth_bytes_per_s"], calib["latency_s"])]
    model = CostModel.from_tiers(tiers or [], n)
    sym = None
    if a.shm_buffers:
        if op is not Op.ALL_REDUCE or not comm.shm_enabled:
            raise SystemExit(f"--shm-buffers needs --op all_reduce and the shared-memory path ({comm.shm_reason})")
        sym = comm.shm_tensor(max(1, a.max_bytes // elem), dtype)

    rows = []
    for nbytes in sizes_between(a.min_bytes, a.max_bytes):
        count = max(1, nbytes // elem)
        if op in (Op.ALL_GATHER, Op.REDUCE_SCATTER, Op.ALL_TO_ALL):
            count = max(n, count - count % n)
        size = count * elem
        algo = comm._algorithm(op, size, Algorithm(a.algorithm), shm_ok=op is Op.ALL_REDUCE)
        xpod_fn, base_fn = _ops(comm, dist, op, count, dtype, algo, sym)
        for _ in range(a.warmup):
            xpod_fn()
            if a.baseline:
                base_fn()
        fns = [xpod_fn, base_fn] if a.baseline else [xpod_fn]
        times = _time_interleaved(comm, fns, a.iters * a.rounds)
        best_x = times[0]
        best_b = times[1] if a.baseline else 0.0
        t = torch.tensor([best_x, best_b], dtype=torch.float64, device=comm.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        wrong = _check(comm, op, count, dtype, algo, sym)
        wt = torch.tensor([wrong], dtype=torch.int64, device=comm.device)
        dist.all_reduce(wt)
        factor = op.bus_factor_fn(n)
        sec = float(t[0])
        row = {
            "op": op.value,
            "bytes": size,
            "count": count,
            "dtype": str(dtype).replace("torch.", ""),
            "ranks": n,
            "algorithm": algo.value + ("+symmetric" if sym is not None else ""),
            "time_us": sec * 1e6,
            "algbw_gbps": size / sec / 1e9,
            "busbw_gbps": size / sec / 1e9 * factor,
            "wrong": int(wt[0]),
            "predicted_us": _predict(model, op, size, algo, n, calib, symmetric=sym is not None),
        }
        if a.baseline:
            bsec = float(t[1])
            row.update(
                {
                    "baseline_time_us": bsec * 1e6,
                    "baseline_algbw_gbps": size / bsec / 1e9,
                    "baseline_busbw_gbps": size / bsec / 1e9 * factor,
                    "busbw_ratio": bsec / sec,
                }
            )
        rows.append(row)
    if rank == 0:
        with open(a.out, "w") as f:
            json.dump(
                {
                    "rows": rows,
                    "ranks": n,
                    "shm": comm.shm_reason,
                    "calibration": calib,
                    "tiers": [
                        {
                            "name": t.name,
                            "groups": [list(g) for g in t.groups],
                            "bandwidth_bytes_per_s": t.bandwidth_bytes_per_s,
                            "latency_s": t.latency_s,
                        }
                        for t in (tiers or [])
                    ],
                },
                f,
            )
    comm.close()
    return 0


def _time_interleaved(comm, fns, samples: int) -> list[float]:
    """Median seconds per call of each of ``fns``, timed call by call and interleaved (xpod,
    bare, xpod, bare, ...), each call after a barrier. On a host shared with other work the
    load changes from second to second; interleaving gives both the same load and the median
    drops the calls another process interrupted."""
    import statistics

    per_fn: list[list[float]] = [[] for _ in fns]
    for k in range(samples):
        order = range(len(fns)) if k % 2 == 0 else reversed(range(len(fns)))  # no position bias
        for i in order:
            fn = fns[i]
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            per_fn[i].append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in per_fn]


def _ops(comm, dist, op, count, dtype, algo, sym=None):
    """(xpod call, bare torch.distributed call) on same-sized buffers for one size."""
    import torch

    n = comm.world_size
    dev = comm.device
    buf = torch.zeros(count, dtype=dtype, device=dev) if sym is None else sym[:count]
    bare = torch.zeros(count, dtype=dtype, device=dev)
    ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    if op.value == "all_reduce":
        return (lambda: comm.all_reduce(buf, algorithm=algo)), (lambda: dist.all_reduce(bare))
    if op.value == "all_gather":
        part = torch.zeros(count // n, dtype=dtype, device=dev)
        return (lambda: comm.all_gather(part, algorithm=algo, out=buf)), (lambda: ag(bare, part))
    if op.value == "reduce_scatter":
        out = torch.empty(count // n, dtype=dtype, device=dev)
        mine = torch.empty(count // n, dtype=dtype, device=dev)
        return (lambda: comm.reduce_scatter(buf, out=mine)), (lambda: rs(out, bare))
    if op.value == "all_to_all":
        out = torch.empty(count, dtype=dtype, device=dev)
        mine = torch.empty(count, dtype=dtype, device=dev)
        return (lambda: comm.all_to_all(buf, algorithm=algo, out=mine)), (lambda: dist.all_to_all_single(out, bare))
    return (lambda: comm.broadcast(buf, 0)), (lambda: dist.broadcast(bare, 0))


def _check(comm, op, count, dtype, algo, sym=None) -> int:
    """Run the op once on known small-integer inputs (exact in fp32, bf16 and int64) and count
    the elements that differ from the single-process reference."""
    import torch

    n, r = comm.world_size, comm.rank
    idx = torch.arange(count, device=comm.device)
    if op.value == "all_reduce":
        x = ((idx % 7) * (r + 1)).to(dtype)
        if sym is not None:  # check the symmetric path itself, in the same buffer
            x = sym[:count].copy_(x)
        comm.all_reduce(x, algorithm=algo)
        want = ((idx % 7) * (n * (n + 1) // 2)).to(dtype)
        return int((x != want).sum())
    if op.value == "reduce_scatter":
        x = ((idx % 7) * (r + 1)).to(dtype)
        got = comm.reduce_scatter(x)
        k = count // n
        want = ((idx[r * k : (r + 1) * k] % 7) * (n * (n + 1) // 2)).to(dtype)
        return int((got != want).sum())
    if op.value == "all_gather":
        k = count // n
        ar = idx[:k]
        got = torch.cat(comm.all_gather(((ar % 5) + r).to(dtype), algorithm=algo))
        want = torch.cat([((ar % 5) + s).to(dtype) for s in range(n)])
        return int((got != want).sum())
    if op.value == "all_to_all":
        k = count // n
        dst = torch.arange(n, device=comm.device).repeat_interleave(k)
        got = comm.all_to_all((r * 8 + dst % 8).to(dtype), algorithm=algo)
        want = (dst * 8 + r % 8).to(dtype)
        return int((got != want).sum())
    x = (idx % 7 + 1).to(dtype) if r == 0 else torch.zeros(count, dtype=dtype, device=comm.device)
    comm.broadcast(x, 0)
    return int((x != (idx % 7 + 1).to(dtype)).sum())


def _predict(model, op, size, algo, n, calib, symmetric: bool = False) -> float | None:
    from xpod.hal.collectives import Algorithm

    if n == 1:
        return 0.0
    if algo is Algorithm.SHM:
        if not calib or not calib.get("copy_bytes_per_s"):
            return None
        # Memory-bound model. In copy-equivalents (one byte read plus one written) per rank:
        # copying in all but the own slice ((n-1)/n S), reducing the own slice (S read, 2 S/n
        # written: (1 + 2/n)/2 S) and copying the other slices out ((n-1)/n S); with symmetric
        # buffers only the reduce-and-write-back (S read, S written: 1 S). All ranks share the
        # host's copy bandwidth; two barriers per chunk cost about one point-to-point latency each.
        per_rank = 1.0 if symmetric else 2 * (n - 1) / n + (1 + 2 / n) / 2
        from xpod.hal.collectives.shm import DEFAULT_SLOT_BYTES

        chunks = 1 if symmetric else max(1, -(-size // DEFAULT_SLOT_BYTES))
        return (per_rank * size * n / calib["copy_bytes_per_s"] + 2 * chunks * calib["latency_s"]) * 1e6
    s = model.predict_seconds(op, size, algo)
    return None if s is None else s * 1e6


def _calibrate(comm) -> dict:
    """Fit alpha and beta of the host tier from a ping-pong between ranks 0 and 1 (8 bytes and
    4 MiB, best of several), and measure the host's memory copy bandwidth. The cost model then
    predicts every collective from these two point-to-point figures."""
    import torch

    def pingpong(nbytes: int, reps: int) -> float:
        buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32, device=comm.device)
        best = float("inf")
        for _ in range(reps):
            comm.barrier()
            if comm.rank in (0, 1):
                t0 = time.perf_counter()
                for _ in range(4):
                    if comm.rank == 0:
                        comm.send(buf, 1)
                        comm.recv(buf, 1)
                    else:
                        comm.recv(buf, 0)
                        comm.send(buf, 0)
                best = min(best, (time.perf_counter() - t0) / 8)
        t = torch.tensor([best if comm.rank in (0, 1) else 0.0], dtype=torch.float64, device=comm.device)
        comm._dist.all_reduce(t, op=comm._dist.ReduceOp.MAX)
        return float(t[0])

    small = pingpong(8, 10)
    big_bytes = 4 * 2**20
    big = pingpong(big_bytes, 4)
    beta = big_bytes / max(1e-9, big - small)
    # One core's copy bandwidth, measured by rank 0 alone while the others wait in a barrier.
    copy = torch.zeros(1, dtype=torch.float64, device=comm.device)
    if comm.rank == 0:
        # The host's copy bandwidth for the shm model: one thread, or as many as ranks and
        # cores allow, whichever is higher (memory, not cores, may be the limit).
        threads = min(comm.world_size, len(os.sched_getaffinity(0)))
        copy[0] = max(
            copy_bandwidth_bytes_per_s(64 * 2**20, threads=1), copy_bandwidth_bytes_per_s(64 * 2**20, threads=threads)
        )
    comm.broadcast(copy, 0)
    return {"latency_s": small, "bandwidth_bytes_per_s": beta, "copy_bytes_per_s": float(copy[0])}


def copy_bandwidth_bytes_per_s(nbytes: int = 256 * 2**20, threads: int | None = None, reps: int = 4) -> float:
    """Bytes copied per second by ``dst.copy_(src)`` on ``nbytes`` buffers (best of ``reps``);
    each copied byte is one read and one write. ``threads`` sets torch's intra-op threads for
    the measurement (None: leave as is)."""
    import torch

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        src = torch.ones(nbytes // 4)
        dst = torch.empty_like(src)
        best = float("inf")  # the first copy also faults the pages in; best-of skips it
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - t0)
        return src.numel() * 4 / best
    finally:
        torch.set_num_threads(old)


if __name__ == "__main__":
    raise SystemExit(main())
