"""Upper bounds on balancedness at one slot per device (CloudMatrix EP320), per relaxation.

Usage (from the repository root):

    .venv/bin/python bench/moe_bounds.py                        # CM EP320 on 40 nodes, all 9 workloads
    .venv/bin/python bench/moe_bounds.py --devices 384 --nodes 48 --workloads 2

For every real workload it prints EPLB-global's balancedness (xpod.runtime.moe.eplb), xpod's
(``place`` with the budget policy, scored from the written arrays), and the highest balance
any placement can reach (``xpod.runtime.moe.bounds``, derivation in its docstring) when

* the layout is fixed and tokens split evenly (EVEN), or with any token shares (SHARES),
* per-layer budgets keep each device's total weights over the layers (BUDGET, a device takes
  0, 1 or 2 slots in a layer; ``--cap`` changes the 2), with any shares (BUDGET+SHARES),

and how many more slots per layer (more expert memory per device) the BUDGET bound needs to
reach EPLB + ``--gain``. Loads: bench/data/moe/deepseek_v3_sglang_expert_load.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from xpod.runtime.moe import PodShape, place, score  # noqa: E402
from xpod.runtime.moe.eplb import rebalance  # noqa: E402
from xpod.runtime.moe.bounds import balance_upper_bound, budget_bound_by_memory  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe", "deepseek_v3_sglang_expert_load.npz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=320)
    ap.add_argument("--nodes", type=int, default=40)
    ap.add_argument("--slots", type=int, default=1, help="slots per device per layer (default 1)")
    ap.add_argument(
        "--cap", type=int, default=2, help="budget relaxations: at most CAP x slots per device in one layer"
    )
    ap.add_argument("--gain", type=float, default=0.06, help="target over EPLB for the memory column (default 0.06)")
    ap.add_argument("--max-extra", type=int, default=48, help="extra slots per layer searched for the memory column")
    ap.add_argument("--workloads", type=int, default=0, help="use only the first N workloads (0 = all)")
    ap.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    args = ap.parse_args(argv)

    data = np.load(DATA)
    names = sorted(data.files)[: args.workloads or None]
    D, N, S = args.devices, args.nodes, args.slots
    rows = []
    for name in names:
        w = data[name].astype(np.float64)
        phy2log = rebalance(w, D * S, 8, N, D, "global").phy2log
        dn = np.arange(D) * N // D
        row = dict(workload=name, eplb=score(w, phy2log, np.repeat(np.arange(D), S), dn).balancedness)
        pl = place(w, PodShape(D, N, S), 8, policy="budget")
        sc = pl.score(w)
        assert sc.duplicates == 0 and sc.slots_per_device_min == sc.slots_per_device_max == S * w.shape[0]
        row["xpod_budget"] = sc.balancedness
        for rel in ("even", "shares", "budget", "budget+shares"):
            row[f"bound_{rel}"] = balance_upper_bound(w, D, S, rel, cap=args.cap).balancedness
        curve = budget_bound_by_memory(w, D, S, args.max_extra, cap=args.cap)
        reach = np.nonzero(curve >= row["eplb"] + args.gain)[0]
        row["extra_slots_per_layer_for_gain"] = int(reach[0]) if len(reach) else None
        rows.append(row)
        print(json.dumps(row), flush=True)

    table = Table(title=f"balance upper bounds, {D} devices x {S} slot(s), {N} nodes ({len(names)} real workloads)")
    cols = [
        "workload",
        "EPLB global",
        "xpod budget",
        "bound even",
        "bound shares",
        "bound budget",
        "bound budget+shares",
        f"extra slots/layer for EPLB+{args.gain}",
    ]
    for c in cols:
        table.add_column(c, justify="left" if c == "workload" else "right")
    for r in rows + [
        dict(
            workload="mean",
            **{
                k: statistics.mean(r[k] for r in rows)
                for k in rows[0]
                if k not in ("workload", "extra_slots_per_layer_for_gain")
            },
            extra_slots_per_layer_for_gain=None,
        )
    ]:
        x = r["extra_slots_per_layer_for_gain"]
        table.add_row(
            r["workload"],
            *(
                f"{r[k]:.4f}"
                for k in ("eplb", "xpod_budget", "bound_even", "bound_shares", "bound_budget", "bound_budget+shares")
            ),
            "-" if x is None else f"{x} (+{100 * x / (D * S):.1f}% memory)",
        )
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
