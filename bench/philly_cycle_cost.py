"""CPU per scheduler cycle with a long queue: Philly jobs queued behind a full simulated
CloudMatrix384, per profile.

    .venv/bin/python bench/philly_cycle_cost.py                  # 3,000 jobs queued, five profiles
    .venv/bin/python bench/philly_cycle_cost.py --queued 500 --profiles default,fifo --json out.json

The first ``--queued`` + 400 jobs submitted from week 5 of the trace (bench/data/philly) are
submitted at once to the scheduler core ``xpod server`` runs, on the simulated CloudMatrix384
(examples/clusters/cloudmatrix384.yaml, 768 dies), with each profile; one cycle places what
fits, then ``--cycles`` cycles a minute apart (nothing arrives or ends: the state of a replay's
periodic cycles while a queue waits) are timed in CPU seconds of this process
(``time.process_time``: a loaded machine inflates it less than wall time) with
``explain=False``, as ``xpod replay jobs`` runs them. The table: jobs pending and running,
evictions in the timed cycles, CPU ms per cycle. Report the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from replay_philly import CLUSTER, PROFILES, TRACE, WEEK_S, _profile  # noqa: E402


def measure(name: str, queued: int, cycles: int) -> dict:
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.model import Queue
    from xpod.scheduler.core.scheduler import Scheduler
    from xpod.scheduler.sim.jobs import ReplaySettings, build_jobs
    from xpod.scheduler.sim.trace import read_trace

    rows = [tj for tj in read_trace(TRACE) if tj.submit_s >= 4 * WEEK_S][: queued + 400]
    nodes, fabric = load_inventory(CLUSTER)
    built, _ = build_jobs(rows, nodes, ReplaySettings())
    _, prof = _profile(name)
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, fabric=fabric)
    t = rows[-1].submit_s
    for _, job in built:
        s.submit(job)
    s.cycle(now=t, explain=False)
    evictions = 0
    c0 = time.process_time()
    for k in range(cycles):
        evictions += len(s.cycle(now=t + 60.0 * (k + 1), explain=False).evictions)
    cpu_ms = (time.process_time() - c0) / cycles * 1000
    return {
        "profile": name,
        "pending": len(s.pending),
        "running": len(s.running),
        "evictions": evictions,
        "cpu_ms_per_cycle": cpu_ms,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=3000, help="jobs beyond what the pod holds (default 3000)")
    ap.add_argument("--cycles", type=int, default=30, help="cycles timed per profile (default 30)")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.queued < 0 or args.cycles < 1:
        raise SystemExit("--queued must be >= 0 and --cycles >= 1")
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    for name in names:
        path = os.path.join(
            ROOT, "examples", "profiles", "scheduler-default.yaml" if name == "default" else f"{name}.yaml"
        )
        if not os.path.isfile(path):
            raise SystemExit(f"--profiles: {name!r}: no profile {os.path.relpath(path, ROOT)}")
    out = []
    print(f"{'profile':<16}{'pending':>9}{'running':>9}{'evictions':>11}{'CPU ms/cycle':>14}")
    for name in names:
        r = measure(name, args.queued, args.cycles)
        out.append(r)
        print(
            f"{name:<16}{r['pending']:>9}{r['running']:>9}{r['evictions']:>11}{r['cpu_ms_per_cycle']:>14.1f}",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"queued": args.queued, "cycles": args.cycles, "results": out}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
