"""What a device is, to every other room of xpod: ``DeviceInfo``, ``Health``, metrics samples.

These are plain frozen values. Backends build them (from a torch extension, a management
tool or psutil); the agent ships them to the scheduler; the CLI prints them.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Health(str, enum.Enum):
    """Device health on Ascend's four-level scale, which every vendor is mapped onto.

    Ascend's npu-smi reports OK / Warning / Alarm / Critical directly. Other vendors only give
    signals, mapped by their backends: an ECC row-remap pending or a retired page is
    ``WARNING``; an uncorrectable (double-bit / SRAM) ECC error or an Xid that needs a reset is
    ``CRITICAL``; a memory reading that cannot be true (used > total) is ``ALARM``. ``UNKNOWN``
    means the source gave no health signal at all (Hygon's hy-smi has no health field).
    """

    OK = "ok"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"
    UNKNOWN = "unknown"

    @property
    def schedulable(self) -> bool:
        """Whether the scheduler may place new work on a device in this state."""
        return self in (Health.OK, Health.WARNING, Health.UNKNOWN)

    @classmethod
    def parse(cls, text: str) -> "Health":
        """Map a vendor's health word (npu-smi: ``OK``, ``Warning``, ``Alarm``, ``Critical``)."""
        word = text.strip().lower()
        for member in cls:
            if member.value == word:
                return member
        if word in ("normal", "healthy", "good"):
            return cls.OK
        if word in ("general warning", "minor"):
            return cls.WARNING
        if word in ("major",):
            return cls.ALARM
        if word in ("fatal", "error", "failed"):
            return cls.CRITICAL
        return cls.UNKNOWN

    def worst(self, other: "Health") -> "Health":
        """The more severe of two states (``UNKNOWN`` loses to any real reading)."""
        order = [Health.UNKNOWN, Health.OK, Health.WARNING, Health.ALARM, Health.CRITICAL]
        return max(self, other, key=order.index)


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """One schedulable accelerator package (or the host CPU) as a backend sees it."""

    vendor: str  # backend id: ascend, cambricon, mthreads, hygon, cuda, cpu, sim
    model: str | None  # catalog model id (e.g. "ascend-910b3"); None when the source names no model
    index: int  # logical index: what torch sees once the visible-devices variable is applied
    physical_index: int  # management-tool index (npu-smi NPU id, nvidia-smi index, ...)
    uuid: str | None = None  # vendor UUID / serial / VDie ID, when the source gives one
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    health: Health = Health.UNKNOWN
    numa_node: int | None = None
    pci_bus_id: str | None = None  # canonical "0000:c1:00.0" form
    dies: int = 1  # dies per package: 2 on Ascend 910C (one NPU id, two chips)
    simulated: bool = False  # True only for the sim backend; shown everywhere the device is
    name: str | None = None  # the raw product name the source printed ("Ascend910B3", "NVIDIA H100 80GB HBM3")
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)  # vendor facts (cores, sockets, ...)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape of ``xpod devices --json`` (unknown values are null)."""
        return {
            "vendor": self.vendor,
            "model": self.model,
            "name": self.name,
            "index": self.index,
            "physical_index": self.physical_index,
            "uuid": self.uuid,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_used_bytes": self.memory_used_bytes,
            "health": self.health.value,
            "numa_node": self.numa_node,
            "pci_bus_id": self.pci_bus_id,
            "dies": self.dies,
            "simulated": self.simulated,
            "extra": dict(self.extra),
        }


@dataclasses.dataclass(frozen=True)
class LinkState:
    """One scale-up or network link of a device, as its management tool reports it."""

    fabric: str  # hccs, ub, nvlink, mlulink, mtlink, xgmi, pcie, roce (lower case)
    link: str  # the tool's link name or number on this device ("0", "hccs-3")
    up: bool  # True when the tool reports the link active / up


@dataclasses.dataclass(frozen=True)
class MetricsSample:
    """One reading of one device's gauges, in base units (None where the source has none).
    A value no source reports stays None and is never exported (no invented zeros)."""

    index: int
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_ratio: float | None = None  # 0..1
    temperature_celsius: float | None = None
    power_watts: float | None = None
    health: Health = Health.UNKNOWN
    ecc_errors_total: int | None = None
    energy_joules_total: float | None = None  # energy since the driver loaded (a counter), joules
    core_clock_hertz: float | None = None  # SM clock (NVIDIA), AI core clock (Ascend), ...
    memory_clock_hertz: float | None = None
    links: tuple[LinkState, ...] = ()  # link states, where the tool reports them
