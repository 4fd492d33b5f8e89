"""``xpod replay openb`` and ``xpod bench scheduler``."""

from __future__ import annotations

import json
import os
import sys

from xpod.hal.errors import XpodError

REPLAY_POLICIES = ("random", "bestfit", "fgd", "default")


def register(commands) -> None:
    rp = commands.top.add_parser("replay", help="trace replays (the FGD paper's openb experiment)")
    sub = rp.add_subparsers(dest="replay_command", metavar="TRACE")
    rp.set_defaults(func=lambda args: (rp.print_help(sys.stderr), 2)[1])
    o = sub.add_parser(
        "openb",
        help="replay an Alibaba openb pod list against its node list (FGD, ATC'23)",
        description=(
            "Shuffle the pod list with --seed, tune it to --load x the GPU capacity, let pods only "
            "arrive and place each once with --policy (score ties to a fixed end of the node list); report GPU "
            "allocation against arrived load."
        ),
    )
    o.add_argument("--nodes", required=True, metavar="CSV", help="openb node list (sn,cpu_milli,memory_mib,gpu,model)")
    o.add_argument("--pods", required=True, metavar="CSV", help="openb pod list")
    o.add_argument(
        "--policy",
        default="default",
        metavar="P",
        help=f"one of {', '.join(REPLAY_POLICIES)}, or several separated by commas (default: default)",
    )
    o.add_argument(
        "--load", type=float, default=1.3, help="arrived GPU request as a multiple of capacity (default 1.3)"
    )
    o.add_argument("--seed", type=int, default=42, help="shuffle / sampling seed (the paper uses 42..51)")
    o.add_argument("--json", metavar="OUT", help="write results as JSON ('-' for stdout)")
    o.add_argument("--placements", metavar="CSV", help="write pod,node,gpu_indices,gpu_milli (one policy only)")
    o.add_argument("--plot", metavar="PNG", help="draw GPU allocation against arrived load for every policy run")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_replay_openb)

    b = commands.bench.add_parser(
        "scheduler",
        help="placement decisions per second with N queued jobs",
        description="Queue N mixed jobs (training gangs, serving replicas, fractional and batch jobs) on a cluster and time the scheduling cycles.",
    )
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--cluster", metavar="FILE", help="cluster descriptor YAML (see 'xpod cluster validate')")
    src.add_argument("--synthetic-nodes", type=int, metavar="N", help="N identical 8-GPU nodes instead of a descriptor")
    b.add_argument("--pending", type=int, required=True, metavar="N", help="jobs queued before the first cycle")
    b.add_argument(
        "--workload",
        choices=("mixed", "single-device"),
        default="mixed",
        help="mixed jobs or kube-style one-device pods",
    )
    b.add_argument("--cycles", type=int, default=20, help="steady-state cycles after the cold pass (default 20)")
    b.add_argument("--seed", type=int, default=0, help="seed of the generated workload (default 0)")
    b.add_argument("--profile", metavar="YAML", help="scheduler profile (actions and policies)")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench_scheduler)


def _policies(arg: str) -> list[str]:
    names = [p.strip() for p in arg.split(",") if p.strip()]
    if not names:
        raise XpodError("--policy: give at least one policy")
    for n in names:
        if n not in REPLAY_POLICIES:
            raise XpodError(f"--policy: unknown policy {n!r}; choose from {', '.join(REPLAY_POLICIES)}")
    return names


def cmd_replay_openb(args) -> int:
    from xpod.scheduler.replay import openb

    policies = _policies(args.policy)
    if args.placements and len(policies) > 1:
        raise XpodError("--placements: writes one policy's placements; pass a single --policy")
    if not (0 < args.load <= 10):
        raise XpodError(f"--load: {args.load} must be in (0, 10] (1.3 = 130 % of GPU capacity)")
    for flag, path in (("--json", args.json), ("--placements", args.placements), ("--plot", args.plot)):
        if path and path != "-":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise XpodError(f"{flag} {path}: directory {parent} does not exist")
    nodes = openb.load_nodes(args.nodes)
    pods = openb.load_pods(args.pods)
    results = []
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.no_progress,
        transient=False,
    ) as progress:
        for pol in policies:
            task = progress.add_task(f"{pol} seed {args.seed}", total=None)

            def cb(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            results.append(openb.replay(nodes, pods, pol, load=args.load, seed=args.seed, progress=cb))
    docs = []
    for r in results:
        d = r.to_json()
        d.update(nodes_file=args.nodes, pods_file=args.pods)
        docs.append(d)
    out = docs[0] if len(docs) == 1 else {"runs": docs}
    if args.json == "-":
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2)
                f.write("\n")
        except OSError as err:
            raise XpodError(f"--json {args.json}: cannot write: {err.strerror}") from None
    if args.placements:
        openb.write_placements(args.placements, results[0].placements)
    if args.plot:
        plot_replays(results, args.plot, os.path.basename(args.pods))
    if args.json != "-":
        for r in results:
            print(
                f"{r.policy:8s} seed {r.seed}: GPU allocation {r.alloc_pct:.2f} % at {r.arrived_pct:.1f} % arrived "
                f"({r.pods_placed}/{r.pods_arrived} pods placed, {r.seconds:.1f} s)"
            )
    return 0


def plot_replays(results, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        xs = list(range(len(r.alloc_curve_pct)))
        ax.plot(xs, r.alloc_curve_pct, label=f"{r.policy} ({r.alloc_pct:.2f} %)")
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("arrived GPU request (% of capacity)")
    ax.set_ylabel("GPU allocation (% of capacity)")
    ax.set_title(f"openb {title}, seed {results[0].seed}")
    ax.set_xlim(0, max(len(r.alloc_curve_pct) for r in results))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise XpodError(f"--plot {path}: cannot write: {err.strerror}") from None
    finally:
        plt.close(fig)


def cmd_bench_scheduler(args) -> int:
    from xpod.scheduler.core import bench
    from xpod.scheduler.core.profile import load_profile

    if args.pending < 1:
        raise XpodError(f"--pending: {args.pending} must be at least 1")
    if args.cycles < 0:
        raise XpodError(f"--cycles: {args.cycles} must be >= 0")
    if args.cluster:
        from xpod.scheduler.core.from_cluster import load_inventory

        nodes, fabric = load_inventory(args.cluster)
        source = args.cluster
    else:
        if args.synthetic_nodes < 1:
            raise XpodError(f"--synthetic-nodes: {args.synthetic_nodes} must be at least 1")
        nodes, fabric = bench.synthetic_nodes(args.synthetic_nodes), None
        source = f"synthetic {args.synthetic_nodes} x 8 GPUs"
    if not any(n.devices for n in nodes):
        raise XpodError(f"{source}: no accelerator devices to schedule")
    profile = load_profile(args.profile) if args.profile else None
    if args.workload == "mixed":
        jobs = bench.mixed_jobs(nodes, args.pending, args.seed)
    else:
        model = next(d.model for n in nodes for d in n.devices)
        jobs = bench.single_device_jobs(args.pending, model)
    r = bench.run(nodes, jobs, max_cycles=1 + args.cycles, profile=profile, fabric=fabric)
    doc = r.to_json()
    doc.update(cluster=source, workload=args.workload)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(
        f"{source}: {r.nodes} nodes, {r.devices} devices, {r.pending} jobs queued ({args.workload})\n"
        f"  cold pass: {r.cold_decisions} decisions ({r.cold_placements} placed) in {r.cold_cycle_seconds:.3f} s\n"
        f"  {r.cycles} cycles: {r.decisions} decisions, {r.placements} jobs placed in {r.cycle_seconds:.3f} s\n"
        f"  decisions_per_s {r.decisions_per_s:.0f}, placements_per_s {r.placements_per_s:.0f}, "
        f"p50 cycle {r.p50_cycle_seconds * 1000:.1f} ms, p99 cycle {r.p99_cycle_seconds * 1000:.1f} ms\n"
        f"  placed by kind: {', '.join(f'{k} {n}' for k, n in r.placed_by_kind.items()) or 'none'}; {r.evictions} evictions"
    )
    return 0
