"""Choose the ``fragmentation`` plugin's constants on the tuning lists only, against our own FGD.

    .venv/bin/python bench/tune_openb.py --variants '[{"empty_credit": 0}, {"credit_from": 0.8}]'
        [--lists cpu0,gpushare20/sharing] [--seeds 42,43] [--jobs 2] [--json OUT]

The test lists (the 14 with published FGD results) are refused: the plugin's constants must
not be chosen on them (bench/replay_openb.py scores them). The tuning set is the six pod lists
without published results (``TUNING_LISTS``) and synthetic lists derived from them alone:

* ``gpushare20/sharing``: gpushare20's fractional pods (every GPU pod shares a GPU), with CPU-only
  pods in the list's own proportion to GPU pods;
* ``gpuspec05/spec6``: gpuspec05 with its GPU-model-constrained pods drawn six times as often
  (22 % of the pods; ``specN``: N times, e.g. ``spec9``: 30 %; ``specNcpuM``: and its CPU-only
  pods M times as often, e.g. ``spec9cpu2``: 30 % restricted and 18 % CPU-only pods, where the
  models' reserve and CPU meet);
* ``cpu300/share50``: cpu300 with half its whole-GPU pods dropped;
* ``cpu072/multi12``: cpu072 with its multi-GPU pods drawn twelve times as often (``multiN``: N
  times; 11 % of the pods, 8-GPU pods that fit only an empty G3 node among them, as in multigpu50);
  ``cpu0/multi6``: cpu0 (cpu072's GPU pods, no CPU-only pods) with them six times as often.

Each variant is the default profile (examples/profiles/scheduler-default.yaml) with the
``fragmentation`` plugin's arguments replaced by the variant's. Printed per list and variant:
the mean over the seeds of the allocation at 60/80/100/130 % arrived, the unallocated share at
130 % over our FGD's (examples/profiles/fgd.yaml, same lists and seeds; ``--reference default``:
over the default profile's as it is), and the worst gap to
our FGD's curve at 60/80/100 % arrived and over the whole curve from 1 to 100 % arrived.

``--choose`` applies the choice rule between a new default and the default as it is
(``--rule 8``, the default: ``choose_round8``; ``--rule 7``: ``choose``, round 7's; the first
variant must be ``{}``, the default as it is; the reference our FGD, or with rule 8 the default
itself, ``--reference default``, whose runs then stand for ``{}``: its gap clauses are then
against the default's own curve, which implies them against any reference's);
``--from-json RUNS`` re-reads a run's ``--json`` instead of replaying; it must hold every list x
variant (and the reference) x seed asked, or it is refused (``saved_runs``). ``--cache DIR``
keeps each replay's record in DIR as it finishes; a later run with the same inputs reads it
instead of replaying (``cache_key``), so a run that dies half-way resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from replay_openb import (  # noqa: E402
    DATA,
    TUNING_LISTS,
    check_one_code,
    digest_name,
    list_path,
    parse_seeds,
    profile_path,
    stamp_of,
)

SYNTHETIC = (
    "gpushare20/sharing",
    "gpuspec05/spec6",
    "gpuspec05/spec9",
    "gpuspec05/spec9cpu2",
    "cpu300/share50",
    "cpu072/multi12",
    "cpu0/multi6",
)
PLUGIN = "fragmentation"

#: The choice rule of round 7 (``--choose --rule 7``), fixed before its candidates ran (issue 17,
#: share6; commit 5333685). Every figure is the mean over the seeds (at least 3) of the tuning
#: lists and mixes; "the default" is the variant ``{}``. A candidate is **eligible** when all
#: three hold:
#:
#: 1. it improves where it was built to: the allocation at 130 % arrived on the gpushare-like
#:    mix (``gpushare20/sharing``) rises by at least ``GAIN_130`` points, or the worst gap to our
#:    FGD over the whole curve from 1 to 100 % arrived on the multi-GPU mix (``cpu072/multi12``)
#:    rises by at least ``GAIN_CURVE`` points;
#: 2. no tuning list's or mix's allocation at 130 % falls by more than ``LOSS_130`` points;
#: 3. no list's worst gap to our FGD at 60/80/100 % arrived widens by more than ``LOSS_GAP``:
#:    ``gap >= min(gap of the default, 0) - LOSS_GAP`` and ``gap >= gap of the default - LOSS_GAP``
#:    (the second clause, added after review in round 7, keeps a candidate from giving up the
#:    default's lead over FGD: with the first alone a default 0.5 points above FGD could fall to
#:    -0.1; the second implies the first, both are stated so the older rule's reading is visible).
#:
#: Of the eligible candidates the one that meets more of point 1's two aims is taken, then the
#: higher allocation at 130 % on ``gpushare20/sharing``; within 0.02 points, the one that changes
#: fewer plugin arguments. None eligible: the default stays.
#:
#: The choice rule of round 8 (``--choose``, the default ``--rule 8``), fixed and committed
#: before its candidates ran on seeds 42-44 (issue 17, openb8), after the replay's trimming of
#: lists above 130 % became the FGD authors' (which changed the workloads of gpuspec05/spec9,
#: gpuspec05/spec9cpu2 and cpu072/multi12). Its aim is the one published target the default
#: misses, multigpu40's unallocated GPUs at 130 % (0.901 x FGD's, target 0.9), through the
#: tuning mixes built like it: points 2 and 3 and the tie rule as round 7's, point 1 replaced by
#:
#: 1. the mean allocation at 130 % arrived rises by at least ``GAIN_130`` points on the
#:    multi-GPU mix ``cpu072/multi12`` and does not fall on ``cpu0/multi6`` (cpu0, the GPU pods
#:    of cpu072 without its CPU-only pods, with its multi-GPU pods drawn six times as often: a
#:    second multi-GPU mix, so that a gain on one mix's draw is not taken for one on the kind).
#:
#: Of the eligible candidates the one with the larger gain on ``cpu072/multi12``; within 0.02
#: points, the one that changes fewer plugin arguments. None eligible: the default stays.
GAIN_130 = 0.05
GAIN_CURVE = 0.10
LOSS_130 = 0.10
LOSS_GAP = 0.10
SHARING_MIX = "gpushare20/sharing"
MULTI_MIX = "cpu072/multi12"
#: round 8's second multi-GPU mix (point 1: may not fall)
MULTI_MIX_2 = "cpu0/multi6"


def tuning_pods(data: str, name: str):
    """A tuning list, or a synthetic list derived from one (module docstring)."""
    from xpod.scheduler.sim import openb

    base, _, how = name.partition("/")
    if base not in TUNING_LISTS:
        raise SystemExit(f"{name}: not a tuning list ({', '.join(TUNING_LISTS)} and {', '.join(SYNTHETIC)})")
    pods = openb.load_pods(list_path(data, base))
    if not how:
        return pods
    idx = np.arange(len(pods))
    if how == "sharing":
        # the fractional pods, and CPU-only pods in the list's own proportion to GPU pods
        cpu_only = idx[pods.num_gpu == 0]
        sharing = idx[(pods.num_gpu == 1) & (pods.gpu_milli < 1000)]
        share = len(cpu_only) / max(int((pods.num_gpu > 0).sum()), 1)
        keep = np.concatenate([sharing, cpu_only[: int(round(share * len(sharing)))]])
    elif (m := re.fullmatch(r"spec([1-9][0-9]*)(?:cpu([1-9][0-9]*))?", how)) is not None:
        constrained = idx[np.array([bool(s) for s in pods.spec])]
        cpu_only = idx[pods.num_gpu == 0]
        times_cpu = int(m.group(2) or 1)
        keep = np.concatenate([idx] + [constrained] * (int(m.group(1)) - 1) + [cpu_only] * (times_cpu - 1))
    elif (m := re.fullmatch(r"multi([1-9][0-9]*)", how)) is not None:
        multi = idx[pods.num_gpu >= 2]
        keep = np.concatenate([idx] + [multi] * (int(m.group(1)) - 1))
    elif how == "share50":
        whole = idx[(pods.num_gpu >= 1) & (pods.gpu_milli == 1000)]
        keep = np.setdiff1d(idx, whole[::2])
    else:
        raise SystemExit(f"{name}: unknown derivation {how!r}")
    return pods.take(np.sort(keep) if not how.startswith(("spec", "multi")) else keep)


def run_one(task: tuple) -> dict:
    from xpod.scheduler.core.profile import load_profile, profile_from_dict
    from xpod.scheduler.sim import openb

    data, lst, variant, seed, reference = task
    nodes = openb.load_nodes(os.path.join(data, "openb_node_list_gpu_node.csv"))
    pods = tuning_pods(data, lst)
    if variant is None:
        prof = load_profile(profile_path(reference))
    else:
        import yaml

        with open(profile_path("default"), encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for i, p in enumerate(doc["policies"]):
            name = p if isinstance(p, str) else p["name"]
            if name == PLUGIN:
                doc["policies"][i] = {
                    "name": PLUGIN,
                    "args": {**(p.get("args", {}) if isinstance(p, dict) else {}), **variant},
                }
        prof = profile_from_dict(doc, "variant")
    r = openb.replay(nodes, pods, prof, seed=seed)
    return {
        "list": lst,
        "variant": variant,
        "reference": reference if variant is None else None,
        "seed": seed,
        "curve": list(r.alloc_curve_pct),
        "alloc": r.alloc_pct,
        "seconds": r.seconds,
    }


def _files(task: tuple) -> list[str]:
    """The files ``run_one(task)`` reads: the default and reference profiles, the node list and
    the tuning list a mix is derived from."""
    data, lst, _variant, _seed, reference = task
    files = [profile_path("default"), profile_path(reference), os.path.join(data, "openb_node_list_gpu_node.csv")]
    return files + [list_path(data, lst.partition("/")[0])]


def cache_key(task: tuple) -> str:
    """The name of ``run_one(task)``'s record in a ``--cache`` folder (``replay_openb.digest_name``:
    the list, variant, seed and reference, the profiles, node and pod list and code it reads)."""
    _data, lst, variant, seed, reference = task
    label = [lst, "ref-" + reference if variant is None else json.dumps(variant, sort_keys=True), seed]
    return digest_name(label, [lst, variant, seed, reference], _files(task))


def stamp(task: tuple) -> dict:
    """The digests every record of ``run_one(task)`` carries (``replay_openb.stamp_of``: the code,
    and the task but its seed with the files it reads); ``saved_runs`` checks them."""
    _data, lst, variant, _seed, reference = task
    return stamp_of([lst, variant, reference], _files(task))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="[{}]", help="JSON list of argument dicts for the plugin")
    ap.add_argument("--lists", default=",".join(TUNING_LISTS + SYNTHETIC))
    ap.add_argument("--seeds", default="42,43")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--reference",
        default="fgd",
        help="the profile the variants are compared with (fgd; default: the default profile as it is)",
    )
    ap.add_argument("--json")
    ap.add_argument("--from-json", help="the runs of an earlier --json instead of replaying")
    ap.add_argument("--choose", action="store_true", help="apply the choice rule (module docstring)")
    ap.add_argument(
        "--rule", type=int, choices=(7, 8), default=8, help="which round's choice rule --choose applies (default 8)"
    )
    ap.add_argument(
        "--cache",
        metavar="DIR",
        help="keep each replay's record in DIR as it finishes and read the ones already there (resume a run)",
    )
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args(argv)
    try:
        variants = json.loads(args.variants)
    except ValueError as err:
        raise SystemExit(
            f"--variants: not JSON ({err}); give a list of plugin-argument objects, e.g. '[{{}}, {{\"hole_weight\": 12}}]'"
        ) from None
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise SystemExit("--variants: give a JSON list of plugin-argument objects, e.g. '[{}, {\"hole_weight\": 12}]'")
    lists = [x for x in args.lists.split(",") if x]
    for lst in lists:
        tuning_pods(args.data, lst)  # refuses a test list before anything runs
    seeds = parse_seeds(args.seeds)
    refs = ("fgd",) if args.rule == 7 else ("fgd", "default")
    if args.choose and (not variants or variants[0] != {} or args.reference not in refs or len(seeds) < 3):
        raise SystemExit(
            f"--choose (rule {args.rule}): the first variant must be {{}} (the default as it is), "
            f"--reference {' or '.join(refs)}, >= 3 seeds"
        )
    # with --reference default the variant {} is the reference itself: its runs are the reference's
    same = args.reference == "default"
    replayed = [v for v in variants if not (same and v == {})]
    if args.from_json:
        runs = saved_runs(args.from_json, lists, replayed, seeds, args.reference)
    else:
        tasks = [(args.data, lst, v, s, args.reference) for lst in lists for v in [None, *replayed] for s in seeds]
        from replay_openb import _run_all_with, check_cache

        check_cache(args.cache)
        if args.choose and args.rule == 8:
            _check_round8_lists(lists)  # before the grid, not after hours of replays
        runs = _run_all_with(run_one, tasks, args.jobs, args.cache, cache_key, stamp)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(runs, f)
    worst: dict[int, list] = {i: [] for i in range(len(variants))}
    table: dict[tuple[str, int], dict] = {}
    print(
        f"{'list':20s} {'variant':42s} {'@60':>6s} {'@80':>6s} {'@100':>6s} {'@130':>6s} {'/FGD':>6s} {'gap':>6s} "
        f"{'gap1-100':>8s}"
    )
    for lst in lists:
        ref = [r for r in runs if r["list"] == lst and r["variant"] is None]
        fgd = {a: statistics.fmean(r["curve"][min(a, len(r["curve"]) - 1)] for r in ref) for a in (60, 80, 100)}
        fgd_final = statistics.fmean(r["alloc"] for r in ref)
        fgd_curve = _mean_curve(ref)
        print(f"{lst:20s} {f'({args.reference})':42s} {fgd[60]:6.2f} {fgd[80]:6.2f} {fgd[100]:6.2f} {fgd_final:6.2f}")
        for i, v in enumerate(variants):
            mine = ref if same and v == {} else [r for r in runs if r["list"] == lst and r["variant"] == v]
            at = {a: statistics.fmean(r["curve"][min(a, len(r["curve"]) - 1)] for r in mine) for a in (60, 80, 100)}
            final = statistics.fmean(r["alloc"] for r in mine)
            ratio = (100 - final) / (100 - fgd_final)
            gap = min(at[a] - fgd[a] for a in (60, 80, 100))
            curve = _mean_curve(mine)
            whole = min(curve[a] - fgd_curve[a] for a in range(1, 101))
            worst[i].append((ratio, gap))
            table[lst, i] = {"final": final, "gap": gap, "whole": whole}
            print(
                f"{'':20s} {json.dumps(v)[:42]:42s} {at[60]:6.2f} {at[80]:6.2f} {at[100]:6.2f} {final:6.2f} {ratio:6.3f} "
                f"{gap:+6.2f} {whole:+8.2f}",
                flush=True,
            )
    for i, v in enumerate(variants):
        rs = worst[i]
        print(
            f"{json.dumps(v)}: worst ratio {max(r for r, _ in rs):.3f}, mean ratio {statistics.fmean(r for r, _ in rs):.3f}, "
            f"worst gap {min(g for _, g in rs):+.2f}"
        )
    if args.choose:
        print(choose(variants, lists, table) if args.rule == 7 else choose_round8(variants, lists, table))
    return 0


def saved_runs(path: str, lists: list[str], variants: list[dict], seeds: list[int], reference: str) -> list[dict]:
    """The runs of an earlier ``--json`` that the table needs: every list x (the reference and
    every variant) x every seed, exactly once. A file that does not hold them all is refused with
    one line naming the file, the first list and variant short of runs and its missing seeds (a
    table over fewer seeds than asked would judge on them without saying so), as is a run twice,
    a reference run of another ``--reference`` (files written before runs recorded it: not
    checked), runs of different code or a list and variant whose runs read different files
    (``replay_openb.check_one_code``), or a file that is not such a ``--json``."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        runs = [r for r in doc if r["list"] in lists and r["seed"] in seeds]
        keys = [(r["list"], json.dumps(r["variant"], sort_keys=True), r["seed"]) for r in runs]
        lacking = sorted({k for r in runs for k in ("curve", "alloc") if k not in r})
        if lacking:
            raise KeyError(", ".join(lacking))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not a bench/tune_openb.py --json file ({type(err).__name__}: {err})") from None
    for r in runs:
        if r["variant"] is None and r.get("reference", reference) != reference:
            raise SystemExit(
                f"{path}: its reference runs are of {r['reference']!r}, not {reference!r}; pass --reference {r['reference']}"
            )
    check_one_code(
        [(path, r) for r in runs if r["variant"] is None or r["variant"] in variants],
        row=lambda r: (r["list"], json.dumps(r["variant"], sort_keys=True)),
        name=lambda r: f"{r['list']} variant {json.dumps(r['variant'])} seed {r['seed']}",
        fix="replay them with one code (drop --from-json; --cache DIR keeps what is current)",
    )
    seen: set[tuple] = set()
    for key in keys:
        if key in seen:
            raise SystemExit(
                f"{path}: {key[0]} variant {key[1]} seed {key[2]} is in the file twice; keep one run of each"
            )
        seen.add(key)
    short = []
    for lst in lists:
        for v in [None, *variants]:
            want = json.dumps(v, sort_keys=True)
            missing = [s for s in seeds if (lst, want, s) not in seen]
            if missing:
                short.append((lst, f"(reference {reference})" if v is None else json.dumps(v), missing))
    if short:
        lst, name, missing = short[0]
        more = f" (and {len(short) - 1} more list/variant pair(s) short of runs)" if len(short) > 1 else ""
        raise SystemExit(
            f"{path}: {lst} variant {name} has no run for seed(s) {', '.join(map(str, missing))} of the "
            f"{len(seeds)} asked{more}; replay them (drop --from-json) or pass --lists/--seeds/--variants the file holds"
        )
    return runs


def choose(variants: list[dict], lists: list[str], table: dict[tuple[str, int], dict]) -> str:
    """The choice rule (``GAIN_130`` above) over ``table[list, variant index]`` (seed means:
    ``final`` allocation at 130 %, ``gap`` the worst at 60/80/100 %, ``whole`` over 1-100 %, both
    to our FGD); variant 0 is the default as it is. Returns the verdict, one line a candidate."""
    lines, eligible = [], []
    for i, v in enumerate(variants[1:], start=1):
        why = []
        aims = 0
        if SHARING_MIX in lists and table[SHARING_MIX, i]["final"] - table[SHARING_MIX, 0]["final"] >= GAIN_130:
            aims += 1
        if MULTI_MIX in lists and table[MULTI_MIX, i]["whole"] - table[MULTI_MIX, 0]["whole"] >= GAIN_CURVE:
            aims += 1
        if not aims:
            why.append("no gain on its aims")
        why += _harms(lists, table, i)
        share = table[SHARING_MIX, i]["final"] if SHARING_MIX in lists else 0.0
        lines.append(f"{json.dumps(v)}: {'eligible' if not why else 'rejected: ' + '; '.join(why)}")
        if not why:
            eligible.append((aims, share, -len(v), i))
    if not eligible:
        return "\n".join(lines + ["choice: none eligible, the default stays"])
    best_aims = max(e[0] for e in eligible)
    top = [e for e in eligible if e[0] == best_aims]
    best_share = max(e[1] for e in top)
    near = [e for e in top if e[1] >= best_share - 0.02]
    pick = max(near, key=lambda e: (e[2], e[1]))
    return "\n".join(lines + [f"choice: {json.dumps(variants[pick[3]])}"])


def choose_round8(variants: list[dict], lists: list[str], table: dict[tuple[str, int], dict]) -> str:
    """Round 8's choice rule (above ``GAIN_130``) over ``table[list, variant index]`` (seed means,
    as ``choose``); variant 0 is the default as it is. Both multi-GPU mixes must be in ``lists``.
    Returns the verdict, one line a candidate."""
    _check_round8_lists(lists)
    lines, eligible = [], []
    for i, v in enumerate(variants[1:], start=1):
        why = []
        gain = table[MULTI_MIX, i]["final"] - table[MULTI_MIX, 0]["final"]
        if gain < GAIN_130:
            why.append(f"{MULTI_MIX} {gain:+.2f} at 130 % (aim >= +{GAIN_130:.2f})")
        second = table[MULTI_MIX_2, i]["final"] - table[MULTI_MIX_2, 0]["final"]
        if second < 0:
            why.append(f"{MULTI_MIX_2} {second:+.2f} at 130 % (may not fall)")
        why += _harms(lists, table, i)
        lines.append(f"{json.dumps(v)}: {'eligible' if not why else 'rejected: ' + '; '.join(why)}")
        if not why:
            eligible.append((gain, -len(v), i))
    if not eligible:
        return "\n".join(lines + ["choice: none eligible, the default stays"])
    best = max(e[0] for e in eligible)
    pick = max((e for e in eligible if e[0] >= best - 0.02), key=lambda e: (e[1], e[0]))
    return "\n".join(lines + [f"choice: {json.dumps(variants[pick[2]])}"])


def _check_round8_lists(lists: list[str]) -> None:
    """Round 8's aim is measured on both multi-GPU mixes: one line when ``--lists`` lacks one."""
    missing = [m for m in (MULTI_MIX, MULTI_MIX_2) if m not in lists]
    if missing:
        raise SystemExit(
            f"--choose (rule 8): --lists must hold {' and '.join(missing)}, where its aim is measured "
            "(or pass --rule 7 for round 7's rule)"
        )


def _harms(lists: list[str], table: dict[tuple[str, int], dict], i: int) -> list[str]:
    """Points 2 and 3 of both rules: the lists where variant ``i`` loses more than ``LOSS_130`` at
    130 % or widens its gap past ``LOSS_GAP``, one phrase each."""
    why = []
    for lst in lists:
        mine, base = table[lst, i], table[lst, 0]
        if mine["final"] - base["final"] < -LOSS_130:
            why.append(f"{lst} {mine['final'] - base['final']:+.2f} at 130 %")
        if mine["gap"] < min(base["gap"], 0.0) - LOSS_GAP or mine["gap"] < base["gap"] - LOSS_GAP:
            why.append(f"{lst} gap {mine['gap']:+.2f} (default {base['gap']:+.2f})")
    return why


def _mean_curve(runs: list[dict]) -> list[float]:
    """The mean over the runs of the allocation at arrived 0..100 % (a curve that ends early
    repeats its last point)."""
    return [statistics.fmean(r["curve"][min(a, len(r["curve"]) - 1)] for r in runs) for a in range(101)]


if __name__ == "__main__":
    sys.exit(main())
