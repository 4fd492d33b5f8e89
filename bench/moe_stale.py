"""Stale statistics over many real pairs: plan on window A, score on window B (EP72).

Usage (from the repository root):

    .venv/bin/python bench/moe_stale.py                      # the 4 pairs of research/moe.md + 24 random others
    .venv/bin/python bench/moe_stale.py --random-pairs 0     # only the 4 named pairs
    .venv/bin/python bench/moe_stale.py --random-pairs 68    # every ordered pair of the 9 workloads

Policies, all scored on B from the written arrays (``xpod.runtime.moe.score``):

* EPLB global planned on A (xpod.runtime.moe.eplb), and on the per-layer-normalised mean of the same
  windows the robust planner sees with ``--scope`` (EPLB's README leaves load prediction to "a
  moving average of historical statistics");
* xpod ``place`` on A;
* xpod ``robust_place`` with history none / phase / all (``robust.stale_history``: A's phase
  is the name prefix before ``_``; B is never in the history and never read);
* and, scored on A itself, xpod ``place`` and the robust plan (history all): what hedging
  costs if the next window is A again.

Loads: bench/data/moe/deepseek_v3_sglang_expert_load.npz (see SOURCES.md there).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics

import numpy as np

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from xpod.runtime.moe import PodShape, place, score  # noqa: E402
from xpod.runtime.moe.eplb import rebalance  # noqa: E402
from xpod.runtime.moe.robust import plan_for_next_window, stale_history  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe", "deepseek_v3_sglang_expert_load.npz")
NAMED = [
    ("prefill_in1024", "prefill_in4096"),
    ("prefill_in4096", "prefill_in1024"),
    ("decode_in1000out1000", "decode_in2000out100"),
    ("prefill_in2000out100", "decode_in2000out100"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-pairs", type=int, default=24, help="other ordered pairs drawn at random (seed 0)")
    ap.add_argument("--devices", type=int, default=72)
    ap.add_argument("--nodes", type=int, default=9)
    ap.add_argument("--slots", type=int, default=4, help="slots per device")
    ap.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    args = ap.parse_args(argv)

    data = np.load(DATA)
    names = sorted(data.files)
    others = [p for p in itertools.permutations(names, 2) if p not in NAMED]
    pick = np.random.default_rng(0).permutation(len(others))[: args.random_pairs]
    pairs = [(a, b, True) for a, b in NAMED] + [(*others[i], False) for i in sorted(pick)]
    D, N, S = args.devices, args.nodes, args.slots
    shape = PodShape(D, N, S)
    dn = shape.device_node()
    sd = np.repeat(np.arange(D), S)
    cache = {}
    rows = []
    for a, b, named in pairs:
        wa, wb = data[a].astype(np.float64), data[b].astype(np.float64)
        if a not in cache:
            cache[a] = rebalance(wa, D * S, 8, N, D, "global").phy2log
        row = dict(pair=f"{a}->{b}", named=named, eplb=score(wb, cache[a], sd, dn).balancedness)
        used = stale_history(names, a, b, "all")
        hist = np.stack([wa] + [data[n] * (wa.sum(1) / np.maximum(data[n].sum(1), 1))[:, None] for n in used])
        row["eplb_history_all"] = score(
            wb, rebalance(hist.mean(axis=0), D * S, 8, N, D, "global").phy2log, sd, dn
        ).balancedness
        plain = place(wa, shape, 8)
        row["xpod"] = plain.score(wb).balancedness
        row["xpod_on_A"] = plain.score(wa).balancedness
        for scope in ("none", "phase", "all"):
            p, used = plan_for_next_window(data, a, b, shape, 8, scope=scope)
            sc = p.score(wb)
            assert sc.duplicates == 0 and sc.missing_experts == 0
            row[f"robust_{scope}"] = sc.balancedness
            row[f"robust_{scope}_seconds"] = p.seconds
            row[f"history_{scope}"] = used
            if scope == "all":  # what hedging costs if the next window turns out to be A again
                row["robust_all_on_A"] = p.score(wa).balancedness
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("history")}), flush=True)

    cols = [
        "eplb",
        "eplb_history_all",
        "xpod",
        "robust_none",
        "robust_phase",
        "robust_all",
        "xpod_on_A",
        "robust_all_on_A",
    ]
    table = Table(title=f"stale statistics, EP{D} on {N} nodes x {S} slots: plan on A, score on B (balancedness)")
    table.add_column("pairs")
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for label, sel in (
        ("4 named (moe.md)", [r for r in rows if r["named"]]),
        (f"{len(rows) - 4} random others", [r for r in rows if not r["named"]]),
        ("all", rows),
    ):
        if sel:
            table.add_row(
                label,
                *(
                    f"{statistics.mean(r[c] for r in sel):.3f} [{min(r[c] for r in sel):.3f}-{max(r[c] for r in sel):.3f}]"
                    for c in cols
                ),
            )
    Console(width=220).print(table)
    worse = [r["pair"] for r in rows if r["robust_all"] < r["eplb"]]
    print(f"robust (history all) below EPLB-on-A in {len(worse)} of {len(rows)} pairs: {', '.join(worse) or '-'}")
    print(
        f"robust seconds per 58-layer plan (history all): median {statistics.median(r['robust_all_seconds'] for r in rows):.2f}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
