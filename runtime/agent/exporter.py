"""The device metrics exporter: HAL backends -> Prometheus exposition (``xpod exporter``, agents).

Metric names, types and base units follow research/ecosystem.md section 1.4 with the prefix
``xpod_`` (see README "Metrics and dashboards" for the full table). Contracts:

* Every scrape reads the backends afresh (``Backend.devices()`` and ``Backend.metrics()``); no
  value is cached, so a series never outlives its device and nothing carries an explicit
  timestamp (Prometheus stamps the scrape, and stale series are marked stale normally).
* A gauge a backend does not report (``None`` in its ``MetricsSample``) is not emitted: no fake
  zeros. ``xpod_device_info``, ``xpod_device_health`` and ``xpod_device_health_state`` are
  emitted for every device.
* Device series carry hardware labels only: ``node, device, package, vendor, model, uuid,
  simulated``. Jobs are joined through ``xpod_device_allocation_info{node,device,job_id,queue,kind}``
  (value 1, present only while the device is allocated), fed by ``DeviceCollector.set_allocations``.
* **One series per scheduler device.** ``device`` counts what the scheduler counts: a package
  whose dies are scheduled apart (the catalog's ``schedulable_unit: die``: Ascend 910C) is two
  devices, numbered one after the other, exactly as ``runtime.agent.discover_devices``
  registers them; ``package`` is the package's index on the node (equal to ``device`` for a
  one-unit device). A package-level reading is given to each of its dies as the tool reports
  it for the package (utilisation, temperature, power, energy, clocks, links, health: aggregate
  them with ``max by (node, package)``), except memory: each die has its own HBM, read from the
  tool's per-die rows where it prints them (``extra["die_memory_bytes"]``), else the package's
  reading split evenly. A source's devices start at its
  ``index_offset`` (``host_sources`` lays the backends of one host out one after another, real
  backends first).
* A backend that raises while being read drops only its own device series for that scrape;
  ``xpod_exporter_collector_success{node,backend}`` goes to 0 and the others are unaffected.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from xpod import __version__
from xpod.hal.backend import Backend
from xpod.hal.device import DeviceInfo, Health, MetricsSample
from xpod.hal.errors import XpodError

log = logging.getLogger(__name__)

#: Default listen address of ``xpod exporter`` (loopback: exposing it is a deliberate choice).
DEFAULT_LISTEN = "127.0.0.1:9478"
#: Label names of every per-device series, in order.
DEVICE_LABELS = ("node", "device", "package", "vendor", "model", "uuid", "simulated")
#: Job kinds an allocation may name (the scheduler's JobKind values).
ALLOCATION_KINDS = ("training", "serving", "batch")


@dataclasses.dataclass(frozen=True)
class DeviceSource:
    """One backend's devices as they appear on one node."""

    backend: Backend
    node: str  # the node label: hostname for real devices, the descriptor's node for a simulated one
    index_offset: int = 0  # node-level index of the source's first scheduler device (die on 910C)
    package_offset: int | None = None  # node-level index of its first package (None: index_offset)


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Who holds a device: one ``xpod_device_allocation_info`` series."""

    job_id: str
    queue: str
    kind: str  # training | serving | batch

    def __post_init__(self) -> None:
        if not self.job_id:
            raise XpodError("allocation: job_id is empty; give the scheduler's job id")
        if not self.queue:
            raise XpodError(f"allocation of job {self.job_id!r}: queue is empty")
        if self.kind not in ALLOCATION_KINDS:
            raise XpodError(
                f"allocation of job {self.job_id!r}: kind {self.kind!r} is not one of {', '.join(ALLOCATION_KINDS)}"
            )


def host_sources(backends: Sequence[Backend], node: str | None = None) -> list[DeviceSource]:
    """The backends of one host as sources on node ``node`` (default: this hostname), each
    backend's devices numbered after the previous backend's, real backends before simulated
    ones so that adding simulated devices never renumbers real ones."""
    node = node or socket.gethostname()
    out: list[DeviceSource] = []
    offset = packages = 0
    for b in sorted(backends, key=lambda b: b.simulated):  # stable: registry order within each group
        devices = b.devices()
        out.append(DeviceSource(b, node, offset, packages))
        offset += sum(units_of(d) for d in devices)
        packages += len(devices)
    return out


def units_of(d: DeviceInfo) -> int:
    """Scheduler devices in one HAL device: its dies when the catalog schedules dies apart
    (Ascend 910C), else 1. The agent registers and the exporter labels the same units."""
    if d.dies <= 1 or not d.model:
        return 1
    from xpod.hal.catalog import match_model

    model = match_model(d.model)
    return 1 if model is None else max(1, min(d.dies, model.units_per_package))


def _fmt_bool(value: bool) -> str:
    return "true" if value else "false"


class DeviceCollector:
    """A prometheus_client custom collector over device sources (see the module docstring).

    Thread-safe: ``set_allocations`` may be called from the agent's threads while the HTTP
    server's thread scrapes.
    """

    def __init__(self, sources: Sequence[DeviceSource]) -> None:
        seen: set[tuple[str, str]] = set()
        for s in sources:
            key = (s.node, s.backend.name)
            if key in seen:
                raise XpodError(f"exporter: backend {s.backend.name!r} is given twice for node {s.node!r}")
            seen.add(key)
            if s.index_offset < 0:
                raise XpodError(f"exporter: index_offset {s.index_offset} of {key} must be >= 0")
        self._sources = tuple(sources)
        self._lock = threading.Lock()
        self._allocations: dict[tuple[str, str], Allocation] = {}
        # Counters live across scrapes: failures of each (node, backend) read so far.
        self._errors: dict[tuple[str, str], int] = {}

    @property
    def sources(self) -> tuple[DeviceSource, ...]:
        return self._sources

    def set_allocations(self, allocations: Mapping[tuple[str, int | str], Allocation]) -> None:
        """Replace the allocation map: ``(node, device index) -> Allocation``. Idempotent; an
        empty map removes every ``xpod_device_allocation_info`` series."""
        new: dict[tuple[str, str], Allocation] = {}
        for (node, device), alloc in allocations.items():
            if not isinstance(alloc, Allocation):
                raise TypeError(f"allocation for {(node, device)} is {type(alloc).__name__}, not Allocation")
            new[(str(node), str(device))] = alloc
        with self._lock:
            self._allocations = new

    def describe(self) -> Iterable[Metric]:
        # Registering must not read the hardware; an empty describe() makes the registry skip
        # its duplicate-name check for this collector, which is what custom collectors do.
        return []

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily(
            "xpod_build_info", "xpod build that serves these metrics (value 1).", labels=["version", "python_version"]
        )
        build.add_metric([__version__, platform.python_version()], 1)

        info = GaugeMetricFamily(
            "xpod_device_info",
            "One series per device, value 1; hardware facts as labels (join on node, device).",
            labels=[
                "node",
                "device",
                "package",
                "vendor",
                "model",
                "uuid",
                "pci_bus_id",
                "simulated",
                "backend",
                "name",
            ],
        )
        count = GaugeMetricFamily(
            "xpod_devices", "Devices found on the node, by vendor.", labels=["node", "vendor", "simulated"]
        )
        mem_used = GaugeMetricFamily(
            "xpod_device_memory_used_bytes", "Device memory in use, bytes.", labels=list(DEVICE_LABELS)
        )
        mem_total = GaugeMetricFamily(
            "xpod_device_memory_total_bytes", "Device memory capacity, bytes.", labels=list(DEVICE_LABELS)
        )
        util = GaugeMetricFamily(
            "xpod_device_utilization_ratio", "Device busy fraction, 0 to 1.", labels=list(DEVICE_LABELS)
        )
        temp = GaugeMetricFamily(
            "xpod_device_temperature_celsius", "Device temperature, degrees Celsius.", labels=list(DEVICE_LABELS)
        )
        power = GaugeMetricFamily("xpod_device_power_watts", "Device power draw, watts.", labels=list(DEVICE_LABELS))
        health = GaugeMetricFamily(
            "xpod_device_health",
            "1 when the device may take new work (health ok, warning or unknown), 0 when alarm or critical.",
            labels=list(DEVICE_LABELS),
        )
        health_state = GaugeMetricFamily(
            "xpod_device_health_state",
            "Device health on the four-level scale plus unknown: 1 for the current state, 0 for the others.",
            labels=[*DEVICE_LABELS, "state"],
        )
        energy = CounterMetricFamily(
            "xpod_device_energy_joules",
            "Energy the device used since its driver loaded, joules (only where the tool reports it; a package's on each die).",
            labels=list(DEVICE_LABELS),
        )
        clock = GaugeMetricFamily(
            "xpod_device_clock_hertz",
            "Current clock, hertz: core = SM (NVIDIA) / AI core (Ascend), memory = device memory (only where reported).",
            labels=[*DEVICE_LABELS, "clock"],
        )
        link_up = GaugeMetricFamily(
            "xpod_link_up",
            "1 when the device's link is up, 0 when down (only where the tool reports link states).",
            labels=[*DEVICE_LABELS, "fabric", "link"],
        )
        errors = CounterMetricFamily(
            "xpod_device_errors",
            "Device errors reported by the backend since the driver started, by type.",
            labels=[*DEVICE_LABELS, "type"],
        )
        alloc_info = GaugeMetricFamily(
            "xpod_device_allocation_info",
            "Value 1 while a job holds the device; join with * on(node, device) group_left(job_id, queue, kind).",
            labels=["node", "device", "job_id", "queue", "kind"],
        )
        success = GaugeMetricFamily(
            "xpod_exporter_collector_success",
            "1 when the last read of this backend succeeded, 0 when it raised.",
            labels=["node", "backend"],
        )
        duration = GaugeMetricFamily(
            "xpod_exporter_collector_duration_seconds",
            "Time the last read of this backend took, seconds.",
            labels=["node", "backend"],
        )
        failures = CounterMetricFamily(
            "xpod_exporter_collector_errors",
            "Reads of this backend that raised, since the exporter started.",
            labels=["node", "backend"],
        )

        per_vendor: dict[tuple[str, str, str], int] = {}
        taken: set[tuple[str, str]] = set()  # (node, device) labels already emitted
        for src in self._sources:
            key = (src.node, src.backend.name)
            started = time.monotonic()
            try:
                devices = src.backend.devices()
                samples = {s.index: s for s in src.backend.metrics()}
                n_units = sum(units_of(d) for d in devices)
                mine = {(src.node, str(src.index_offset + k)) for k in range(n_units)}
                if mine & taken:
                    # Two series with one identity would make Prometheus reject the whole scrape.
                    clash = sorted(mine & taken, key=lambda k: int(k[1]))[0]
                    raise ValueError(
                        f"device {clash[1]} on node {clash[0]} is also another backend's; fix index_offset"
                    )
                taken |= mine
            except Exception as err:  # one broken backend must not empty the whole scrape
                with self._lock:
                    self._errors[key] = self._errors.get(key, 0) + 1
                log.warning(
                    "exporter: reading backend %s on %s failed: %s: %s", key[1], key[0], type(err).__name__, err
                )
                success.add_metric(list(key), 0)
                duration.add_metric(list(key), time.monotonic() - started)
                continue
            success.add_metric(list(key), 1)
            duration.add_metric(list(key), time.monotonic() - started)
            unit = src.index_offset
            package = src.index_offset if src.package_offset is None else src.package_offset
            for d in sorted(devices, key=lambda d: d.index):
                sample = samples.get(d.index)
                units = units_of(d)
                sim = _fmt_bool(d.simulated)
                vkey = (src.node, d.vendor, sim)
                per_vendor[vkey] = per_vendor.get(vkey, 0) + units
                # The sample is the fresher reading; devices() fills what a backend's
                # metrics() leaves out.
                used = _first(sample and sample.memory_used_bytes, d.memory_used_bytes)
                total = _first(sample and sample.memory_total_bytes, d.memory_total_bytes)
                h = _health_of(sample, d)
                # per-die memory where the tool printed each die's row (npu-smi on A3), else an even split
                die_memory = d.extra.get("die_memory_bytes") if units > 1 else None
                if not (isinstance(die_memory, list) and len(die_memory) == units):
                    die_memory = None
                for die in range(units):
                    labels = [src.node, str(unit), str(package), d.vendor, d.model, d.uuid or "", sim]
                    unit += 1
                    info.add_metric([*labels[:6], d.pci_bus_id or "", sim, src.backend.name, d.name or ""], 1)
                    if die_memory is not None:
                        mem_used.add_metric(labels, die_memory[die][0])
                        mem_total.add_metric(labels, die_memory[die][1])
                    else:
                        if used is not None:
                            mem_used.add_metric(labels, used // units)
                        if total is not None:
                            mem_total.add_metric(labels, total // units)
                    if sample is not None:
                        _add_optional(util, labels, sample.utilization_ratio)
                        _add_optional(temp, labels, sample.temperature_celsius)
                        _add_optional(power, labels, sample.power_watts)
                        if sample.energy_joules_total is not None:
                            energy.add_metric(labels, float(sample.energy_joules_total))
                        if sample.core_clock_hertz is not None:
                            clock.add_metric([*labels, "core"], float(sample.core_clock_hertz))
                        if sample.memory_clock_hertz is not None:
                            clock.add_metric([*labels, "memory"], float(sample.memory_clock_hertz))
                        for link in sample.links:
                            link_up.add_metric([*labels, link.fabric, link.link], 1 if link.up else 0)
                        if sample.ecc_errors_total is not None:
                            errors.add_metric([*labels, "ecc"], sample.ecc_errors_total)
                    health.add_metric(labels, 1 if h.schedulable else 0)
                    for state in Health:
                        health_state.add_metric([*labels, state.value], 1 if state is h else 0)
                package += 1

        for (node, vendor, sim), n in sorted(per_vendor.items()):
            count.add_metric([node, vendor, sim], n)
        with self._lock:
            allocations = sorted(self._allocations.items())
            error_counts = dict(self._errors)
        for (node, device), a in allocations:
            alloc_info.add_metric([node, device, a.job_id, a.queue, a.kind], 1)
        for src in self._sources:
            key = (src.node, src.backend.name)
            failures.add_metric(list(key), error_counts.get(key, 0))

        families = (
            build,
            info,
            count,
            mem_used,
            mem_total,
            util,
            temp,
            power,
            energy,
            clock,
            link_up,
            health,
            health_state,
            errors,
            alloc_info,
            success,
            duration,
            failures,
        )
        # A family no device reports is left out whole (no HELP/TYPE without samples).
        yield from (f for f in families if f.samples)


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


def _add_optional(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, float(value))


def _health_of(sample: MetricsSample | None, d: DeviceInfo) -> Health:
    # A sample's UNKNOWN is "this reading had no health", not a verdict: keep the device's.
    if sample is not None and sample.health is not Health.UNKNOWN:
        return sample.health
    return d.health


def build_registry(collector: DeviceCollector) -> CollectorRegistry:
    """A private registry holding only ``collector`` (no process/platform collectors: the
    agent's process metrics are not device metrics, and tests run several in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """``"127.0.0.1:9478"`` / ``"[::1]:9478"`` / ``":9478"`` (loopback) -> (host, port).
    Raises ``XpodError`` naming ``flag`` and the value."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise XpodError(f"{flag} {value!r}: expected HOST:PORT with a port 0..65535 (e.g. {DEFAULT_LISTEN})")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def check_bindable(listen: str, flag: str = "--listen") -> None:
    """Fail fast, before the backends are probed (seconds: vendor probes import torch), when
    ``listen`` cannot be bound. ``serve`` still reports a port taken in between."""
    host, port = parse_listen(listen, flag)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As the HTTP server will: a port in TIME_WAIT is fine, one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise XpodError(
                f"{flag} {listen}: cannot listen: {err.strerror or err}; give an address of this host and a free port"
            ) from None


@dataclasses.dataclass
class ExporterServer:
    """A running /metrics HTTP endpoint; ``close()`` stops it (idempotent)."""

    host: str
    port: int  # the bound port (the real one when 0 was asked for)
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        server = self._server
        if server is not None:
            self._server = None
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            self._thread.join(timeout=5)


def serve(collector: DeviceCollector, listen: str = DEFAULT_LISTEN, flag: str = "--listen") -> ExporterServer:
    """Serve ``collector`` on ``listen`` (HOST:PORT; port 0 picks a free one) in a daemon
    thread. Raises ``XpodError`` when the address cannot be bound."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen, flag)
    try:
        server, thread = start_http_server(port, addr=host, registry=build_registry(collector))
    except OSError as err:
        raise XpodError(
            f"{flag} {listen}: cannot listen: {err.strerror or err}; give an address of this host and a free port"
        ) from None
    return ExporterServer(host, server.server_port, server, thread)
