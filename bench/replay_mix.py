"""Serving that follows its demand and Philly training in the background on the simulated
CloudMatrix384: ``xpod replay mix`` over several training windows and both conversation traces.

    .venv/bin/python bench/replay_mix.py [--days 20,25,...,70] [--traces azure,mooncake] [--json OUT] [--plot PNG]

For each serving trace (bench/data/mix: the Azure 2023 conversation trace and the Mooncake
FAST'25 conversation trace, peak scaled to 40 replicas of 8 dies) and each training window (the
hour starting at day D of the Philly trace), replays the default profile and the two baselines
(scheduler/sim/profiles/static-partition.yaml, reactive-hpa.yaml) and prints one row per run, then
the ratios the issue's targets name: default training device-hours over static-partition's and
reactive-hpa's, gang restarts against reactive-hpa's, and their means over the windows. Every run
is ``xpod replay mix``'s replay (``xpod.scheduler.sim.mix`` on the virtual-clock engine). These two
traces are the ones the default was looked at on (issue 14); report figures on other traces as
the test. ``--plot``: training device-hours and SLO attainment per window, one panel per trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "mix")
TRACES = {
    "azure": os.path.join(DATA, "AzureLLMInferenceTrace_conv.csv.gz"),
    "mooncake": os.path.join(DATA, "mooncake_conversation_trace.jsonl.gz"),
}
JOB = os.path.join(ROOT, "examples", "jobs", "chat-autoscale.yaml")
CLUSTER = os.path.join(ROOT, "examples", "clusters", "cloudmatrix384.yaml")
TRAINING = os.path.join(DATA, "philly_days20-70_hours.csv.gz")


def main(argv=None) -> int:
    from xpod.scheduler.sim import mix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", default="20,25,30,35,40,45,50,55,60,65,70", help="training windows (days into Philly)")
    ap.add_argument("--traces", default="azure,mooncake", help="serving traces: azure, mooncake, or a file")
    ap.add_argument("--peak-replicas", type=int, default=40)
    ap.add_argument(
        "--also",
        metavar="FILE",
        action="append",
        default=[],
        help="another profile to replay beside them (repeatable), e.g. examples/profiles/serving-follow-70.yaml",
    )
    ap.add_argument("--json", metavar="OUT", help="write every run as JSON")
    ap.add_argument("--plot", metavar="PNG", help="training device-hours and SLO per window and profile")
    args = ap.parse_args(argv)
    from xpod.scheduler.core.profile import load_profile

    profiles = mix.profiles_to_compare()
    profiles += [(os.path.splitext(os.path.basename(f))[0], load_profile(f)) for f in args.also]
    runs = []
    ratios: list[tuple[float, float]] = []
    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    head = f"{'trace':9} {'day':>3} {'profile':18} {'SLO':>6} {'p99 s':>5} {'train dh':>8} {'serve dh':>8} "
    print(head + f"{'restarts':>8} {'preempt':>7} {'shrink':>6} {'util':>5} {'viol':>4} {'sec':>5}")
    for tname in args.traces.split(","):
        trace = TRACES.get(tname, tname)
        for day in [int(d) for d in args.days.split(",")]:
            settings = mix.MixSettings(training_from_s=day * 86400.0)
            row = {}
            for name, prof in profiles:
                r = mix.run_mix(CLUSTER, trace, JOB, args.peak_replicas, TRAINING, prof, name, settings)
                doc = {"trace": tname, "day": day, **r.to_json()}
                runs.append(doc)
                row[name] = r
                print(
                    f"{tname:9} {day:>3} {name:18} {r.slo_attainment:6.4f} {r.scale_up_p99_s:5.0f} "
                    f"{r.training_device_hours:8.1f} {r.serving_device_hours:8.1f} {r.gang_restarts:8d} "
                    f"{r.preemptions:7d} {r.shrinks:6d} {r.utilisation:5.3f} {r.violations:4d} {r.seconds:5.1f}"
                )
            d, s, h = row["default"], row["static-partition"], row["reactive-hpa"]
            ratios.append(
                (d.training_device_hours / s.training_device_hours, d.training_device_hours / h.training_device_hours)
            )
            # the most training the window can keep at default's serving: every device not serving
            # trains (no restart, no idle device); or all the training there is, when static's
            # share already holds it (static kept less than its share: the window is not full)
            room = d.devices * settings.hour_s / 3600.0 - d.serving_device_hours
            static_share = s.devices * settings.hour_s / 3600.0 - s.serving_device_hours
            bound = room if s.training_device_hours >= 0.98 * static_share else s.training_device_hours
            print(
                f"{'':13} ratios: training vs static {d.training_device_hours / s.training_device_hours:.3f}, "
                f"vs reactive-hpa {d.training_device_hours / h.training_device_hours:.3f}; "
                f"restarts {d.gang_restarts} vs {h.gang_restarts}; at most {bound / s.training_device_hours:.3f} "
                f"x static with default's serving"
            )
            sys.stdout.flush()
    if ratios:
        n = len(ratios)
        print(
            f"mean over {n} runs: training vs static {sum(r[0] for r in ratios) / n:.3f} (target >= 1.2), "
            f"vs reactive-hpa {sum(r[1] for r in ratios) / n:.3f} (target >= 1.1)"
        )
    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(runs, f, indent=2)
    if args.plot:
        plot(runs, args.plot)
    return 0


def plot(runs: list[dict], path: str) -> None:
    """Per serving trace: training device-hours (above) and SLO attainment (below) per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r["trace"] for r in runs))
    fig, axes = plt.subplots(2, len(traces), figsize=(5 * len(traces), 6), sharex=True, squeeze=False)
    for col, tname in enumerate(traces):
        top, bottom = axes[0][col], axes[1][col]
        for prof in dict.fromkeys(r["profile"] for r in runs):
            mine = [r for r in runs if r["trace"] == tname and r["profile"] == prof]
            days = [r["day"] for r in mine]
            top.plot(days, [r["training_device_hours"] for r in mine], marker="o", label=prof)
            bottom.plot(days, [r["slo_attainment"] for r in mine], marker="o", label=prof)
        top.set_title(f"{tname}: one hour, peak 40 x 8 dies, CloudMatrix384 (simulated)", fontsize=9)
        top.set_ylabel("training device-hours kept")
        bottom.set_ylabel("SLO attainment")
        bottom.set_xlabel("training window (day of Philly)")
        bottom.axhline(0.995, color="grey", linewidth=0.8, linestyle="--")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
