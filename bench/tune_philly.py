"""Where the default profile's job-order constants were chosen: Philly weeks 11-14, never a
reported week (bench/replay_philly.py reports weeks 3-10).

    .venv/bin/python bench/tune_philly.py --compress 0.5 \\
        --variants "preempt_factor=0;preempt_factor=8;by=seconds;starve_factor=2"

Weeks 11-14 of the trace offer 240-330 devices of work on average, too little to queue on
768 dies, so their submit times are compressed (``--compress 0.5``: 4 weeks of arrivals in 2,
offered load ~500-650 devices, like weeks 3-10). Each candidate is the default profile
(examples/profiles/scheduler-default.yaml) with the ``shortest-remaining`` arguments given
(``;`` between candidates, ``,`` between arguments; ``priority`` alone: the earlier default's
``priority`` plugin, submission order with aging, in its place). Each replays the compressed
span on the simulated CloudMatrix384 through ``xpod replay jobs``'s engine; the table gives
mean / p99 JCT, mean wait and utilisation beside the baselines.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from replay_philly import CLUSTER, TRACE, WEEK_S  # noqa: E402

TUNE_WEEKS = (11, 14)  # first and last week, inclusive (--weeks picks a part of them)


def compressed(factor: float, weeks: tuple[int, int] = TUNE_WEEKS):
    """The tuning weeks' rows, their submit times from 0 and scaled by ``factor``; the span."""
    from xpod.scheduler.sim.trace import read_trace

    if not (TUNE_WEEKS[0] <= weeks[0] <= weeks[1] <= TUNE_WEEKS[1]):
        raise SystemExit(f"--weeks: tuning stays inside weeks {TUNE_WEEKS[0]}-{TUNE_WEEKS[1]} (3-10 are reported)")
    lo, hi = (weeks[0] - 1) * WEEK_S, weeks[1] * WEEK_S
    rows = [tj for tj in read_trace(TRACE) if lo <= tj.submit_s < hi]
    return [dataclasses.replace(tj, submit_s=(tj.submit_s - lo) * factor) for tj in rows], (hi - lo) * factor


def candidate(spec: str) -> dict:
    """The default profile with ``shortest-remaining``'s arguments from ``spec`` (``k=v,k=v``),
    or with the ``priority`` plugin in its place (``spec == "priority"``); ``+NAME`` adds the
    plugin NAME after ``binpack`` and ``NAME.k=v`` sets an argument of another plugin (e.g.
    ``+lifetime,lifetime.bucket_s=600``)."""
    from xpod.scheduler.core.profile import load_profile

    prof = load_profile(os.path.join(ROOT, "examples", "profiles", "scheduler-default.yaml"))
    extra: dict = {}
    added: list[str] = []
    others: dict[str, dict] = {}
    for kv in spec.split(","):
        kv = kv.strip()
        if not kv or kv == "priority":
            continue
        if kv.startswith("+"):
            added.append(kv[1:])
            continue
        k, _, v = kv.partition("=")
        k = k.strip()
        try:
            value: float | str = float(v)
        except ValueError:
            value = v.strip()
        if "." in k:
            plugin, _, arg = k.partition(".")
            others.setdefault(plugin, {})[arg] = value
        else:
            extra[k] = value
    pols = []
    for name, args in prof.policies:
        if name == "shortest-remaining":
            if spec.strip() == "priority":
                name, args = "priority", {"aging_per_hour": 1}
            else:
                args = {**dict(args), **extra}
        pols.append({"name": name, "args": {**dict(args), **others.get(name, {})}})
        if name == "binpack":
            pols += [{"name": a, "args": others.get(a, {})} for a in added]
    return {"actions": list(prof.actions), "policies": pols}


def run(label: str, profile: dict | str, factor: float, weeks: tuple[int, int]) -> tuple[str, dict]:
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.profile import load_profile, profile_from_dict
    from xpod.scheduler.sim.jobs import ReplaySettings, replay

    trace, span = compressed(factor, weeks)
    nodes, fabric = load_inventory(CLUSTER)
    prof = load_profile(profile) if isinstance(profile, str) else profile_from_dict(profile)
    r = replay(trace, nodes, prof, fabric=fabric, profile_name=label, settings=ReplaySettings(from_s=0, to_s=span))
    return label, r.to_json()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compress", type=float, default=0.5)
    ap.add_argument("--variants", default="", help="';'-separated shortest-remaining arguments (k=v,k=v) or 'priority'")
    ap.add_argument("--baselines", default="fifo,easy-backfill,tiresias,volcano")
    ap.add_argument("--weeks", default=f"{TUNE_WEEKS[0]}-{TUNE_WEEKS[1]}", help="e.g. 11-12")
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args(argv)
    a, _, b = args.weeks.partition("-")
    weeks = (int(a), int(b or a))
    specs = args.variants.split(";") if args.variants else [""]
    jobs = [(f"default {s}".strip(), candidate(s), args.compress, weeks) for s in specs]
    jobs += [
        (b, os.path.join(ROOT, "examples", "profiles", f"{b}.yaml"), args.compress, weeks)
        for b in args.baselines.split(",")
        if b
    ]
    print(f"Philly weeks {weeks[0]}-{weeks[1]}, submit times x {args.compress}, simulated CloudMatrix384")
    print(
        f"{'profile':<44}{'jobs':>7}{'mean JCT h':>12}{'p99 JCT h':>11}{'wait h':>9}{'util %':>8}{'preempt':>9}{'viol':>6}{'s':>7}"
    )
    with multiprocessing.Pool(args.procs) as pool:
        for label, d in pool.imap(_run, jobs):
            _row(label, d)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


def _run(job: tuple) -> tuple[str, dict]:
    return run(*job)


def _row(label: str, d: dict) -> None:
    print(
        f"{label:<44}{d['jobs']:>7}{d['mean_jct_s'] / 3600:>12.3f}{d['p99_jct_s'] / 3600:>11.2f}"
        f"{d['mean_wait_s'] / 3600:>9.3f}{100 * d['utilisation']:>8.1f}{d['preemptions']:>9}{d['violations']:>6}"
        f"{d['seconds']:>7.0f}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
