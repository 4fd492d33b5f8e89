"""``xpod moe place``, ``show`` and ``export``: MoE expert placement from recorded expert loads,
and the file a serving system (SGLang) loads it from."""

from __future__ import annotations

import json
import os
import sys

from xpod.hal.errors import XpodError

POLICIES = ("auto", "balanced", "even", "budget", "wrap")


def register(commands) -> None:
    moe = commands.top.add_parser("moe", help="MoE expert placement (replicas, devices, token shares)")
    sub = moe.add_subparsers(dest="moe_command", metavar="WHAT", parser_class=type(moe))
    moe.set_defaults(func=lambda args: _missing(moe))

    p = sub.add_parser(
        "place",
        help="place the experts of every layer on devices and write a placement JSON",
        description=(
            "Place routed experts (with replicas of hot ones) on devices from recorded per-expert "
            "loads. Writes JSON with phy2log [layers][slots], slot_device [slots], slot_share "
            "[layers][slots] and seconds, and prints a summary."
        ),
    )
    p.add_argument(
        "--loads",
        required=True,
        nargs="+",
        metavar="FILE",
        help="an .npz of [layers, experts] token counts (with --workload), or SGLang expert-distribution dumps "
        "(.pt of --expert-distribution-recorder-mode stat, or .json with logical_count), one window each, oldest first",
    )
    p.add_argument(
        "--workload",
        metavar="NAME",
        help="with an .npz: the array name; a comma-separated list is a history of windows, oldest first",
    )
    p.add_argument(
        "--topology",
        metavar="FILE",
        help="the job's placement file (what XPOD_TOPOLOGY names in its tasks): plan on exactly its devices, "
        "nodes and super-nodes instead of --devices/--nodes/--super-nodes; the JSON adds device_ids",
    )
    p.add_argument("--devices", type=_positive("--devices"), metavar="D", help="expert-parallel devices")
    p.add_argument(
        "--nodes",
        type=_positive("--nodes"),
        metavar="N",
        help="nodes (devices are split evenly, in order)",
    )
    p.add_argument(
        "--slots",
        required=True,
        type=_positive("--slots"),
        metavar="S",
        help="expert slots per layer: the total over all devices (EPLB's num_replicas, e.g. 320 for EP64) when "
        "S >= the number of experts, which must then be a multiple of D; else slots per device",
    )
    p.add_argument(
        "--groups", type=_positive("--groups"), default=8, metavar="G", help="expert groups (contiguous ids; default 8)"
    )
    p.add_argument("--super-nodes", type=_positive("--super-nodes"), metavar="SN", help="super-nodes (default 1)")
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="auto",
        help="auto = even (default: the same slots on every device in every layer, tokens split evenly over "
        "replicas: what SGLang and vLLM run), wrap (as even, hierarchical: groups cut into nodes by McNaughton's "
        "rule, at most 2 nodes per group on average), balanced (uneven slot_share: xpod's dispatcher only), "
        "budget (per-layer slot counts + shares: xpod's dispatcher only)",
    )
    p.add_argument(
        "--locality",
        type=_nonnegative("--locality"),
        default=None,
        metavar="W",
        help="weight, in mean replica loads, of keeping first replicas on their group's home node and "
        "replicas of one expert on different nodes (0 = balance only; default 0.5, wrap 1)",
    )
    p.add_argument(
        "--balance-tolerance",
        type=_nonnegative("--balance-tolerance"),
        default=0.0,
        metavar="F",
        help="with F > 0, a second plan pins first replicas to home nodes and layers switch to it while the "
        "summed max device load stays within (1+F) x the main plan's (default 0: off)",
    )
    p.add_argument(
        "--refine-passes",
        type=_nonnegative_int("--refine-passes"),
        default=16,
        metavar="K",
        help="swap passes after packing (default 16; fewer is faster and balances a little less)",
    )
    p.add_argument(
        "--hedge",
        type=float,
        default=0.0,
        metavar="H",
        help="mix H of the uniform load into the estimate, 0 <= H < 1 (for stale statistics)",
    )
    p.add_argument(
        "--robust",
        action="store_true",
        help="plan for the next window: the last --workload name (or dump) is the latest window, the others its "
        "history; minimises the expected max device load over them (tokens split evenly)",
    )
    p.add_argument("--previous", metavar="FILE", help="previous placement JSON: unchanged experts keep their slots")
    p.add_argument(
        "--max-moves",
        type=_nonnegative_int("--max-moves"),
        metavar="K",
        help="with --previous: load at most K expert weights",
    )
    p.add_argument(
        "--traffic-tokens",
        type=_nonnegative_int("--traffic-tokens"),
        default=2048,
        metavar="T",
        help="tokens per layer for the nodes-per-token simulation on 4 layers (0 = skip; default 2048)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="placement JSON to write")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_place)

    s = sub.add_parser("show", help="draw a device-by-layer load heatmap of a placement to PNG")
    s.add_argument("file", metavar="FILE", help="placement JSON from 'xpod moe place'")
    s.add_argument("--loads", required=True, nargs="+", metavar="FILE", help="as for 'xpod moe place'")
    s.add_argument("--workload", metavar="NAME", help="with an .npz: the array name")
    s.add_argument("--png", required=True, metavar="OUT", help="PNG to write")
    s.set_defaults(func=cmd_show)

    e = sub.add_parser(
        "export",
        help="write a placement as the file a serving system loads (SGLang's --init-expert-location)",
        description=(
            "Write a placement JSON from 'xpod moe place' as SGLang's --init-expert-location file "
            "(physical_to_logical_map [layers][physical experts]) and print the SGLang flags to pass. Refuses, "
            "in one line naming the nearest plan SGLang can run, a plan it cannot: per-layer slot counts "
            "(--policy budget) or uneven token shares (--policy balanced)."
        ),
    )
    e.add_argument("--plan", required=True, metavar="FILE", help="placement JSON from 'xpod moe place'")
    e.add_argument("--format", required=True, choices=("sglang",), help="the serving system's format")
    e.add_argument("--out", required=True, metavar="FILE", help="file to write (.json)")
    e.add_argument(
        "--model-config",
        metavar="FILE",
        help="the model's Hugging Face config.json: checks layers and experts, and writes the dense layers' rows "
        "(SGLang wants num_hidden_layers rows; DeepSeek-V3: 61 = 3 dense + 58 MoE)",
    )
    e.add_argument(
        "--dense-layers",
        type=_nonnegative_int("--dense-layers"),
        metavar="K",
        help="without --model-config: the model's leading dense layers, written as rows before the plan's",
    )
    e.add_argument(
        "--even-split",
        action="store_true",
        help="export a plan with uneven slot_share anyway: the same slots, tokens split evenly (SGLang's rule)",
    )
    e.set_defaults(func=cmd_export)

    from xpod.runtime.cli.jobs import client_flags

    h = sub.add_parser(
        "history",
        help="the live loop of a serving job with spec.moe: every window, its balance, moves, published or not",
        description="Every closed window of a ServingJob's live MoE loop (docs/moe.md), oldest first: the tokens "
        "reported, the predicted balance (mean / max device load over the window history) of the plan in force "
        "before and after, the expert weights moved, whether a plan was published and why.",
    )
    h.add_argument("job", metavar="JOB", help="job id (job-12)")
    client_flags(h, table=True)
    h.set_defaults(func=cmd_history)


def _shape_from_topology(args) -> list[str]:
    """Fill --devices, --nodes and --super-nodes from a job's placement file (refusing flags
    that disagree with it); returns the device ids in the order the plan numbers them: node
    by node, in the order the job's tasks reach them."""
    from xpod.hal.topology import load_job_topology

    job = load_job_topology(args.topology)
    nodes = list(dict.fromkeys(d.node for d in job.devices))
    ordered = [d for n in nodes for d in sorted((x for x in job.devices if x.node == n), key=lambda x: x.index)]
    per_node = {n: sum(1 for d in job.devices if d.node == n) for n in nodes}
    if len(set(per_node.values())) > 1:
        raise XpodError(
            f"--topology {args.topology}: the job holds {sorted(set(per_node.values()))} devices per node; "
            "expert placement needs the same count on every node"
        )
    found = {"--devices": len(ordered), "--nodes": len(nodes), "--super-nodes": job.supernode_count()}
    for flag, value in found.items():
        given = getattr(args, flag[2:].replace("-", "_"))
        if given is not None and given != value:
            raise XpodError(f"{flag} {given} disagrees with --topology {args.topology} ({value}); drop the flag")
        setattr(args, flag[2:].replace("-", "_"), value)
    return [d.id for d in ordered]


def _missing(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _positive(flag: str):
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _arg_error(f"{flag} must be a positive integer, got {text!r}") from None
        if value < 1:
            raise _arg_error(f"{flag} must be a positive integer, got {value}")
        return value

    return conv


def _nonnegative_int(flag: str):
    def conv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _arg_error(f"{flag} must be an integer >= 0, got {text!r}") from None
        if value < 0:
            raise _arg_error(f"{flag} must be an integer >= 0, got {value}")
        return value

    return conv


def _nonnegative(flag: str):
    def conv(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _arg_error(f"{flag} must be a number >= 0, got {text!r}") from None
        if not value >= 0:
            raise _arg_error(f"{flag} must be a number >= 0, got {value}")
        return value

    return conv


def _arg_error(msg: str):
    import argparse

    return argparse.ArgumentTypeError(msg)


def _write_json(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as err:
        raise XpodError(f"{path}: cannot write: {err.strerror}") from None


def slots_per_device(slots: int, devices: int, experts: int) -> int:
    """``--slots`` as slots per device. A value of at least the expert count is the total per
    layer (EPLB's ``num_replicas``: a device never holds two replicas of one expert, so it
    cannot be a per-device count); a smaller one is already per device."""
    if slots < experts:
        return slots
    if slots % devices:
        raise XpodError(
            f"--slots {slots}: read as slots per layer over all devices (>= {experts} experts), "
            f"it must be a multiple of --devices {devices}; use e.g. {devices * -(-slots // devices)}"
        )
    return slots // devices


def cmd_place(args) -> int:
    from xpod.runtime.moe.io import load_placement, read_loads
    from xpod.runtime.moe.placement import PodShape, place

    if args.max_moves is not None and not args.previous:
        raise XpodError("--max-moves needs --previous FILE (the placement the moves are counted from)")
    if not 0.0 <= args.hedge < 1.0:
        raise XpodError(f"--hedge must be in [0, 1), got {args.hedge}")
    device_ids = _shape_from_topology(args) if args.topology else None
    if args.devices is None or args.nodes is None:
        raise XpodError("give --devices D and --nodes N, or --topology FILE (a job's placement file)")
    loads = read_loads(args.loads, args.workload)
    experts = loads.shape[-1]
    if experts % args.groups:
        raise XpodError(
            f"--groups {args.groups}: {experts} experts in {args.loads[0]} do not split evenly; "
            f"use a divisor of {experts}"
        )
    shape = PodShape(
        args.devices, args.nodes, slots_per_device(args.slots, args.devices, experts), args.super_nodes or 1
    )
    previous = load_placement(args.previous, loads.shape[-2:]) if args.previous else None
    if previous is not None and previous.shape.num_devices != args.devices:
        raise XpodError(f"{args.previous}: made for {previous.shape.num_devices} devices, not --devices {args.devices}")
    if args.robust:
        from xpod.runtime.moe.robust import robust_place

        if previous is not None or args.hedge:
            raise XpodError(
                "--robust plans from scratch: drop --previous/--max-moves/--hedge (align a robust plan later with --previous)"
            )
        placement = robust_place(
            loads if loads.ndim == 2 else loads[-1],
            shape,
            num_groups=args.groups,
            history=None if loads.ndim == 2 else loads[:-1],
            policy=args.policy,
            locality=args.locality,
            balance_tolerance=args.balance_tolerance,
        )
    else:
        placement = place(
            loads,
            shape,
            num_groups=args.groups,
            policy=args.policy,
            locality=args.locality,
            hedge=args.hedge,
            previous=previous,
            max_moves=args.max_moves,
            balance_tolerance=args.balance_tolerance,
            refine_steps=args.refine_passes,
        )
    doc = placement.to_json()
    if device_ids is not None:
        doc["device_ids"] = device_ids  # slot_device d runs on device_ids[d]
    _write_json(args.out, doc)
    current = loads if loads.ndim == 2 else loads[-1]
    sc = placement.score(current)
    rule = "even" if placement.slot_share is None else "shares"
    summary = {
        "out": args.out,
        "policy": placement.policy.value,
        "rule": rule,
        **sc.to_json(),
        "seconds": placement.seconds,
    }
    if placement.weight_moves is not None:
        summary["weight_moves"] = placement.weight_moves
    if args.traffic_tokens and current.sum() > 0:
        import numpy as np

        from xpod.runtime.moe.simulate import simulate_traffic

        # 4 layers spread over those that route tokens (an SGLang dump also lists the dense layers, all zero)
        routed = np.nonzero(current.sum(axis=1) > 0)[0]
        layers = sorted({int(routed[i]) for i in np.linspace(0, len(routed) - 1, 4).astype(int)}) if len(routed) else []
        tr = simulate_traffic(
            current,
            placement.phy2log,
            placement.slot_device,
            placement.device_node,
            placement.slot_share,
            layers,
            tokens=args.traffic_tokens,
            rule=rule,
        )
        summary.update(
            remote_nodes_per_token=tr.remote_nodes_per_token,
            nodes_per_token=tr.nodes_per_token,
            token_balancedness=tr.dispatch_balancedness,
        )
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"moe place: {args.workload or ', '.join(os.path.basename(f) for f in args.loads)} on {args.devices} devices / {args.nodes} nodes "
        f"x {args.slots} slots"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("policy", placement.policy.value),
        ("dispatch rule (token split over replicas)", rule),
        (f"balancedness (sum mean / sum max, {rule})", f"{sc.balancedness:.4f}"),
        ("worst layer", f"{sc.worst_layer_balancedness:.4f} (layer {sc.worst_layer})"),
        ("max / mean device load", f"{sc.max_over_mean:.4f}"),
        ("node balancedness", f"{sc.node_balancedness:.4f}"),
        ("duplicate replicas on a device", str(sc.duplicates)),
        ("group spread (nodes per group)", f"{sc.group_spread:.2f}"),
        ("weights per device (all layers)", f"{sc.slots_per_device_min}-{sc.slots_per_device_max}"),
    ]
    if "remote_nodes_per_token" in summary:
        rows.append((f"remote nodes per token (simulated, {rule})", f"{summary['remote_nodes_per_token']:.3f}"))
        rows.append((f"nodes per token (simulated, {rule})", f"{summary['nodes_per_token']:.3f}"))
        rows.append(
            (
                f"token-level balancedness (simulated, {args.traffic_tokens} tokens)",
                f"{summary['token_balancedness']:.4f}",
            )
        )
    if placement.weight_moves is not None:
        rows.append(("expert weights moved", str(placement.weight_moves)))
    rows.append(("time", f"{placement.seconds * 1000:.1f} ms"))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
    print(f"wrote {args.out}")
    return 0


def cmd_show(args) -> int:
    import numpy as np

    from xpod.runtime.moe.io import load_placement, read_loads
    from xpod.runtime.moe.score import device_loads

    loads = read_loads(args.loads, args.workload)
    if loads.ndim == 3:
        loads = loads[-1]
    placement = load_placement(args.file, loads.shape)
    dev = device_loads(
        loads, placement.phy2log, placement.slot_device, placement.shape.num_devices, placement.slot_share
    )
    rel = dev / np.maximum(dev.mean(axis=1, keepdims=True), 1e-300)
    sc = placement.score(loads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, dev.shape[1] / 8), max(4, dev.shape[0] / 8)))
    im = ax.imshow(rel, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("device")
    ax.set_ylabel("layer")
    ax.set_title(
        f"{os.path.basename(args.file)} on {args.workload or os.path.basename(args.loads[-1])}: device load / layer mean "
        f"(balancedness {sc.balancedness:.3f})",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="load / mean")
    try:
        fig.savefig(args.png, dpi=100, bbox_inches="tight")
    except OSError as err:
        raise XpodError(f"{args.png}: cannot write: {err.strerror}") from None
    finally:
        plt.close(fig)
    print(f"wrote {args.png}: {dev.shape[0]} layers x {dev.shape[1]} devices, balancedness {sc.balancedness:.4f}")
    return 0


def cmd_export(args) -> int:
    from xpod.runtime.moe.export import ModelShape, to_sglang
    from xpod.runtime.moe.io import load_placement

    placement = load_placement(args.plan)
    model = None
    if args.model_config:
        if args.dense_layers is not None:
            raise XpodError("--dense-layers: the model config already says it (first_k_dense_replace); drop one")
        model = ModelShape.from_hf_config(args.model_config)
    elif args.dense_layers:
        layers = placement.phy2log.shape[0]
        model = ModelShape(layers + args.dense_layers, placement.num_experts, args.dense_layers)
    out = to_sglang(placement, args.plan, placement.num_experts, model, even_split=args.even_split)
    _write_json(args.out, out.document)
    rows = len(out.document["physical_to_logical_map"])
    print(
        f"wrote {args.out}: physical_to_logical_map [{rows}][{placement.phy2log.shape[1]}] "
        f"({placement.phy2log.shape[0]} layers from the plan + {out.dense_rows} dense-layer rows, {placement.num_experts} experts "
        f"+ {out.redundant_experts} redundant, {out.ep_size} EP ranks)"
    )
    if model is None:
        print(
            f"note: SGLang wants one row per model layer (num_hidden_layers); this file has {rows}. "
            "Pass --model-config config.json to check it and add dense layers' rows."
        )
    print(f"sglang flags: {out.flags(args.out)}")
    return 0


def cmd_history(args) -> int:
    """``xpod moe history JOB``: one row per closed window (``-o table|wide|json|tsv``)."""
    import datetime

    from xpod.runtime.cli.jobs import _client
    from xpod.runtime.cli.output import Column, output_format, print_json, print_rows

    with _client(args) as client:
        windows = client.moe_history(args.job)
    fmt = output_format(args)
    if fmt == "json":
        print_json(windows)
        return 0
    columns = [
        Column("WINDOW", justify="right"),
        Column("TIME"),
        Column("TOKENS", justify="right"),
        Column("REPORTS", justify="right", wide=True),
        Column("BALANCE BEFORE", justify="right"),
        Column("BALANCE AFTER", justify="right"),
        Column("MOVES", justify="right"),
        Column("PUBLISHED"),
        Column("PLAN", justify="right"),
        Column("WHY"),
    ]
    rows = []
    for w in windows:
        when = datetime.datetime.fromtimestamp(w["time_s"], datetime.timezone.utc).strftime("%H:%M:%S")
        before = "-" if w["balance_before"] is None else f"{w['balance_before']:.4f}"
        published = ("yes (first plan)" if w["initial"] else "yes") if w["published"] else "no"
        rows.append(
            (w["window"], when, f"{w['tokens']:.0f}", w["reports"], before, f"{w['balance_after']:.4f}",
             w["moves"], published, w["plan_revision"], w["reason"])
        )  # fmt: skip
    published = sum(1 for w in windows if w["published"])
    print_rows(fmt, f"job {args.job}: {len(windows)} window(s), {published} plan(s) published", columns, rows)
    return 0
