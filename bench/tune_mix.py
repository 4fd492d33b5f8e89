"""Tune the forecast autoscaling rule's constants (``core.autoscale``) on serving traces and
training windows that are NOT the ones ``bench/replay_mix.py`` reports (issue 14).

    nice -n 19 .venv/bin/python bench/tune_mix.py [--grid small|full] [--json OUT]

Tuning windows: the Azure LLM inference 2023 *code* trace and the Mooncake FAST'25 *synthetic*
trace (bench/data/mix; peak scaled to 40 replicas x 8 dies like the test), each with Philly
training from days 22, 32, 42, 52, 62 (``philly_tune_days22-62_hours.csv.gz``). The test set
(the conversation traces with days 20, 25, ..., 70) is refused here. For each candidate
(``scale_down_after_s``, ``basis_s``, ``rise_quantile``, ``history_s``) every tuning window is
replayed with the default profile and the candidate's keys set in the serving job; a candidate
is admissible when every window keeps SLO attainment and scale-up p99 within ``LIMITS`` (0.995
and 30 s; 0.99 and 40 s on the code trace); the admissible one with the most training
device-hours wins.
``--grid budget`` tries the error budget's keys (``slo_attainment``, ``slo_window_s``). Prints
one line per candidate (sorted) and the baselines' device-hours per window for the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_mix import CLUSTER, DATA, JOB  # noqa: E402 - the replay's own files: the same job and pod

TRACES = {
    "azure-code": os.path.join(DATA, "AzureLLMInferenceTrace_code.csv.gz"),
    "mooncake-synthetic": os.path.join(DATA, "mooncake_synthetic_trace.jsonl.gz"),
}
TRAINING = os.path.join(DATA, "philly_tune_days22-62_hours.csv.gz")
DAYS = (22, 42, 62)
#: the choice rule per tuning trace, (least SLO attainment, largest scale-up p99 s): the issue's
#: (0.995, 30), except (0.99, 40) on the code trace, as the previous tuning admitted it
#: (docs/results.md): its on/off bursts, from nothing to 17 replicas within 10 s, left every
#: forecast candidate tried there 2-3 intervals short, and its first burst one lead time (40 s) late
LIMITS = {"azure-code": (0.99, 40.0), "mooncake-synthetic": (0.995, 30.0)}
GRIDS = {
    "small": {
        "scale_down_after_s": [120.0, 300.0],
        "basis_s": [60.0, 300.0, 600.0],
        "rise_quantile": [1.0, 0.99],
        "history_s": [1800.0, 3600.0],
    },
    # the error budget (core.autoscale): spend rise_quantile while the budget affords a miss
    "budget": {
        "scale_down_after_s": [120.0],
        "basis_s": [300.0, 600.0],
        "rise_quantile": [1.0, 0.99, 0.95, 0.9],
        "slo_attainment": [0.995],
        "slo_window_s": [3600.0, 86400.0],
    },
    "full": {
        "scale_down_after_s": [60.0, 120.0, 180.0, 300.0, 600.0],
        "basis_s": [0.0, 30.0, 60.0, 120.0, 180.0, 300.0],
        "rise_quantile": [1.0, 0.995, 0.99, 0.98],
        "history_s": [900.0, 1800.0, 3600.0],
    },
}


def main(argv=None) -> int:
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.sim import mix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="small")
    ap.add_argument("--days", default=",".join(map(str, DAYS)), help="Philly days (tuning days only)")
    ap.add_argument("--traces", default=",".join(TRACES), help="tuning serving traces")
    ap.add_argument(
        "--candidates", metavar="JSON", help="a JSON list of candidates (objects of autoscale keys) instead of --grid"
    )
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    days = [int(d) for d in args.days.split(",")]
    if any(d % 5 == 0 for d in days) or any(t not in TRACES for t in args.traces.split(",")):
        print("tune_mix.py: tuning windows only (days not a multiple of 5; azure-code, mooncake-synthetic)")
        return 2
    nodes, fabric = load_inventory(CLUSTER)
    settings0 = mix.MixSettings()
    windows = []  # (trace, day, serving job, demand, training)
    for tname in args.traces.split(","):
        job = mix.serving_job_from_file(JOB, 40)
        reqs = mix.read_serving_trace(TRACES[tname])
        span = min(3600.0, max(t for t, _, _ in reqs) + settings0.step_s)
        whole = mix.demand_series(reqs, job.autoscale.metric.value, max(span, 3600.0), settings0.step_s)
        scale = 40 * job.autoscale.target_per_replica / max(whole)
        demand = [v * scale for v in whole[:360]]
        model = job.devices.model
        per_node = max(sum(1 for d in n.devices if d.model == model) for n in nodes)
        total = sum(1 for n in nodes for d in n.devices if d.model == model)
        for day in days:
            st = dataclasses.replace(settings0, training_from_s=day * 86400.0)
            windows.append((tname, day, job, demand, mix.read_training(TRAINING, st, model, per_node, total), st))
    print(f"load average: {open('/proc/loadavg').read().split()[0]}", flush=True)
    base = {}
    for tname, day, job, demand, training, st in windows:
        for name, prof in mix.profiles_to_compare()[1:]:
            r = mix.replay_mix(nodes, fabric, job, demand, training, prof, name, st)
            base[(tname, day, name)] = r.training_device_hours
        print(
            f"baselines {tname} day {day}: static {base[(tname, day, 'static-partition')]:.1f}, "
            f"reactive-hpa {base[(tname, day, 'reactive-hpa')]:.1f}",
            flush=True,
        )
    grid = GRIDS[args.grid]
    keys = list(grid)
    cands = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    if args.candidates:
        cands = json.loads(args.candidates)
    prof = mix.profiles_to_compare()[0][1]
    results = []
    for cand in cands:
        rows = []
        for tname, day, job, demand, training, st in windows:
            j = dataclasses.replace(job, autoscale=dataclasses.replace(job.autoscale, **cand))
            r = mix.replay_mix(nodes, fabric, j, demand, training, prof, "default", st)
            rows.append((tname, day, r))
        ok = all(r.slo_attainment >= LIMITS[t][0] and r.scale_up_p99_s <= LIMITS[t][1] for t, _, r in rows)
        vs_static = sum(r.training_device_hours / base[(t, d, "static-partition")] for t, d, r in rows) / len(rows)
        vs_hpa = sum(r.training_device_hours / base[(t, d, "reactive-hpa")] for t, d, r in rows) / len(rows)
        worst = min(r.slo_attainment for _, _, r in rows)
        restarts = sum(r.gang_restarts for _, _, r in rows)
        per = {}
        for t in dict.fromkeys(t for t, _, _ in rows):
            mine = [r for tt, _, r in rows if tt == t]
            per[t] = {
                "worst_slo": min(r.slo_attainment for r in mine),
                "p99_max": max(r.scale_up_p99_s for r in mine),
                "serving_dh": sum(r.serving_device_hours for r in mine) / len(mine),
                "training_dh": sum(r.training_device_hours for r in mine) / len(mine),
                "restarts": sum(r.gang_restarts for r in mine),
            }
        results.append(
            {
                **cand,
                "admissible": ok,
                "vs_static": vs_static,
                "vs_hpa": vs_hpa,
                "worst_slo": worst,
                "p99_max": max(r.scale_up_p99_s for _, _, r in rows),
                "restarts": restarts,
                "per": per,
            }
        )
        each = "; ".join(
            f"{t}: SLO>={p['worst_slo']:.4f} p99<={p['p99_max']:.0f} serve {p['serving_dh']:.1f} "
            f"train {p['training_dh']:.1f} restarts {p['restarts']}"
            for t, p in per.items()
        )
        print(f"{cand}: ok {ok} vs static {vs_static:.3f} vs hpa {vs_hpa:.3f} | {each}", flush=True)
    results.sort(key=lambda r: (not r["admissible"], -r["vs_static"]))
    print("best admissible:" if results and results[0]["admissible"] else "none admissible; best:", results[0])
    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"baselines": {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in base.items()}, "candidates": results}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
