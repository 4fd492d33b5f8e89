"""Run a function on N local ranks (spawned processes) and collect what each returns.

Each rank gets the launch environment in os.environ, one torch thread, and returns a list of
failure strings (empty = every check passed) or raises; the harness reports both per rank.
"""

from __future__ import annotations

import os
import socket
import time
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, n: int, port: int, fn, args, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(n),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(n),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        XPOD_BACKEND="cpu",
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    try:
        result = fn(rank, n, *args)
        queue.put((rank, "ok", result))
    except BaseException as err:  # reported to the test, which fails with it
        queue.put((rank, "raised", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    # Flush the result, then leave without interpreter teardown: a process group whose peer
    # died can block its destructor, and the test has what it needs.
    queue.close()
    queue.join_thread()
    os._exit(0)


def run_ranks(fn, n: int, *args, timeout_s: float = 120.0, expect: int | None = None) -> dict[int, tuple[str, object]]:
    """Start ``n`` ranks of ``fn(rank, n, *args)``; return ``{rank: (status, value)}`` for the
    ranks that reported (``expect`` of them; all by default) within ``timeout_s``. Ranks still
    running afterwards are killed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, n, port, fn, args, queue), daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    results: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout_s
    want = n if expect is None else expect
    try:
        while len(results) < want and time.monotonic() < deadline:
            try:
                rank, status, value = queue.get(timeout=0.5)
                results[rank] = (status, value)
            except Exception:
                if all(not p.is_alive() for p in procs) and queue.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=2 if len(results) >= want else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    return results
