"""Serving that follows its demand and Philly training in the background on the simulated
CloudMatrix384: ``xpod replay mix`` over several training windows and both conversation traces.

    .venv/bin/python bench/replay_mix.py [--days 20,25,...,70] [--traces azure,mooncake] [--json OUT]

For each serving trace (bench/data/mix: the Azure 2023 conversation trace and the Mooncake
FAST'25 conversation trace, peak scaled to 40 replicas of 8 dies) and each training window (the
hour starting at day D of the Philly trace), replays the default profile and the two baselines
(scheduler/sim/profiles/static-partition.yaml, reactive-hpa.yaml) and prints one row per run, then
the ratios the issue's targets name: default training device-hours over static-partition's and
reactive-hpa's, gang restarts against reactive-hpa's. These two traces are the ones the default
was looked at on (issue 14); report figures on other traces as the test.
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
    ap.add_argument("--json", metavar="OUT", help="write every run as JSON")
    args = ap.parse_args(argv)
    profiles = mix.profiles_to_compare()
    runs = []
    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    head = f"{'trace':9} {'day':>3} {'profile':17} {'SLO':>6} {'p99 s':>5} {'train dh':>8} {'serve dh':>8} "
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
                    f"{tname:9} {day:>3} {name:17} {r.slo_attainment:6.4f} {r.scale_up_p99_s:5.0f} "
                    f"{r.training_device_hours:8.1f} {r.serving_device_hours:8.1f} {r.gang_restarts:8d} "
                    f"{r.preemptions:7d} {r.shrinks:6d} {r.utilisation:5.3f} {r.violations:4d} {r.seconds:5.1f}"
                )
            d, s, h = row["default"], row["static-partition"], row["reactive-hpa"]
            print(
                f"{'':13} ratios: training vs static {d.training_device_hours / s.training_device_hours:.3f}, "
                f"vs reactive-hpa {d.training_device_hours / h.training_device_hours:.3f}; "
                f"restarts {d.gang_restarts} vs {h.gang_restarts}"
            )
            sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
