"""Start a job's local processes: the launcher behind ``xpod run`` (and the node agent).

``launch()`` takes a command, the number of processes, the backend and the devices, and returns
a ``LaunchedGroup`` of process handles. Every process gets the vendor's visible-devices variable
for its device (``Backend.visible_env``), the torch.distributed rendezvous variables
(MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) and XPOD_BACKEND. Each process
leads its own session (``start_new_session``), so cancelling kills its whole process tree.
``LaunchedGroup.wait()`` streams output prefixed by rank and, when one process fails, ends the
others and returns the failing exit code.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Callable

from xpod.hal.errors import XpodError

#: seconds between SIGTERM and SIGKILL when the group is ended
TERMINATE_GRACE_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class RankProcess:
    """One launched process."""

    rank: int  # global rank
    local_rank: int
    popen: subprocess.Popen  # its own session: os.killpg(popen.pid, ...) reaches its children
    env: Mapping[str, str]  # the variables xpod set for it (not the whole inherited environment)


class LaunchedGroup:
    """The processes of one launch. ``wait`` and ``terminate`` may be called from any thread."""

    def __init__(self, procs: list[RankProcess]) -> None:
        self.procs = procs
        self._ended = threading.Event()
        self.failed_rank: int | None = None  # the first rank that exited non-zero, after wait()

    def terminate(self, grace_s: float = TERMINATE_GRACE_S, sooner: Callable[[], float | None] | None = None) -> None:
        """SIGTERM every process group still running, then SIGKILL after ``grace_s``. Idempotent.
        ``sooner``: asked while waiting, a ``time.monotonic()`` deadline that cuts the grace
        short (a cancel arriving during a preemption's long grace), or None."""
        self._ended.set()
        alive = [p for p in self.procs if p.popen.poll() is None]
        for p in alive:
            _signal_group(p.popen, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive:
            cut = sooner() if sooner is not None else None
            left_s = (deadline if cut is None else min(deadline, cut)) - time.monotonic()
            if left_s <= 0:
                for p in alive:
                    _signal_group(p.popen, signal.SIGKILL)
                    p.popen.wait()
                break
            try:  # with ``sooner``, wake every 0.1 s to ask it again
                alive[0].popen.wait(timeout=min(left_s, 0.1) if sooner is not None else left_s)
                alive.pop(0)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # children a rank left behind in its session
            _signal_group(p.popen, signal.SIGKILL)

    def wait(
        self, out: IO[str] | None = None, prefix: bool = True, on_line: Callable[[int, str], None] | None = None
    ) -> int:
        """Stream every process's output (stdout and stderr merged) to ``out`` as
        ``[rank N] line``, until all exit. The first non-zero exit ends the others; its code is
        returned (a signal -N becomes 128+N, as a shell reports it). 0 when all succeed."""
        out = sys.stdout if out is None else out
        write_lock = threading.Lock()

        def pump(p: RankProcess) -> None:
            assert p.popen.stdout is not None
            for line in p.popen.stdout:
                if on_line is not None:
                    on_line(p.rank, line)
                with write_lock:
                    out.write(f"[rank {p.rank}] {line}" if prefix else line)
                    out.flush()

        pumps = [threading.Thread(target=pump, args=(p,), daemon=True) for p in self.procs if p.popen.stdout]
        for t in pumps:
            t.start()
        first_failure: int | None = None
        failed_rank = None
        remaining = {p.rank: p for p in self.procs}
        try:
            while remaining:
                for rank, p in list(remaining.items()):
                    code = p.popen.poll()
                    if code is None:
                        continue
                    del remaining[rank]
                    if code != 0 and first_failure is None:
                        first_failure = 128 - code if code < 0 else code
                        failed_rank = rank
                        if remaining:
                            with write_lock:
                                print(
                                    f"xpod run: rank {rank} exited with code {first_failure}; ending the other {len(remaining)} rank(s)",
                                    file=sys.stderr,
                                    flush=True,
                                )
                            self.terminate()
                if remaining:
                    time.sleep(0.05)
        except KeyboardInterrupt:
            self.terminate()
            raise
        for t in pumps:
            t.join(timeout=2.0)
        self.failed_rank = failed_rank
        return first_failure or 0


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def rank_env(
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    master_addr: str,
    master_port: int,
    backend_name: str,
    visible: Mapping[str, str],
) -> dict[str, str]:
    """The variables one rank needs (rendezvous, backend, visible devices)."""
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "XPOD_BACKEND": backend_name,
        # Ranks share the host's cores; one intra-op thread each avoids oversubscription.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(visible)
    return env


def launch(
    command: Sequence[str],
    nproc: int,
    backend=None,
    devices: Sequence[int] | None = None,
    *,
    base_env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    rank_offset: int = 0,
    world_size: int | None = None,
    cwd: str | None = None,
    capture: bool = True,
) -> LaunchedGroup:
    """Start ``nproc`` processes running ``command`` on this host.

    ``backend`` (a ``hal.Backend``; None means cpu) gives the visible-devices variable and
    XPOD_BACKEND; ``devices`` are the host's logical device indices, one per local rank (default
    0..nproc-1 on an accelerator backend; ignored on cpu). ``rank_offset`` / ``world_size`` place
    these ranks in a larger multi-host job (the node agent's case). ``capture`` pipes output for
    ``LaunchedGroup.wait`` to stream; otherwise it goes to this process's stdout/stderr.
    """
    if nproc < 1:
        raise XpodError(f"--nproc must be >= 1, got {nproc}")
    world = nproc if world_size is None else world_size
    if rank_offset < 0 or rank_offset + nproc > world:
        raise XpodError(f"ranks {rank_offset}..{rank_offset + nproc - 1} do not fit in world size {world}")
    name = "cpu" if backend is None else backend.name
    if backend is not None and backend.device_type != "cpu":
        if devices is None:
            available = [d.index for d in backend.devices()]
            if len(available) < nproc:
                raise XpodError(f"--nproc {nproc} needs {nproc} {name} devices but this host has {len(available)}")
            devices = available[:nproc]
        if len(devices) != nproc:
            raise XpodError(f"{len(devices)} devices given for {nproc} processes; give one device per process")
    port = (
        free_port(master_addr if master_addr in ("127.0.0.1", "localhost") else "")
        if master_port is None
        else master_port
    )
    env0 = dict(os.environ if base_env is None else base_env)
    procs: list[RankProcess] = []
    try:
        for local in range(nproc):
            visible = {}
            if backend is not None and devices is not None and backend.device_type != "cpu":
                visible = backend.visible_env([devices[local]])
            own = rank_env(rank_offset + local, world, local, nproc, master_addr, port, name, visible)
            own.update(extra_env or {})
            popen = subprocess.Popen(
                list(command),
                env={**env0, **own},
                cwd=cwd,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.STDOUT if capture else None,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            procs.append(RankProcess(rank_offset + local, local, popen, own))
    except OSError as err:
        LaunchedGroup(procs).terminate(grace_s=1.0)
        raise XpodError(f"cannot start {command[0]!r}: {err.strerror}") from None
    return LaunchedGroup(procs)


def script_command(script: str, args: Sequence[str]) -> list[str]:
    """The command for ``xpod run SCRIPT ARGS``: a ``.py`` file runs under this Python, ``-m
    MODULE`` runs a module, anything else runs as an executable."""
    if script == "-m":
        if not args:
            raise XpodError("xpod run -m needs a module name")
        return [sys.executable, "-m", *args]
    if script.endswith(".py"):
        if not os.path.isfile(script):
            raise XpodError(f"{script}: no such script")
        return [sys.executable, script, *args]
    return [script, *args]
