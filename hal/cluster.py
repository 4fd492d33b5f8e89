"""Cluster descriptors: load, validate and summarise ``apiVersion: xpod/v1, kind: Cluster`` YAML.

``load_cluster(path)`` returns a ``Cluster`` or raises ``ClusterValidationError`` holding
*every* problem found, each as ``FILE:LINE:COL: message`` with the line and column of the
offending key or value (YAML node marks kept through ``yaml.compose``). Checks run in two
passes: the JSON Schema (``hal/cluster_schema.py``: types, unknown keys, counts, enums,
quantity syntax), then what a schema cannot say (hostlists, a node in two groups, unknown
device models and references, tiers that do not nest, domains that do not nest, devices no
tier joins). A YAML syntax error stops at the first pass with its own line and column.

Tier numbering follows Volcano's HyperNode: **tier 1 is the closest** (fastest) tier and a
higher tier joins a wider scope. Scopes, narrowest first: ``package`` (dies of one package),
``group`` (``groupSize`` devices of one node, e.g. an HCCS ring of 4), ``node``, the topology
levels innermost first (``rack``, ``supernode``, ...), ``cluster``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from . import hostlist
from .catalog import DeviceModel, SchedulableUnit, did_you_mean, match_model, model_ids
from .cluster_schema import BUILTIN_SCOPES, schema
from .yamldoc import (
    DocumentError,
    Located,
    Path,
    compose_one,
    fmt_path,
    format_problems,
    read_text,
    schema_problems,
    type_word,
)
from .units import BANDWIDTH_PATTERN, BYTES_PATTERN, LATENCY_PATTERN, parse_bandwidth, parse_bytes, parse_latency


class ClusterValidationError(DocumentError):
    """A descriptor with problems. ``messages`` holds every ``FILE:LINE:COL: message`` line;
    ``str()`` is the first one plus how many more follow (``hal.yamldoc.DocumentError``)."""


# --------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True)
class Tier:
    """One tier of one fabric: how devices within one ``scope`` talk over that fabric."""

    number: int  # 1 = closest
    name: str
    fabric: str  # the fabric's name
    plane: str  # scale-up | scale-out
    link: str | None  # HCCS, UB, NVLink, RoCE, ...
    scope: str  # package | group | node | <topology level> | cluster
    group_size: int | None  # devices per group when scope == "group"
    bandwidth_bytes_per_s: int | None  # per device, one direction; None when not given
    latency_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.number,
            "name": self.name,
            "fabric": self.fabric,
            "plane": self.plane,
            "link": self.link,
            "scope": self.scope,
            "group_size": self.group_size,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "latency_seconds": self.latency_seconds,
        }


@dataclasses.dataclass(frozen=True)
class Fabric:
    name: str
    plane: str  # scale-up | scale-out | frontend
    link: str | None
    tiers: tuple[Tier, ...]  # empty for the frontend plane


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    """Nodes built alike: the same device model and count, attached to the same fabrics."""

    name: str
    hosts: tuple[str, ...]  # expanded, in hostlist order
    hostlist: str  # as written
    model: DeviceModel | None  # None for a CPU-only group
    packages_per_node: int  # 0 for a CPU-only group
    fabrics: tuple[str, ...]  # fabric names the nodes attach to
    cpu_model: str | None = None
    cpu_sockets: int | None = None
    memory_bytes: int | None = None  # host memory per node
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def units_per_node(self) -> int:
        """Schedulable devices per node (dies on 910C)."""
        return 0 if self.model is None else self.packages_per_node * self.model.units_per_package


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    level: str
    hosts: tuple[str, ...]
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class Pool:
    name: str
    node_groups: tuple[str, ...]
    job_kinds: tuple[str, ...]
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A validated descriptor, quantities in base units."""

    name: str
    source: str  # the file it came from
    labels: Mapping[str, Any]
    models: Mapping[str, DeviceModel]  # every model a node group uses, by id
    fabrics: tuple[Fabric, ...]
    levels: tuple[str, ...]  # topology levels, outermost first, without "node"
    domains: tuple[Domain, ...]
    node_groups: tuple[NodeGroup, ...]
    pools: tuple[Pool, ...]
    # metadata.annotations: notes for tools (a job's placement names its ranks' devices here,
    # see ``xpod.hal.topology.load_job_topology``)
    annotations: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def nodes(self) -> list[str]:
        return [h for g in self.node_groups for h in g.hosts]

    def group_of(self, node: str) -> NodeGroup:
        for g in self.node_groups:
            if node in g.hosts:
                return g
        raise KeyError(node)

    def tiers(self) -> tuple[Tier, ...]:
        """Every tier of every fabric, closest first."""
        return tuple(sorted((t for f in self.fabrics for t in f.tiers), key=lambda t: (t.number, t.fabric)))

    def scopes(self) -> tuple[str, ...]:
        """Scopes narrowest first."""
        return ("package", "group", "node", *reversed(self.levels), "cluster")

    def topology(self):
        """The ``Topology`` of this cluster (built on each call; keep the result)."""
        from .topology import Topology

        return Topology(self)

    def summary(self) -> dict[str, Any]:
        """The JSON summary of ``xpod cluster validate --json``."""
        models: dict[str, dict[str, Any]] = {}
        vendors: dict[str, int] = {}
        groups = []
        mem_total = 0
        tflops_total = 0.0
        unknown_mem = unknown_tflops = 0
        for g in self.node_groups:
            nodes = len(g.hosts)
            chips = nodes * g.packages_per_node
            devices = nodes * g.units_per_node
            groups.append(
                {
                    "name": g.name,
                    "hosts": g.hostlist,
                    "nodes": nodes,
                    "model": g.model.id if g.model else None,
                    "chips": chips,
                    "devices": devices,
                    "fabrics": list(g.fabrics),
                }
            )
            if g.model is None:
                continue
            m = g.model
            entry = models.setdefault(
                m.id,
                {
                    "vendor": m.vendor,
                    "display_name": m.display_name,
                    "nodes": 0,
                    "chips": 0,
                    "devices": 0,
                    "memory_bytes": 0 if m.memory_bytes is not None else None,
                    "bf16_tflops": 0.0 if m.bf16_tflops is not None else None,
                },
            )
            entry["nodes"] += nodes
            entry["chips"] += chips
            entry["devices"] += devices
            vendors[m.vendor] = vendors.get(m.vendor, 0) + devices
            if m.memory_bytes is None:
                unknown_mem += chips
            else:
                entry["memory_bytes"] += chips * m.memory_bytes
                mem_total += chips * m.memory_bytes
            if m.bf16_tflops is None:
                unknown_tflops += chips
            else:
                entry["bf16_tflops"] += chips * m.bf16_tflops
                tflops_total += chips * m.bf16_tflops
        return {
            "file": self.source,
            "name": self.name,
            "nodes": sum(len(g.hosts) for g in self.node_groups),
            "chips": sum(g["chips"] for g in groups),
            "devices": sum(g["devices"] for g in groups),
            "models": models,
            "vendors": vendors,
            "node_groups": groups,
            "domains": {lvl: sum(1 for d in self.domains if d.level == lvl) for lvl in self.levels},
            "tiers": [t.to_json() for t in self.tiers()],
            "memory_bytes": mem_total,
            "bf16_tflops": round(tflops_total, 3),
            "chips_with_unknown_memory": unknown_mem,
            "chips_with_unknown_bf16_tflops": unknown_tflops,
            "pools": [
                {"name": p.name, "node_groups": list(p.node_groups), "job_kinds": list(p.job_kinds)} for p in self.pools
            ],
        }


# --------------------------------------------------------------------------- schema pass


def _pattern_message(path: Path, inst: Any, pattern: str) -> str:
    """What a descriptor value failing a schema pattern should have been (``hal.yamldoc``)."""
    where = fmt_path(path)
    parser = {BANDWIDTH_PATTERN: parse_bandwidth, BYTES_PATTERN: parse_bytes, LATENCY_PATTERN: parse_latency}.get(
        pattern
    )
    if parser is not None:
        try:
            parser(inst)
        except ValueError as perr:
            return f"{where}: {perr}"
    if path and path[-1] in ("scope",) or (len(path) >= 2 and path[-2] == "levels"):
        return f"{where}: {inst!r} is not a valid level name (lower-case letters, digits and '-')"
    return (
        f"{where}: {inst!r} is not a valid name (lower-case letters, digits, '.', '_', '-'; "
        "starting and ending with a letter or digit)"
    )


# --------------------------------------------------------------------------- loader


class _Checker:
    """Collects problems as (line, col, message)."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.problems: list[tuple[int, int, str]] = []

    def add(self, path: Path, message: str, key: bool = False) -> None:
        line, col = self.doc.pos(path, key=key)
        self.problems.append((line, col, message))


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _inline_model(model_id: str, spec: dict) -> DeviceModel | None:
    try:
        memory = parse_bytes(spec["memory"]) if "memory" in spec else None
    except ValueError:
        return None
    dies = spec.get("diesPerPackage", 1)
    return DeviceModel(
        id=model_id,
        vendor=spec.get("vendor", "cpu"),
        display_name=spec.get("displayName", model_id),
        memory_bytes=memory,
        bf16_tflops=spec.get("bf16Tflops"),
        dies_per_package=dies if isinstance(dies, int) else 1,
        schedulable_unit=SchedulableUnit(spec.get("schedulableUnit", "package")),
        intra_node_link=spec.get("intraNodeLink"),
        intra_node_bandwidth_bytes_per_s=None,
        devices_per_node=None,
        notes="declared inline in the cluster descriptor",
    )


def parse_cluster_text(text: str, source: str = "<string>") -> Cluster:
    """Validate descriptor text; ``source`` is the name used in messages."""
    import jsonschema

    def fail(problems: list[tuple[int, int, str]]):
        raise ClusterValidationError(format_problems(source, problems))

    root, problems = compose_one(
        text,
        empty="the file is empty; expected a Cluster descriptor (apiVersion: xpod/v1, kind: Cluster)",
        several="more than one YAML document; put one cluster per file",
    )
    if root is None:
        fail(problems)
    doc = Located()
    data = doc.build(root)
    problems = list(doc.problems)
    if not isinstance(data, dict):
        fail(problems + [(0, 0, f"expected a mapping with apiVersion, kind, metadata and spec, got {type_word(data)}")])
    problems += schema_problems(jsonschema.Draft202012Validator(schema()), data, doc, _pattern_message)
    chk = _Checker(doc)
    try:
        cluster = _semantic(data, chk, source, structure_ok=not problems)
    except (TypeError, AttributeError, KeyError, ValueError):
        # The semantic pass trusts the schema's types. On a document the schema already
        # rejected it is best effort: what it found so far is kept, the rest is skipped. On a
        # document the schema accepted, an exception here is a bug and keeps its traceback.
        if not problems:
            raise
        cluster = None
    problems += chk.problems
    if problems:
        fail(problems)
    assert cluster is not None
    return cluster


def load_cluster(path: str | os.PathLike) -> Cluster:
    """Read and validate a descriptor file (see the module docstring)."""
    path = os.fspath(path)
    return parse_cluster_text(read_text(path), source=path)


def default_cluster_text() -> str:
    """The packaged CloudMatrix384 descriptor (``xpod up``'s default cluster)."""
    from importlib import resources

    return resources.files(__package__).joinpath("clusters").joinpath("cloudmatrix384.yaml").read_text(encoding="utf-8")


def load_default_cluster() -> Cluster:
    return parse_cluster_text(default_cluster_text(), source="<packaged cloudmatrix384.yaml>")


# --------------------------------------------------------------------------- semantic pass


def _semantic(data: dict, chk: _Checker, source: str, structure_ok: bool) -> Cluster | None:  # noqa: C901 (one pass, many checks)
    """The checks a schema cannot express. The Cluster is built (and the all-pairs check,
    which would only echo earlier problems, runs) only when nothing else is wrong."""
    spec = _dict(data.get("spec"))
    meta = _dict(data.get("metadata"))
    before = len(chk.problems)  # the Cluster is built only if no check below adds a problem

    # device models: inline ones must not shadow the catalog
    models: dict[str, DeviceModel] = {}
    for mid, mspec in _dict(spec.get("deviceModels")).items():
        if not isinstance(mspec, dict):
            continue
        path: Path = ("spec", "deviceModels", mid)
        known = match_model(mid)
        if known is not None:
            chk.add(
                path,
                f"device model {mid!r} is already in the catalog (as {known.id!r}); use it directly or pick another name",
                key=True,
            )
            continue
        if mspec.get("schedulableUnit") == "die" and mspec.get("diesPerPackage", 1) < 2:
            chk.add(
                path + ("schedulableUnit",), f"device model {mid!r}: schedulableUnit 'die' needs diesPerPackage >= 2"
            )
        try:
            m = _inline_model(mid, mspec)
        except (ValueError, TypeError):
            m = None
        if m is not None:
            models[mid] = m

    # topology levels
    topo = _dict(spec.get("topology"))
    raw_levels = [lv for lv in _list(topo.get("levels")) if isinstance(lv, str)]
    levels: list[str] = []
    for i, lv in enumerate(raw_levels):
        path = ("spec", "topology", "levels", i)
        if lv in levels:
            chk.add(path, f"topology level {lv!r} is listed twice")
        elif lv == "node":
            if i != len(raw_levels) - 1:
                chk.add(path, "topology level 'node' must come last (levels are listed outermost first)")
        elif lv in BUILTIN_SCOPES:
            chk.add(path, f"{lv!r} is a built-in scope and cannot be a topology level")
        else:
            levels.append(lv)
    scopes = ["package", "group", "node", *reversed(levels), "cluster"]
    rank = {s: i for i, s in enumerate(scopes)}

    # fabrics and tiers
    fabrics: dict[str, dict] = {}
    fabric_objs: list[Fabric] = []
    tier_objs: dict[str, list[Tier]] = {}
    for fi, f in enumerate(_list(spec.get("fabrics"))):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            continue
        fpath = ("spec", "fabrics", fi)
        if f["name"] in fabrics:
            chk.add(fpath + ("name",), f"fabric name {f['name']!r} is used twice")
            continue
        fabrics[f["name"]] = f
        tiers = _list(f.get("tiers"))
        plane = f.get("plane")
        if plane == "frontend" and tiers:
            chk.add(
                fpath + ("tiers",),
                f"fabric {f['name']!r} is on the frontend plane, which carries no device tiers; remove its tiers",
                key=True,
            )
        if plane in ("scale-up", "scale-out") and not tiers and "tiers" not in f:
            chk.add(fpath, f"fabric {f['name']!r} (plane {plane}) needs at least one tier")
        seen_numbers: set[int] = set()
        objs = []
        for ti, t in enumerate(tiers):
            if not isinstance(t, dict):
                continue
            tpath = fpath + ("tiers", ti)
            num, scope = t.get("tier"), t.get("scope")
            if isinstance(num, int) and num in seen_numbers:
                chk.add(tpath + ("tier",), f"fabric {f['name']!r} lists tier {num} twice")
            if isinstance(num, int):
                seen_numbers.add(num)
            if isinstance(scope, str) and scope not in rank:
                chk.add(
                    tpath + ("scope",),
                    f"unknown scope {scope!r}{did_you_mean(scope, scopes)}; scopes here: {', '.join(scopes)}"
                    + ("" if levels else " (declare rack/supernode levels under spec.topology.levels)"),
                )
            if scope == "group" and "groupSize" not in t:
                chk.add(tpath, f"tier {num} has scope 'group' but no groupSize (devices per group, e.g. 4)")
            if scope != "group" and "groupSize" in t:
                chk.add(
                    tpath + ("groupSize",),
                    f"groupSize is only meaningful with scope 'group' (this tier's scope is {scope!r})",
                    key=True,
                )
            bw = lat = None
            try:  # a value that does not parse is reported by the schema pass; keep the tier
                bw = parse_bandwidth(t["bandwidth"]) if "bandwidth" in t else None
            except (ValueError, TypeError):
                pass
            try:
                lat = parse_latency(t["latency"]) if "latency" in t else None
            except (ValueError, TypeError):
                pass
            if isinstance(num, int) and isinstance(scope, str) and scope in rank:
                objs.append(
                    Tier(
                        num,
                        t.get("name") or f"{f['name']}-{num}",
                        f["name"],
                        str(plane),  # not text: the schema pass reported it, and no Cluster is built
                        f.get("link"),
                        scope,
                        t.get("groupSize") if isinstance(t.get("groupSize"), int) else None,
                        bw,
                        lat,
                    )
                )
        tier_objs[f["name"]] = objs
        if isinstance(plane, str):
            fabric_objs.append(Fabric(f["name"], plane, f.get("link"), tuple(objs)))

    # tier numbers: one scope per number, wider scope for a higher number
    by_number: dict[int, list[tuple[Tier, Path]]] = {}
    for fi, f in enumerate(_list(spec.get("fabrics"))):
        if not isinstance(f, dict):
            continue
        for ti, t in enumerate(_list(f.get("tiers"))):
            for obj in tier_objs.get(str(f.get("name")), []):
                if isinstance(t, dict) and obj.number == t.get("tier") and obj.scope == t.get("scope"):
                    by_number.setdefault(obj.number, []).append((obj, ("spec", "fabrics", fi, "tiers", ti)))
                    break
    number_scope: dict[int, str] = {}
    for num in sorted(by_number):
        first, _ = by_number[num][0]
        number_scope[num] = first.scope
        for obj, path in by_number[num][1:]:
            if obj.scope != first.scope:
                chk.add(
                    path + ("scope",),
                    f"tier {num} has scope {obj.scope!r} in fabric {obj.fabric!r} but {first.scope!r} in fabric "
                    f"{first.fabric!r}; one tier number means one scope",
                )
    prev: tuple[int, str] | None = None
    for num in sorted(number_scope):
        scope = number_scope[num]
        if prev is not None and rank[scope] <= rank[prev[1]]:
            _, path = by_number[num][0]
            chk.add(
                path + ("scope",),
                f"tiers do not nest: tier {num} has scope {scope!r}, not wider than tier {prev[0]}'s "
                f"scope {prev[1]!r} (tier 1 is the closest; each higher tier must join a wider scope)",
            )
        else:
            prev = (num, scope)

    # node groups
    owner: dict[str, tuple[str, int]] = {}  # host -> (group name, group index)
    groups: list[NodeGroup] = []
    group_names: dict[str, int] = {}
    for gi, g in enumerate(_list(spec.get("nodeGroups"))):
        if not isinstance(g, dict):
            continue
        gpath = ("spec", "nodeGroups", gi)
        raw_name = g.get("name")
        name = raw_name if isinstance(raw_name, str) else f"#{gi}"
        if name in group_names:
            chk.add(gpath + ("name",), f"node group name {name!r} is used twice")
        group_names[name] = gi
        hosts: list[str] = []
        if isinstance(g.get("hosts"), str):
            try:
                hosts = hostlist.expand(g["hosts"])
            except hostlist.HostlistError as err:
                chk.add(gpath + ("hosts",), str(err))
            for h in hostlist.repeats(hosts):
                chk.add(gpath + ("hosts",), f"hostlist {g['hosts']!r} names node {h!r} more than once")
            for h in dict.fromkeys(hosts):
                if h in owner and owner[h][1] != gi:
                    line = chk.doc.pos(("spec", "nodeGroups", owner[h][1], "hosts"))[0] + 1
                    chk.add(
                        gpath + ("hosts",),
                        f"node {h!r} is in node group {owner[h][0]!r} (line {line}) and in {name!r}; a node belongs to one group",
                    )
                else:
                    owner.setdefault(h, (name, gi))
        model = None
        dev = _dict(g.get("devices"))
        if isinstance(dev.get("model"), str):
            model = models.get(dev["model"]) or match_model(dev["model"])
            if model is None:
                choices = [*model_ids(), *models]
                chk.add(
                    gpath + ("devices", "model"),
                    f"unknown device model {dev['model']!r}{did_you_mean(dev['model'], choices)}; "
                    "use a catalog id (hal/catalog.yaml) or declare it under spec.deviceModels",
                )
        attach = [x for x in _list(g.get("fabrics")) if isinstance(x, str)] if "fabrics" in g else list(fabrics)
        for ai, fname in enumerate(attach):
            if fname not in fabrics:
                chk.add(gpath + ("fabrics", ai), f"unknown fabric {fname!r}{did_you_mean(fname, list(fabrics))}")
        if len(set(attach)) != len(attach):
            chk.add(gpath + ("fabrics",), f"node group {name!r} lists a fabric twice")
        raw_per_node = dev.get("packagesPerNode")
        per_node = raw_per_node if isinstance(raw_per_node, int) else 0
        cpu = _dict(g.get("cpu"))
        try:
            mem = parse_bytes(g["memory"]) if "memory" in g else None
        except (ValueError, TypeError):
            mem = None
        groups.append(
            NodeGroup(
                name=name,
                hosts=tuple(dict.fromkeys(hosts)),
                hostlist=str(g.get("hosts")),
                model=model,
                packages_per_node=per_node if model is not None else 0,
                fabrics=tuple(f for f in dict.fromkeys(attach) if f in fabrics),
                cpu_model=cpu.get("model"),
                cpu_sockets=cpu.get("sockets"),
                memory_bytes=mem,
                labels=_dict(g.get("labels")),
            )
        )

    # per group: one fabric per tier number, groupSize divides, wide tiers nest (monotone)
    wide_numbers = sorted(n for n, s in number_scope.items() if rank[s] > rank["node"])
    for gi, g in enumerate(groups):
        gpath = ("spec", "nodeGroups", gi)
        at: dict[int, Tier] = {}
        for fname in g.fabrics:
            for t in tier_objs.get(fname, []):
                if t.number in at and at[t.number].fabric != t.fabric:
                    chk.add(
                        gpath + ("fabrics",),
                        f"node group {g.name!r} is on two fabrics at tier {t.number} "
                        f"({at[t.number].fabric!r} and {t.fabric!r}); a pair of devices must have one joining tier",
                    )
                at[t.number] = t
                if (
                    t.scope == "group"
                    and t.group_size
                    and g.model is not None
                    and t.group_size % g.model.units_per_package
                ):
                    chk.add(
                        gpath + ("devices", "model"),
                        f"tier {t.number} ({t.fabric}) groups of {t.group_size} would split "
                        f"a package of {g.model.id} ({g.model.units_per_package} devices each); use a multiple of {g.model.units_per_package}",
                    )
                elif t.scope == "group" and t.group_size and g.units_per_node and g.units_per_node % t.group_size:
                    chk.add(
                        gpath + ("devices", "packagesPerNode"),
                        f"node group {g.name!r} has {g.units_per_node} devices per node, "
                        f"which tier {t.number} ({t.fabric}) cannot split into groups of {t.group_size}",
                    )
        mine = [n for n in wide_numbers if n in at]
        if mine:
            for n in wide_numbers:
                if n > mine[0] and n not in at:
                    chk.add(
                        gpath + ("fabrics",) if "fabrics" in _dict(_list(spec.get("nodeGroups"))[gi]) else gpath,
                        f"tiers do not nest: node group {g.name!r} is on tier {mine[0]} ({at[mine[0]].scope}) but on no fabric "
                        f"of the wider tier {n} ({number_scope[n]}); attach it to one",
                    )
                    break

    # domains
    domains: list[Domain] = []
    in_level: dict[str, dict[str, str]] = {lv: {} for lv in levels}  # level -> host -> domain
    domain_names: set[str] = set()
    domain_trouble = False  # a domain with an unknown level: coverage checks would only echo it
    for di, d in enumerate(_list(topo.get("domains"))):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            continue
        dpath = ("spec", "topology", "domains", di)
        if d["name"] in domain_names:
            chk.add(dpath + ("name",), f"domain name {d['name']!r} is used twice")
        domain_names.add(d["name"])
        level = d.get("level")
        if isinstance(level, str) and level not in levels:
            domain_trouble = True
            chk.add(
                dpath + ("level",),
                f"unknown topology level {level!r}{did_you_mean(level, levels)}; declare it in spec.topology.levels"
                + (f" ({', '.join(levels)})" if levels else ""),
            )
            continue
        hosts = []
        if isinstance(d.get("hosts"), str):
            try:
                hosts = hostlist.expand(d["hosts"])
            except hostlist.HostlistError as err:
                chk.add(dpath + ("hosts",), str(err))
        for h in hostlist.repeats(hosts):
            chk.add(dpath + ("hosts",), f"hostlist {d['hosts']!r} names node {h!r} more than once")
        unknown = [h for h in dict.fromkeys(hosts) if h not in owner]
        if unknown:
            chk.add(
                dpath + ("hosts",),
                f"domain {d['name']!r} names {len(unknown)} node(s) no node group has: {hostlist.compress(unknown)}",
            )
        for h in dict.fromkeys(hosts):
            if isinstance(level, str) and h in in_level.get(level, {}):
                chk.add(
                    dpath + ("hosts",),
                    f"node {h!r} is in {level} domains {in_level[level][h]!r} and {d['name']!r}; domains of one level must not overlap",
                )
            elif isinstance(level, str) and level in in_level:
                in_level[level][h] = d["name"]
        if isinstance(level, str):
            domains.append(Domain(d["name"], level, tuple(dict.fromkeys(hosts)), _dict(d.get("labels"))))
    # domains nest: an inner domain lies within one domain of each outer level
    for d in domains:
        if d.level not in levels:
            continue
        for outer in levels[: levels.index(d.level)]:
            parents = {in_level[outer].get(h) for h in d.hosts if h in owner}  # unknown nodes: reported above
            if len(parents) > 1:
                named = sorted(p for p in parents if p)
                chk.add(
                    _domain_path(topo, d.name),
                    f"domains do not nest: {d.level} domain {d.name!r} spans "
                    f"{outer} domain(s) {', '.join(repr(p) for p in named)}"
                    + (" and nodes in none" if None in parents else ""),
                )
    # nodes on a level-scoped tier must be in a domain of that level
    for gi, g in enumerate(groups):
        for fname in g.fabrics:
            for t in tier_objs.get(fname, []):
                if t.scope in in_level and not domain_trouble:
                    missing = [h for h in g.hosts if h not in in_level[t.scope]]
                    if missing:
                        chk.add(
                            ("spec", "nodeGroups", gi, "hosts"),
                            f"{len(missing)} node(s) of node group {g.name!r} "
                            f"({hostlist.compress(missing)}) are on tier {t.number} (fabric {t.fabric!r}, scope {t.scope}) "
                            f"but in no {t.scope} domain",
                        )

    # pools
    pools = []
    pool_names: set[str] = set()
    for pi, p in enumerate(_list(spec.get("pools"))):
        if not isinstance(p, dict):
            continue
        ppath = ("spec", "pools", pi)
        pool_name = str(p.get("name"))  # the schema pass reports a missing name
        if pool_name in pool_names:
            chk.add(ppath + ("name",), f"pool name {pool_name!r} is used twice")
        pool_names.add(pool_name)
        refs = [x for x in _list(p.get("nodeGroups")) if isinstance(x, str)]
        for ri, ref in enumerate(_list(p.get("nodeGroups"))):
            if isinstance(ref, str) and ref not in group_names:
                chk.add(ppath + ("nodeGroups", ri), f"unknown node group {ref!r}{did_you_mean(ref, list(group_names))}")
        pools.append(
            Pool(
                str(p.get("name")),
                tuple(refs),
                tuple(x for x in _list(p.get("jobKinds")) if isinstance(x, str)),
                _dict(p.get("labels")),
            )
        )

    if len(chk.problems) > before or not structure_ok or not isinstance(meta.get("name"), str):
        return None
    cluster = Cluster(
        name=meta["name"],
        source=source,
        labels=_dict(meta.get("labels")),
        models={g.model.id: g.model for g in groups if g.model is not None},
        fabrics=tuple(fabric_objs),
        levels=tuple(levels),
        domains=tuple(domains),
        node_groups=tuple(groups),
        pools=tuple(pools),
        annotations=_dict(meta.get("annotations")),
    )
    # every pair of devices must be joined by some tier
    topo_obj = cluster.topology()
    unjoined = topo_obj.unjoined_example()
    if unjoined is not None:
        a, b = unjoined
        chk.add(
            ("spec", "fabrics") if "fabrics" in spec else ("spec", "nodeGroups"),
            key=True,
            message=f"no tier joins device {a.id} (node group {cluster.group_of(a.node).name!r}) and device {b.id} "
            f"(node group {cluster.group_of(b.node).name!r}); attach both groups to a fabric whose scope holds both",
        )
        return None
    return cluster


def _domain_path(topo: dict, name: str) -> Path:
    for i, d in enumerate(_list(topo.get("domains"))):
        if isinstance(d, dict) and d.get("name") == name:
            return ("spec", "topology", "domains", i, "hosts")
    return ("spec", "topology")
