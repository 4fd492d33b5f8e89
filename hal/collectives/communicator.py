"""``Communicator``: one rank's collectives on the backend's distributed library.

Created from the launch environment (``LaunchEnv``: RANK, WORLD_SIZE, LOCAL_RANK, ...,
XPOD_BACKEND), it owns a torch.distributed process group on the backend's library (gloo, hccl,
cncl, mccl, nccl) with a bounded timeout, and offers all_reduce, all_gather (equal and uneven),
reduce_scatter, all_to_all (equal and uneven splits), broadcast, barrier and send/recv, each
sync or async.

Contracts shared by every op:

- Every rank calls the same collectives in the same order (as with torch.distributed).
- ``async_op=False`` returns the result; ``async_op=True`` returns a ``Work`` whose ``wait()``
  returns the same result. In-place ops (all_reduce, broadcast, recv) return the caller's tensor.
- Inputs may be non-contiguous; outputs are written back into them where the op is in place.
- Ops that run as several library calls (hierarchical algorithms, shared-memory all_reduce) run
  on one background thread per communicator, in call order; a later op first waits for those
  to be issued and finished, so the order of library calls is the same on every rank.
- A peer that dies or hangs ends the op with ``CollectiveError`` / ``CollectiveTimeout`` (one
  line: op, rank, cause) within the communicator's timeout, never a hang.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from xpod.hal.backend import Backend, Capability, parse_visible_devices
from xpod.hal.errors import XpodError

if TYPE_CHECKING:
    from .shm import ShmAllReduce

from .cost import CostModel
from .env import LaunchEnv
from .topology_adapter import tiers_from_env
from .types import Algorithm, CollectiveError, CollectiveTimeout, Op, ReduceOp, TierSpec, validate_tiers


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise XpodError(f"{name}={raw!r}: give a number of seconds > 0 (e.g. 120)")
    return value


def _default_timeout_s() -> float:
    return _seconds_from_env("XPOD_COLLECTIVE_TIMEOUT_S", DEFAULT_TIMEOUT_S)


#: default bound on any one collective, seconds
DEFAULT_TIMEOUT_S = 120.0
#: default bound on the barrier ``close()`` waits at before it destroys the process group,
#: seconds. Ranks that finish the same last collective reach close within moments, but a rank
#: may work on after it alone (rank 0 saving a checkpoint, an evaluation), and the barrier must
#: hold the others for that, or the group is torn down under it; a peer that has hung or gone
#: costs the survivors this long, half the collective timeout. 10 s was too short: a rank working
#: 15 s after its last collective made every other rank give up the barrier (review finding)
DEFAULT_CLOSE_TIMEOUT_S = 60.0
#: default time the ranks have to arrive at the rendezvous, seconds: ranks start seconds apart
#: (imports, a busy host, a slow node), which must not count against a short collective timeout;
#: torchrun's rendezvous waits 600 s for its peers by default (``join_timeout``)
DEFAULT_RENDEZVOUS_TIMEOUT_S = 600.0


def _library_text(err: BaseException) -> str:
    """A library exception's message on one line, without the source location gloo/NCCL put
    in front and the advice meant for their own developers they append."""
    text = " ".join(str(err).split())
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", text)
    return text.split(" This is typically caused", 1)[0]


def _error(op: str, rank: int, world: int, err: BaseException) -> CollectiveError:
    """Turn a library exception into one user-facing line."""
    if isinstance(err, CollectiveError):
        return err
    text = _library_text(err)
    first = text[:300]
    low = text.lower()
    cls = CollectiveTimeout if ("timed out" in low or "timeout" in low) else CollectiveError
    return cls(f"{op} failed on rank {rank} of {world}: {first} (a peer rank died, hung or disagreed on the call)")


def _coerce_op(op: ReduceOp | str) -> ReduceOp:
    try:
        return ReduceOp(op)
    except ValueError:
        raise XpodError(f"reduce op {op!r} is not one of {', '.join(o.value for o in ReduceOp)}") from None


def _coerce_algorithm(algorithm: Algorithm | str) -> Algorithm:
    try:
        return Algorithm(algorithm)
    except ValueError:
        raise XpodError(f"algorithm {algorithm!r} is not one of {', '.join(a.value for a in Algorithm)}") from None


class Work:
    """Handle of an async collective. ``wait()`` blocks until it is done, returns the op's
    result and is idempotent; errors surface as ``CollectiveError`` from ``wait()``."""

    def __init__(
        self,
        describe: Callable[[BaseException], CollectiveError],
        *,
        torch_works: Sequence[Any] = (),
        finalize: Callable[[], Any] | None = None,
        future: concurrent.futures.Future | None = None,
    ) -> None:
        self._describe = describe
        self._torch_works = list(torch_works)
        self._finalize = finalize
        self._future = future
        self._done = False
        self._result: Any = None

    def wait(self) -> Any:
        if self._done:
            return self._result
        try:
            if self._future is not None:
                self._result = self._future.result()
            else:
                for w in self._torch_works:
                    w.wait()
                self._result = self._finalize() if self._finalize else None
        except RuntimeError as err:
            raise self._describe(err) from None
        self._done = True
        return self._result

    def is_completed(self) -> bool:
        if self._done:
            return True
        if self._future is not None:
            return self._future.done()
        return all(w.is_completed() for w in self._torch_works)


class Communicator:
    """One rank's communicator. See the module docstring for the contracts."""

    def __init__(
        self,
        env: LaunchEnv,
        backend: Backend | None = None,
        tiers: Sequence[TierSpec] | None = None,
        timeout_s: float | None = None,
        shm: bool | None = None,
        rendezvous_timeout_s: float | None = None,
        close_timeout_s: float | None = None,
    ) -> None:
        """Join the job's process group.

        ``backend`` defaults to the registered backend named by ``env.backend``. ``tiers``
        (closest first) enables the hierarchical algorithms and the cost model; without it they
        come from the job's placement file named by ``XPOD_TOPOLOGY`` (the agent writes it:
        ``topology_adapter.tiers_from_env``), else the ranks form one tier. ``timeout_s`` bounds every collective (default
        ``XPOD_COLLECTIVE_TIMEOUT_S``, else 120 s); ``rendezvous_timeout_s`` bounds the wait for every rank
        to arrive before the process group forms (default ``XPOD_RENDEZVOUS_TIMEOUT_S``, else 600 s; never
        less than ``timeout_s``). ``close_timeout_s`` bounds each of ``close()``'s two waits, for this
        rank's device to run its queued work and at the barrier for the other ranks (default
        ``XPOD_CLOSE_TIMEOUT_S``, else 60 s; never more than ``timeout_s``).
        ``shm``: None (default) enables the shared-memory all_reduce when every rank is a CPU rank of
        this host and ``XPOD_SHM`` is not ``0``; True requires it.
        """
        import torch
        import torch.distributed as dist

        if backend is None:
            from xpod.hal.registry import get_backend

            backend = get_backend(env.backend)
        backend.require(Capability.DISTRIBUTED)
        self.env = env
        self.backend = backend
        self.rank = env.rank
        self.world_size = env.world_size
        self.timeout_s = _default_timeout_s() if timeout_s is None else float(timeout_s)
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise XpodError(f"timeout_s={timeout_s!r}: a collective timeout is a number of seconds > 0")
        if rendezvous_timeout_s is None:
            rendezvous_timeout_s = _seconds_from_env("XPOD_RENDEZVOUS_TIMEOUT_S", DEFAULT_RENDEZVOUS_TIMEOUT_S)
        if not (math.isfinite(rendezvous_timeout_s) and rendezvous_timeout_s > 0):
            raise XpodError(
                f"rendezvous_timeout_s={rendezvous_timeout_s!r}: a rendezvous timeout is a number of seconds > 0"
            )
        self.rendezvous_timeout_s = max(float(rendezvous_timeout_s), self.timeout_s)
        if close_timeout_s is None:
            close_timeout_s = _seconds_from_env("XPOD_CLOSE_TIMEOUT_S", DEFAULT_CLOSE_TIMEOUT_S)
        if not (math.isfinite(close_timeout_s) and close_timeout_s > 0):
            raise XpodError(f"close_timeout_s={close_timeout_s!r}: a close timeout is a number of seconds > 0")
        self.close_timeout_s = min(float(close_timeout_s), self.timeout_s)
        # Checked before joining: a bad descriptor must not leave a half-made process group.
        if tiers is None:
            tiers = tiers_from_env(self.world_size)
        self.tiers: tuple[TierSpec, ...] = validate_tiers(tiers, self.world_size) if tiers else ()
        if backend.device_type == "cpu":
            self.device = torch.device("cpu")
        else:
            self.device = torch.device(backend.device_type, _device_index(backend, env.local_rank))
            # registers the device type (torch.npu, ...); the vendor's import is the backend's
            # own, in its SDK seam: hal imports no vendor module, not even by name
            backend.load_torch_extension()
            getattr(torch, backend.device_type).set_device(self.device)
        self._owns_default = False
        self._store: Any = None
        if not dist.is_initialized():
            try:
                self._store = self._rendezvous(dist, env)
                dist.init_process_group(
                    backend=backend.dist_backend,
                    store=self._store,
                    rank=env.rank,
                    world_size=env.world_size,
                    timeout=datetime.timedelta(seconds=self.timeout_s),
                )
            except (RuntimeError, ValueError) as err:
                raise CollectiveError(
                    f"rank {env.rank} could not join the {backend.dist_backend} process group at "
                    f"{env.master_addr}:{env.master_port}: {' '.join(str(err).split())[:200]}"
                ) from None
            self._owns_default = True
        self._dist = dist
        self._torch = torch
        self._pg = dist.group.WORLD
        self._executor: concurrent.futures.ThreadPoolExecutor | None = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="xpod-coll"
        )
        self._pending: list[concurrent.futures.Future] = []
        self._lock = threading.Lock()
        self._native_reduce_scatter: bool | None = None
        # torch 2.13 renamed the tensor forms (the old names warn); torch >= 2.4 has the old ones.
        self._all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

        self.cost_model = CostModel.from_tiers(self.tiers, self.world_size)
        self._inner_pg = self._cross_pg = None
        self._inner_ranks: tuple[int, ...] = ()
        self._inner_groups: tuple[tuple[int, ...], ...] = ()
        shape = self.cost_model.hierarchy_shape()
        if shape is not None:
            self._build_hierarchy(shape)

        self._shm: ShmAllReduce | None = None
        self.shm_reason = self._setup_shm(shm)

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_env(cls, environ=None, **kwargs) -> "Communicator":
        """``Communicator(LaunchEnv.from_environ(environ), **kwargs)``."""
        return cls(LaunchEnv.from_environ(environ), **kwargs)

    def _build_hierarchy(self, shape: tuple[int, int]) -> None:
        m, k = shape
        timeout = datetime.timedelta(seconds=self.timeout_s)
        inner = self.cost_model.inner_tier_index
        assert inner is not None  # a hierarchy shape implies an inner tier
        self._inner_groups = self.tiers[inner].groups
        # new_group is collective over the world: every rank creates every group, same order.
        for g in self._inner_groups:
            pg = self._dist.new_group(list(g), timeout=timeout)
            if self.rank in g:
                self._inner_pg, self._inner_ranks = pg, g
        for j in range(m):
            cross = [g[j] for g in self._inner_groups]
            pg = self._dist.new_group(cross, timeout=timeout)
            if self.rank in cross:
                self._cross_pg = pg

    def _rendezvous(self, dist: Any, env: LaunchEnv) -> Any:
        """The job's TCP store once every rank has arrived (within ``rendezvous_timeout_s``), its
        timeout then the collectives' own: the process group forms with all ranks present, so a
        rank that started late never reads as a collective timing out."""
        wait = datetime.timedelta(seconds=self.rendezvous_timeout_s)
        if env.world_size == 1:
            host, port, master = "127.0.0.1", _free_port(), True
        else:
            host, port, master = env.master_addr, env.master_port, env.rank == 0
        store = dist.TCPStore(host, port, env.world_size, is_master=master, timeout=wait, wait_for_workers=True)
        if store.add("xpod/rendezvous/arrived", 1) == env.world_size:
            store.set("xpod/rendezvous/all", "1")
        store.wait(["xpod/rendezvous/all"], wait)
        store.set_timeout(datetime.timedelta(seconds=self.timeout_s))
        return store

    def _exchange(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj, group=self._pg)
        return out

    def _setup_shm(self, want: bool | None) -> str:
        from . import shm as shm_mod

        if self.world_size < 2:
            reason = "one rank needs no all_reduce"
        elif self.backend.device_type != "cpu":
            reason = f"tensors live on {self.backend.device_type}, not in host memory"
        else:
            # Decided together: every rank must agree, or the collective sequences diverge, so
            # each rank's own objection (caller, XPOD_SHM, platform) goes through the exchange.
            local: str | None  # this rank's objection, or None
            if want is False:
                local = "disabled by the caller"
            elif want is None and os.environ.get("XPOD_SHM", "1") == "0":
                local = "XPOD_SHM=0"
            else:
                local = shm_mod.supported()
            views = self._exchange((socket.gethostname(), _boot_id(), local))
            objections = [(r, v[2]) for r, v in enumerate(views) if v[2]]
            if objections:
                r, why = objections[0]
                reason = why if r == self.rank or why == local else f"rank {r}: {why}"
            elif len({v[:2] for v in views}) != 1:
                reason = "the ranks are on several hosts"
            else:
                self._shm = shm_mod.ShmAllReduce.create(self.rank, self.world_size, self._exchange, self.timeout_s)
                return "enabled: every rank is a CPU rank of this host"
        if want:
            raise XpodError(f"shared-memory all_reduce was required but cannot run: {reason}")
        return reason

    def shm_tensor(self, shape, dtype=None):
        """A zeroed tensor in this rank's shared-memory symmetric region (``XPOD_SHM_SYMMETRIC_BYTES``
        per rank, default 256 MiB). ``all_reduce`` on such a tensor skips the copies in and out of
        shared memory. Every rank must make the same ``shm_tensor`` calls in the same order (the
        tensors sit at the same offsets everywhere). Needs the shared-memory path (``shm_enabled``);
        the tensors live as long as the communicator."""
        torch = self._torch
        if self._shm is None:
            raise XpodError(f"shm_tensor: the shared-memory path is off ({self.shm_reason})")
        dtype = torch.float32 if dtype is None else dtype
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raw = self._shm.alloc(nbytes)
        t = raw.view(dtype).view(shape)
        t.zero_()
        return t

    @property
    def shm_enabled(self) -> bool:
        return self._shm is not None

    @property
    def hierarchical_available(self) -> bool:
        return self._inner_pg is not None

    # -- sequencing ---------------------------------------------------------------------------
    def _drain(self) -> None:
        """Wait for composite ops already queued, so library calls keep the same order on all ranks."""
        with self._lock:
            pending, self._pending = self._pending, []
        for f in pending:
            try:
                f.result()
            except BaseException:
                pass  # reported through that op's own Work

    def _run(self, name: str, async_op: bool, fn: Callable[[], Any]) -> Any:
        """Run a composite op: inline when sync, on the op thread when async."""
        describe = lambda err: _error(name, self.rank, self.world_size, err)  # noqa: E731
        if not async_op:
            self._drain()
            try:
                return fn()
            except RuntimeError as err:
                raise describe(err) from None
        with self._lock:
            if self._executor is None:
                raise XpodError(f"rank {self.rank}: {name} on a closed communicator; create a new one")
            fut = self._executor.submit(fn)
            self._pending.append(fut)
        return Work(describe, future=fut)

    def _native(self, name: str, async_op: bool, issue: Callable[[bool], Any], finalize: Callable[[], Any]) -> Any:
        """Issue one library call (``issue(async_op)`` returns its torch work or None) and then
        ``finalize`` (local post-processing: copy back, divide, slice)."""
        describe = lambda err: _error(name, self.rank, self.world_size, err)  # noqa: E731
        self._drain()
        try:
            handle = issue(async_op)
            if not async_op:
                return finalize()
        except RuntimeError as err:
            raise describe(err) from None
        return Work(describe, torch_works=[handle] if handle is not None else [], finalize=finalize)

    # -- checks -------------------------------------------------------------------------------
    def _check_tensor(self, name: str, tensor) -> None:
        if not isinstance(tensor, self._torch.Tensor):
            raise XpodError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != self.device.type:
            raise XpodError(
                f"{name}: tensor is on {tensor.device} but this communicator's backend {self.backend.name!r} "
                f"uses {self.device.type} tensors; move it with .to({str(self.device)!r})"
            )

    def _check_reduce(self, name: str, tensor, op: ReduceOp) -> None:
        if op is ReduceOp.AVG and not (tensor.is_floating_point() or tensor.is_complex()):
            raise XpodError(f"{name}: op avg needs a floating dtype, got {tensor.dtype}; use sum and divide yourself")

    def _out(self, name: str, out, shape: tuple, like):
        """A new output tensor, or the caller's ``out`` after checking it fits."""
        if out is None:
            return self._torch.empty(shape, dtype=like.dtype, device=like.device)
        self._check_tensor(name, out)
        if out.dtype != like.dtype or out.numel() != math.prod(shape) or not out.is_contiguous():
            raise XpodError(
                f"{name}: out must be a contiguous {like.dtype} tensor of {math.prod(shape)} elements "
                f"(shape {tuple(shape)}), got {out.dtype} {tuple(out.shape)}"
            )
        return out if tuple(out.shape) == tuple(shape) else out.view(shape)

    def _algorithm(self, op: Op, nbytes: int, algorithm: Algorithm, shm_ok: bool) -> Algorithm:
        if algorithm is Algorithm.AUTO:
            if shm_ok and self._shm is not None:
                return Algorithm.SHM
            if self._inner_pg is None:
                return Algorithm.FLAT
            return self.cost_model.choose(op, nbytes)
        if algorithm is Algorithm.HIERARCHICAL and self._inner_pg is None:
            raise XpodError(
                f"{op.value}: algorithm 'hierarchical' needs tiers whose closest tier splits the "
                f"{self.world_size} ranks into equal groups of 2 or more; pass tiers= or use 'flat'"
            )
        if algorithm is Algorithm.SHM and not (shm_ok and self._shm is not None):
            raise XpodError(f"{op.value}: algorithm 'shm' is unavailable here ({self.shm_reason}); use 'flat'")
        return algorithm

    def choose_algorithm(self, op: Op | str, nbytes: int) -> Algorithm:
        """What ``algorithm='auto'`` picks for ``op`` at ``nbytes`` (nccl-tests' size convention)."""
        op = Op(op)
        return self._algorithm(op, nbytes, Algorithm.AUTO, shm_ok=op is Op.ALL_REDUCE)

    # -- all_reduce ---------------------------------------------------------------------------
    def all_reduce(
        self,
        tensor,
        op: ReduceOp | str = ReduceOp.SUM,
        *,
        async_op: bool = False,
        algorithm: Algorithm | str = Algorithm.AUTO,
    ):
        """Reduce ``tensor`` across all ranks in place; returns ``tensor`` (or a Work)."""
        op, algorithm = _coerce_op(op), _coerce_algorithm(algorithm)
        self._check_tensor("all_reduce", tensor)
        self._check_reduce("all_reduce", tensor, op)
        nbytes = tensor.numel() * tensor.element_size()
        algo = self._algorithm(Op.ALL_REDUCE, nbytes, algorithm, shm_ok=True)
        buf = tensor if tensor.is_contiguous() else tensor.contiguous()
        flat = buf.view(-1)

        def finish():
            if buf is not tensor:
                tensor.copy_(buf)
            return tensor

        if self.world_size == 1 or algo is Algorithm.FLAT:
            dop = self._dist_op(op)

            def issue(a):
                return self._dist.all_reduce(flat, op=dop, group=self._pg, async_op=a)

            def finalize():
                if op is ReduceOp.AVG:
                    flat.div_(self.world_size)
                return finish()

            return self._native("all_reduce", async_op, issue, finalize)
        if algo is Algorithm.SHM:
            shm = self._shm
            assert shm is not None  # the SHM algorithm is chosen only with shared memory set up
            offset = shm.symmetric_offset(flat)

            def run():
                if offset is not None:
                    shm.all_reduce_symmetric_(flat, offset, op)
                else:
                    shm.all_reduce_(flat, op)
                return finish()

            return self._run("all_reduce", async_op, run)

        def run_h():
            self._hier_all_reduce(flat, op)
            return finish()

        return self._run("all_reduce", async_op, run_h)

    def _dist_op(self, op: ReduceOp):
        R = self._dist.ReduceOp
        # AVG is a sum followed by a local division: gloo (and older HCCL/CNCL builds) have no AVG.
        return {ReduceOp.SUM: R.SUM, ReduceOp.AVG: R.SUM, ReduceOp.MAX: R.MAX, ReduceOp.MIN: R.MIN}[op]

    # -- reduce_scatter -----------------------------------------------------------------------
    def reduce_scatter(self, tensor, op: ReduceOp | str = ReduceOp.SUM, *, async_op: bool = False, out=None):
        """Reduce ``tensor`` (dim 0 = world_size * k) across ranks; rank r gets rows r*k..(r+1)*k-1.
        ``out`` (contiguous, that shape and dtype) is reused instead of a new tensor."""
        op = _coerce_op(op)
        self._check_tensor("reduce_scatter", tensor)
        self._check_reduce("reduce_scatter", tensor, op)
        n = self.world_size
        if tensor.dim() == 0 or tensor.shape[0] % n:
            raise XpodError(
                f"reduce_scatter: dim 0 of the input ({tuple(tensor.shape)}) must be a multiple of world_size {n}"
            )
        buf = tensor.contiguous()
        out = self._out("reduce_scatter", out, (tensor.shape[0] // n, *tensor.shape[1:]), tensor)
        if self._native_reduce_scatter is False:

            def run():
                self._reduce_scatter_fallback(buf, out, op, self._pg, n)
                return out.div_(n) if op is ReduceOp.AVG else out

            return self._run("reduce_scatter", async_op, run)
        dop = self._dist_op(op)

        def issue(a):
            try:
                return self._reduce_scatter_single(out, buf, op=dop, group=self._pg, async_op=a)
            except RuntimeError as err:
                # A library without reduce_scatter refuses before any traffic, on every rank alike.
                if self._native_reduce_scatter is None and "support" in str(err).lower():
                    self._native_reduce_scatter = False
                    self._reduce_scatter_fallback(buf, out, op, self._pg, n)
                    return None
                raise

        def finalize():
            self._native_reduce_scatter = self._native_reduce_scatter is not False
            if op is ReduceOp.AVG:
                out.div_(n)
            return out

        return self._native("reduce_scatter", async_op, issue, finalize)

    def _reduce_scatter_fallback(self, buf, out, op: ReduceOp, group, n: int):
        """reduce_scatter from all_to_all: rank r receives every rank's r-th block and reduces
        them locally. Same bytes on the wire as a ring reduce_scatter."""
        recv = self._torch.empty_like(buf)
        self._dist.all_to_all_single(recv, buf, group=group)
        blocks = recv.view(n, *out.shape)
        if op in (ReduceOp.SUM, ReduceOp.AVG):
            out.copy_(blocks.sum(0))  # AVG: the caller divides
        elif op is ReduceOp.MAX:
            out.copy_(blocks.amax(0))
        else:
            out.copy_(blocks.amin(0))
        return out

    # -- all_gather ---------------------------------------------------------------------------
    def all_gather(
        self,
        tensor,
        *,
        sizes: Sequence[int] | None = None,
        uneven: bool = False,
        async_op: bool = False,
        algorithm: Algorithm | str = Algorithm.AUTO,
        out=None,
    ):
        """Every rank's ``tensor``, as a list indexed by rank.

        Equal shapes by default; then ``out`` (contiguous, world_size * numel elements) may be
        given to receive the gathered tensors, and the list holds views of it. Tensors whose dim 0 differs between ranks need ``sizes``
        (every rank's dim 0, the same list on every rank) or ``uneven=True`` (the sizes are
        exchanged first, one small extra collective). Other dims must agree.
        """
        algorithm = _coerce_algorithm(algorithm)
        self._check_tensor("all_gather", tensor)
        n = self.world_size
        buf = tensor.contiguous()
        if sizes is None and uneven:
            if tensor.dim() == 0:
                raise XpodError("all_gather: uneven sizes need a tensor with at least one dimension")
            sizes_t = self._torch.tensor([tensor.shape[0]], dtype=self._torch.int64, device=self.device)
            gathered = self._torch.empty(n, dtype=self._torch.int64, device=self.device)
            self._drain()
            try:
                self._all_gather_single(gathered, sizes_t, group=self._pg)
            except RuntimeError as err:
                raise _error("all_gather", self.rank, n, err) from None
            sizes = [int(s) for s in gathered.tolist()]
        if sizes is not None:
            sizes = [int(s) for s in sizes]
            if len(sizes) != n or any(s < 0 for s in sizes):
                raise XpodError(f"all_gather: sizes must list {n} non-negative dim-0 sizes, got {sizes}")
            if tensor.dim() == 0 or tensor.shape[0] != sizes[self.rank]:
                raise XpodError(
                    f"all_gather: this rank's tensor has shape {tuple(tensor.shape)} but sizes[{self.rank}] = {sizes[self.rank]}"
                )
            if len(set(sizes)) > 1:
                if algorithm in (Algorithm.HIERARCHICAL, Algorithm.SHM):
                    raise XpodError(
                        f"all_gather: algorithm {algorithm.value!r} needs equal sizes; uneven sizes {sizes} run flat (use 'auto' or 'flat')"
                    )
                return self._all_gather_uneven(buf, sizes, async_op)
        nbytes = buf.numel() * buf.element_size() * n
        algo = self._algorithm(Op.ALL_GATHER, nbytes, algorithm, shm_ok=False)
        if algo is Algorithm.HIERARCHICAL and n > 1:
            return self._run("all_gather", async_op, lambda: self._hier_all_gather(buf))
        out = self._out("all_gather", out, (n * buf.numel(),), buf).view(-1)

        def issue(a):
            return self._all_gather_single(out, buf.view(-1), group=self._pg, async_op=a)

        return self._native("all_gather", async_op, issue, lambda: list(out.view(n, *buf.shape).unbind(0)))

    def _all_gather_uneven(self, buf, sizes: list[int], async_op: bool):
        # Pad every rank's rows to the largest, gather equal blocks, then trim: one library call.
        n = self.world_size
        rest = tuple(buf.shape[1:])
        row = math.prod(rest)
        biggest = max(sizes)
        padded = self._torch.zeros((biggest * row,), dtype=buf.dtype, device=buf.device)
        padded[: buf.numel()].copy_(buf.view(-1))
        out = self._torch.empty((n * biggest * row,), dtype=buf.dtype, device=buf.device)

        def issue(a):
            return self._all_gather_single(out, padded, group=self._pg, async_op=a)

        def finalize():
            blocks = out.view(n, biggest * row)
            return [blocks[r, : sizes[r] * row].view(sizes[r], *rest) for r in range(n)]

        return self._native("all_gather", async_op, issue, finalize)

    # -- all_to_all ---------------------------------------------------------------------------
    def all_to_all(
        self,
        tensor,
        *,
        input_split_sizes: Sequence[int] | None = None,
        output_split_sizes: Sequence[int] | None = None,
        async_op: bool = False,
        algorithm: Algorithm | str = Algorithm.AUTO,
        out=None,
    ):
        """Rows ``input_split_sizes[r]`` of ``tensor`` (dim 0, in rank order) go to rank r;
        returns the received rows in source-rank order. Equal splits when both are None.
        With only ``input_split_sizes``, the output splits are exchanged first. ``out``
        (contiguous, the received shape) is reused instead of a new tensor."""
        algorithm = _coerce_algorithm(algorithm)
        self.backend.require(Capability.ALL_TO_ALL)
        self._check_tensor("all_to_all", tensor)
        n = self.world_size
        buf = tensor.contiguous()
        if tensor.dim() == 0:
            raise XpodError("all_to_all: the tensor needs at least one dimension (rows are split along dim 0)")
        rows = tensor.shape[0]
        if input_split_sizes is None and output_split_sizes is None:
            if rows % n:
                raise XpodError(
                    f"all_to_all: dim 0 ({rows}) must be a multiple of world_size {n} for equal splits; pass input_split_sizes"
                )
            nbytes = buf.numel() * buf.element_size()
            algo = self._algorithm(Op.ALL_TO_ALL, nbytes, algorithm, shm_ok=False)
            if algo is Algorithm.HIERARCHICAL and n > 1:
                return self._run("all_to_all", async_op, lambda: self._hier_all_to_all(buf))
            out = self._out("all_to_all", out, tuple(buf.shape), buf)
            return self._native(
                "all_to_all",
                async_op,
                lambda a: self._dist.all_to_all_single(out, buf, group=self._pg, async_op=a),
                lambda: out,
            )
        if input_split_sizes is None:
            raise XpodError("all_to_all: output_split_sizes needs input_split_sizes")
        if algorithm in (Algorithm.HIERARCHICAL, Algorithm.SHM):
            raise XpodError(
                f"all_to_all: algorithm {algorithm.value!r} needs equal splits; uneven splits run flat (use 'auto' or 'flat')"
            )
        ins = [int(s) for s in input_split_sizes]
        if len(ins) != n or any(s < 0 for s in ins) or sum(ins) != rows:
            raise XpodError(
                f"all_to_all: input_split_sizes {ins} must be {n} non-negative sizes summing to dim 0 ({rows})"
            )
        if output_split_sizes is None:
            send = self._torch.tensor(ins, dtype=self._torch.int64, device=self.device)
            recv = self._torch.empty(n, dtype=self._torch.int64, device=self.device)
            self._drain()
            try:
                self._dist.all_to_all_single(recv, send, group=self._pg)
            except RuntimeError as err:
                raise _error("all_to_all", self.rank, n, err) from None
            outs = [int(s) for s in recv.tolist()]
        else:
            outs = [int(s) for s in output_split_sizes]
            if len(outs) != n or any(s < 0 for s in outs):
                raise XpodError(f"all_to_all: output_split_sizes {outs} must be {n} non-negative sizes")
        out = self._out("all_to_all", out, (sum(outs), *buf.shape[1:]), buf)

        def issue(a):
            return self._dist.all_to_all_single(
                out, buf, output_split_sizes=outs, input_split_sizes=ins, group=self._pg, async_op=a
            )

        return self._native("all_to_all", async_op, issue, lambda: out)

    # -- broadcast, barrier, send/recv -------------------------------------------------------
    def broadcast(self, tensor, src: int = 0, *, async_op: bool = False):
        """Copy rank ``src``'s ``tensor`` into every rank's ``tensor``; returns it."""
        self._check_tensor("broadcast", tensor)
        self._check_rank("broadcast", src)
        buf = tensor if tensor.is_contiguous() else tensor.contiguous()

        def finalize():
            if buf is not tensor:
                tensor.copy_(buf)
            return tensor

        return self._native(
            "broadcast", async_op, lambda a: self._dist.broadcast(buf, src=src, group=self._pg, async_op=a), finalize
        )

    def barrier(self, *, async_op: bool = False):
        """Wait until every rank reaches the barrier."""
        return self._native("barrier", async_op, lambda a: self._dist.barrier(group=self._pg, async_op=a), lambda: None)

    def send(self, tensor, dst: int, *, async_op: bool = False, tag: int = 0):
        """Send ``tensor`` to rank ``dst`` (matched by a ``recv`` there with the same tag)."""
        self._check_tensor("send", tensor)
        self._check_rank("send", dst, peer=True)
        buf = tensor.contiguous()

        def issue(a):
            if a:
                return self._dist.isend(buf, dst=dst, group=self._pg, tag=tag)
            self._dist.send(buf, dst=dst, group=self._pg, tag=tag)
            return None

        return self._native("send", async_op, issue, lambda: None)

    def recv(self, tensor, src: int, *, async_op: bool = False, tag: int = 0):
        """Receive into ``tensor`` from rank ``src``; returns ``tensor``."""
        self._check_tensor("recv", tensor)
        self._check_rank("recv", src, peer=True)
        buf = (
            tensor
            if tensor.is_contiguous()
            else self._torch.empty_like(tensor, memory_format=self._torch.contiguous_format)
        )

        def issue(a):
            if a:
                return self._dist.irecv(buf, src=src, group=self._pg, tag=tag)
            self._dist.recv(buf, src=src, group=self._pg, tag=tag)
            return None

        def finalize():
            if buf is not tensor:
                tensor.copy_(buf)
            return tensor

        return self._native("recv", async_op, issue, finalize)

    def _check_rank(self, name: str, r: int, peer: bool = False) -> None:
        if not isinstance(r, int) or not 0 <= r < self.world_size:
            raise XpodError(f"{name}: rank {r!r} is not in 0..{self.world_size - 1}")
        if peer and r == self.rank:
            raise XpodError(f"{name}: rank {r} is this rank; a rank cannot send to or receive from itself")

    # -- hierarchical algorithms --------------------------------------------------------------
    def _hier_all_reduce(self, flat, op: ReduceOp) -> None:
        """reduce_scatter inside the closest tier, all_reduce of one shard across groups,
        all_gather inside again (each rank's cross-tier traffic is 1/m of the buffer)."""
        torch, dist = self._torch, self._dist
        m = len(self._inner_ranks)
        count = flat.numel()
        shard = -(-count // m)
        padded = torch.zeros(shard * m, dtype=flat.dtype, device=flat.device)
        padded[:count].copy_(flat)
        # Padding (zeros) takes part in the reduction at the same places on every rank and is cut off below.
        dop = self._dist_op(op)
        part = torch.empty(shard, dtype=flat.dtype, device=flat.device)
        if self._native_reduce_scatter is False:
            self._reduce_scatter_fallback(padded, part, op, self._inner_pg, m)
        else:
            self._reduce_scatter_single(part, padded, op=dop, group=self._inner_pg)
        dist.all_reduce(part, op=dop, group=self._cross_pg)
        self._all_gather_single(padded, part, group=self._inner_pg)
        flat.copy_(padded[:count])
        if op is ReduceOp.AVG:
            flat.div_(self.world_size)

    def _hier_all_gather(self, buf):
        """all_gather inside the closest tier, then of whole-group blocks across groups;
        returns the blocks in global rank order."""
        torch = self._torch
        m, k = len(self._inner_ranks), len(self._inner_groups)
        numel = buf.numel()
        inner = torch.empty(m * numel, dtype=buf.dtype, device=buf.device)
        self._all_gather_single(inner, buf.view(-1), group=self._inner_pg)
        cross = torch.empty(k * m * numel, dtype=buf.dtype, device=buf.device)
        self._all_gather_single(cross, inner, group=self._cross_pg)
        blocks = cross.view(k, m, *buf.shape)
        out: list[Any] = [None] * self.world_size
        for g, members in enumerate(self._inner_groups):
            for j, r in enumerate(members):
                out[r] = blocks[g, j]
        return out

    def _hier_all_to_all(self, buf):
        """Two-step all_to_all: inside the closest tier, gather every row bound for the peers
        at position j of every group onto this group's position-j rank; then exchange across
        groups among the position-j ranks. The slow tier sees k-1 messages instead of n-1."""
        torch, dist = self._torch, self._dist
        n = self.world_size
        m, k = len(self._inner_ranks), len(self._inner_groups)
        rows = buf.shape[0] // n
        rest = tuple(buf.shape[1:])
        # chunks[d] = rows for global rank d; reorder to [j'][g'] = dest inner_groups[g'][j']
        chunks = buf.view(n, rows, *rest)
        order = [self._inner_groups[g][j] for j in range(m) for g in range(k)]
        step1_in = chunks[order].contiguous()  # (m*k, rows, ...): block j' goes to inner peer j'
        step1_out = torch.empty_like(step1_in)
        dist.all_to_all_single(step1_out.view(m, -1), step1_in.view(m, -1), group=self._inner_pg)
        # step1_out[i][g'] = rows from source (my group, i) for dest (g', my position)
        s1 = step1_out.view(m, k, rows, *rest)
        step2_in = s1.transpose(0, 1).contiguous()  # [g'][i]: block g' goes to cross peer g'
        step2_out = torch.empty_like(step2_in)
        dist.all_to_all_single(step2_out.view(k, -1), step2_in.view(k, -1), group=self._cross_pg)
        # step2_out[g''][i] = rows from source inner_groups[g''][i] for me
        s2 = step2_out.view(k, m, rows, *rest)
        out = torch.empty_like(buf).view(n, rows, *rest)
        for g, members in enumerate(self._inner_groups):
            for i, r in enumerate(members):
                out[r] = s2[g, i]
        return out.view(buf.shape)

    # -- teardown -------------------------------------------------------------------------------
    def close(self) -> None:
        """Finish queued ops, release shared memory and (if this communicator created it)
        destroy the process group. Idempotent.

        Before the group goes, close() waits, at most ``close_timeout_s`` each, first for this
        rank's device to run what was queued on it (``Backend.synchronize``: an async NCCL/HCCL
        collective the caller never waited for still runs on the device after its ``Work`` is
        gone), then for every other rank to reach close() (``_close_barrier``). The two waits
        have a bound each, not one between them: a collective that hangs hangs on every rank, so
        every rank may spend the whole first bound in the synchronize, and ranks that reached
        close() seconds apart must still meet at the barrier.

        A device that does not finish within the bound is left to it: the wait runs on a daemon
        thread that stays blocked in the vendor's synchronize (no runtime offers a timed or
        interruptible device synchronize), and close() says so in one line, goes on to the
        barrier and then aborts the group instead of destroying it: destroying flushes the
        group's pending work (on NCCL, ``ncclCommFinalize`` since torch 2.6), which would wait
        for the very work that did not finish. A barrier that a rank missed (gone or hung) ends
        in an abort too: on NCCL, destroying a communicator whose peer crashed can hang the
        healthy ranks. The thread does not hold the interpreter's exit."""
        if self._executor is None:
            return
        self._drain()
        self._executor.shutdown(wait=True)
        self._executor = None
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        if self._owns_default and self._dist.is_initialized():
            unfinished = self._finish_device_work(self.close_timeout_s)
            if unfinished is not None:
                self._say(f"close() went on before {unfinished}")
            # every rank is done with the group (and its store, which rank 0 serves) before any
            # tears it down: a rank that exits while another still talks to the store aborts it
            # ("terminate called without an active exception", exit 134). The wait is bounded by
            # close_timeout_s, not the collective timeout: a hung or vanished peer costs the
            # others that long, and the group goes all the same.
            went_on = unfinished is not None
            if self.world_size > 1:
                try:
                    self._close_barrier(self.close_timeout_s)
                except RuntimeError as err:
                    went_on = True
                    self._say(
                        f"close() went on without every rank at its barrier (bound {self.close_timeout_s:g} s, "
                        f"XPOD_CLOSE_TIMEOUT_S): {_library_text(err)[:240]}"
                    )
            if not went_on:
                self._dist.destroy_process_group()
            else:
                from torch.distributed.distributed_c10d import _abort_process_group

                self._say(
                    "the process group is aborted, not destroyed: destroying it would wait for what did not finish"
                )
                _abort_process_group()

    def _say(self, what: str) -> None:
        print(f"xpod: rank {self.rank} of {self.world_size}: {what}", file=sys.stderr, flush=True)

    def _finish_device_work(self, timeout_s: float) -> str | None:
        """Wait, at most ``timeout_s``, until this rank's device has run everything queued on it;
        None when it has, else what is unfinished (the end of a sentence). The synchronize runs
        on a daemon thread so that a device that never finishes costs the bound, not a hang."""
        done = threading.Event()
        failed: list[BaseException] = []

        def synchronize() -> None:
            try:
                self.backend.synchronize(self.device)
            except Exception as err:  # reported by close(), which then aborts the group
                failed.append(err)
            finally:
                done.set()

        threading.Thread(target=synchronize, name="xpod-close-sync", daemon=True).start()
        if not done.wait(timeout_s):
            return (
                f"its device ({self.device}) finished its queued work (bound {timeout_s:g} s, "
                "XPOD_CLOSE_TIMEOUT_S); the device is left to finish it"
            )
        if failed:
            return f"its device ({self.device}) was synchronized ({_library_text(failed[0])[:240]})"
        return None

    def _close_barrier(self, timeout_s: float) -> None:
        """Wait, at most ``timeout_s``, until every rank has reached ``close()``; raises
        RuntimeError (a ``DistError``) when a rank did not arrive in time or has gone.

        gloo: ``monitored_barrier``, the barrier torch gives a timeout of its own (gloo only).
        Other libraries (NCCL, HCCL, ...) have none that holds: their barrier is a device
        all_reduce bounded by the group's timeout and watchdog, not by an argument, so their
        ranks meet on the job's TCP store instead (``store_barrier``)."""
        if self.backend.dist_backend == "gloo":
            self._dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
        else:
            store_barrier(self._store, self.rank, self.world_size, timeout_s, "xpod/close")

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def store_barrier(store: Any, rank: int, world_size: int, timeout_s: float, name: str) -> None:
    """Every rank of ``world_size`` calls this once with the same ``name`` on the job's store
    (a torch ``TCPStore``, which rank 0 serves); it returns once all of them have, or raises
    RuntimeError within about ``timeout_s`` saying how many had not. Rank 0 also waits (within
    the same bound) until every rank has seen the barrier pass, so no rank still waiting on the
    store finds its server gone."""
    deadline = time.monotonic() + timeout_s
    if store.add(f"{name}/arrived", 1) == world_size:
        store.set(f"{name}/all", "1")
    try:
        store.wait([f"{name}/all"], datetime.timedelta(seconds=timeout_s))
    except RuntimeError as err:
        cause = _library_text(err)[:120]
        try:
            arrived = store.add(f"{name}/arrived", 0)
        except RuntimeError:
            raise RuntimeError(
                f"the job's store (rank 0 serves it) went away before every rank arrived ({cause})"
            ) from None
        raise RuntimeError(
            f"{world_size - arrived} of {world_size} ranks had not arrived within {timeout_s:g} s ({cause})"
        ) from None
    if store.add(f"{name}/left", 1) == world_size:
        store.set(f"{name}/gone", "1")
    if rank == 0:
        try:
            store.wait([f"{name}/gone"], datetime.timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
        except RuntimeError:
            raise RuntimeError(f"not every rank saw the barrier pass within {timeout_s:g} s") from None


def _device_index(backend: Backend, local_rank: int) -> int:
    """The torch index of this rank's device. The launcher gives each rank one device through
    the visible-devices variable, which the process then sees as index 0; without the variable
    (or with several devices in it) the rank's local rank picks the device."""
    var = backend.visible_vars.process
    visible = parse_visible_devices(os.environ.get(var)) if var else None
    if visible is not None and len(visible) == 1:
        return 0
    return local_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
