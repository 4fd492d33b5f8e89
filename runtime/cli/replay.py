"""``xpod replay openb`` (and ``jobs``, in ``replay_jobs``; ``mix``, in ``replay_mix``): a trace replayed
through ``xpod server``'s own scheduler (``xpod.scheduler.sim``)."""

from __future__ import annotations

import json
import os
import sys

from xpod.hal.errors import XpodError

#: where ``--policy NAME`` finds ``NAME.yaml`` (a source checkout's examples/profiles)
PROFILES_DIR = os.path.join("examples", "profiles")
DEFAULT_PROFILE_FILE = os.path.join(PROFILES_DIR, "scheduler-default.yaml")


def register(commands) -> None:
    rp = commands.top.add_parser(
        "replay",
        help="trace replays through the scheduler (openb: the FGD paper's experiment; jobs: a job trace over time)",
    )
    sub = rp.add_subparsers(dest="replay_command", metavar="TRACE")
    from . import replay_mix

    replay_mix.add_parser(sub)
    rp.set_defaults(func=lambda args: (rp.print_help(sys.stderr), 2)[1])
    o = sub.add_parser(
        "openb",
        help="replay an Alibaba openb pod list against its node list (FGD, ATC'23)",
        description=(
            "Shuffle the pod list with --seed, tune it to --load x the GPU capacity, let pods only arrive, one per "
            "virtual second, and let the scheduler core that 'xpod server' runs place each in the cycle after its "
            "arrival (a pod it does not place fails); report GPU allocation and fragmentation against arrived load. "
            "The profile is the server's default unless --profile or --policy names another."
        ),
    )
    o.add_argument("--nodes", required=True, metavar="CSV", help="openb node list (sn,cpu_milli,memory_mib,gpu,model)")
    o.add_argument("--pods", required=True, metavar="CSV", help="openb pod list (.csv or .csv.gz)")
    which = o.add_mutually_exclusive_group()
    which.add_argument(
        "--profile",
        metavar="FILE",
        help=f"scheduler profile YAML (default: the one 'xpod server' runs, {DEFAULT_PROFILE_FILE})",
    )
    which.add_argument(
        "--policy",
        metavar="NAME",
        help=f"shorthand for --profile naming the profile NAME in {PROFILES_DIR} (default, fgd, bestfit, random, ...); "
        "several names separated by commas replay each",
    )
    o.add_argument(
        "--load", type=float, default=1.3, help="arrived GPU request as a multiple of capacity (default 1.3)"
    )
    o.add_argument("--seed", type=int, default=42, help="shuffle / sampling seed (the paper uses 42..51)")
    o.add_argument(
        "--no-history",
        action="store_true",
        help="do not show the workload-learning plugins the pod list first (they learn from arrivals only)",
    )
    o.add_argument("--json", metavar="OUT", help="write results as JSON ('-' for stdout)")
    o.add_argument("--placements", metavar="CSV", help="write pod,node,gpu_indices,gpu_milli (one profile only)")
    o.add_argument("--plot", metavar="PNG", help="draw GPU allocation and fragmentation against arrived load")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_replay_openb)

    from . import replay_jobs

    replay_jobs.add_parser(sub, PROFILES_DIR, DEFAULT_PROFILE_FILE)


def _repo_root() -> str:
    """The source checkout this xpod runs from (an editable install), for examples/."""
    import xpod

    return os.path.dirname(os.path.dirname(os.path.abspath(xpod.__file__)))


def resolve_profiles(profile: str | None, policy: str | None) -> list[tuple[str, object]]:
    """(label, Profile) pairs for --profile / --policy (the built-in default without either)."""
    from xpod.scheduler.core.profile import default_profile, load_profile

    if profile:
        return [(profile, load_profile(profile))]
    if not policy:
        return [(f"{DEFAULT_PROFILE_FILE} (built in)", default_profile())]
    names = [p.strip() for p in policy.split(",") if p.strip()]
    if not names:
        raise XpodError("--policy: give at least one profile name")
    out = []
    for name in names:
        if os.sep in name or name.endswith(".yaml"):
            raise XpodError(f"--policy {name}: a name from {PROFILES_DIR}/ (e.g. fgd); pass a file with --profile")
        rel = DEFAULT_PROFILE_FILE if name == "default" else os.path.join(PROFILES_DIR, f"{name}.yaml")
        for base in (os.getcwd(), _repo_root()):
            path = os.path.join(base, rel)
            if os.path.isfile(path):
                out.append((rel, load_profile(path)))
                break
        else:
            raise XpodError(
                f"--policy {name}: no profile {rel} here or in the xpod checkout; pass --profile FILE "
                "(or run from a checkout of xpod)"
            )
    return out


def write_json(path: str | None, out: object) -> None:
    """``--json``: the replay's document to ``path`` ('-': stdout; None: nowhere)."""
    if path == "-":
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif path:
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=2)
                f.write("\n")
        except OSError as err:
            raise XpodError(f"--json {path}: cannot write: {err.strerror}") from None


def cmd_replay_openb(args) -> int:
    from xpod.scheduler.sim import openb

    if not (0 < args.load <= 10):
        raise XpodError(f"--load: {args.load} must be in (0, 10] (1.3 = 130 % of GPU capacity)")
    for flag, path in (("--json", args.json), ("--placements", args.placements), ("--plot", args.plot)):
        if path and path != "-":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise XpodError(f"{flag} {path}: directory {parent} does not exist")
    profiles = resolve_profiles(args.profile, args.policy)
    if args.placements and len(profiles) > 1:
        raise XpodError("--placements: writes one profile's placements; name a single --policy")
    nodes = openb.load_nodes(args.nodes)
    pods = openb.load_pods(args.pods)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=args.no_progress,
    ) as progress:
        for label, prof in profiles:
            task = progress.add_task(f"{os.path.basename(label.split(' ')[0])} seed {args.seed}", total=None)

            def cb(done: int, total: int, task=task) -> None:
                progress.update(task, completed=done, total=total)

            results.append(
                openb.replay(
                    nodes,
                    pods,
                    prof,
                    profile_name=label,
                    load=args.load,
                    seed=args.seed,
                    history=not args.no_history,
                    progress=cb,
                )
            )
    docs = []
    for r in results:
        d = r.to_json()
        d.update(nodes_file=args.nodes, pods_file=args.pods, history=not args.no_history)
        docs.append(d)
    out = docs[0] if len(docs) == 1 else {"runs": docs}
    write_json(args.json, out)
    if args.placements:
        openb.write_placements(args.placements, results[0].placements)
    if args.plot:
        plot_replays(results, args.plot, os.path.basename(args.pods))
    if args.json != "-":
        for r in results:
            never = f", {r.pods_never_fit} can never fit" if r.pods_never_fit else ""
            print(
                f"{r.profile}, seed {r.seed}: GPU allocation {r.alloc_pct:.2f} % at {r.arrived_pct:.1f} % arrived "
                f"({r.pods_placed}/{r.pods_arrived} pods placed{never}; {r.seconds:.1f} s, {r.cpu_seconds:.1f} s of CPU)"
            )
    return 0


def plot_replays(results, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        name = os.path.basename(r.profile.split(" ")[0]).removesuffix(".yaml")
        xs = list(range(len(r.alloc_curve_pct)))
        ax.plot(xs, r.alloc_curve_pct, label=f"{name} ({r.alloc_pct:.2f} %)")
        bx.plot(xs, r.frag_curve_pct, label=name)
    ax.plot([0, 100], [0, 100], color="grey", linewidth=0.6, linestyle=":")
    ax.set_ylabel("GPU allocation (% of capacity)")
    ax.set_ylim(0, 100)
    bx.set_ylabel("fragmented GPU (% of capacity, FGD Fig. 7a)")
    for a in (ax, bx):
        a.set_xlabel("arrived GPU request (% of capacity)")
        a.set_xlim(0, max(len(r.alloc_curve_pct) for r in results))
        a.grid(alpha=0.3)
        a.legend(loc="lower right" if a is ax else "upper left", fontsize=8)
    fig.suptitle(f"openb {title}, seed {results[0].seed}, through the xpod scheduler")
    fig.tight_layout()
    from .output import save_figure

    save_figure(fig, path)
