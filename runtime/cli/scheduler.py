"""``xpod bench scheduler``."""

from __future__ import annotations

import json
import sys

from xpod.hal.errors import XpodError


def register(commands) -> None:
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
