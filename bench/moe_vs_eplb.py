"""xpod MoE placement against DeepSeek EPLB on real loads, every figure under a named dispatch rule.

Usage (from the repository root):

    .venv/bin/python bench/moe_vs_eplb.py                           # every regime, all 9 workloads
    .venv/bin/python bench/moe_vs_eplb.py --workloads 2 --traffic-tokens 1024   # a quick pass
    .venv/bin/python bench/moe_vs_eplb.py --regimes EP64,EP72 --json /tmp/cells.json

Planners: EPLB (xpod.runtime.moe.eplb, written from DeepSeek's README: hierarchical where the
nodes divide the 8 groups, global everywhere) and xpod (``place``): ``even`` (the default, what
``xpod moe place`` writes and SGLang loads: the same slots on every device in every layer,
tokens split evenly), ``wrap`` (the same, hierarchical), ``balanced`` (uneven ``slot_share``,
xpod's dispatcher only) and ``budget`` (per-layer slot counts, xpod's dispatcher only). The
layout column says which plans SGLang/vLLM can run (``fixed``) and which they cannot
(``per-layer``).

Every row names its **rule** (xpod.runtime.moe.routing): ``even`` (replicas share an expert's
tokens equally: SGLang, vLLM, EPLB's model), ``shares`` (the plan's slot_share), ``local-first``
(a replica on the token's node first). Columns:

* bal: balancedness of the plan on the workload's recorded loads (sum over layers of mean /
  max device load), with the tokens split by the rule; exact for ``even`` and ``shares``
  (the dispatcher delivers those splits), not defined for ``local-first`` (the split follows
  where tokens come from): "-" there;
* token bal: the same from the token-level simulation (xpod.runtime.moe.simulate: a
  group-limited router calibrated to each layer's recorded loads, ``--traffic-tokens`` tokens
  per layer, sources uniform over devices, each device routing its own tokens by the rule);
  finite tokens put a noise floor under it (about 0.9 at 16,384 tokens, and +-0.02 from one
  sample to the next: compare means, not one layer), the same for
  every planner, as all see the same tokens;
* remote nodes/token: distinct other nodes a token's experts sit on under the rule (DeepEP
  sends a token once per remote node); synthetic co-activation, so relative.
Simulated columns cover layers 0, 19, 38, 57 of the first ``--traffic-workloads`` workloads.
Times: wall (CPU) ms per 58-layer call on this machine; EPLB's is this vectorised version's,
not the original's per-layer Python loop.
Loads: bench/data/moe/deepseek_v3_sglang_expert_load.npz (see SOURCES.md there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from xpod.runtime.moe import PodShape, place, score  # noqa: E402
from xpod.runtime.moe.eplb import rebalance  # noqa: E402
from xpod.runtime.moe.robust import plan_for_next_window, stale_history  # noqa: E402
from xpod.runtime.moe.simulate import simulate_traffic  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "moe", "deepseek_v3_sglang_expert_load.npz")
GROUPS = 8
TRAFFIC_LAYERS = [0, 19, 38, 57]

# (name, devices, nodes, slots per device)
REGIMES = [
    ("EP32 4 nodes R=288", 32, 4, 9),
    ("EP64 8 nodes R=320", 64, 8, 5),
    ("EP72 9 nodes R=288", 72, 9, 4),
    ("EP144 18 nodes R=288", 144, 18, 2),
    ("CM EP320 40 nodes R=320", 320, 40, 1),
]
STALE_PAIRS = [
    ("prefill_in1024", "prefill_in4096"),
    ("prefill_in4096", "prefill_in1024"),
    ("decode_in1000out1000", "decode_in2000out100"),
    ("prefill_in2000out100", "decode_in2000out100"),
]
STALE_SCOPES = ("none", "phase", "all")  # history given to the robust planner (B is never in it)


def planners(devices: int, nodes: int, slots: int):
    """(label, layout, rules, make(w) -> (phy2log, slot_device, slot_share, seconds))."""

    def eplb(policy):
        def make(w):
            t0 = time.perf_counter()
            plan = rebalance(w, devices * slots, GROUPS, nodes, devices, policy)
            return plan.phy2log, plan.slot_device, None, time.perf_counter() - t0

        return make

    def xpod(**kw):
        def make(w):
            p = place(w, PodShape(devices, nodes, slots), GROUPS, **kw)
            return p.phy2log, p.slot_device, p.slot_share, p.seconds

        return make

    out = []
    if GROUPS % nodes == 0:
        out.append(("EPLB hierarchical", "fixed", ("even", "local-first"), eplb("hierarchical")))
        out.append(("xpod wrap", "fixed", ("even", "local-first"), xpod(policy="wrap")))
    out.append(("EPLB global", "fixed", ("even", "local-first"), eplb("global")))
    out.append(("xpod (default: even)", "fixed", ("even", "local-first"), xpod()))
    out.append(("xpod balanced", "fixed", ("shares",), xpod(policy="balanced")))
    if slots <= 2:
        out.append(("xpod budget", "per-layer", ("shares",), xpod(policy="budget")))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=0, help="use only the first N workloads (0 = all)")
    ap.add_argument("--traffic-tokens", type=int, default=16384, help="tokens per layer simulated (0 = skip)")
    ap.add_argument("--traffic-workloads", type=int, default=3, help="workloads with a token simulation (slow part)")
    ap.add_argument("--regimes", default="", help="comma-separated substrings of regime names to run (or 'stale')")
    ap.add_argument("--json", metavar="FILE", help="also write every cell as JSON")
    args = ap.parse_args(argv)

    data = np.load(DATA)
    names = sorted(data.files)[: args.workloads or None]
    wanted = [s for s in args.regimes.split(",") if s]
    regimes = [r for r in REGIMES if not wanted or any(s in r[0] for s in wanted)]
    run_stale = not wanted or "stale" in wanted
    console = Console(width=220)

    with open(os.path.join(os.path.dirname(DATA), "eplb_reference.json"), encoding="utf-8") as f:
        ex = json.load(f)["readme_example"]
    got = rebalance(np.array(ex["weight"]), ex["num_replicas"], ex["num_groups"], ex["num_nodes"], ex["num_gpus"])
    console.print(f"EPLB README example reproduced: {got.phy2log.tolist() == ex['phy2log']}")

    cells = []
    caches = {n: {} for n in names}
    total = sum(len(names) * len(planners(*r[1:])) for r in regimes)
    total += len(STALE_PAIRS) * (3 + len(STALE_SCOPES)) if run_stale else 0
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("placing", total=total)
        for regime, devices, nodes, slots in regimes:
            dn = np.arange(devices) * nodes // devices
            for i, name in enumerate(names):
                w = data[name].astype(np.float64)
                for label, layout, rules, make in planners(devices, nodes, slots):
                    progress.update(task, advance=1, description=f"{regime} {name} {label}")
                    c0 = time.process_time()
                    phy2log, sd, share, secs = make(w)
                    cpu = time.process_time() - c0
                    for rule in rules:
                        split = share if rule == "shares" else None
                        sc = score(w, phy2log, sd, dn, split, GROUPS)
                        cell = dict(
                            regime=regime,
                            workload=name,
                            planner=label,
                            layout=layout,
                            rule=rule,
                            balancedness=None if rule == "local-first" else sc.balancedness,
                            worst_layer=None if rule == "local-first" else sc.worst_layer_balancedness,
                            group_spread=sc.group_spread,
                            duplicates=sc.duplicates,
                            seconds=secs,
                            cpu_seconds=cpu,
                        )
                        if args.traffic_tokens and i < args.traffic_workloads:
                            tr = simulate_traffic(
                                w, phy2log, sd, dn, share, TRAFFIC_LAYERS, args.traffic_tokens,
                                token_cache=caches[name], rule=rule,
                            )  # fmt: skip
                            cell.update(
                                token_balancedness=tr.dispatch_balancedness,
                                remote_nodes_per_token=tr.remote_nodes_per_token,
                                calibration_corr=tr.calibration_corr,
                            )
                        cells.append(cell)
        if run_stale:
            cells += _stale(data, progress, task)

    _print_table(console, cells, names, args)
    _print_verdicts(console, cells)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(cells, f, indent=1)
    return 0


def _stale(data, progress, task) -> list[dict]:
    """Plan on window A, serve window B (EP72, even rule: no plan here has slot_share)."""
    devices, nodes, slots = 72, 9, 4
    dn = np.arange(devices) * nodes // devices
    shape = PodShape(devices, nodes, slots)
    regime = "stale EP72: plan on A, score on B"
    cells = []

    def add(pair, planner, phy2log, sd, wb, secs, history=None):
        sc = score(wb, phy2log, sd, dn, None, GROUPS)
        cell = dict(regime=regime, workload=pair, planner=planner, layout="fixed", rule="even", seconds=secs)
        cell.update(balancedness=sc.balancedness, worst_layer=sc.worst_layer_balancedness)
        cell.update(group_spread=sc.group_spread, duplicates=sc.duplicates)
        if history is not None:
            cell["history"] = history
        cells.append(cell)

    for a, b in STALE_PAIRS:
        if a not in data.files or b not in data.files:
            continue
        wa, wb = data[a].astype(np.float64), data[b].astype(np.float64)
        pair = f"{a}->{b}"
        t0 = time.perf_counter()
        e = rebalance(wa, devices * slots, GROUPS, nodes, devices, "global")
        add(pair, "EPLB global on A", e.phy2log, e.slot_device, wb, time.perf_counter() - t0)
        progress.advance(task)
        p = place(wa, shape, GROUPS)
        add(pair, "xpod on A", p.phy2log, p.slot_device, wb, p.seconds)
        progress.advance(task)
        for scope in STALE_SCOPES:
            rp, used = plan_for_next_window(data, a, b, shape, GROUPS, scope=scope)
            add(pair, f"xpod robust, history {scope}", rp.phy2log, rp.slot_device, wb, rp.seconds, used)
            progress.advance(task)
        # EPLB fed the same windows, as their per-layer-normalised mean (its README leaves load
        # prediction to "a moving average of historical statistics")
        used = stale_history(list(data.files), a, b, "all")
        hist = np.stack([wa] + [data[n] * (wa.sum(1) / np.maximum(data[n].sum(1), 1))[:, None] for n in used])
        t0 = time.perf_counter()
        e = rebalance(hist.mean(axis=0), devices * slots, GROUPS, nodes, devices, "global")
        add(pair, "EPLB global, history all (mean)", e.phy2log, e.slot_device, wb, time.perf_counter() - t0, used)
        progress.advance(task)
    return cells


def _fmt_range(values) -> str:
    return f"{statistics.mean(values):.4f} [{min(values):.4f}-{max(values):.4f}]"


def _print_table(console, cells, names, args) -> None:
    table = Table(
        title=f"MoE placement on real DeepSeek-V3 loads ({len(names)} workloads; mean \\[min-max]); "
        f"simulated columns: {args.traffic_tokens} tokens x 4 layers x {args.traffic_workloads} workloads"
    )
    cols = ("regime", "planner", "layout", "rule", "bal", "token bal", "remote nodes/token", "groups' nodes", "dups")
    for col in (*cols, "ms/call (cpu)"):
        table.add_column(col, justify="left" if col in cols[:4] else "right")
    order = []
    for c in cells:
        key = (c["regime"], c["planner"], c["rule"])
        if key not in order:
            order.append(key)
    for regime, planner, rule in order:
        cs = [c for c in cells if (c["regime"], c["planner"], c["rule"]) == (regime, planner, rule)]
        bal = [c["balancedness"] for c in cs if c["balancedness"] is not None]
        tok = [c["token_balancedness"] for c in cs if "token_balancedness" in c]
        sends = [c["remote_nodes_per_token"] for c in cs if "remote_nodes_per_token" in c]
        ms = f"{1000 * statistics.median(c['seconds'] for c in cs):.0f}"
        if all("cpu_seconds" in c for c in cs):
            ms += f" ({1000 * statistics.median(c['cpu_seconds'] for c in cs):.0f})"
        table.add_row(
            regime,
            planner,
            cs[0]["layout"],
            rule,
            _fmt_range(bal) if bal else "-",
            f"{statistics.mean(tok):.4f}" if tok else "-",
            f"{statistics.mean(sends):.3f}" if sends else "-",
            f"{statistics.mean(c['group_spread'] for c in cs):.2f}",
            f"{statistics.mean(c['duplicates'] for c in cs):.0f}",
            ms,
        )
    console.print(table)


def _print_verdicts(console, cells) -> None:
    """Per regime and rule: xpod's default plan against EPLB-global, workload by workload."""
    for regime in dict.fromkeys(c["regime"] for c in cells):
        for rule in ("even", "local-first"):
            x = {c["workload"]: c for c in cells if (c["regime"], c["planner"], c["rule"]) == (regime, "xpod (default: even)", rule)}  # fmt: skip
            e = {c["workload"]: c for c in cells if (c["regime"], c["planner"], c["rule"]) == (regime, "EPLB global", rule)}  # fmt: skip
            common = [w for w in x if w in e]
            if not common:
                continue
            parts = [f"{regime}, rule {rule}: xpod (default) vs EPLB global"]
            if rule != "local-first":
                d = [x[w]["balancedness"] - e[w]["balancedness"] for w in common]
                parts.append(f"bal {statistics.mean(d):+.4f} (min {min(d):+.4f} over {len(d)} workloads)")
            sim = [w for w in common if "remote_nodes_per_token" in x[w]]
            if sim:
                xs = statistics.mean(x[w]["remote_nodes_per_token"] for w in sim)
                es = statistics.mean(e[w]["remote_nodes_per_token"] for w in sim)
                xt = statistics.mean(x[w]["token_balancedness"] for w in sim)
                et = statistics.mean(e[w]["token_balancedness"] for w in sim)
                parts.append(f"remote nodes/token {xs:.3f} vs {es:.3f} ({100 * (xs / es - 1):+.1f}%)")
                parts.append(f"token bal {xt:.4f} vs {et:.4f}")
            console.print("; ".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
