"""Per-rank checks run by test_collectives_multiproc.py in spawned processes.

Every rank can compute every rank's input (seeded by rank), so each result is compared with a
single-process reference. Inputs are small integers so sums are exact in fp32, bf16 and int64
whatever the reduction order; that makes flat, hierarchical and shared-memory results comparable
with ``torch.equal``.
"""

from __future__ import annotations

import os
import time

DTYPES = ("float32", "bfloat16", "int64")


def _input(torch, rank: int, shape, dtype, salt: int = 0):
    g = torch.Generator().manual_seed(1000 * rank + salt)
    return torch.randint(-8, 9, shape, generator=g).to(dtype)


def _tiers(n: int):
    from xpod.hal.collectives import TierSpec

    if n == 4:
        inner = [[0, 1], [2, 3]]
    elif n == 8:
        inner = [[0, 2, 4, 6], [1, 3, 5, 7]]  # groups that are not rank-contiguous
    else:
        return None
    # A slow, high-latency outer tier: the cost model should go hierarchical for big calls.
    return [TierSpec("node", inner, 100e9, 2e-6), TierSpec("pod", [list(range(n))], 5e9, 20e-6)]


def all_ops(rank: int, n: int) -> list[str]:
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal import Capability, CapabilityUnsupported, XpodError
    from xpod.hal.collectives import Algorithm, Communicator

    fails: list[str] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        if not ok:
            fails.append(f"rank {rank}/{n}: {name} {detail}")

    tiers = _tiers(n)
    comm = Communicator.from_env(backend=CpuBackend(), tiers=tiers, timeout_s=60)
    check("shm auto-enabled", comm.shm_enabled == (n > 1), comm.shm_reason)
    check("hierarchy", comm.hierarchical_available == (tiers is not None))
    algos = [Algorithm.FLAT] + ([Algorithm.SHM] if n > 1 else []) + ([Algorithm.HIERARCHICAL] if tiers else [])
    reduce = {
        "sum": lambda xs: torch.stack([x.double() for x in xs]).sum(0),
        "max": lambda xs: torch.stack([x.double() for x in xs]).amax(0),
        "min": lambda xs: torch.stack([x.double() for x in xs]).amin(0),
        "avg": lambda xs: torch.stack([x.double() for x in xs]).sum(0) / n,
    }
    for dname in DTYPES:
        dtype = getattr(torch, dname)
        ops = ["sum", "max", "min"] + (["avg"] if dtype.is_floating_point else [])
        # odd sizes: shm slices and hierarchical shards do not divide them evenly
        for shape in [(1,), (37,), (5, 13)] if n < 8 else [(37,)]:
            inputs = [_input(torch, r, shape, dtype) for r in range(n)]
            for op in ops:
                want = reduce[op](inputs).to(dtype)
                for algo in algos:
                    x = inputs[rank].clone()
                    got = comm.all_reduce(x, op, algorithm=algo)
                    check(
                        f"all_reduce {op} {dname} {shape} {algo.value}",
                        got is x and torch.equal(x, want),
                        f"got {x.flatten()[:6].tolist()} want {want.flatten()[:6].tolist()}",
                    )
        # non-contiguous in-place all_reduce writes through the caller's view
        for algo in algos:
            base = _input(torch, rank, (6, 4), dtype, salt=7)
            view = base.t()
            comm.all_reduce(view, "sum", algorithm=algo)
            want = reduce["sum"]([_input(torch, r, (6, 4), dtype, salt=7) for r in range(n)]).to(dtype).t()
            check(
                f"all_reduce non-contiguous {dname} {algo.value}",
                torch.equal(view, want) and torch.equal(base.t(), want),
            )
        # a large call crosses several shm chunks (slot size shrunk below for this)
        # all_gather, equal
        parts = [_input(torch, r, (3, 5), dtype, salt=1) for r in range(n)]
        for algo in [Algorithm.FLAT] + ([Algorithm.HIERARCHICAL] if tiers else []):
            got = comm.all_gather(parts[rank], algorithm=algo)
            check(
                f"all_gather {dname} {algo.value}", len(got) == n and all(torch.equal(g, p) for g, p in zip(got, parts))
            )
        nc = _input(torch, rank, (5, 3), dtype, salt=2)
        got = comm.all_gather(nc.t())
        check(
            f"all_gather non-contiguous {dname}",
            all(torch.equal(g, _input(torch, r, (5, 3), dtype, salt=2).t()) for r, g in enumerate(got)),
        )
        # all_gather, uneven (sizes exchanged, and given)
        sizes = [(r * 3) % 4 for r in range(n)]  # includes empty contributions
        uneven = [_input(torch, r, (sizes[r], 2), dtype, salt=3) for r in range(n)]
        got = comm.all_gather(uneven[rank], uneven=True)
        check(
            f"all_gather uneven {dname}",
            [tuple(g.shape) for g in got] == [(s, 2) for s in sizes]
            and all(torch.equal(g, u) for g, u in zip(got, uneven)),
        )
        got = comm.all_gather(uneven[rank], sizes=sizes)
        check(f"all_gather sizes= {dname}", all(torch.equal(g, u) for g, u in zip(got, uneven)))
        # reduce_scatter
        big = [_input(torch, r, (2 * n, 3), dtype, salt=4) for r in range(n)]
        for op in ops:
            want = reduce[op](big).to(dtype)[2 * rank : 2 * rank + 2]
            got = comm.reduce_scatter(big[rank], op)
            check(
                f"reduce_scatter {op} {dname}",
                torch.equal(got, want),
                f"got {got.flatten()[:4].tolist()} want {want.flatten()[:4].tolist()}",
            )
        got = comm.reduce_scatter(big[rank].t().contiguous().t())  # same values, non-contiguous layout
        check(
            f"reduce_scatter non-contiguous {dname}",
            torch.equal(got, reduce["sum"](big).to(dtype)[2 * rank : 2 * rank + 2]),
        )
        # all_to_all, equal splits: row block d of rank s goes to rank d
        a2a = [_input(torch, r, (2 * n, 3), dtype, salt=5) for r in range(n)]
        want = torch.cat([a2a[s][2 * rank : 2 * rank + 2] for s in range(n)])
        for algo in [Algorithm.FLAT] + ([Algorithm.HIERARCHICAL] if tiers else []):
            got = comm.all_to_all(a2a[rank], algorithm=algo)
            check(f"all_to_all {dname} {algo.value}", torch.equal(got, want))
        got = comm.all_to_all(a2a[rank].t().contiguous().t())
        check(f"all_to_all non-contiguous {dname}", torch.equal(got, want))
        # all_to_all, uneven splits (some empty), output splits exchanged or given
        split = lambda s, d: (s + 2 * d) % 3  # noqa: E731
        rows = [_input(torch, s, (sum(split(s, d) for d in range(n)), 2), dtype, salt=6) for s in range(n)]

        def block(s, d):
            off = sum(split(s, e) for e in range(d))
            return rows[s][off : off + split(s, d)]

        want = torch.cat([block(s, rank) for s in range(n)])
        ins = [split(rank, d) for d in range(n)]
        got = comm.all_to_all(rows[rank], input_split_sizes=ins)
        check(f"all_to_all uneven {dname}", torch.equal(got, want))
        got = comm.all_to_all(rows[rank], input_split_sizes=ins, output_split_sizes=[split(s, rank) for s in range(n)])
        check(f"all_to_all uneven given {dname}", torch.equal(got, want))
        # broadcast from the last rank into a non-contiguous view
        src = n - 1
        base = _input(torch, rank, (4, 3), dtype, salt=8)
        comm.broadcast(base.t(), src)
        check(f"broadcast {dname}", torch.equal(base, _input(torch, src, (4, 3), dtype, salt=8)))

    # send/recv around a ring, async send so every rank can post its receive
    if n > 1:
        x = torch.full((4,), float(rank))
        w = comm.send(x, (rank + 1) % n, async_op=True)
        y = torch.empty(4)
        comm.recv(y, (rank - 1) % n)
        w.wait()
        check("send/recv", torch.equal(y, torch.full((4,), float((rank - 1) % n))))
        w = comm.recv(torch.empty(2, 2).t(), (rank + 1) % n, async_op=True)
        comm.send(torch.full((2, 2), 10.0 + rank), (rank - 1) % n)
        check("recv async non-contiguous", torch.equal(w.wait(), torch.full((2, 2), 10.0 + (rank + 1) % n)))
    comm.barrier()
    # async handles of every kind, waited out of order
    a = _input(torch, rank, (9,), torch.float32, salt=9)
    ref = reduce["sum"]([_input(torch, r, (9,), torch.float32, salt=9) for r in range(n)]).float()
    works = {}
    for algo in algos:
        works[f"all_reduce {algo.value}"] = (comm.all_reduce(a.clone(), async_op=True, algorithm=algo), ref)
    works["all_gather"] = (comm.all_gather(a, async_op=True), None)
    works["reduce_scatter"] = (comm.reduce_scatter(a.repeat(n), async_op=True), ref)
    works["barrier"] = (comm.barrier(async_op=True), None)
    works["broadcast"] = (comm.broadcast(a.clone(), 0, async_op=True), _input(torch, 0, (9,), torch.float32, salt=9))
    for name in reversed(list(works)):
        w, want = works[name]
        got = w.wait()
        check(f"async {name} completed", w.is_completed())
        if name == "all_gather":
            check(
                "async all_gather",
                all(torch.equal(g, _input(torch, r, (9,), torch.float32, salt=9)) for r, g in enumerate(got)),
            )
        elif want is not None:
            check(f"async {name}", torch.equal(got, want))
        check(f"async {name} wait twice", w.wait() is got)
    # user errors: one-line XpodError, raised before any traffic on every rank alike
    for name, call in [
        ("avg on int64", lambda: comm.all_reduce(torch.ones(3, dtype=torch.int64), "avg")),
        ("unknown op", lambda: comm.all_reduce(torch.ones(3), "prod")),
        ("unknown algorithm", lambda: comm.all_reduce(torch.ones(3), algorithm="ring")),
        (
            "reduce_scatter rows",
            lambda: comm.reduce_scatter(torch.ones(n * 2 + 1)) if n > 1 else comm.reduce_scatter(torch.ones(())),
        ),
        ("all_to_all splits", lambda: comm.all_to_all(torch.ones(5), input_split_sizes=[9] * n)),
        (
            "all_to_all uneven forced shm",
            lambda: comm.all_to_all(torch.ones(n), input_split_sizes=[1] * n, algorithm="shm"),
        ),
        (
            "all_gather uneven forced hierarchical",
            lambda: (
                comm.all_gather(torch.ones(rank + 1), uneven=True, algorithm="hierarchical")
                if n > 1
                else comm.all_reduce(torch.ones(1), algorithm="shm")
            ),
        ),
        (
            "hierarchical without tiers",
            lambda: (
                comm.all_reduce(torch.ones(3), algorithm="hierarchical")
                if not tiers
                else (_ for _ in ()).throw(XpodError("x"))
            ),
        ),
    ]:
        try:
            call()
            fails.append(f"rank {rank}: {name} did not raise")
        except XpodError as err:
            check(f"{name} message is one line", "\n" not in str(err), str(err))

    # a backend that lacks all_to_all raises the HAL's named error
    class NoAllToAll(CpuBackend):
        unsupported = {**CpuBackend.unsupported, Capability.ALL_TO_ALL: "test backend without all_to_all"}

    real, comm.backend = comm.backend, NoAllToAll()
    try:
        comm.all_to_all(torch.ones(n))
        fails.append(f"rank {rank}: all_to_all on a backend without it did not raise")
    except CapabilityUnsupported as err:
        check("capability error names it", "all_to_all" in str(err), str(err))
    comm.backend = real
    # the cost model's choice is the one auto makes when shm is not in play
    if tiers:
        check(
            "auto small all_gather is what the model picks",
            comm.choose_algorithm("all_gather", 64)
            == comm.cost_model.choose(__import__("xpod.hal.collectives", fromlist=["Op"]).Op.ALL_GATHER, 64),
        )
    comm.close()
    return fails


def shm_chunks(rank: int, n: int) -> list[str]:
    """Shared-memory all_reduce with a tiny slot so calls span many chunks and slot reuse."""
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator
    from xpod.hal.collectives import shm as shm_mod

    shm_mod.DEFAULT_SLOT_BYTES = 4096
    shm_mod.TILE_BYTES = 1024
    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=60, shm=True)
    fails = []
    for count in (1, 1023, 1024, 5000, 70_001):
        for dtype in (torch.float32, torch.bfloat16, torch.int64):
            xs = [_input(torch, r, (count,), dtype, salt=count) for r in range(n)]
            want = torch.stack([x.double() for x in xs]).sum(0).to(dtype)
            x = xs[rank].clone()
            comm.all_reduce(x, algorithm="shm")
            if not torch.equal(x, want):
                fails.append(f"rank {rank}: shm count {count} {dtype} differs at {int((x != want).sum())} elements")
    comm.close()
    return fails


def late_rank(rank: int, n: int) -> list[str]:
    """The last rank arrives 8 s after the others, with a 4 s collective timeout: the rendezvous
    waits for it (its own, longer timeout) and the group works."""
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator

    if rank == n - 1:
        time.sleep(8)
    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=4, shm=False)
    x = torch.full((4,), float(rank + 1))
    comm.all_reduce(x)
    comm.close()
    want = float(n * (n + 1) // 2)
    return [] if torch.equal(x, torch.full((4,), want)) else [f"rank {rank}: all_reduce gave {x.tolist()}, not {want}"]


def failing_peer(rank: int, n: int, mode: str) -> dict:
    """Rank n-1 dies (``mode='die'``) or hangs (``'hang'``) after joining; the others run a
    flat (gloo) all_reduce and then a shared-memory one, and report for each the error class,
    message and how long it took to fail."""
    import os

    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator
    from xpod.hal.errors import XpodError

    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=2, shm=True)
    comm.barrier()
    if rank == n - 1:
        if mode == "die":
            os._exit(3)
        time.sleep(60)  # hang: alive but never joins the collective
        return {}
    out = {}
    for algorithm in ("flat", "shm"):
        t0 = time.monotonic()
        try:
            comm.all_reduce(torch.ones(1000), algorithm=algorithm)
            out[algorithm] = {"error": None, "seconds": time.monotonic() - t0}
        except Exception as err:
            out[algorithm] = {
                "error": type(err).__name__,
                "message": str(err),
                "seconds": time.monotonic() - t0,
                "xpod": isinstance(err, XpodError),
            }
    return out


def out_buffers(rank: int, n: int) -> list[str]:
    """``out=`` receives the result of all_gather, reduce_scatter and all_to_all; a wrong
    ``out`` is a one-line error."""
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal import XpodError
    from xpod.hal.collectives import Communicator

    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=60)
    fails = []
    x = torch.arange(2 * n, dtype=torch.float32) + rank
    out = torch.empty(n, 2 * n)
    got = comm.all_gather(x, out=out)
    if not (
        torch.equal(out, torch.stack([torch.arange(2 * n) + r for r in range(n)]).float())
        and got[0].data_ptr() == out.data_ptr()
    ):
        fails.append(f"rank {rank}: all_gather out=")
    rs = torch.empty(2)
    if comm.reduce_scatter(x, out=rs) is not rs or not torch.equal(
        rs, (n * torch.arange(2 * n) + n * (n - 1) / 2)[2 * rank : 2 * rank + 2].float()
    ):
        fails.append(f"rank {rank}: reduce_scatter out= {rs}")
    a2a = torch.empty(2 * n)
    comm.all_to_all(x, out=a2a)
    if not torch.equal(a2a, torch.cat([(torch.arange(2 * n) + s)[2 * rank : 2 * rank + 2] for s in range(n)]).float()):
        fails.append(f"rank {rank}: all_to_all out=")
    try:
        comm.reduce_scatter(x, out=torch.empty(3))
        fails.append(f"rank {rank}: a wrong out= was accepted")
    except XpodError as err:
        if "out must be a contiguous torch.float32 tensor of 2 elements" not in str(err):
            fails.append(f"rank {rank}: unclear out= error: {err}")
    comm.close()
    return fails


def shm_symmetric(rank: int, n: int) -> list[str]:
    """all_reduce on tensors that live in the symmetric shared-memory region (no copy in or
    out): every op and dtype against the reference, repeated calls on one buffer, a full
    region is a one-line error."""
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal import XpodError
    from xpod.hal.collectives import Communicator
    from xpod.hal.collectives import shm as shm_mod

    shm_mod.DEFAULT_SYMMETRIC_BYTES = 1 << 20
    shm_mod.TILE_BYTES = 1024
    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=60)
    fails = []
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        for count in (1, 999, 10_000):
            buf = comm.shm_tensor(count, dtype)
            ops = ["sum", "max", "min"] + (["avg"] if dtype.is_floating_point else [])
            for op in ops:
                for rep in range(2):  # the same buffer again: no stale slices from the last call
                    xs = [_input(torch, r, (count,), dtype, salt=count + rep) for r in range(n)]
                    stack = torch.stack([x.double() for x in xs])
                    want = {"sum": stack.sum(0), "max": stack.amax(0), "min": stack.amin(0), "avg": stack.sum(0) / n}[
                        op
                    ].to(dtype)
                    buf.copy_(xs[rank])
                    comm.all_reduce(buf, op)
                    if not torch.equal(buf, want):
                        fails.append(
                            f"rank {rank}: symmetric {op} {dtype} count {count} rep {rep}: {int((buf != want).sum())} wrong"
                        )
    try:
        comm.shm_tensor(1 << 20, torch.float32)
        fails.append(f"rank {rank}: an over-full symmetric region was accepted")
    except XpodError as err:
        if "XPOD_SHM_SYMMETRIC_BYTES" not in str(err):
            fails.append(f"rank {rank}: unclear error {err}")
    comm.close()
    return fails


def tiers_from_placement_file(rank: int, n: int) -> dict:
    """A Communicator built with no tiers takes them from XPOD_TOPOLOGY (the job's placement
    file) and runs the hierarchical all_reduce over them."""
    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator

    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=60, shm=False)
    try:
        x = torch.full((1024,), float(rank + 1))
        comm.all_reduce(x, algorithm="hierarchical")
        return {
            "groups": [list(map(list, t.groups)) for t in comm.tiers],
            "hierarchical": comm.hierarchical_available,
            "sum": float(x[0]),
        }
    finally:
        comm.close()


def close_beside_a_hung_peer(rank: int, n: int, close_timeout_s: float) -> dict:
    """Rank n-1 joins, runs one all_reduce and then hangs (alive, never reaching ``close()``);
    the others close their communicator (collective timeout 120 s) and report how long
    ``close()`` took and what it wrote to stderr."""
    import contextlib
    import io

    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator

    comm = Communicator.from_env(backend=CpuBackend(), timeout_s=120, close_timeout_s=close_timeout_s, shm=False)
    comm.all_reduce(torch.ones(8))
    if rank == n - 1:
        time.sleep(600)  # killed by the harness once the others have reported
        return {}
    err = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err):
        comm.close()
    return {"seconds": time.monotonic() - t0, "stderr": err.getvalue(), "destroyed": not _dist_initialized()}


def _simulated_device(work: str, mark: str | None = None, busy_s: float = 0.0):
    """The real CPU backend with a simulated device queue: its ``synchronize`` stands for a
    device that still runs queued work. ``work="busy"``: it finishes ``busy_s`` after close()
    asks, and marks that moment by creating ``mark``; ``"hung"``: it never finishes."""
    import threading
    from pathlib import Path

    from xpod.backends.cpu import CpuBackend

    class SimulatedQueue(CpuBackend):
        def synchronize(self, device) -> None:
            super().synchronize(device)  # the real CPU one first (returns at once)
            if work == "hung":
                threading.Event().wait()
            time.sleep(busy_s)
            assert mark is not None
            Path(mark).touch()

    return SimulatedQueue()


def close_after_a_busy_device(rank: int, n: int, mark: str, busy_s: float) -> dict:
    """Every rank runs one all_reduce and closes at once; the last rank's (simulated) device is
    still busy with queued work for ``busy_s`` and marks when it is done. Each rank reports
    whether the mark was there when its close() returned, and what close() wrote to stderr."""
    import contextlib
    import io

    import torch

    from xpod.backends.cpu import CpuBackend
    from xpod.hal.collectives import Communicator

    backend = _simulated_device("busy", mark, busy_s) if rank == n - 1 else CpuBackend()
    comm = Communicator.from_env(backend=backend, timeout_s=120, close_timeout_s=120, shm=False)
    comm.all_reduce(torch.ones(8))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        comm.close()
    return {"mark_when_closed": os.path.exists(mark), "stderr": err.getvalue(), "destroyed": not _dist_initialized()}


def close_beside_a_hung_device(rank: int, n: int, close_timeout_s: float, skew_s: float = 0.0) -> dict:
    """Ranks whose (simulated) devices never finish their queued work close their communicators
    (collective timeout 120 s), reaching close() ``skew_s`` apart, and report what close() wrote
    to stderr and whether the process group is gone."""
    import contextlib
    import io

    import torch

    from xpod.hal.collectives import Communicator

    comm = Communicator.from_env(
        backend=_simulated_device("hung"), timeout_s=120, close_timeout_s=close_timeout_s, shm=False
    )
    comm.all_reduce(torch.ones(8))
    time.sleep(rank * skew_s)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        comm.close()
    return {"stderr": err.getvalue(), "destroyed": not _dist_initialized()}


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_initialized()


def store_barrier_ranks(rank: int, n: int, absent: int | None, timeout_s: float) -> dict:
    """Every rank but ``absent`` (which stays alive, never arriving) meets at ``store_barrier``
    on a real TCPStore that rank 0 serves, arriving 0.3 s apart; each reports whether it passed
    (or the error), how long it took and, on rank 0, how many ranks had left the barrier when
    rank 0 returned from it."""
    import datetime
    import os

    import torch.distributed as dist

    from xpod.hal.collectives.communicator import store_barrier

    store = dist.TCPStore(
        "127.0.0.1",
        int(os.environ["MASTER_PORT"]),
        n,
        is_master=rank == 0,
        timeout=datetime.timedelta(seconds=60),
        wait_for_workers=True,
    )
    if rank == absent:
        time.sleep(600)  # killed by the harness once the others have reported
        return {}
    # the present ranks set out together (a loaded machine starts them seconds apart, which is
    # not what the barrier's bound is for), then arrive 0.3 s apart
    present = n - (absent is not None)
    store.add("test/present", 1)
    deadline = time.monotonic() + 120
    while store.add("test/present", 0) < present and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3 * rank)
    t0 = time.monotonic()
    try:
        store_barrier(store, rank, n, timeout_s, "test/close")
        out: dict = {"error": None, "seconds": time.monotonic() - t0}
    except RuntimeError as err:
        out = {"error": str(err), "seconds": time.monotonic() - t0}
    if rank == 0:
        if out["error"] is None:
            out["left_when_rank0_returned"] = store.add("test/close/left", 0)
        # the store's server stays until every other present rank is through (its bound may
        # end later than rank 0's: it arrived later)
        deadline = time.monotonic() + 60
        while store.add("test/through", 0) < present - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        store.add("test/through", 1)
    return out
