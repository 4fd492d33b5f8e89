"""The device catalog: facts about each accelerator model (``hal/catalog.yaml``).

The catalog is read once, validated field by field, and cached. Everything that needs a
model's memory, compute, dies or scale-up link (cluster descriptors, the simulated backend,
the scheduler's capacity totals, tool-output parsers) asks here instead of hard-coding it.

``get_model(id_or_alias)`` raises ``XpodError`` (with a did-you-mean) for an unknown name;
``match_model(tool_name)`` is the forgiving lookup parsers use and returns ``None`` instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from .errors import XpodError

#: backend ids a catalog model may name as its vendor
VENDORS = ("ascend", "cambricon", "mthreads", "hygon", "cuda", "cpu")


class SchedulableUnit(str, enum.Enum):
    """What one scheduler device is for a model: a whole package, or each die of it."""

    PACKAGE = "package"
    DIE = "die"


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """One accelerator model. Per-package figures; ``None`` where no source confirms a value."""

    id: str  # catalog id, e.g. "ascend-910c", "nvidia-h100-sxm"
    vendor: str  # backend id: ascend, cambricon, mthreads, hygon, cuda, cpu
    display_name: str  # "Ascend 910C"
    memory_bytes: int | None  # device memory per package
    bf16_tflops: float | None  # dense BF16 (or FP16) per package, the figure we use
    dies_per_package: int  # 2 on Ascend 910C and Cambricon MLU370-X8
    schedulable_unit: SchedulableUnit  # DIE: every die is a scheduler device
    intra_node_link: str | None  # scale-up link name: HCCS, UB, NVLink, MLU-Link, MTLink, PCIe
    intra_node_bandwidth_bytes_per_s: int | None  # scale-up bandwidth per package (see notes)
    devices_per_node: int | None  # packages in a typical server
    aliases: tuple[str, ...] = ()  # names tools and product sheets print
    bf16_tflops_alt: float | None = None  # the other published figure, where sources disagree
    disputed: str | None = None  # why we chose bf16_tflops over bf16_tflops_alt
    intra_node_bandwidth_alt_bytes_per_s: int | None = None
    bandwidth_disputed: str | None = None
    notes: str | None = None
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def units_per_package(self) -> int:
        """Scheduler devices per package: the die count when dies are schedulable, else 1."""
        return self.dies_per_package if self.schedulable_unit is SchedulableUnit.DIE else 1

    @property
    def memory_bytes_per_unit(self) -> int | None:
        """Memory of one scheduler device (one die on 910C)."""
        return None if self.memory_bytes is None else self.memory_bytes // self.units_per_package

    @property
    def bf16_tflops_per_unit(self) -> float | None:
        return None if self.bf16_tflops is None else self.bf16_tflops / self.units_per_package

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["schedulable_unit"] = self.schedulable_unit.value
        out["aliases"] = list(self.aliases)
        out["sources"] = dict(self.sources)
        return out


_REQUIRED: dict[str, type] = {
    "id": str,
    "vendor": str,
    "display_name": str,
    "dies_per_package": int,
    "schedulable_unit": str,
}
_OPTIONAL_NUMBERS: dict[str, type | tuple[type, ...]] = {
    "memory_bytes": int,
    "bf16_tflops": (int, float),
    "bf16_tflops_alt": (int, float),
    "intra_node_bandwidth_bytes_per_s": int,
    "intra_node_bandwidth_alt_bytes_per_s": int,
    "devices_per_node": int,
}
_OPTIONAL_TEXT = ("intra_node_link", "disputed", "bandwidth_disputed", "notes")
_FIELDS = {f.name for f in dataclasses.fields(DeviceModel)}


def _model_from_entry(entry: Any, where: str) -> DeviceModel:
    """Build one model from its YAML mapping; raise XpodError naming the entry and field."""
    if not isinstance(entry, dict):
        raise XpodError(f"{where}: each catalog entry must be a mapping")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise XpodError(f"{where}: unknown catalog field {sorted(unknown)[0]!r}")
    for key, typ in _REQUIRED.items():
        if not isinstance(entry.get(key), typ) or isinstance(entry.get(key), bool):
            raise XpodError(f"{where}: field {key!r} must be a {typ.__name__}")
    for key, allowed in _OPTIONAL_NUMBERS.items():
        value = entry.get(key)
        positive = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        if value is not None and (not isinstance(value, allowed) or not positive):
            raise XpodError(f"{where}: field {key!r} must be a positive number or null, got {value!r}")
    for key in _OPTIONAL_TEXT:
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise XpodError(f"{where}: field {key!r} must be text or null")
    if entry["vendor"] not in VENDORS:
        raise XpodError(f"{where}: vendor {entry['vendor']!r} is not one of {', '.join(VENDORS)}")
    if entry["dies_per_package"] < 1:
        raise XpodError(f"{where}: dies_per_package must be >= 1")
    try:
        unit = SchedulableUnit(entry["schedulable_unit"])
    except ValueError:
        raise XpodError(f"{where}: schedulable_unit must be 'die' or 'package'") from None
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise XpodError(f"{where}: aliases must be a list of names")
    sources = entry.get("sources") or {}
    if not isinstance(sources, dict):
        raise XpodError(f"{where}: sources must be a mapping of field -> source")
    bad_src = set(sources) - _FIELDS
    if bad_src:
        raise XpodError(f"{where}: sources names unknown field {sorted(bad_src)[0]!r}")
    kwargs: dict[str, Any] = {k: None for k in (*_OPTIONAL_NUMBERS, *_OPTIONAL_TEXT)}
    kwargs.update({k: v for k, v in entry.items() if k in _FIELDS})
    kwargs.update(schedulable_unit=unit, aliases=tuple(aliases), sources=dict(sources))
    return DeviceModel(**kwargs)


def _norm(name: str) -> str:
    """Case- and punctuation-insensitive key: "NVIDIA H100 80GB HBM3" -> "nvidiah10080gbhbm3"."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclasses.dataclass(frozen=True)
class _Catalog:
    models: tuple[DeviceModel, ...]
    by_key: Mapping[str, DeviceModel]


def load_catalog_text(text: str, source: str = "catalog.yaml") -> tuple[DeviceModel, ...]:
    """Parse and validate catalog YAML text (used for the packaged file and by tests)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise XpodError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise XpodError(f"{source}: expected a mapping with a 'models' list")
    models = tuple(_model_from_entry(e, f"{source}: models[{i}]") for i, e in enumerate(doc["models"]))
    seen: dict[str, str] = {}
    for m in models:
        for key in {_norm(m.id), _norm(m.display_name), *(_norm(a) for a in m.aliases)}:
            if key in seen and seen[key] != m.id:
                raise XpodError(f"{source}: name {key!r} of {m.id!r} is also a name of {seen[key]!r}")
            seen[key] = m.id
    return models


@functools.lru_cache(maxsize=1)
def _catalog() -> _Catalog:
    text = resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    models = load_catalog_text(text)
    by_key: dict[str, DeviceModel] = {}
    for m in models:
        for name in (m.id, m.display_name, *m.aliases):
            by_key[_norm(name)] = m
    return _Catalog(models, by_key)


def all_models() -> tuple[DeviceModel, ...]:
    """Every catalog model, in file order."""
    return _catalog().models


def model_ids() -> tuple[str, ...]:
    return tuple(m.id for m in all_models())


def match_model(tool_name: str | None) -> DeviceModel | None:
    """The model a tool's product name denotes (id, display name or alias, ignoring case and
    punctuation), or ``None``. Parsers call this with what npu-smi / nvidia-smi printed."""
    if not tool_name:
        return None
    return _catalog().by_key.get(_norm(tool_name))


def get_model(name: str) -> DeviceModel:
    """The model named by id or alias; ``XpodError`` with a did-you-mean when unknown."""
    found = match_model(name)
    if found is not None:
        return found
    raise XpodError(
        f"unknown device model {name!r}{did_you_mean(name, model_ids())}; known models: {', '.join(model_ids())}"
    )


def did_you_mean(word: str, choices: "list[str] | tuple[str, ...]") -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
