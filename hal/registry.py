"""Backend discovery through the ``xpod.backends`` entry-point group.

Each probe runs in a worker thread with a time bound, with ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``
set so that a broken vendor extension (torch_npu without CANN) cannot break ``import torch``
for everyone. A probe that raises, hangs or returns a reason yields an unavailable
``BackendStatus``; it never stops discovery of the others.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from importlib.metadata import entry_points

from .backend import Backend
from .errors import BackendRegistrationError, BackendUnavailable

GROUP = "xpod.backends"
#: seconds a probe may take before it is reported as hung
PROBE_TIMEOUT_S = float(os.environ.get("XPOD_PROBE_TIMEOUT_S", "10"))


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """The outcome of probing one backend."""

    name: str
    backend: Backend | None  # None when unavailable
    reason: str  # why unavailable, or a one-line description when available
    probe_seconds: float

    @property
    def available(self) -> bool:
        return self.backend is not None


def _guard_torch_autoload() -> None:
    # torch >= 2.5 auto-imports device extensions listed in `torch.backends` entry points;
    # torch_npu without CANN then makes `import torch` raise. Discovery imports vendor
    # modules explicitly, through each backend's _sdk.py, so autoload is never needed here.
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")


def entry_point_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def _run_probe(name: str, ep) -> tuple[Backend | None, str]:
    probe = ep.load()
    result = probe()
    if isinstance(result, Backend):
        if result.name != name:
            raise BackendRegistrationError(
                f"entry point {name!r} returned backend named {result.name!r}; the names must match"
            )
        return result, "available"
    if isinstance(result, str) and result:
        return None, result
    raise BackendRegistrationError(
        f"probe for backend {name!r} ({ep.value}) returned {type(result).__name__}; "
        "it must return a Backend or a non-empty reason string"
    )


def probe_all(names: list[str] | None = None, timeout_s: float | None = None) -> list[BackendStatus]:
    """Probe every registered backend (or those in ``names``), in parallel, each bounded.

    Probes run in daemon threads: a probe stuck in a driver call cannot be killed, and it
    must not keep the process (``xpod doctor``) alive after the others are reported.
    """
    _guard_torch_autoload()
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    wanted = sorted(eps) if names is None else names
    unknown = [n for n in wanted if n not in eps]
    if unknown:
        raise BackendUnavailable(unknown[0], f"no such backend; registered: {', '.join(sorted(eps))}")
    started = time.monotonic()
    results: dict[str, tuple[Backend | None, str]] = {}
    threads = {}
    for n in wanted:
        t = threading.Thread(target=_probe_into, args=(n, eps[n], results), name=f"xpod-probe-{n}", daemon=True)
        t.start()
        threads[n] = t
    out: list[BackendStatus] = []
    for n in wanted:
        threads[n].join(max(0.0, timeout_s - (time.monotonic() - started)))
        backend, reason = results.get(n, (None, f"probe did not finish within {timeout_s:g} s (hung driver or tool?)"))
        out.append(BackendStatus(n, backend, reason, time.monotonic() - started))
    return out


def _probe_into(name: str, ep, results: dict) -> None:
    try:
        results[name] = _run_probe(name, ep)
    except BackendUnavailable as err:
        results[name] = (None, err.reason)
    except Exception as err:  # a broken plugin must not break discovery of the others
        results[name] = (None, f"probe raised {type(err).__name__}: {err}".splitlines()[0])


def available_backends(include_simulated: bool = False) -> list[Backend]:
    """Backends usable on this host. The simulated backend is left out unless asked for."""
    return [s.backend for s in probe_all() if s.backend is not None and (include_simulated or not s.backend.simulated)]


def get_backend(name: str) -> Backend:
    """The named backend, or ``BackendUnavailable`` with the probe's reason."""
    (status,) = probe_all([name])
    if status.backend is None:
        raise BackendUnavailable(name, status.reason)
    return status.backend


@functools.lru_cache(maxsize=1)
def device_env_vars() -> frozenset[str]:
    """Every visible-devices variable of every registered backend (process and container level,
    from each backend class's ``visible_vars``): the variables that decide which devices a
    process sees, so only xpod may set them for a task. Reads the backend modules' classes; runs
    no probe. A backend module that cannot be imported contributes nothing."""
    import sys

    names: set[str] = set()
    for ep in entry_points(group=GROUP):
        try:
            module = sys.modules[ep.load().__module__]  # the probe's module: its Backend classes
        except Exception:  # a broken plugin must not break job admission
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Backend):
                names.update(v for v in (value.visible_vars.process, value.visible_vars.container) if v)
    return frozenset(names)
