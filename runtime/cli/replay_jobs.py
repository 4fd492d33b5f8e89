"""``xpod replay jobs``: a job trace (Philly's format) replayed through ``xpod server``'s own
scheduler over virtual time (``xpod.scheduler.sim.jobs``)."""

from __future__ import annotations

import math
import os

from xpod.hal.errors import XpodError


def add_parser(sub, profiles_dir: str, default_profile_file: str) -> None:
    """The ``jobs`` subcommand of ``xpod replay`` (``sub``: its subparsers)."""
    j = sub.add_parser(
        "jobs",
        help="replay a job trace (Philly's format) on a cluster file through the scheduler, over virtual time",
        description=(
            "Every trace row becomes a training job (a gang) of the size the cluster's rules allow (1 trace GPU = 1 "
            "schedulable device; on Ascend 910C: 1 or an even number of dies up to 16, larger jobs in 16-die tasks "
            "in one logical super-pod), submitted at submit_s, running duration_s unless evicted (an eviction costs "
            "the progress since the last checkpoint plus a restart). The scheduler core 'xpod server' runs places "
            "them, with the server's default profile unless --profile or --policy names another. Metrics cover the "
            "jobs submitted in [--from, --to); the jobs submitted before it are replayed too, so the cluster is as "
            "busy as the trace had it."
        ),
    )
    j.add_argument("--cluster", required=True, metavar="FILE", help="cluster descriptor YAML (e.g. cloudmatrix384)")
    j.add_argument(
        "--trace",
        required=True,
        metavar="CSV",
        help="job trace: job_id,submit_s,duration_s,num_devices[,device_milli,device_type,vc] (.csv or .csv.gz)",
    )
    j.add_argument(
        "--from", dest="from_s", type=float, metavar="S", help="window start, trace seconds (default: first)"
    )
    j.add_argument("--to", dest="to_s", type=float, metavar="S", help="window end, exclusive (default: after the last)")
    j.add_argument(
        "--warmup",
        type=float,
        metavar="S",
        help="replay only the jobs submitted this long before --from (default: every earlier job)",
    )
    which = j.add_mutually_exclusive_group()
    which.add_argument(
        "--profile",
        metavar="FILE",
        help=f"scheduler profile YAML (default: the one 'xpod server' runs, {default_profile_file})",
    )
    which.add_argument(
        "--policy",
        metavar="NAME",
        help=f"shorthand for --profile naming the profile NAME in {profiles_dir} (default, fifo, easy-backfill, tiresias, volcano); "
        "several names separated by commas replay each",
    )
    j.add_argument(
        "--checkpoint-every",
        type=float,
        default=1800.0,
        metavar="S",
        help="a job checkpoints every S seconds of progress; an eviction loses what came after (default 1800)",
    )
    j.add_argument(
        "--restart", type=float, default=60.0, metavar="S", help="restart cost after an eviction (default 60)"
    )
    j.add_argument(
        "--estimate-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="jobs declare F x their trace duration as expected_duration_seconds (default 1: exact)",
    )
    j.add_argument(
        "--tick",
        type=float,
        default=60.0,
        metavar="S",
        help="a scheduling cycle every S seconds while jobs wait, besides one at every event (default 60; 0: none)",
    )
    j.add_argument("--json", metavar="OUT", help="write results as JSON ('-' for stdout)")
    j.add_argument("--plot", metavar="PNG", help="draw utilisation and queue length over time")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=cmd_replay_jobs)


def _check_args(args) -> None:
    for flag, v in (("--from", args.from_s), ("--to", args.to_s), ("--warmup", args.warmup)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise XpodError(f"{flag}: {v} must be a number of seconds >= 0")
    if args.from_s is not None and args.to_s is not None and args.to_s <= args.from_s:
        raise XpodError(f"--to: {args.to_s:g} must be after --from {args.from_s:g}")
    if not (math.isfinite(args.checkpoint_every) and args.checkpoint_every > 0):
        raise XpodError(f"--checkpoint-every: {args.checkpoint_every} must be a positive number of seconds")
    if not (math.isfinite(args.restart) and args.restart >= 0):
        raise XpodError(f"--restart: {args.restart} must be a number of seconds >= 0")
    if not (math.isfinite(args.estimate_factor) and args.estimate_factor > 0):
        raise XpodError(f"--estimate-factor: {args.estimate_factor} must be a positive number")
    if not (math.isfinite(args.tick) and args.tick >= 0):
        raise XpodError(f"--tick: {args.tick} must be a number of seconds >= 0 (0: no periodic cycle)")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and path != "-":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise XpodError(f"{flag} {path}: directory {parent} does not exist")


def cmd_replay_jobs(args) -> int:
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.sim import jobs as sim_jobs
    from xpod.scheduler.sim.trace import read_trace

    from .replay import resolve_profiles, write_json

    _check_args(args)
    profiles = resolve_profiles(args.profile, args.policy)
    nodes, fabric = load_inventory(args.cluster)
    if not nodes:
        raise XpodError(f"{args.cluster}: the cluster has no nodes to replay on")
    trace = read_trace(args.trace)
    if not trace:
        raise XpodError(f"{args.trace}: no jobs in the trace")
    settings = sim_jobs.ReplaySettings(
        from_s=args.from_s,
        to_s=args.to_s,
        warmup_s=math.inf if args.warmup is None else args.warmup,
        checkpoint_every_s=args.checkpoint_every,
        restart_s=args.restart,
        estimate_factor=args.estimate_factor,
        tick_s=args.tick or None,
    )
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    runs = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("jobs arrived"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.no_progress,
    ) as progress:
        for label, prof in profiles:
            task = progress.add_task(os.path.basename(label.split(" ")[0]), total=None)

            def cb(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            runs.append(
                sim_jobs.run_replay(
                    trace, nodes, prof, fabric=fabric, profile_name=label, settings=settings, progress=cb
                )
            )
    lo = args.from_s if args.from_s is not None else min(tj.submit_s for tj in trace)
    hi = args.to_s if args.to_s is not None else max(tj.submit_s for tj in trace) + 1.0
    results = [run.window(lo, hi) for run in runs]
    docs = []
    for r in results:
        d = r.to_json()
        d.update(
            cluster_file=args.cluster,
            trace_file=args.trace,
            checkpoint_every_s=args.checkpoint_every,
            restart_s=args.restart,
            estimate_factor=args.estimate_factor,
            tick_s=args.tick,
        )
        docs.append(d)
    out = docs[0] if len(docs) == 1 else {"runs": docs}
    write_json(args.json, out)
    if args.plot:
        plot_runs(runs, (lo, hi), args.plot, f"{os.path.basename(args.trace)} on {os.path.basename(args.cluster)}")
    if args.json != "-":
        for r in results:
            print(summary_line(r))
    return 0


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f} s"


def summary_line(r) -> str:
    """One line a person reads for a window's result."""
    never = f", {r.never_fit} can never fit" if r.never_fit else ""
    large = f", longest wait of a job of >= 64 devices {_s(r.max_wait_s_large)}" if r.large_jobs else ""
    return (
        f"{r.profile}: {r.finished}/{r.jobs} jobs finished{never}; JCT mean {_s(r.mean_jct_s)}, p50 "
        f"{_s(r.p50_jct_s)}, p99 {_s(r.p99_jct_s)}; wait mean {_s(r.mean_wait_s)}; utilisation "
        f"{100 * r.utilisation:.1f} %; {r.preemptions} preemptions; {r.violations} violations{large} "
        f"({r.seconds:.1f} s)"
    )


def plot_runs(runs, window: tuple[float, float], path: str, title: str) -> None:
    """Devices allocated (% of the cluster) and jobs waiting over time, one line per profile,
    the measured window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    day = 86400.0
    for run in runs:
        t, used, queue = run.curve()
        if not t:
            continue
        name = os.path.basename(run.profile_name.split(" ")[0]).removesuffix(".yaml")
        days = [x / day for x in t]
        ax.plot(days, [100 * u / run.capacity for u in used], label=name, linewidth=0.8)
        bx.plot(days, queue, label=name, linewidth=0.8)
    for a in (ax, bx):
        a.axvspan(window[0] / day, window[1] / day, color="grey", alpha=0.12, linewidth=0)
        a.grid(alpha=0.3)
        a.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("devices allocated (%)")
    ax.set_ylim(0, 105)
    bx.set_ylabel("jobs waiting")
    bx.set_xlabel("trace time (days); the measured window shaded")
    fig.suptitle(f"{title}, through the xpod scheduler")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise XpodError(f"--plot {path}: cannot write: {err.strerror}") from None
    finally:
        plt.close(fig)
