"""``xpod cluster validate|show|schema|local``: cluster descriptors (hal/cluster.py)."""

from __future__ import annotations

import json
import sys


def register(commands) -> None:
    p = commands.top.add_parser(
        "cluster",
        help="cluster descriptors: validate, show, schema, local",
        description="Read, check and summarise cluster descriptor YAML (apiVersion xpod/v1, kind Cluster).",
    )
    sub = p.add_subparsers(dest="cluster_command", metavar="WHAT", parser_class=type(p))
    p.set_defaults(func=lambda args: _help(p))

    v = sub.add_parser("validate", help="check a descriptor; print a summary or FILE:LINE:COL problems")
    v.add_argument("file", metavar="FILE", help="the cluster descriptor (YAML)")
    v.add_argument("--json", action="store_true", help="print the summary as JSON")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("show", help="a table of node groups, devices, tiers and totals")
    s.add_argument("file", metavar="FILE", help="the cluster descriptor (YAML)")
    s.set_defaults(func=cmd_show)

    sc = sub.add_parser("schema", help="print the JSON Schema of descriptors (for editors)")
    sc.set_defaults(func=cmd_schema)

    lo = sub.add_parser("local", help="a descriptor of this machine, from device discovery")
    lo.add_argument("--simulated", action="store_true", help="include the simulated backend (XPOD_SIM_DEVICES)")
    lo.add_argument("--name", help="metadata.name (default: this host's name)")
    lo.set_defaults(func=cmd_local)


def _help(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(path: str):
    from xpod.hal.cluster import ClusterValidationError, load_cluster

    try:
        return load_cluster(path), None
    except ClusterValidationError as err:
        return None, err.messages


def cmd_validate(args) -> int:
    cluster, problems = _load(args.file)
    if problems:
        for line in problems:  # only FILE:LINE:COL lines, so editors and CI can match every line
            print(line, file=sys.stderr)
        return 1
    summary = cluster.summary()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        per_model = ", ".join(f"{m['devices']} x {mid}" for mid, m in summary["models"].items()) or "no accelerators"
        print(
            f"{args.file}: ok: cluster {summary['name']!r}, {summary['nodes']} nodes, {summary['chips']} chips, "
            f"{summary['devices']} devices ({per_model}), {len(summary['tiers'])} tier(s)"
        )
    return 0


def cmd_show(args) -> int:
    from xpod.runtime.cli.output import console as make_console
    from xpod.runtime.cli.output import print_table
    from xpod.runtime.cli.output import table as Table  # noqa: N812 (cells wrap, never cut)

    from xpod.hal import units

    cluster, problems = _load(args.file)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    s = cluster.summary()
    console = make_console()
    console.print(
        f"[bold]cluster {s['name']}[/] ({args.file}): {s['nodes']} nodes, {s['chips']} chips, {s['devices']} devices"
    )
    if s["domains"]:
        console.print(
            "topology levels (outermost first): " + ", ".join(f"{lvl} ({n} domains)" for lvl, n in s["domains"].items())
        )

    t = Table(title="node groups")
    for col in ("group", "hosts", "nodes", "model", "chips/node", "devices", "fabrics"):
        t.add_column(col)
    for g in cluster.node_groups:
        t.add_row(
            g.name,
            g.hostlist,
            str(len(g.hosts)),
            g.model.id if g.model else "(CPU only)",
            str(g.packages_per_node),
            str(len(g.hosts) * g.units_per_node),
            ", ".join(g.fabrics) or "-",
        )
    print_table(t)

    t = Table(title="devices per vendor and model")
    for col in ("vendor", "model", "chips", "devices", "memory", "BF16 TFLOPS"):
        t.add_column(col)
    for mid, m in s["models"].items():
        t.add_row(
            m["vendor"],
            mid,
            str(m["chips"]),
            str(m["devices"]),
            units.format_bytes(m["memory_bytes"]),
            "-" if m["bf16_tflops"] is None else f"{m['bf16_tflops']:,.0f}",
        )
    print_table(t)

    topo = cluster.topology()
    t = Table(title="tiers (1 = closest)")
    for col in ("tier", "name", "fabric", "plane", "link", "scope", "groups x devices", "bandwidth/device", "latency"):
        t.add_column(col)
    for tier in cluster.tiers():
        groups = topo.groups_on(tier)
        d = {"groups": len(groups), "devices_per_group": sorted({len(g) for g in groups}) or [0]}
        scope = tier.scope + (f" of {tier.group_size}" if tier.group_size else "")
        t.add_row(
            str(tier.number),
            tier.name,
            tier.fabric,
            tier.plane,
            tier.link or "-",
            scope,
            f"{d['groups']} x {'/'.join(map(str, d['devices_per_group']))}",
            units.format_bandwidth(tier.bandwidth_bytes_per_s),
            units.format_latency(tier.latency_seconds),
        )
    print_table(t)
    if any(f.plane == "frontend" for f in cluster.fabrics):
        console.print(
            "frontend: " + ", ".join(f"{f.name} ({f.link or '-'})" for f in cluster.fabrics if f.plane == "frontend")
        )

    notes = []
    if s["chips_with_unknown_memory"]:
        notes.append(f"{s['chips_with_unknown_memory']} chips of unknown memory not counted")
    if s["chips_with_unknown_bf16_tflops"]:
        notes.append(f"{s['chips_with_unknown_bf16_tflops']} chips of unknown BF16 TFLOPS not counted")
    console.print(
        f"[bold]totals[/]: device memory {units.format_bytes(s['memory_bytes'])}, "
        f"BF16 {s['bf16_tflops'] / 1000:,.1f} PFLOPS dense" + (f" ({'; '.join(notes)})" if notes else "")
    )
    return 0


def cmd_schema(args) -> int:
    from xpod.hal.cluster_schema import schema

    json.dump(schema(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def cmd_local(args) -> int:
    from xpod.hal.cluster_local import local_descriptor

    text, warnings = local_descriptor(include_simulated=args.simulated, name=args.name)
    for w in warnings:
        print(f"xpod: {w}", file=sys.stderr)
    sys.stdout.write(text)
    return 0
