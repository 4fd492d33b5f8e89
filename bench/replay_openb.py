"""Every openb pod list x policies x seeds, against the FGD authors' published 10-seed means.

    .venv/bin/python bench/replay_openb.py [--lists default,gpushare100] [--policies random,bestfit,fgd,default]
        [--seeds 42,43] [--json OUT]

Data: bench/data/openb/ (the Alibaba cluster-trace-gpu-v2023 CSVs, pod lists gzipped, and the published summary;
SOURCES.md there). For each list and policy it prints our mean allocation at 130 % arrived, the
published mean (baselines) and, for ``default``, the unallocated share against FGD's published
one. A baseline more than 0.5 points from its published mean is flagged: it invalidates the
comparison on that list. ``--lists gpushare60+gpushare100`` replays the concatenation of two
lists (then shuffled and tuned like any list): a synthetic pod list none of the policy's
constants was chosen on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "openb")
PUBLISHED_NAME = {"random": "random", "bestfit": "bestfit", "fgd": "fgd"}


def main(argv=None) -> int:
    from xpod.scheduler.replay import openb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--lists", default="", help="comma-separated list names (default: every list with published results)"
    )
    ap.add_argument("--policies", default="random,bestfit,fgd,default")
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--load", type=float, default=1.3)
    ap.add_argument("--json", help="write every run's summary here")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args(argv)
    pub = openb.load_published(os.path.join(args.data, "summary_by_workload_policy.csv"))
    published_lists = sorted({w for w, _ in pub})
    if args.lists:
        lists = [f"openb_pod_list_{x}" if not x.startswith("openb_pod_list_") else x for x in args.lists.split(",")]
    else:
        lists = [w.replace("openb_pod_list_", "") for w in published_lists]
        lists = [f"openb_pod_list_{x}" for x in lists]
    policies = args.policies.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    nodes = openb.load_nodes(os.path.join(args.data, "openb_node_list_gpu_node.csv"))
    rows, runs = [], []
    print(
        f"{'pod list':28s} {'policy':8s} {'ours alloc%':>11s} {'pub alloc%':>10s} {'diff':>6s} {'unalloc%':>8s} {'FGD pub':>7s} {'vs FGD':>7s} {'s/run':>6s}"
    )
    for wl in lists:
        pods = load_list(openb, args.data, wl)
        for pol in policies:
            allocs, secs = [], []
            for seed in seeds:
                r = openb.replay(nodes, pods, pol, load=args.load, seed=seed)
                allocs.append(r.alloc_pct)
                secs.append(r.seconds)
                runs.append(
                    {
                        "list": wl,
                        "policy": pol,
                        "seed": seed,
                        "alloc_pct": r.alloc_pct,
                        "seconds": r.seconds,
                        "alloc_pct_at_arrived_100": r.alloc_at(100),
                    }
                )
            mean = statistics.fmean(allocs)
            p = pub.get((wl, PUBLISHED_NAME.get(pol, "")), {}).get("alloc_pct_at_arrived_130")
            fgd = pub.get((wl, "fgd"), {}).get("unallocated_pct_at_130")
            diff = f"{mean - p:+.2f}" if p is not None else "-"
            flag = " !" if p is not None and abs(mean - p) > 0.5 else ""
            vs = f"{(100 - mean) / fgd:.3f}" if fgd else "-"
            print(
                f"{wl.replace('openb_pod_list_', ''):28s} {pol:8s} {mean:11.2f} {p if p is not None else '-':>10} {diff:>6s}{flag} {100 - mean:8.2f} {fgd if fgd else '-':>7} {vs:>7s} {statistics.fmean(secs):6.1f}",
                flush=True,
            )
            rows.append(
                {
                    "list": wl,
                    "policy": pol,
                    "seeds": seeds,
                    "alloc_pct_mean": mean,
                    "published_alloc_pct": p,
                    "unallocated_pct": 100 - mean,
                    "fgd_published_unallocated_pct": fgd,
                }
            )
    for pol in policies:
        mine = [r for r in rows if r["policy"] == pol and r["fgd_published_unallocated_pct"]]
        if mine:
            m = statistics.fmean(r["unallocated_pct"] for r in mine)
            f = statistics.fmean(r["fgd_published_unallocated_pct"] for r in mine)
            worst = max(r["unallocated_pct"] / r["fgd_published_unallocated_pct"] for r in mine)
            print(
                f"{pol}: mean unallocated {m:.2f} % over {len(mine)} lists (FGD published {f:.2f} %); worst ratio to FGD {worst:.3f}"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "runs": runs}, f, indent=2)
    return 0


def load_list(openb, data: str, name: str):
    """One pod list, or the concatenation of ``a+b+...`` (pod names prefixed to stay unique)."""
    import numpy as np

    parts = [
        p if p.startswith("openb_pod_list_") else f"openb_pod_list_{p}"
        for p in name.replace("openb_pod_list_", "").split("+")
    ]
    tables = [openb.load_pods(os.path.join(data, f"{p}.csv.gz")) for p in parts]
    if len(tables) == 1:
        return tables[0]
    return openb.PodTable(
        names=tuple(f"{i}-{n}" for i, t in enumerate(tables) for n in t.names),
        cpu_milli=np.concatenate([t.cpu_milli for t in tables]),
        memory_mib=np.concatenate([t.memory_mib for t in tables]),
        num_gpu=np.concatenate([t.num_gpu for t in tables]),
        gpu_milli=np.concatenate([t.gpu_milli for t in tables]),
        spec=tuple(s for t in tables for s in t.spec),
    )


if __name__ == "__main__":
    sys.exit(main())
