"""``xpod replay mix``: serving that follows an LLM inference trace and Philly training in the
background, one virtual hour through ``xpod server``'s own scheduler
(``xpod.scheduler.sim.mix``)."""

from __future__ import annotations

import json
import os
import sys

from xpod.hal.errors import XpodError


def add_parser(sub) -> None:
    """The ``mix`` subcommand of ``xpod replay`` (``sub``: its subparsers)."""
    m = sub.add_parser(
        "mix",
        help="serving that follows an LLM inference trace, Philly training in the background, one virtual hour",
        description=(
            "One virtual hour on a cluster file through the scheduler 'xpod server' runs: a serving job (a ServingJob "
            "file with autoscale) whose replicas report the load of an LLM inference trace (Azure's CSV or "
            "Mooncake's JSONL; the load per 10 s interval scaled so its peak needs --peak-replicas replicas), and "
            "training jobs of a Philly-format trace from --training-from (elastic down to half of their tasks). "
            "Reports slo_attainment, scale_up_p99_s, training_device_hours, gang_restarts, preemptions, "
            "utilisation. With no --profile: the default profile, then the static-partition and reactive-hpa "
            "baselines (scheduler/sim/profiles/)."
        ),
    )
    m.add_argument("--cluster", required=True, metavar="FILE", help="cluster descriptor YAML (e.g. cloudmatrix384)")
    m.add_argument(
        "--serving", required=True, metavar="TRACE", help="LLM inference trace (.csv Azure, .jsonl Mooncake)"
    )
    m.add_argument(
        "--serving-job",
        required=True,
        metavar="YAML",
        help="a ServingJob file with autoscale, or with roles that each have autoscale (which tokens each role "
        "follows: --role-tokens)",
    )
    m.add_argument(
        "--role-tokens",
        metavar="ROLE=KIND,...",
        help="for a serving job with roles: the tokens of the trace each role's tokens_per_s follows, KIND one of "
        "prompt (Azure's ContextTokens, Mooncake's input_length), generated (GeneratedTokens, output_length) or "
        "both; a role not named follows both (default: prefill=prompt,decode=generated, for the roles the job has)",
    )
    m.add_argument("--peak-replicas", required=True, type=int, metavar="R", help="replicas the trace's peak needs")
    m.add_argument("--training", required=True, metavar="CSV", help="job trace: job_id,submit_s,duration_s,num_devices")
    m.add_argument(
        "--training-from", type=float, default=0.0, metavar="S", help="seconds into the training trace (default 0)"
    )
    m.add_argument(
        "--profile",
        metavar="FILE",
        action="append",
        help="scheduler profile YAML; repeat for several (default: the default profile and the two baselines)",
    )
    m.add_argument("--json", metavar="OUT", help="write the results as JSON ('-' for stdout)")
    m.add_argument("--plot", metavar="PNG", help="draw demand, ready serving capacity and training devices over time")
    m.add_argument(
        "--hour", type=float, default=3600.0, metavar="S", help="virtual seconds measured (default 3600; demo: less)"
    )
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_replay_mix)


def _profiles(args) -> list[tuple[str, object]]:
    from xpod.scheduler.core.profile import load_profile
    from xpod.scheduler.sim import mix

    if args.profile:
        return [(os.path.splitext(os.path.basename(p))[0], load_profile(p)) for p in args.profile]
    return list(mix.profiles_to_compare())


def cmd_replay_mix(args) -> int:
    from xpod.scheduler.sim import mix

    if not args.hour > 0:
        raise XpodError(f"--hour: {args.hour} must be > 0")
    if args.training_from < 0:
        raise XpodError(f"--training-from: {args.training_from} must be >= 0")
    if args.role_tokens is not None:
        mix.parse_role_tokens(args.role_tokens)  # its syntax and kinds, before any file is read
    settings = mix.MixSettings(hour_s=args.hour, training_from_s=args.training_from)
    results = []

    def replay(name, profile, progress=None):
        return mix.run_mix(
            args.cluster,
            args.serving,
            args.serving_job,
            args.peak_replicas,
            args.training,
            profile,
            name,
            settings,
            progress=progress,
            role_tokens_text=args.role_tokens,
        )

    for name, profile in _profiles(args):
        if args.no_progress or not sys.stderr.isatty():
            r = replay(name, profile)
        else:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"mix {name}", total=args.hour)
                r = replay(name, profile, lambda done, total: bar.update(task, completed=done))
        results.append(r)
    print_table(results)
    docs = [r.to_json() for r in results]
    if args.json:
        text = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            try:
                with open(args.json, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError as err:
                raise XpodError(f"--json {args.json}: cannot write: {err.strerror}") from None
    if args.plot:
        plot_mix(results, args.plot, os.path.basename(args.serving))
    return 0


def print_table(results) -> None:
    from .output import print_table as show
    from .output import table

    t = table("xpod replay mix (virtual-clock engine, scheduler/sim/engine.py: the cycle xpod server runs)")
    for col in (
        "profile",
        "SLO attainment",
        "scale-up p99 s",
        "training dev-h",
        "serving dev-h",
        "gang restarts",
        "preemptions",
        "shrinks",
        "utilisation",
        "violations",
        "seconds",
    ):
        t.add_column(col, justify="left" if col == "profile" else "right")
    for r in results:
        t.add_row(
            r.profile,
            f"{r.slo_attainment:.4f}",
            f"{r.scale_up_p99_s:.0f}",
            f"{r.training_device_hours:.1f}",
            f"{r.serving_device_hours:.1f}",
            str(r.gang_restarts),
            str(r.preemptions),
            str(r.shrinks),
            f"{r.utilisation:.3f}",
            str(r.violations),
            f"{r.seconds:.1f}",
        )
    show(t)


def plot_mix(results, path: str, title: str) -> None:
    """Demand and ready serving capacity (replicas) above, training devices below, per profile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    first = results[0]
    minutes = [t / 60 for t in first.curve_t]
    top.plot(minutes, first.curve_demand, color="black", linewidth=1.0, label="demand (replicas)")
    for r in results:
        top.step(
            minutes, r.curve_ready, where="post", linewidth=0.9, label=f"{r.profile}: ready ({r.slo_attainment:.3f})"
        )
        bottom.step(
            minutes,
            r.curve_training,
            where="post",
            linewidth=0.9,
            label=f"{r.profile}: {r.training_device_hours:.0f} device-hours",
        )
    top.set_ylabel("serving replicas")
    top.set_title(f"xpod replay mix: {title}, peak {first.peak_replicas} replicas, {first.devices} devices")
    top.legend(loc="upper right", fontsize=7)
    top.grid(alpha=0.3)
    bottom.set_ylabel("training devices")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="lower right", fontsize=7)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    from .output import save_figure

    save_figure(fig, path)
