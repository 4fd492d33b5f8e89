"""All-reduce through shared memory for the CPU ranks of one host.

The idea is DeepSpeed's CPU-inference all_reduce (a shared buffer per rank and flag-based
barriers instead of sockets), re-implemented here from that description, not from its code:

1. every rank copies its chunk, except its own slice ``r``, into its own shared buffer (a file
   in /dev/shm, mmap'ed by all);
2. barrier;
3. rank ``r`` reduces slice ``r`` in place in its own tensor, adding the peers' slice ``r`` from
   their buffers, and publishes the result in its buffer's slice ``r`` (no other rank reads or
   writes that slice in this phase);
4. barrier;
5. every rank copies slice ``p`` from rank ``p``'s buffer, for every other ``p``, into its tensor.

Two buffer slots alternate, so a chunk needs two barriers: a rank that starts chunk ``c`` has
passed the second barrier of chunk ``c-1``, which every rank reaches only after reading the slot
of chunk ``c-2``. Each rank copies about ``(2 (n-1) + 1)/n S`` bytes and reads ``S`` for an
``S``-byte all_reduce, against ``2 (n-1)/n S`` sent through loopback TCP (each byte copied
into and out of the kernel) plus the reductions for gloo's ring.

The barrier is a per-rank 32-bit generation counter in the shared file. A waiting rank spins
briefly, then sleeps in futex(2) on the peer's counter (ranks may outnumber cores: a spinning
rank would steal the core its peer needs); every rank wakes its waiters after bumping its
counter. While waiting it checks that the peers' processes are alive, and it raises
``CollectiveTimeout`` after the communicator's timeout instead of hanging. Stores become visible in program order on x86-64 (TSO), which the flag protocol
relies on; on weakly ordered CPUs (aarch64) a fence would be needed, so ``supported()`` says no.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import time

from xpod.hal.errors import XpodError

from .types import CollectiveError, CollectiveTimeout, ReduceOp

#: bytes of one buffer slot per rank (two slots per rank); a call larger than this is chunked
DEFAULT_SLOT_BYTES = int(os.environ.get("XPOD_SHM_SLOT_BYTES", str(16 * 2**20)))
#: bytes of one reduction tile (fits a core's L2 with room for the peers' tiles)
#: bytes per rank for tensors that live in shared memory (``Communicator.shm_tensor``)
DEFAULT_SYMMETRIC_BYTES = int(os.environ.get("XPOD_SHM_SYMMETRIC_BYTES", str(256 * 2**20)))
TILE_BYTES = int(os.environ.get("XPOD_SHM_TILE_BYTES", str(256 * 2**10)))
_CONTROL_BYTES = 4096  # one page: the barrier counter at offset 0
_SHM_DIR = "/dev/shm"


def supported() -> str | None:
    """None when the shared-memory path can run on this host, else the reason it cannot."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the flag protocol assumes x86-64 store ordering; this host is {platform.machine()}"
    if not os.path.isdir(_SHM_DIR) or not os.access(_SHM_DIR, os.W_OK):
        return f"{_SHM_DIR} is not a writable directory"
    return None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_FUTEX = 202  # x86-64 syscall number (supported() rules other machines out)
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not PRIVATE) ops: the words live in shared mappings
_WAIT_SLICE = ctypes.pointer(_Timespec(0, 50_000_000))  # 50 ms, then look at the peer again


def _futex(addr: int, op: int, val: int, timeout=None) -> int:
    """futex(2) on the 32-bit word at ``addr``: WAIT sleeps while it still holds ``val`` (the
    kernel checks atomically, so a wake between our read and the call is not lost); WAKE wakes
    up to ``val`` waiters."""
    return _LIBC.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), op, val, timeout, None, 0)


def _alive(pid: int) -> bool:
    # A zombie still answers kill(pid, 0); /proc tells a zombie from a running process.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


class ShmAllReduce:
    """One rank's end of the shared-memory all_reduce. Construct on every rank of the group
    in the same order through ``create`` (it needs the process group once, for the rendezvous).
    Calls must be made in the same order on every rank, like any collective."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        maps: list[mmap.mmap],
        pids: list[int],
        slot_bytes: int,
        timeout_s: float,
        symmetric_bytes: int = 0,
    ) -> None:
        import torch

        self.rank = rank
        self.world_size = world_size
        self.slot_bytes = slot_bytes
        self.timeout_s = timeout_s
        self._pids = pids
        self._maps = maps  # kept alive: the tensors below are views of them
        # One 32-bit word per rank (a futex word: waiters sleep in the kernel, not in a spin).
        self._flags = [ctypes.c_int32.from_buffer(m, 0) for m in maps]
        self._flag_addrs = [ctypes.addressof(f) for f in self._flags]
        self._data = [torch.frombuffer(m, dtype=torch.uint8, offset=_CONTROL_BYTES, count=2 * slot_bytes) for m in maps]
        # The symmetric region: same offsets on every rank, handed out by ``alloc``.
        self.symmetric_bytes = symmetric_bytes
        self._sym = (
            [
                torch.frombuffer(m, dtype=torch.uint8, offset=_CONTROL_BYTES + 2 * slot_bytes, count=symmetric_bytes)
                for m in maps
            ]
            if symmetric_bytes
            else []
        )
        self._sym_used = 0
        self._sym_base = self._sym[rank].data_ptr() if self._sym else 0
        self._generation = self._flags[rank].value
        self._chunk_counter = 0  # global across calls: picks the slot, see the module docstring

    @classmethod
    def create(
        cls,
        group_rank: int,
        world_size: int,
        exchange,
        timeout_s: float,
        slot_bytes: int | None = None,
        symmetric_bytes: int | None = None,
    ) -> "ShmAllReduce":
        """Set up the buffers. ``exchange(obj)`` must return the list of every rank's ``obj``
        (an all_gather of Python objects over the group) and doubles as a barrier."""
        import uuid

        slot_bytes = DEFAULT_SLOT_BYTES if slot_bytes is None else slot_bytes
        symmetric_bytes = DEFAULT_SYMMETRIC_BYTES if symmetric_bytes is None else symmetric_bytes
        token = exchange(uuid.uuid4().hex if group_rank == 0 else None)[0]
        # tmpfs files are sparse: the symmetric region costs memory only where it is written.
        size = _CONTROL_BYTES + 2 * slot_bytes + symmetric_bytes
        path = os.path.join(_SHM_DIR, f"xpod-coll-{token}-{group_rank}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            own = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        pids = exchange(os.getpid())
        maps: list[mmap.mmap] = []
        try:
            for r in range(world_size):
                if r == group_rank:
                    maps.append(own)
                    continue
                with open(os.path.join(_SHM_DIR, f"xpod-coll-{token}-{r}"), "r+b") as f:
                    maps.append(mmap.mmap(f.fileno(), size))
        finally:
            exchange(None)  # everyone has mapped everyone: the names can go
            os.unlink(path)  # the mappings stay valid; nothing is left behind if a rank dies
        return cls(group_rank, world_size, maps, pids, slot_bytes, timeout_s, symmetric_bytes)

    # -- barrier ---------------------------------------------------------------------------
    def _barrier(self) -> None:
        self._generation += 1
        gen = self._generation
        me = self._flags[self.rank]
        me.value = gen
        _futex(self._flag_addrs[self.rank], _FUTEX_WAKE, 2**31 - 1)  # wake every rank waiting on me
        started = time.monotonic()
        for peer, flag in enumerate(self._flags):
            spins = 0
            while True:
                seen = flag.value
                # Generations only grow; the difference keeps working after the int32 wraps.
                if ((seen - gen + 2**31) % 2**32) - 2**31 >= 0:
                    break
                spins += 1
                if spins < 32:
                    continue  # the peer is usually a few microseconds away
                # Sleep until the peer's word changes (or 0.2 s pass, to check on the peer).
                _futex(self._flag_addrs[peer], _FUTEX_WAIT, seen, _WAIT_SLICE)
                if spins % 8 == 0 or time.monotonic() - started > 0.2:
                    self._check_peer(peer, started)

    def _check_peer(self, peer: int, started: float) -> None:
        if not _alive(self._pids[peer]):
            raise CollectiveError(
                f"shm all_reduce: rank {peer} (pid {self._pids[peer]}) exited; rank {self.rank} cannot finish"
            )
        if time.monotonic() - started > self.timeout_s:
            raise CollectiveTimeout(
                f"shm all_reduce: rank {peer} did not reach the barrier within {self.timeout_s:g} s "
                f"(rank {self.rank}); a peer hung or died"
            )

    # -- all_reduce ------------------------------------------------------------------------
    def all_reduce_(self, flat, op: ReduceOp) -> None:
        """Reduce the contiguous 1-D tensor ``flat`` in place across the ranks."""
        import torch

        n = self.world_size
        elem = flat.element_size()
        per_chunk = max(n, self.slot_bytes // elem)
        tile = max(1, TILE_BYTES // elem)
        total = flat.numel()
        for start in range(0, total, per_chunk):
            count = min(per_chunk, total - start)
            slot = self._chunk_counter % 2
            self._chunk_counter += 1
            base = slot * self.slot_bytes
            views = [d[base : base + count * elem].view(flat.dtype) for d in self._data]
            chunk = flat[start : start + count]
            me = views[self.rank]
            lo, hi = count * self.rank // n, count * (self.rank + 1) // n
            # Peers read every slice of this rank's buffer except its own slice, which only
            # this rank reduces: copy the rest in, and reduce the own slice straight from the input.
            if lo > 0:
                me[:lo].copy_(chunk[:lo])
            if hi < count:
                me[hi:].copy_(chunk[hi:])
            self._barrier()
            # Reduce the own slice in cache-sized tiles, in place in the caller's tensor (its
            # input there is needed by nobody else): the tile stays in cache while the n-1 peers'
            # tiles stream past it, then it is published in the shared buffer for the peers.
            for tlo in range(lo, hi, tile):
                thi = min(hi, tlo + tile)
                acc = chunk[tlo:thi]
                for p in range(n):
                    if p == self.rank:
                        continue
                    other = views[p][tlo:thi]
                    if op is ReduceOp.SUM or op is ReduceOp.AVG:
                        acc.add_(other)
                    elif op is ReduceOp.MAX:
                        torch.maximum(acc, other, out=acc)
                    else:
                        torch.minimum(acc, other, out=acc)
                if op is ReduceOp.AVG:
                    acc.div_(n)
                me[tlo:thi].copy_(acc)
            self._barrier()
            for p in range(n):
                if p == self.rank:
                    continue  # already in place
                plo, phi = count * p // n, count * (p + 1) // n
                if phi > plo:
                    chunk[plo:phi].copy_(views[p][plo:phi])

    # -- symmetric buffers -------------------------------------------------------------------
    def alloc(self, nbytes: int):
        """``nbytes`` of this rank's symmetric region (a uint8 tensor), at the same offset on
        every rank as long as every rank makes the same calls in the same order. Lives as long
        as this object; there is no free."""
        start = -(-self._sym_used // 64) * 64  # cache-line aligned
        if start + nbytes > self.symmetric_bytes:
            raise XpodError(
                f"shared-memory symmetric region is full: {nbytes} bytes asked, "
                f"{self.symmetric_bytes - start} left of {self.symmetric_bytes}; raise XPOD_SHM_SYMMETRIC_BYTES"
            )
        self._sym_used = start + nbytes
        return self._sym[self.rank][start : start + nbytes]

    def symmetric_offset(self, flat) -> int | None:
        """The byte offset of ``flat`` in this rank's symmetric region, or None if it is not there."""
        if not self._sym:
            return None
        off = flat.data_ptr() - self._sym_base
        if 0 <= off and off + flat.numel() * flat.element_size() <= self._sym_used:
            return off
        return None

    def all_reduce_symmetric_(self, flat, offset: int, op: ReduceOp) -> None:
        """All-reduce a tensor that lives in the symmetric region (``alloc``): after one
        barrier, rank r reduces slice r across every rank's copy and writes the result into
        slice r of every rank's copy; after a second barrier each rank's tensor holds the sum.
        About 2 S of memory traffic per rank (read every copy of one slice, write it back to
        every copy) against 5 S when the data must be copied in and out."""
        import torch

        n = self.world_size
        elem = flat.element_size()
        count = flat.numel()
        views = [d[offset : offset + count * elem].view(flat.dtype) for d in self._sym]
        self._barrier()  # every rank's input is in place
        lo, hi = count * self.rank // n, count * (self.rank + 1) // n
        tile = max(1, TILE_BYTES // elem)
        acc = torch.empty(min(tile, max(0, hi - lo)), dtype=flat.dtype)
        for tlo in range(lo, hi, tile):
            thi = min(hi, tlo + tile)
            a = acc[: thi - tlo]
            a.copy_(views[0][tlo:thi])
            for p in range(1, n):
                other = views[p][tlo:thi]
                if op is ReduceOp.SUM or op is ReduceOp.AVG:
                    a.add_(other)
                elif op is ReduceOp.MAX:
                    torch.maximum(a, other, out=a)
                else:
                    torch.minimum(a, other, out=a)
            if op is ReduceOp.AVG:
                a.div_(n)
            for v in views:  # no rank reads or writes slice r but this one until the barrier
                v[tlo:thi].copy_(a)
        self._barrier()  # every slice is written everywhere

    def close(self) -> None:
        self._sym = []
        self._data = []
        self._flags = []
        self._flag_addrs = []
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # a view is still referenced; the mapping goes with the process
        self._maps = []
