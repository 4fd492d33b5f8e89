"""The openb pod lists x scheduler profiles x seeds, through ``xpod server``'s scheduler, against
the FGD authors' published 10-seed means.

    .venv/bin/python bench/replay_openb.py [--lists default,gpushare100] [--profiles default,fgd,bestfit,random]
        [--seeds 42-51] [--jobs 2] [--json OUT] [--plot PNG] [--cache DIR]
    .venv/bin/python bench/replay_openb.py --from-json a.json b.json [--json OUT] [--plot PNG]

(``--from-json``: the table of runs saved by earlier ``--json`` runs, e.g. one process per list.
``--cache DIR``: each replay's record is written to DIR as it finishes and read back, not
replayed, by a later run with the same inputs (``cache_key``), so a grid that dies half-way
resumes where it stopped.)

Every run is ``xpod replay openb``'s: ``scheduler.sim.openb.replay`` drives
``xpod.scheduler.core.Scheduler`` with a profile (``default`` = examples/profiles/scheduler-default.yaml,
the profile ``xpod server`` runs without one; ``NAME``: the file NAME.yaml in examples/profiles; or a path).
Data: bench/data/openb/ (SOURCES.md there): the Alibaba cluster-trace-gpu-v2023 lists and the
published curves (``published_curves.csv``, mean of seeds 42-51 at each arrived percent).

Printed per list and profile (means over the seeds): GPU allocation at 60/80/100/130 % arrived
and the range over the seeds at 130 %,
the published value of the same policy at 130 % and the difference (a baseline more than 0.5
points off is flagged ``!``: it invalidates the comparison on that list), and for profiles
without a published counterpart the targets against FGD's published curve: unallocated at 130 %
over FGD's (target <= 0.9) and the worst gap at 60/80/100 % arrived (target >= -0.5).
``--lists a+b`` replays the concatenation of two lists (a synthetic list).

Which lists are which: ``TUNING_LISTS`` (the six lists without published results) are the only
ones the default scoring plugin's constants were chosen on (``bench/tune_openb.py`` refuses the
others); the 14 published lists are the test.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "openb")
#: the pod lists with no published FGD results: the default plugin's tuning set
TUNING_LISTS = ("cpu0", "cpu037", "cpu072", "cpu300", "gpushare20", "gpuspec05")
#: profile name -> the published policy it re-implements
PUBLISHED_AS = {"fgd": "fgd", "bestfit": "bestfit", "random": "random"}
CHECK_POINTS = (60, 80, 100)


def list_path(data: str, name: str) -> str:
    return os.path.join(data, f"openb_pod_list_{name}.csv.gz")


def short(name: str) -> str:
    return name.replace("openb_pod_list_", "")


def load_curves(path: str) -> dict[tuple[str, str, str], list[float]]:
    """published_curves.csv -> {(list, policy, metric): [value at arrived 0..130]}."""
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out[(short(r["workload"]), r["policy"], r["metric"])] = [float(r[str(a)]) for a in range(131)]
    return out


def profile_path(name: str) -> str:
    if os.path.exists(name):
        return name
    return os.path.join(REPO, "examples", "profiles", "scheduler-default.yaml" if name == "default" else f"{name}.yaml")


def run_one(task: tuple) -> dict:
    """One replay (in a worker process)."""
    from xpod.scheduler.core.profile import load_profile
    from xpod.scheduler.sim import openb

    data, lst, prof, seed, load = task
    nodes = openb.load_nodes(os.path.join(data, "openb_node_list_gpu_node.csv"))
    pods = openb.PodTable.concat([openb.load_pods(list_path(data, p)) for p in lst.split("+")])
    r = openb.replay(nodes, pods, load_profile(profile_path(prof)), profile_name=prof, load=load, seed=seed)
    return {
        "list": lst,
        "profile": prof,
        "seed": seed,
        "alloc_pct": r.alloc_pct,
        "alloc_curve_pct": list(r.alloc_curve_pct),
        "frag_curve_pct": list(r.frag_curve_pct),
        "pods_failed": r.pods_arrived - r.pods_placed,
        "seconds": r.seconds,
        "cpu_seconds": r.cpu_seconds,
    }


def parse_seeds(arg: str) -> list[int]:
    """``42-51`` or ``42,43`` (or both, comma-separated) -> the seeds; anything else is one line
    naming the flag and the value."""
    out = []
    try:
        for part in arg.split(","):
            if "-" in part:
                a, b = part.split("-")
                if int(b) < int(a):
                    raise ValueError
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise SystemExit(f"--seeds {arg!r}: give seeds as 42-51 or 42,43 (whole numbers, ranges low-high)") from None
    if not out:
        raise SystemExit(f"--seeds {arg!r}: no seed given; give seeds as 42-51 or 42,43")
    return out


def check_lists(data: str, lists: list[str]) -> None:
    """Every named pod list (``a+b`` joins two) is a file in ``data``; else one line naming it."""
    for lst in lists:
        for part in lst.split("+"):
            if not os.path.isfile(list_path(data, part)):
                known = sorted(short(n)[: -len(".csv.gz")] for n in os.listdir(data) if n.startswith("openb_pod_list_"))
                raise SystemExit(f"--lists: no pod list {part!r} in {data} (known: {', '.join(known)})")


def check_cache(cache: str | None) -> None:
    """``--cache`` names a folder (made if missing), not a file; else one line."""
    if cache and os.path.exists(cache) and not os.path.isdir(cache):
        raise SystemExit(f"--cache {cache}: a file, not a folder; name a folder (it is made if missing)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", default="", help="comma-separated list names (default: the 14 published lists)")
    ap.add_argument("--profiles", default="default,fgd,bestfit,random")
    ap.add_argument(
        "--seeds",
        help="e.g. 42-51 or 42,43 (default 42-51; with --from-json: the seeds every list and profile must hold)",
    )
    ap.add_argument("--load", type=float, default=1.3)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--json", help="write every run and the table here")
    ap.add_argument("--plot", help="PNG: allocation curves (mean of the seeds) against FGD's published curve, per list")
    ap.add_argument("--data", default=DATA)
    ap.add_argument(
        "--cache",
        metavar="DIR",
        help="keep each replay's record in DIR as it finishes and read the ones already there (resume a grid)",
    )
    ap.add_argument(
        "--from-json",
        nargs="+",
        metavar="JSON",
        help="print the table of the runs saved in these --json files (e.g. one per list) instead of replaying",
    )
    args = ap.parse_args(argv)
    curves = load_curves(os.path.join(args.data, "published_curves.csv"))
    published = sorted({k[0] for k in curves})
    t0 = time.perf_counter()
    if args.from_json:
        sourced = _saved_runs(args.from_json)
        runs = [r for _, r in sourced]
        lists = [short(x) for x in args.lists.split(",") if x] or list(dict.fromkeys(r["list"] for r in runs))
        profiles = list(dict.fromkeys(r["profile"] for r in runs))
        runs = _covered(runs, lists, profiles, parse_seeds(args.seeds) if args.seeds else None, args.from_json)
        kept = {id(r) for r in runs if r["list"] in lists}
        check_one_code(
            [(p, r) for p, r in sourced if id(r) in kept],
            row=lambda r: (r["list"], r["profile"]),
            name=lambda r: f"{r['list']} {r['profile']} seed {r['seed']}",
            fix="replay them with one code (--cache DIR keeps what is current) and make the table from those files",
        )
    else:
        lists = [short(x) for x in args.lists.split(",") if x] or published
        profiles = [p for p in args.profiles.split(",") if p]
        seeds = parse_seeds(args.seeds or "42-51")
        check_lists(args.data, lists)
        check_cache(args.cache)
        tasks = [(args.data, lst, prof, seed, args.load) for lst in lists for prof in profiles for seed in seeds]
        runs = _run_all(tasks, args.jobs, args.cache)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"runs": runs}, f)
    rows = table(runs, lists, profiles, curves)
    if args.from_json:
        print(f"{len(runs)} replays read from {len(args.from_json)} file(s)")
    else:
        print(
            f"{len(runs)} replays in {time.perf_counter() - t0:.0f} s; load average {open('/proc/loadavg').read().split()[0]}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "runs": runs}, f)
    if args.plot:
        plot(runs, lists, profiles, curves, args.plot)
    return 0


def _saved_runs(paths: list[str]) -> list[tuple[str, dict]]:
    """The runs of earlier ``--json`` files, each with the file it came from; a file that is not
    one is one line naming it."""
    runs = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if not all(isinstance(r, dict) for r in doc["runs"]):
                raise TypeError("a run is not an object")
            runs.extend((path, r) for r in doc["runs"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"{path}: not a bench/replay_openb.py --json file ({err})") from None
    return runs


def check_one_code(sourced: list[tuple[str, dict]], row, name, fix: str) -> None:
    """The records of one table (``(file, record)`` pairs) must come from one code
    (``code_digest``: ``_code_digest``, what ``--cache`` keys records by) and each row (``row(record)``)
    from one set of inputs (``inputs_digest``: the profile, node and pod list files, ``stamp``);
    else one line naming the two files and records (``name(record)``) that differ and what to do
    (``fix``), since a table that averages a run of old code with one of new says nothing about
    either. Records saved before the digests existed carry none: a table of only such records
    is printed with one line saying it cannot be checked, one that mixes them with stamped
    records is refused."""
    if not sourced:
        return
    bare = [(p, r) for p, r in sourced if "code_digest" not in r]
    if len(bare) == len(sourced):
        print("the saved runs carry no code digest (saved before 7 December 2026): not checked to come from one code")
        return
    if bare:
        p0, r0 = bare[0]
        p1, r1 = next((p, r) for p, r in sourced if "code_digest" in r)
        raise SystemExit(
            f"{p0} ({name(r0)}) carries no code digest (saved before 7 December 2026), {p1} ({name(r1)}) does: "
            f"the table cannot be shown to come from one code; {fix}"
        )
    p0, r0 = sourced[0]
    for p, r in sourced:
        if r["code_digest"] != r0["code_digest"]:
            raise SystemExit(
                f"{p0} ({name(r0)}) and {p} ({name(r)}) come from different code (digest {r0['code_digest']} "
                f"against {r['code_digest']}); {fix}"
            )
    first: dict = {}
    for p, r in sourced:
        p0, r0 = first.setdefault(row(r), (p, r))
        if r.get("inputs_digest") != r0.get("inputs_digest"):
            raise SystemExit(
                f"{p0} ({name(r0)}) and {p} ({name(r)}) come from different inputs (a profile or pod list file "
                f"changed between them: digest {r0.get('inputs_digest')} against {r.get('inputs_digest')}); {fix}"
            )


def _covered(runs: list[dict], lists: list[str], profiles: list[str], seeds: list[int] | None, paths) -> list[dict]:
    """The saved runs of ``lists`` x ``profiles``, each (list, profile, seed) once. With ``seeds``
    only those, and every list and profile must hold every one of them; without, a table whose
    rows are over different seeds says so on one line. Refused with one line naming the files,
    the list and profile and the seeds missing or doubled."""
    where = ", ".join(paths)
    if seeds is not None:
        runs = [r for r in runs if r["seed"] in seeds]
    held: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        if r["list"] in lists:
            held.setdefault((r["list"], r["profile"]), []).append(r["seed"])
    for (lst, prof), got in held.items():
        twice = sorted({s for s in got if got.count(s) > 1})
        if twice:
            raise SystemExit(
                f"{where}: {lst} {prof} holds seed(s) {', '.join(map(str, twice))} twice; keep one run of each"
            )
    if seeds is not None:
        for lst in lists:
            for prof in profiles:
                missing = [s for s in seeds if s not in held.get((lst, prof), [])]
                if missing:
                    raise SystemExit(
                        f"{where}: {lst} {prof} has no run for seed(s) {', '.join(map(str, missing))} of the "
                        f"{len(seeds)} asked; replay them (--cache resumes a grid) or pass --seeds/--lists the files hold"
                    )
    elif len({tuple(sorted(s)) for s in held.values()}) > 1:
        print(
            "the rows are over different seeds: "
            + "; ".join(f"{lst} {prof} {len(s)} ({_seed_span(s)})" for (lst, prof), s in held.items())
        )
    return runs


def _seed_span(seeds: list[int]) -> str:
    s = sorted(seeds)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) else ",".join(map(str, s))


def _run_all(tasks: list[tuple], jobs: int, cache: str | None = None) -> list[dict]:
    return _run_all_with(run_one, tasks, jobs, cache, cache_key, stamp)


def _inputs(task: tuple) -> tuple[list, list[str]]:
    """What ``run_one(task)`` reads besides the code: the fields of the task but the seed, and the
    files (the profile, the node and pod lists)."""
    data, lst, prof, _seed, load = task
    files = [profile_path(prof), os.path.join(data, "openb_node_list_gpu_node.csv")]
    files += [list_path(data, p) for p in lst.split("+")]
    return [lst, prof, load], files


def cache_key(task: tuple) -> str:
    """The name of ``run_one(task)``'s record in a ``--cache`` folder: the list, profile, seed and
    load, and a digest of everything the replay reads (the profile file, the node and pod lists,
    the scheduler's and this script's code), so a changed input is replayed, never read stale."""
    _data, lst, prof, seed, load = task
    _, files = _inputs(task)
    return digest_name([lst, os.path.basename(prof).removesuffix(".yaml"), seed, load], [lst, prof, seed, load], files)


def stamp(task: tuple) -> dict:
    """What every record of ``run_one(task)`` carries to say what made it (``stamp_of``)."""
    return stamp_of(*_inputs(task))


def stamp_of(fields: list, files: list[str]) -> dict:
    """``code_digest``: the code a replay runs (``_code_digest``, also in every ``--cache`` key);
    ``inputs_digest``: ``fields`` (the task but its seed) and the contents of ``files``. 16 hex
    each. ``--from-json`` refuses a table whose records differ in the first, or a row whose
    records differ in the second (``check_one_code``)."""
    return {"code_digest": _code_digest()[:16], "inputs_digest": _digest(fields, files, code=False)}


def digest_name(label: list, fields: list, files: list[str]) -> str:
    """``label`` joined by dots (made safe for a file name) and a 16-hex digest of ``fields``,
    the contents of ``files`` and of the code a replay runs (``_code_digest``)."""
    safe = ".".join("".join(c if c.isalnum() or c in "-_" else "_" for c in str(x)) for x in label)
    return f"{safe}.{_digest(fields, files)}.json"


def _digest(fields: list, files: list[str], code: bool = True) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for path in files:
        h.update(_file_digest(path).encode())
    if code:
        h.update(_code_digest().encode())
    return h.hexdigest()[:16]


def _file_digest(path: str) -> str:
    st = os.stat(path)
    return _digest_of(path, st.st_mtime_ns, st.st_size)


@functools.cache
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    """(the file's time and size are in the arguments so an edited file is read again)"""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


#: the bench scripts a replay runs (the others in bench/ are not in the code digest, so another
#: benchmark's edit does not make a grid's records stale)
REPLAY_SCRIPTS = ("replay_openb.py", "tune_openb.py")


@functools.cache
def _code_digest() -> str:
    """A digest of the Python files of ``xpod.scheduler``, ``xpod.hal`` and ``REPLAY_SCRIPTS``
    (what a replay runs); the installed packages' versions are not in it."""
    import hashlib

    import xpod.hal
    import xpod.scheduler

    h = hashlib.sha256()
    for root in (os.path.dirname(xpod.scheduler.__file__), os.path.dirname(xpod.hal.__file__)):
        for d, subdirs, names in sorted(os.walk(root)):
            subdirs[:] = sorted(x for x in subdirs if x not in ("__pycache__", "data"))
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(d, name)
                h.update(os.path.relpath(path, root).encode())
                h.update(_file_digest(path).encode())
    for name in REPLAY_SCRIPTS:
        h.update(name.encode())
        h.update(_file_digest(os.path.join(HERE, name)).encode())
    return h.hexdigest()


def _run_all_with(fn, tasks: list[tuple], jobs: int, cache: str | None = None, key=None, stamp=None) -> list[dict]:
    """``fn`` over ``tasks`` in ``jobs`` worker processes, with a progress bar; the records in
    task order. With ``cache`` (a folder) and ``key`` (task -> file name): a task whose record is
    there is read, not run, and each run's record is written there the moment it finishes, so a
    grid that dies half-way resumes where it stopped (an unreadable record is run again). With
    ``stamp`` (task -> dict): every record, run or read, carries it (``stamp_of``; a record read
    from the cache was made by this code, since the key holds the code's digest)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out: list[dict | None] = [None] * len(tasks)
    if cache:
        os.makedirs(cache, exist_ok=True)
        for i, task in enumerate(tasks):
            out[i] = _read_record(os.path.join(cache, key(task)))
            if out[i] is not None and stamp:
                out[i].update(stamp(task))
        print(f"cache {cache}: {sum(r is not None for r in out)} of {len(tasks)} replays read, the rest run")
    todo = [i for i, r in enumerate(out) if r is None]

    def done(i: int, record: dict, name: str | None) -> None:
        out[i] = record
        if cache and name:
            path = os.path.join(cache, name)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(path + ".tmp", path)
        bar.advance(t)

    with Progress(TextColumn("replays"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        t = bar.add_task("", total=len(tasks), completed=len(tasks) - len(todo))
        if jobs <= 1:
            for i in todo:
                done(*_indexed((fn, i, tasks[i], key if cache else None, stamp)))
        elif todo:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(jobs) as pool:
                work = [(fn, i, tasks[i], key if cache else None, stamp) for i in todo]
                for i, record, name in pool.imap_unordered(_indexed, work):
                    done(i, record, name)
    return [r for r in out if r is not None]


def _indexed(job: tuple) -> tuple[int, dict, str | None]:
    """Run one task; its cache name and stamp are taken from the files just before the run reads
    them, not when it finishes: a profile edited while its replay runs must not file the old
    profile's result under the new one's digest (found by review 8)."""
    fn, i, task, key, stamp = job
    name = key(task) if key else None
    made = stamp(task) if stamp else {}
    record = fn(task)
    record.update(made)
    return i, record, name


def _read_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def table(runs: list[dict], lists: list[str], profiles: list[str], curves: dict) -> list[dict]:
    hdr = (
        f"{'pod list':18s} {'profile':9s} {'@60':>6s} {'@80':>6s} {'@100':>6s} {'@130':>6s} {'range@130':>13s} {'pub@130':>7s} "
        f"{'diff':>6s} {'unalloc':>7s} {'/FGD':>6s} {'worst@60-100':>12s}  {'worst0-100':>10s} {'s/run':>6s} {'cpu s':>6s}"
    )
    print(hdr)
    rows = []
    for lst in lists:
        fgd = curves.get((lst, "fgd", "alloc"))
        for prof in profiles:
            mine = [r for r in runs if r["list"] == lst and r["profile"] == prof]
            if not mine:
                continue
            # a list trimmed to the load ends its curve just below it: the last point is the final state
            at = {a: statistics.fmean(_at(r["alloc_curve_pct"], a) for r in mine) for a in (*CHECK_POINTS, 130)}
            final = statistics.fmean(r["alloc_pct"] for r in mine)
            lo, hi = min(r["alloc_pct"] for r in mine), max(r["alloc_pct"] for r in mine)
            pub_curve = curves.get((lst, PUBLISHED_AS.get(os.path.basename(prof).removesuffix(".yaml"), ""), "alloc"))
            pub = pub_curve[130] if pub_curve else None
            diff = final - pub if pub is not None else None
            ratio = worst = None
            whole = None
            if fgd is not None and pub_curve is None:
                ratio = (100 - final) / (100 - fgd[130])
                worst = min(at[a] - fgd[a] for a in CHECK_POINTS)
                # the whole curve from 1 to 100 % arrived, not only the three points (the published
                # curve's point 0 holds the first pods already)
                whole = min(
                    statistics.fmean(_at(r["alloc_curve_pct"], a) for r in mine) - fgd[a] for a in range(1, 101)
                )
            flag = " !" if diff is not None and abs(diff) > 0.5 else "  "
            miss = "x" if (ratio is not None and ratio > 0.9) or (worst is not None and worst < -0.5) else " "
            print(
                f"{lst:18s} {os.path.basename(prof):9s} {at[60]:6.2f} {at[80]:6.2f} {at[100]:6.2f} {final:6.2f} "
                f"{f'{lo:.2f}-{hi:.2f}':>13s} "
                f"{_f(pub, 7)} {_f(diff, 6, '+.2f')}{flag}{100 - final:6.2f} {_f(ratio, 6, '.3f')} "
                f"{_f(worst, 12, '+.2f')}{miss} {_f(whole, 10, '+.2f')} {statistics.fmean(r['seconds'] for r in mine):6.1f} "
                f"{statistics.fmean(r.get('cpu_seconds', 0.0) for r in mine):6.1f}",
                flush=True,
            )
            rows.append(
                {
                    "list": lst,
                    "profile": prof,
                    "seeds": [r["seed"] for r in mine],
                    "alloc_pct_at": {str(a): v for a, v in at.items()},
                    "alloc_pct": final,
                    "alloc_pct_range": [lo, hi],
                    "published_alloc_pct_at_130": pub,
                    "unallocated_pct": 100 - final,
                    "fgd_published_unallocated_pct": (100 - fgd[130]) if fgd else None,
                    "unallocated_over_fgd": ratio,
                    "worst_gap_to_fgd_at_60_80_100": worst,
                    "worst_gap_to_fgd_arrived_0_100": whole,
                    "seconds_per_run": statistics.fmean(r["seconds"] for r in mine),
                    "cpu_seconds_per_run": statistics.fmean(r.get("cpu_seconds", 0.0) for r in mine),
                }
            )
    for prof in profiles:
        mine = [r for r in rows if r["profile"] == prof and r["unallocated_over_fgd"] is not None]
        if mine:
            print(
                f"{prof}: mean unallocated {statistics.fmean(r['unallocated_pct'] for r in mine):.2f} % over {len(mine)} "
                f"lists (FGD published {statistics.fmean(r['fgd_published_unallocated_pct'] for r in mine):.2f} %); "
                f"worst ratio {max(r['unallocated_over_fgd'] for r in mine):.3f} (target <= 0.9); "
                f"worst gap at 60/80/100 % {min(r['worst_gap_to_fgd_at_60_80_100'] for r in mine):+.2f} (target >= -0.5)"
            )
            ratio_miss = [r["list"] for r in mine if r["unallocated_over_fgd"] > 0.9]
            gap_miss = [r["list"] for r in mine if r["worst_gap_to_fgd_at_60_80_100"] < -0.5]
            print(
                f"{prof}: unallocated <= 0.9 x FGD's on {len(mine) - len(ratio_miss)} of {len(mine)} lists"
                f"{' (misses: ' + ', '.join(ratio_miss) + ')' if ratio_miss else ''}; "
                f"never 0.5 below FGD at 60/80/100 % on {len(mine) - len(gap_miss)} of {len(mine)}"
                f"{' (misses: ' + ', '.join(gap_miss) + ')' if gap_miss else ''}"
            )
        base = [r for r in rows if r["profile"] == prof and r["published_alloc_pct_at_130"] is not None]
        if base:
            off = max(abs(r["alloc_pct"] - r["published_alloc_pct_at_130"]) for r in base)
            print(
                f"{prof}: largest distance to its published 130 % figure {off:.2f} points over {len(base)} lists (target <= 0.5)"
            )
    return rows


def _at(curve: list[float], arrived_pct: int) -> float:
    return curve[min(arrived_pct, len(curve) - 1)]


def _f(v, width: int, fmt: str = ".2f") -> str:
    return (format(v, fmt) if v is not None else "-").rjust(width)


def plot(runs: list[dict], lists: list[str], profiles: list[str], curves: dict, path: str) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows_n = math.ceil(len(lists) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, lst in zip(axes.flat, lists):
        fgd = curves.get((lst, "fgd", "alloc"))
        if fgd:
            ax.plot(range(131), fgd, color="black", linestyle="--", linewidth=1, label="FGD published")
        for prof in profiles:
            mine = [r["alloc_curve_pct"] for r in runs if r["list"] == lst and r["profile"] == prof]
            if not mine:
                continue
            n = min(len(c) for c in mine)
            ax.plot(range(n), [statistics.fmean(c[a] for c in mine) for a in range(n)], linewidth=1, label=prof)
        ax.set_xlim(50, 131)
        ax.set_ylim(45, 100)
        ax.set_title(lst, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(lists) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.supxlabel("arrived GPU request (% of capacity)")
    fig.supylabel("GPU allocation (% of capacity)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
