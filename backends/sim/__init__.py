"""Simulated devices of any catalog model, for tests, benchmarks and ``xpod up``.

A ``SimBackend`` is built from ``[(model_id, count), ...]``: ``count`` packages of each model,
with memory and dies from the device catalog. Each ``DeviceInfo`` carries the model's *real*
vendor (so vendor-based scheduling sees an Ascend device as Ascend) and ``simulated=True``;
the backend itself is named ``sim``. Collectives on simulated devices run on CPU tensors with
gloo, so ``device_type`` is ``cpu``.

Health and memory use can be changed at run time (failure injection) with ``set_health`` and
``set_memory_used``; everything else is deterministic: uuids are ``SIM-<model>-<i>``.

The entry-point probe reads ``XPOD_SIM_DEVICES`` (``"ascend-910c:8,nvidia-h100-sxm:2"``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from xpod.hal.backend import Backend, Capability, IntraNodeTopology, Link, ProbeResult, VisibleDevicesVars
from xpod.hal.catalog import DeviceModel, get_model
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.errors import XpodError

ENV = "XPOD_SIM_DEVICES"
#: links whose name means a vendor scale-up fabric (anything else is PCIe)
_FABRIC_LINKS = {"HCCS", "UB", "NVLink", "MLU-Link", "MTLink", "xGMI"}


class SimBackend(Backend):
    """Simulated packages of catalog models on this host (see the module docstring)."""

    name = "sim"
    torch_module = "torch"
    device_type = "cpu"
    dist_backend = "gloo"
    # Launching on a simulated device sets this variable so a process can tell which
    # simulated devices it was given (no runtime reads it).
    visible_vars = VisibleDevicesVars("XPOD_SIM_VISIBLE_DEVICES", None)
    tools = ()
    unsupported = {
        Capability.FRACTIONAL: "simulated devices are handed out whole; slicing is not modelled",
    }
    simulated = True

    def __init__(self, models: Sequence[tuple[str, int]]) -> None:
        """``models``: ``(catalog id or alias, package count)`` pairs, in index order.
        Raises ``XpodError`` for an unknown model or a count below 1."""
        self._entries: list[tuple[DeviceModel, int]] = []
        for model_id, count in models:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise XpodError(f"simulated device count for {model_id!r} must be an integer >= 1, got {count!r}")
            self._entries.append((get_model(model_id), count))
        self._lock = threading.Lock()
        self._health: dict[int, Health] = {}
        self._used: dict[int, int] = {}
        self._models: list[DeviceModel] = [m for m, n in self._entries for _ in range(n)]

    @classmethod
    def from_spec(cls, spec: str) -> "SimBackend":
        """Build from ``"model:count,model:count"`` (the ``XPOD_SIM_DEVICES`` syntax)."""
        return cls(parse_spec(spec))

    @property
    def device_models(self) -> tuple[DeviceModel, ...]:
        """The catalog model of each device, by index."""
        return tuple(self._models)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self._models):
            raise XpodError(f"no simulated device {index}; indices are 0..{len(self._models) - 1}")

    def set_health(self, index: int, health: Health) -> None:
        """Failure injection: the device reports ``health`` from now on."""
        self._check_index(index)
        with self._lock:
            self._health[index] = Health(health)

    def set_memory_used(self, index: int, used_bytes: int) -> None:
        """Pretend ``used_bytes`` of the device's memory is in use."""
        self._check_index(index)
        total = self._models[index].memory_bytes
        if used_bytes < 0 or (total is not None and used_bytes > total):
            raise XpodError(f"memory used {used_bytes} is outside 0..{total} for simulated device {index}")
        with self._lock:
            self._used[index] = used_bytes

    def devices(self) -> list[DeviceInfo]:
        out = []
        per_model: dict[str, int] = {}
        with self._lock:
            health, used = dict(self._health), dict(self._used)
        for i, m in enumerate(self._models):
            k = per_model.get(m.id, 0)
            per_model[m.id] = k + 1
            out.append(
                DeviceInfo(
                    vendor=m.vendor,
                    model=m.id,
                    name=m.display_name,
                    index=i,
                    physical_index=i,
                    uuid=f"SIM-{m.id}-{k}",
                    memory_total_bytes=m.memory_bytes,
                    memory_used_bytes=used.get(i, 0) if m.memory_bytes is not None else None,
                    health=health.get(i, Health.OK),
                    dies=m.dies_per_package,
                    simulated=True,
                    extra={"schedulable_unit": m.schedulable_unit.value, "intra_node_link": m.intra_node_link},
                )
            )
        return out

    def topology(self) -> IntraNodeTopology:
        """Same-model devices share the model's scale-up link (FABRIC, or PCIE_SWITCH for a
        PCIe-only model); devices of different models meet through the host (PCIE_HOST)."""
        n = len(self._models)
        rows = []
        for a in range(n):
            row = []
            for b in range(n):
                ma, mb = self._models[a], self._models[b]
                if a == b:
                    row.append(Link.SELF)
                elif ma.id != mb.id:
                    row.append(Link.PCIE_HOST)
                elif ma.intra_node_link in _FABRIC_LINKS:
                    row.append(Link.FABRIC)
                else:
                    row.append(Link.PCIE_SWITCH)
            rows.append(tuple(row))
        links = {m.intra_node_link for m in self._models if m.intra_node_link}
        return IntraNodeTopology(
            indices=tuple(range(n)), links=tuple(rows), fabric_name=links.pop() if len(links) == 1 else None
        )


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """``"ascend-910c:8,nvidia-h100-sxm:2"`` -> ``[("ascend-910c", 8), ("nvidia-h100-sxm", 2)]``.
    Raises ``XpodError`` naming the bad token."""
    out = []
    tokens = [t.strip() for t in spec.split(",")]
    if not any(tokens):
        raise XpodError(f"{ENV} is empty; expected model:count,... (e.g. ascend-910c:8)")
    for token in tokens:
        model, sep, count = token.partition(":")
        if not sep or not model.strip() or not count.strip().isdigit() or int(count) < 1:
            raise XpodError(f"{ENV}: bad token {token!r}; expected model:count with count >= 1 (e.g. ascend-910c:8)")
        try:
            get_model(model.strip())
        except XpodError as err:  # name the token, keep the did-you-mean
            raise XpodError(f"{ENV}: bad token {token!r}: {err}") from None
        out.append((model.strip(), int(count)))
    return out


def probe() -> ProbeResult:
    spec = os.environ.get(ENV)
    if spec is None or not spec.strip():
        return f"no simulated devices configured (set {ENV}=model:count,...)"
    try:
        return SimBackend(parse_spec(spec))
    except XpodError as err:
        return str(err)
