"""The live rebalancing loop (xpod.runtime.moe.rebalance) against EPLB re-planned every window.

Usage (from the repository root):

    .venv/bin/python bench/moe_rebalance.py                           # both phases, EP64 and EP72
    .venv/bin/python bench/moe_rebalance.py --pods EP72 --max-moves 1000 --png /tmp/rebalance.png
    .venv/bin/python bench/moe_rebalance.py --windows series.npz      # replay your own recording

A time series of windows is replayed one window at a time. After window t both planners hold a
plan made from windows <= t only, and it is scored on window t+1 (the plan serves the next
window): balancedness = sum over layers of mean / max device load, **even rule** (tokens split
evenly over an expert's replicas, what SGLang runs; both plans have no slot_share), fixed
layout (the same slots on every device in every layer).

* EPLB every window (DeepSeek's practice): EPLB-global (xpod.runtime.moe.eplb) on the moving
  average of the same history windows the loop sees (each normalised per layer), re-planned
  from scratch after every window; its moves are the expert weights each device must load that
  it did not hold (slot order inside a device is free), counted against its previous plan.
* xpod loop: ``Rebalancer`` with ``max_moves`` per rebalance (the curve: several budgets),
  publishing only when the predicted gain pays for the moves.
The first plan of each (every slot loaded once) is not counted as moves for either.

Windows: by default two series made from the real loads of bench/data/moe (see SOURCES.md), one
per serving phase (PD disaggregation: a decode server only sees decode traffic): per window, a
mixture of that phase's workloads whose log-weights take a Gaussian random-walk step (sigma
``--drift``) per window, then Poisson sampling of ``--tokens`` routed tokens per layer. The
generator's parameters were fixed before the loop's knobs were set; ``--seed`` draws other
series. ``--windows FILE.npz`` replays a recording instead (array ``windows`` [windows, layers,
experts]).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from xpod.hal.errors import XpodError
from xpod.runtime.moe import PodShape, score
from xpod.runtime.moe.eplb import rebalance
from xpod.runtime.moe.rebalance import RebalanceConfig, Rebalancer
from xpod.runtime.moe.score import weight_moves

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe", "deepseek_v3_sglang_expert_load.npz")
PODS = {"EP32": (32, 4, 9), "EP64": (64, 8, 5), "EP72": (72, 9, 4)}
GROUPS = 8


def drifting_series(loads: list[np.ndarray], windows: int, drift: float, tokens: float, seed: int) -> np.ndarray:
    """``[windows, layers, experts]`` token counts: per window a mixture of ``loads`` (each
    normalised per layer) whose log-weights random-walk with step ``drift``, Poisson-sampled
    at ``tokens`` routed tokens per layer."""
    rng = np.random.default_rng(seed)
    shapes = np.stack([w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300) for w in loads])
    logit = rng.normal(size=len(loads))
    out = np.empty((windows, *shapes.shape[1:]))
    for t in range(windows):
        logit = logit + drift * rng.normal(size=len(loads))
        mix = np.exp(logit - logit.max())
        out[t] = rng.poisson(np.einsum("k,kle->le", mix / mix.sum(), shapes) * tokens)
    return out


def run_eplb(series: np.ndarray, devices: int, nodes: int, slots: int, history: int) -> dict:
    dn = np.arange(devices) * nodes // devices
    sd = np.repeat(np.arange(devices), slots)
    bal, moves, prev = [], [], None
    for t in range(len(series) - 1):
        h = series[max(0, t - history + 1) : t + 1]
        mean = (h / np.maximum(h.sum(axis=2, keepdims=True), 1e-300)).mean(axis=0)
        plan = rebalance(mean, devices * slots, GROUPS, nodes, devices, "global").phy2log
        if prev is not None:
            moves.append(weight_moves(prev, plan, sd, devices))
        prev = plan
        bal.append(score(series[t + 1], plan, sd, dn).balancedness)
    return {"balance": bal, "moves": moves, "published": len(moves)}


def run_loop(series: np.ndarray, shape: PodShape, max_moves: int, history: int) -> dict:
    loop = Rebalancer(shape, GROUPS, RebalanceConfig(max_moves=max_moves, history_windows=history))
    bal, moves, published = [], [], 0
    for t in range(len(series) - 1):
        update = loop.observe(series[t])
        if not update.initial:
            moves.append(update.moves)
            published += update.published
        bal.append(update.placement.score(series[t + 1]).balancedness)
    return {"balance": bal, "moves": moves, "published": published}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="EP64,EP72", help=f"comma-separated, of {', '.join(PODS)}")
    ap.add_argument("--max-moves", default="300,600,1200,2400", help="the loop's budgets per rebalance (the curve)")
    ap.add_argument("--history", type=int, default=4, help="windows both planners see (default 4)")
    ap.add_argument("--windows", metavar="FILE", help="replay this .npz (array 'windows') instead of the series")
    ap.add_argument("--length", type=int, default=24, help="windows per generated series (default 24)")
    ap.add_argument("--drift", type=float, default=0.6, help="random-walk step of the mixture log-weights (0.6)")
    ap.add_argument("--tokens", type=float, default=2e6, help="routed tokens per layer and window (2e6)")
    ap.add_argument("--seed", type=int, default=3, help="series seed (3: not used to choose any knob)")
    ap.add_argument("--png", metavar="FILE", help="plot balance per window and cumulative moves")
    ap.add_argument("--json", metavar="FILE", help="also write every series as JSON")
    args = ap.parse_args(argv)
    console = Console(width=160)
    try:
        budgets = [int(x) for x in args.max_moves.split(",")]
        pods = {name: PODS[name] for name in args.pods.split(",")}
    except (ValueError, KeyError) as err:
        raise SystemExit(f"bad --max-moves or --pods: {err}") from None

    if args.windows:
        with np.load(args.windows) as f:
            if "windows" not in f.files or f["windows"].ndim != 3:
                raise SystemExit(f"{args.windows}: needs an array 'windows' [windows, layers, experts]")
            series_by_name = {os.path.basename(args.windows): f["windows"].astype(np.float64)}
    else:
        data = np.load(DATA)
        series_by_name = {}
        for phase in ("decode", "prefill"):
            names = [n for n in sorted(data.files) if n.startswith(phase)]
            series_by_name[f"{phase} ({len(names)} workloads)"] = drifting_series(
                [data[n].astype(np.float64) for n in names], args.length, args.drift, args.tokens, args.seed
            )

    results = []
    total = len(series_by_name) * len(pods) * (1 + len(budgets))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("replaying", total=total)
        for sname, series in series_by_name.items():
            for pname, (devices, nodes, slots) in pods.items():
                progress.update(task, description=f"{sname} {pname} EPLB")
                eplb = run_eplb(series, devices, nodes, slots, args.history)
                progress.advance(task)
                results.append({"series": sname, "pod": pname, "planner": "EPLB every window", **eplb})
                for budget in budgets:
                    progress.update(task, description=f"{sname} {pname} xpod max_moves {budget}")
                    try:
                        got = run_loop(series, PodShape(devices, nodes, slots), budget, args.history)
                    except XpodError as err:
                        raise SystemExit(str(err)) from None
                    progress.advance(task)
                    results.append({"series": sname, "pod": pname, "planner": f"xpod loop, max_moves {budget}", **got})

    table = Table(
        title=f"Live rebalancing, even rule, fixed layout: balance on the next window vs expert weights moved "
        f"(history {args.history} windows)"
    )
    for col in (
        "series",
        "pod",
        "planner",
        "mean bal",
        "min bal",
        "published",
        "moves/window",
        "total moves",
        "vs EPLB",
    ):
        table.add_column(col, justify="left" if col in ("series", "pod", "planner") else "right")
    eplb_total = {}
    for r in results:
        total_moves = int(np.sum(r["moves"]))
        key = (r["series"], r["pod"])
        if r["planner"].startswith("EPLB"):
            eplb_total[key] = (total_moves, float(np.mean(r["balance"])))
        ref_moves, ref_bal = eplb_total[key]
        table.add_row(
            r["series"],
            r["pod"],
            r["planner"],
            f"{np.mean(r['balance']):.4f}",
            f"{np.min(r['balance']):.4f}",
            str(r["published"]),
            f"{np.mean(r['moves']) if r['moves'] else 0:.0f}",
            str(total_moves),
            "-"
            if r["planner"].startswith("EPLB")
            else f"{np.mean(r['balance']) - ref_bal:+.4f} bal, {100 * total_moves / max(ref_moves, 1):.1f}% moves",
        )
    console.print(table)
    console.print(
        f"windows: {', '.join(f'{k}: {len(v)}' for k, v in series_by_name.items())}; "
        f"scored windows 1..{len(next(iter(series_by_name.values()))) - 1} (the plan after window t on window t+1)"
    )
    if args.png:
        _plot(results, args.png, budgets)
        console.print(f"wrote {args.png}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


def _plot(results: list[dict], path: str, budgets: list[int]) -> None:
    """Per (series, pod): balance per window, cumulative moves, and the curve of mean balance
    against total moves (one point per max_moves, EPLB's as a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["series"], r["pod"]) for r in results})
    fig, axes = plt.subplots(3, len(keys), figsize=(4.5 * len(keys), 10), squeeze=False)
    for col, key in enumerate(keys):
        curve = []
        for r in results:
            if (r["series"], r["pod"]) != key:
                continue
            eplb = r["planner"].startswith("EPLB")
            style = {"color": "black", "lw": 2} if eplb else {"lw": 1}
            axes[0, col].plot(r["balance"], label=r["planner"], **style)
            axes[1, col].plot(np.cumsum([0, *r["moves"]]), label=r["planner"], **style)
            point = (max(int(np.sum(r["moves"])), 1), float(np.mean(r["balance"])))
            if eplb:
                axes[2, col].plot(*point, "k*", markersize=12, label="EPLB every window")
            else:
                curve.append(point)
        axes[2, col].plot(*zip(*sorted(curve)), "o-", label=f"xpod loop, max_moves {', '.join(map(str, budgets))}")
        axes[0, col].set_title(f"{key[0]}, {key[1]}", fontsize=9)
        axes[0, col].set_ylabel("balancedness on the next window (even rule)")
        axes[1, col].set_ylabel("expert weights moved (cumulative)")
        axes[1, col].set_yscale("symlog")
        axes[1, col].set_xlabel("window")
        axes[2, col].set_xscale("log")
        axes[2, col].set_xlabel("expert weights moved over the series")
        axes[2, col].set_ylabel("mean balancedness")
    axes[0, 0].legend(fontsize=7)
    axes[2, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
