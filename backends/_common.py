"""What the five accelerator backends share, with no vendor knowledge and no vendor SDK.

Each accelerator backend reads its devices from one of two sources, chosen by its probe:
its torch extension (``torch_npu``, ``torch_mlu``, ...) or its management tool (``npu-smi``,
``cnmon``, ...). ``ToolBackend`` holds the logic that does not depend on the vendor: turning
the tool's physical listing into logical indices through the process visible-devices
variable, merging torch's view with the tool's, and building a ``DeviceInfo`` from torch's
properties. Vendor facts (names, variables, parsers) stay in ``backends/<vendor>/``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

from xpod.hal.backend import Backend, IntraNodeTopology, Link, parse_visible_devices
from xpod.hal.device import DeviceInfo, Health, MetricsSample
from xpod.hal.errors import BackendUnavailable, ToolOutputError, XpodError
from xpod.hal.smi import ToolRunError


def resolve_model(vendor: str, raw_name: str | None, prefix: str) -> str | None:
    """The catalog id for a tool's product name, else ``<prefix>-<slug of the name>``.

    ``vendor`` is the backend id the catalog must agree with (a name that matches another
    vendor's model is not trusted). ``None`` when the source printed no name at all.
    """
    if not raw_name or not raw_name.strip():
        return None
    try:
        from xpod.hal.catalog import match_model
    except ImportError:  # the catalog is optional for parsing
        match_model = None  # type: ignore[assignment]
    if match_model is not None:
        try:
            found = match_model(raw_name)
        except XpodError:  # an invalid catalog.yaml is reported where it is loaded; parse on
            found = None
        if found is not None and found.vendor == vendor:
            return found.id
    slug = re.sub(r"[^0-9a-z]+", "-", raw_name.strip().lower()).strip("-")
    if slug.startswith(prefix + "-"):
        slug = slug[len(prefix) + 1 :]
    return f"{prefix}-{slug}"


@dataclasses.dataclass(frozen=True)
class TorchDevice:
    """One device as the vendor's torch extension reports it (logical index order)."""

    name: str | None
    memory_total_bytes: int | None
    memory_used_bytes: int | None = None


def import_failure(module: str, err: BaseException, hint: str) -> str:
    """The reason a vendor's torch extension did not import, in one line. ``hint`` says what
    the vendor's runtime needs (``"is CANN installed and set_env.sh sourced?"``)."""
    if isinstance(err, ModuleNotFoundError):
        if err.name in (module, "torch"):
            return f"{module} is not installed"
        return f"{module} failed to import: missing module {err.name!r} ({hint})"
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{module} failed to import: {type(err).__name__}: {first[:200]} ({hint})"


def torch_failure(err: BaseException) -> str:
    """The reason ``import torch`` itself failed (a broken install, a bad extension autoload)."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"torch failed to import: {first[:200]}"


def devices_of(namespace) -> list[TorchDevice]:
    """Every device a torch device namespace (``torch.npu``, ``torch.mlu``, ``torch.cuda``, ...)
    lists, in logical index order, with the name and total memory its properties give."""
    out = []
    for i in range(namespace.device_count()):
        props = namespace.get_device_properties(i)
        out.append(
            TorchDevice(name=getattr(props, "name", None), memory_total_bytes=getattr(props, "total_memory", None))
        )
    return out


def select_visible(devices: Sequence[DeviceInfo], variable: str | None, environ=None) -> list[DeviceInfo]:
    """Apply a process visible-devices variable to a management tool's listing.

    The tool lists every device on the host (its indices ignore the variable, hal.md P1/P2).
    When the listing gives each device's runtime logical ids (``extra["logical_ids"]``, one per
    die: npu-smi), the variable's ids are matched against those, so on a 910C host
    ``ASCEND_RT_VISIBLE_DEVICES=2,3`` selects NPU 1 (both dies) and ``=2`` one die of it.
    Otherwise the ids are ordinals into the listing (the k-th listed device is id k, also when
    the tool numbers from 4). Result: the selected devices in the variable's order, with
    logical ``index`` = position, which is how torch numbers them. Unset: every device.
    """
    env = os.environ if environ is None else environ
    ids = parse_visible_devices(env.get(variable)) if variable else None
    if ids is None:
        return [dataclasses.replace(d, index=k) for k, d in enumerate(devices)]
    by_logical: dict[int, tuple[int, int]] = {}
    for pos, d in enumerate(devices):
        for die, lid in enumerate(d.extra.get("logical_ids") or ()):
            by_logical[lid] = (pos, die)
    picked: dict[int, list[int]] = {}  # listing position -> selected die positions, in order
    for ordinal in ids:
        if by_logical:
            if ordinal not in by_logical:
                break  # the runtimes stop at the first id that does not exist
            pos, die = by_logical[ordinal]
        else:
            if ordinal >= len(devices):
                break
            pos, die = ordinal, None
        picked.setdefault(pos, [])
        if die is not None:
            picked[pos].append(die)
    out = []
    for k, (pos, dies) in enumerate(picked.items()):
        d = devices[pos]
        if dies and len(dies) < d.dies:
            # Part of a multi-die package: report the selected dies only.
            mem = d.extra.get("die_memory_bytes")
            used = sum(mem[i][0] for i in dies) if mem else None
            total = sum(mem[i][1] for i in dies) if mem else None
            extra = dict(d.extra, logical_ids=[d.extra["logical_ids"][i] for i in dies])
            d = dataclasses.replace(d, dies=len(dies), memory_used_bytes=used, memory_total_bytes=total, extra=extra)
        out.append(dataclasses.replace(d, index=k))
    return out


def merge_with_torch(tool_devices: list[DeviceInfo], torch_devices: list[TorchDevice]) -> list[DeviceInfo]:
    """Torch's logical devices, enriched with the tool's health, bus id and UUID when the two
    agree on the count (the tool listing already filtered by ``select_visible``). When torch
    counts dies and the tool packages (910C: 16 torch devices, 8 NPU ids of 2 dies), the
    tool's package listing is kept. An empty list means they disagree."""
    if len(tool_devices) != len(torch_devices):
        if sum(d.dies for d in tool_devices) == len(torch_devices):
            return [dataclasses.replace(d, index=k) for k, d in enumerate(tool_devices)]
        return []
    out = []
    for k, (d, t) in enumerate(zip(tool_devices, torch_devices)):
        out.append(
            dataclasses.replace(
                d,
                index=k,
                memory_total_bytes=d.memory_total_bytes or t.memory_total_bytes,
                memory_used_bytes=d.memory_used_bytes if d.memory_used_bytes is not None else t.memory_used_bytes,
            )
        )
    return out


def devices_from_torch(
    vendor: str, prefix: str, torch_devices: list[TorchDevice], dies: Callable[[str | None], int]
) -> list[DeviceInfo]:
    """``DeviceInfo`` for each torch device when no tool output is available: health is
    ``UNKNOWN`` (torch has no health reading) and the physical index is not known, so it is
    the logical one."""
    return [
        DeviceInfo(
            vendor=vendor,
            model=resolve_model(vendor, t.name, prefix),  # type: ignore[arg-type]
            name=t.name,
            index=k,
            physical_index=k,
            memory_total_bytes=t.memory_total_bytes,
            memory_used_bytes=t.memory_used_bytes,
            health=Health.UNKNOWN,
            dies=dies(t.name),
            extra={"source": "torch"},
        )
        for k, t in enumerate(torch_devices)
    ]


def topology_from_physical(devices: Sequence[DeviceInfo], physical: IntraNodeTopology | None) -> IntraNodeTopology:
    """Re-index a topology read from the tool (by physical ordinal) onto logical indices."""
    idx = tuple(d.index for d in devices)
    if physical is None:
        links = tuple(tuple(Link.SELF if a == b else Link.UNKNOWN for b in idx) for a in idx)
        return IntraNodeTopology(indices=idx, links=links)
    rows = []
    for a in devices:
        row = []
        for b in devices:
            if a.index == b.index:
                row.append(Link.SELF)
            elif a.physical_index in physical.indices and b.physical_index in physical.indices:
                row.append(physical.link(a.physical_index, b.physical_index))
            else:
                row.append(Link.UNKNOWN)
        rows.append(tuple(row))
    return IntraNodeTopology(indices=idx, links=tuple(rows), fabric_name=physical.fabric_name)


def join_reasons(parts: Sequence[str]) -> str:
    """``["torch_npu is not installed", "npu-smi is not on PATH"]`` ->
    ``"torch_npu is not installed and npu-smi is not on PATH"``; later parts after ``; ``."""
    parts = [p for p in parts if p]
    if not parts:
        return "no reason recorded"
    if len(parts) == 1:
        return parts[0]
    return f"{parts[0]} and {parts[1]}" + "".join(f"; {p}" for p in parts[2:])


class ToolBackend(Backend):
    """An accelerator backend whose devices come from its torch extension or its tool.

    Subclasses set the vendor class attributes, ``sdk`` (their ``_sdk`` module) and
    implement ``read_tool_devices()`` (run the tool, parse its full physical listing; may
    raise ``ToolRunError`` / ``ToolOutputError``). ``source`` is what the probe found usable:
    ``"torch"`` (the extension sees devices) or ``"tool"`` (only the management tool does).
    """

    #: model-id prefix for names the catalog does not know ("ascend", "nvidia", ...)
    model_prefix: str = ""
    #: the vendor's _sdk module: MODULE, TOOL, DEVICE_GLOB, import_extension(),
    #: torch_device_count(module), torch_devices(), tool_path(), device_nodes()
    sdk = None

    def __init__(self, source: str) -> None:
        if source not in ("torch", "tool"):
            raise ValueError(f"source must be 'torch' or 'tool', got {source!r}")
        self.source = source

    def load_torch_extension(self) -> None:
        """Import the vendor's torch extension through ``sdk.import_extension()`` (the seam)."""
        module, reason = self.sdk.import_extension()
        if module is None:
            raise BackendUnavailable(self.name, reason)

    # -- hooks -----------------------------------------------------------------------------
    def read_tool_devices(self) -> list[DeviceInfo]:
        """Run the tool and parse its listing (physical order)."""
        raise NotImplementedError

    def read_tool_topology(self) -> IntraNodeTopology | None:
        """The tool's link matrix by physical index, or None where the vendor has no text form."""
        return None

    def _dies(self, name: str | None) -> int:
        return 1

    # -- contract --------------------------------------------------------------------------
    def _tool_devices(self) -> list[DeviceInfo] | None:
        if self.sdk.tool_path() is None:
            if self.source == "tool":
                raise BackendUnavailable(self.name, f"{self.sdk.TOOL} is no longer on PATH")
            return None
        try:
            return self.read_tool_devices()
        except (ToolRunError, ToolOutputError) as err:
            if self.source == "tool":
                raise BackendUnavailable(self.name, str(err)) from None
            return None  # torch still sees the devices; the tool only adds health

    def devices(self) -> list[DeviceInfo]:
        tool = self._tool_devices()
        visible = select_visible(tool, self.visible_vars.process) if tool is not None else None
        if self.source == "tool":
            return visible or []
        torch_devs = self.sdk.torch_devices()
        if visible:
            merged = merge_with_torch(visible, torch_devs)
            if merged:
                return merged
        return devices_from_torch(self.name, self.model_prefix, torch_devs, self._dies)

    def metrics(self) -> list[MetricsSample]:
        """Memory and health as ``devices()``, plus the gauges the tool's listing printed
        (``DeviceInfo.extra["gauges"]``, filled by the vendor's parser; none are invented)."""
        return [sample_from_device(d) for d in self.devices()]

    def visible_env(self, indices: Sequence[int]) -> dict[str, str]:
        """As ``Backend.visible_env``, but a package of several dies (910C) names the runtime
        logical id of each of its dies: devices 0 and 1 of an A3 node -> ``"0,1,2,3"``. Where
        the devices cannot be read, the indices are used as they are."""
        env = super().visible_env(indices)
        if not env or not indices:
            return env
        try:
            listed = {d.index: d for d in self.devices()}
        except XpodError:
            return env
        ids: list[int] = []
        for i in indices:
            if i not in listed:
                raise ValueError(f"no {self.name} device with index {i} on this host (have {sorted(listed)})")
            ids.extend(listed[i].extra.get("logical_ids") or [i])
        return {self.visible_vars.process: ",".join(str(i) for i in sorted(ids))}  # type: ignore[dict-item]

    def topology(self) -> IntraNodeTopology:
        physical = None
        if self.sdk.tool_path() is not None:
            try:
                physical = self.read_tool_topology()
            except (ToolRunError, ToolOutputError):
                physical = None  # links stay UNKNOWN rather than failing the heartbeat
        return topology_from_physical(self.devices(), physical)


#: ``MetricsSample`` fields a parser may put in ``DeviceInfo.extra["gauges"]`` (base units)
GAUGE_FIELDS = (
    "utilization_ratio",
    "temperature_celsius",
    "power_watts",
    "core_clock_hertz",
    "memory_clock_hertz",
    "energy_joules_total",
)


def sample_from_device(d: DeviceInfo, links: tuple = ()) -> MetricsSample:
    """One ``MetricsSample`` from a parsed device: memory, health and its ``extra["gauges"]``."""
    gauges = d.extra.get("gauges") or {}
    return MetricsSample(
        index=d.index,
        memory_used_bytes=d.memory_used_bytes,
        memory_total_bytes=d.memory_total_bytes,
        health=d.health,
        links=tuple(links),
        **{k: float(gauges[k]) for k in GAUGE_FIELDS if gauges.get(k) is not None},
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def probe_tool_backend(cls: type[ToolBackend]) -> ToolBackend | str:
    """The shared probe: the torch extension first, then the management tool; otherwise a
    reason naming what was checked (extension, tool, device nodes), e.g. ``"torch_npu is not
    installed and npu-smi is not on PATH; no /dev/davinci* device nodes"``."""
    sdk = cls.sdk
    module, ext_reason = sdk.import_extension()
    if module is not None:
        try:
            count = sdk.torch_device_count(module)
        except Exception as err:  # the extension imported but its runtime is broken
            ext_reason = f"{sdk.MODULE} imported but device_count() raised {_first_line(err)}"
        else:
            if count > 0:
                return cls("torch")
            ext_reason = f"{sdk.MODULE} is importable but sees 0 devices"
    if sdk.tool_path() is None:
        tool_reason = getattr(sdk, "TOOL_MISSING", f"{sdk.TOOL} is not on PATH")
    else:
        try:
            listed = cls("tool").read_tool_devices()
        except ToolRunError as err:
            tool_reason = str(err)
        except ToolOutputError as err:
            tool_reason = f"{sdk.TOOL} output could not be read ({err})"
        else:
            if listed:
                return cls("tool")
            tool_reason = f"{sdk.TOOL} lists no devices"
    nodes = sdk.device_nodes()
    what = getattr(sdk, "NODES_WHAT", f"{sdk.DEVICE_GLOB} device nodes")
    node_reason = (
        f"no {what}" if not nodes else f"{len(nodes)} {what} present (hardware is there; fix the SDK or tool above)"
    )
    return join_reasons([ext_reason, tool_reason]) + f"; {node_reason}"
