"""Stranded dies in ``xpod replay mix``: free dies while training waits, and why (issue 14).

    nice -n 19 .venv/bin/python bench/mix_strand.py [--windows tune|test] [--days ...] [--traces ...] [--json OUT]

For each window (default: bench/tune_mix.py's tuning windows, the Azure *code* and Mooncake
*synthetic* traces with Philly days 22, 42, 62) the default profile's replay is watched after
every cycle (the state holds until the next event instant, so the free dies of a cycle are
counted for the time until the next one). While some training job waits (pending, or running
below its ``tasks``), every free die of the serving and training model is given to the first
of these causes that could have used it, in this order, each taking dies from a copy of the
free map (whole nodes for distributed tasks, die pairs by MindCluster's ``select_910c``):

* ``regrow held``: a gang shrunk for serving, held at its size until its regrow is due
  (``scale_down_after_s`` of the serving job), with whole nodes free for its missing tasks;
  ``regrow waits``: the same without the hold (it would fit, the cycle did not grow it);
* ``behind head``: a pending job that fits now at >= ``min_tasks`` but waits behind its queue's
  blocked head (``WaitingBehind``: the head's start is unknown and the profile does not lend,
  ``lend: false``, so backfill keeps to other devices); ``fits, not placed``: fits by this count
  and the cycle said ``Unschedulable``;
* ``below min_tasks``: whole nodes free, fewer than any pending elastic job's minimum;
* ``die pairs``: a pending one-task job whose dies are free on one node by count but not in
  whole modules (the 910C rule);
* the rest, by where the dies are: ``whole nodes, none fits`` (every pending job is larger),
  ``holes beside serving`` (free dies on nodes where serving replicas run) and ``holes beside
  training`` (on nodes only training uses).

Prints one row per window (die-hours per cause, and the mean free dies while training waits)
and the totals; ``--json`` writes them. The test windows (``--windows test``: the conversation
traces, days 20-70) are for looking at the reported runs, never for tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_mix import CLUSTER, JOB  # noqa: E402 - the replay's own files: the same job and pod
from replay_mix import TRACES as TEST_TRACES  # noqa: E402
from replay_mix import TRAINING as TEST_TRAINING  # noqa: E402
from tune_mix import DAYS as TUNE_DAYS  # noqa: E402
from tune_mix import TRACES as TUNE_TRACES  # noqa: E402
from tune_mix import TRAINING as TUNE_TRAINING  # noqa: E402

CAUSES = (
    "regrow held",
    "regrow waits",
    "behind head",
    "fits, not placed",
    "below min_tasks",
    "die pairs",
    "whole nodes, none fits",
    "holes beside serving",
    "holes beside training",
)


class StrandBook:
    """An engine observer: after every cycle, the free dies while training waits, by cause
    (module docstring); ``die_s`` holds the die-seconds per cause over ``[start_s, end_s)``."""

    def __init__(
        self, serving_id: str, trace_devices: dict[str, int], model: str, start_s: float, end_s: float
    ) -> None:
        self.serving_id, self.model = serving_id, model
        self.trace_devices = trace_devices  # training job -> its trace devices (progress per second at full size)
        self.training_ids = set(trace_devices)
        self.start_s, self.end_s = start_s, end_s
        self.die_s: dict[str, float] = defaultdict(float)
        self.waiting_s = 0.0  # seconds some training job waited
        self.free_waiting_die_s = 0.0
        self.idle_die_s = 0.0  # free dies while no training waits (nothing stranded)
        self.heads: dict[tuple, float] = defaultdict(float)  # blocked head's (tasks, dies/task, min) -> seconds
        self.training_die_s = 0.0  # dies training holds
        self.rounding_die_s = 0.0  # of those, dies beyond the trace's devices (legal shapes round up)
        self._last: tuple[float, dict[str, int], int, tuple | None, int, float] | None = None

    def on_cycle(self, engine, now: float, result) -> None:
        self._account(now)
        held = rounding = 0.0
        for jid, rj in engine.scheduler.running.items():
            if jid in self.trace_devices:
                n = sum(len(b.device_indices) for b in rj.bindings)
                held += n
                rounding += n - self.trace_devices[jid] * len(rj.bindings) / rj.job.tasks
        self._last = (now, *self._classify(engine.scheduler, result), held, rounding)

    def close(self) -> None:
        self._account(self.end_s)
        self._last = None

    def _account(self, now: float) -> None:
        if self._last is None:
            return
        t0, causes, idle, head, held, rounding = self._last
        dt = max(0.0, min(now, self.end_s) - max(t0, self.start_s))
        if dt <= 0:
            return
        if causes:
            self.waiting_s += dt
            for c, n in causes.items():
                self.die_s[c] += n * dt
                self.free_waiting_die_s += n * dt
            if head is not None:
                self.heads[head] += dt
        self.idle_die_s += idle * dt
        self.training_die_s += held * dt
        self.rounding_die_s += rounding * dt

    def _classify(self, sched, result) -> tuple[dict[str, int], int, tuple | None]:
        from xpod.scheduler.core.model import MILLI, ReasonCode
        from xpod.scheduler.core.plugins.ascend import rules

        snap = sched.snapshot
        free: dict[str, set[int]] = {}
        for name, st in snap.nodes.items():
            idx = {
                i
                for i, d in enumerate(st.node.devices)
                if d.model == self.model and st.usable[i] and st.free_milli[i] == MILLI
            }
            if idx:
                free[name] = idx
        total = sum(len(v) for v in free.values())
        running = sched.running
        regrow = [
            (jid, rj) for jid, rj in running.items() if jid in self.training_ids and len(rj.bindings) < rj.job.tasks
        ]
        pending = [j for jid, j in sched.pending.items() if jid in self.training_ids and jid not in running]
        if not regrow and not pending:
            return {}, total, None
        if not total:
            return {"": 0}, 0, None  # waiting, but nothing free: counts the waiting time only
        reasons = result.pending
        pending.sort(key=lambda j: (reasons[j.id].queue_position if j.id in reasons else 10**9, j.submit_time, j.id))
        head = next((j for j in pending if j.id in reasons and reasons[j.id].code is ReasonCode.UNSCHEDULABLE), None)
        head_shape = None if head is None else (head.tasks, head.devices.count, head.min_required)
        per_node = {name: len(snap.nodes[name].node.devices) for name in free}
        out: dict[str, int] = defaultdict(int)

        def whole() -> list[str]:
            return sorted(n for n, idx in free.items() if len(idx) == per_node[n])

        def take(cause: str, node: str, idx) -> None:
            free[node] -= set(idx)
            out[cause] += len(idx)

        def single(job) -> tuple[str, tuple[int, ...]] | None:
            for n, idx in sorted(free.items(), key=lambda kv: (len(kv[1]), kv[0])):
                devs = snap.nodes[n].node.devices
                got = rules.select_910c(devs, [i in idx for i in range(len(devs))], job.devices.count)
                if got is not None:
                    return n, got
            return None

        for jid, rj in regrow:
            missing = rj.job.tasks - len(rj.bindings)
            cause = "regrow held" if jid in sched._regrow_at else "regrow waits"
            for n in whole()[:missing]:
                take(cause, n, set(free[n]))
        for job in pending:
            code = reasons[job.id].code if job.id in reasons else None
            cause = "behind head" if code is ReasonCode.WAITING_BEHIND else "fits, not placed"
            if job.tasks > 1:
                nodes = whole()
                if len(nodes) >= job.min_required:
                    for n in nodes[: job.tasks]:
                        take(cause, n, set(free[n]))
            else:
                got = single(job)
                if got is not None:
                    take(cause, *got)
        for job in pending:
            nodes = whole()
            if job.tasks > 1 and 0 < len(nodes) < job.min_required:
                for n in nodes:
                    take("below min_tasks", n, set(free[n]))
            elif job.tasks == 1:
                k = job.devices.count
                for n, idx in free.items():
                    if len(idx) >= k:
                        take("die pairs", n, sorted(idx)[:k])
                        break
        serving_nodes = {b.node for b in running[self.serving_id].bindings} if self.serving_id in running else set()
        for n, idx in free.items():
            if not idx:
                continue
            if len(idx) == per_node[n]:
                out["whole nodes, none fits"] += len(idx)
            elif n in serving_nodes:
                out["holes beside serving"] += len(idx)
            else:
                out["holes beside training"] += len(idx)
        return dict(out), 0, head_shape


def windows(which: str, traces: list[str] | None, days: list[int] | None):
    """(trace name, trace file, training file, day) of the tuning or the test windows."""
    if which == "tune":
        names, files, training = traces or list(TUNE_TRACES), TUNE_TRACES, TUNE_TRAINING
        ds = days or list(TUNE_DAYS)
        if any(d % 5 == 0 for d in ds) or any(t not in files for t in names):
            raise SystemExit("mix_strand.py: --windows tune takes tuning days and traces only (see tune_mix.py)")
    else:
        names, files, training = traces or list(TEST_TRACES), TEST_TRACES, TEST_TRAINING
        ds = days or list(range(20, 75, 5))
    return [(t, files[t], training, d) for t in names for d in ds]


def run_window(trace: str, training: str, day: int, profile=None, profile_name: str = "default"):
    """Replay one window with the default profile (or ``profile``) and a ``StrandBook``."""
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.profile import default_profile
    from xpod.scheduler.sim import mix

    nodes, fabric = load_inventory(CLUSTER)
    settings = mix.MixSettings(training_from_s=day * 86400.0)
    job = mix.serving_job_from_file(JOB, 40)
    reqs = mix.read_serving_trace(trace)
    span = min(3600.0, max(t for t, _, _ in reqs) + settings.step_s)
    whole = mix.demand_series(reqs, job.autoscale.metric.value, max(span, settings.hour_s), settings.step_s)
    scale = 40 * job.autoscale.target_per_replica / max(whole)
    demand = [v * scale for v in whole[: int(settings.hour_s / settings.step_s)]]
    model = job.devices.model
    per_node = max(sum(1 for d in n.devices if d.model == model) for n in nodes)
    total = sum(1 for n in nodes for d in n.devices if d.model == model)
    train = mix.read_training(training, settings, model, per_node, total)
    start = settings.warmup_s
    book = StrandBook(
        job.id, {tj.job.id: tj.devices for tj in train}, model, start, start + len(demand) * settings.step_s
    )
    prof = profile or default_profile()
    r = mix.replay_mix(nodes, fabric, job, demand, train, prof, profile_name, settings, observers=[book], explain=True)
    book.close()
    return r, book


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", choices=("tune", "test"), default="tune")
    ap.add_argument("--traces", help="comma-separated trace names (tune: azure-code, mooncake-synthetic)")
    ap.add_argument("--days", help="comma-separated Philly days")
    ap.add_argument("--profile", metavar="FILE", help="a profile file instead of the default")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    from xpod.scheduler.core.profile import load_profile

    prof = load_profile(args.profile) if args.profile else None
    todo = windows(
        args.windows,
        args.traces.split(",") if args.traces else None,
        [int(d) for d in args.days.split(",")] if args.days else None,
    )
    print(f"load average: {open('/proc/loadavg').read().split()[0]}", flush=True)
    rows = []
    for tname, tfile, training, day in todo:
        r, book = run_window(tfile, training, day, prof)
        hour = book.end_s - book.start_s
        held = book.training_die_s / 3600.0
        rows.append(
            {
                "trace": tname,
                "day": day,
                "training_device_hours": r.training_device_hours,
                "serving_device_hours": r.serving_device_hours,
                "slo_attainment": r.slo_attainment,
                "gang_restarts": r.gang_restarts,
                # every die-hour not serving: training kept, and where the rest went
                "room_die_hours": r.devices * hour / 3600.0 - r.serving_device_hours,
                "training_held_die_hours": held,
                "rounding_die_hours": book.rounding_die_s / 3600.0,
                "restart_and_lost_die_hours": held - book.rounding_die_s / 3600.0 - r.training_device_hours,
                "stranded_die_hours": book.free_waiting_die_s / 3600.0,
                "idle_die_hours": book.idle_die_s / 3600.0,
                "waiting_fraction": book.waiting_s / hour,
                "mean_free_dies_while_waiting": book.free_waiting_die_s / book.waiting_s if book.waiting_s else 0.0,
                "die_hours_by_cause": {c: book.die_s.get(c, 0.0) / 3600.0 for c in CAUSES},
                "heads": [
                    {"tasks": h[0], "dies_per_task": h[1], "min_tasks": h[2], "seconds": sec}
                    for h, sec in sorted(book.heads.items(), key=lambda kv: -kv[1])[:3]
                ],
            }
        )
        print(f"{tname} day {day}: replayed", file=sys.stderr, flush=True)
    print_tables(rows)
    print(f"load average: {open('/proc/loadavg').read().split()[0]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"causes": list(CAUSES), "windows": rows}, f, indent=2)
    return 0


def print_tables(rows: list[dict]) -> None:
    """Where each window's die-hours not serving went, then the stranded ones by cause."""
    cols = ("room", "train kept", "restart+lost", "rounding", "stranded", "idle", "free|wait")
    print(f"{'trace':18} {'day':>3} " + " ".join(f"{c:>12}" for c in cols))
    tot: dict[str, float] = defaultdict(float)
    for r in rows:
        vals = (
            r["room_die_hours"],
            r["training_device_hours"],
            r["restart_and_lost_die_hours"],
            r["rounding_die_hours"],
            r["stranded_die_hours"],
            r["idle_die_hours"],
            r["mean_free_dies_while_waiting"],
        )
        for c, v in zip(cols, vals):
            tot[c] += v / len(rows)
        print(f"{r['trace']:18} {r['day']:>3} " + " ".join(f"{v:12.1f}" for v in vals))
    print(f"{'mean':22} " + " ".join(f"{tot[c]:12.1f}" for c in cols))
    print()
    short = [c.split(",")[0][:12] for c in CAUSES]
    print(f"{'stranded die-hours':22} " + " ".join(f"{c:>12}" for c in short))
    sums: dict[str, float] = defaultdict(float)
    for r in rows:
        dh = r["die_hours_by_cause"]
        for c in CAUSES:
            sums[c] += dh[c]
        print(f"{r['trace']:18} {r['day']:>3} " + " ".join(f"{dh[c]:12.1f}" for c in CAUSES))
        if r["heads"]:
            print(
                "    blocked heads (tasks x dies, min_tasks: time): "
                + "; ".join(
                    f"{h['tasks']}x{h['dies_per_task']}, {h['min_tasks']}: {h['seconds']:.0f} s" for h in r["heads"]
                )
            )
    print(f"{'total':22} " + " ".join(f"{sums[c]:12.1f}" for c in CAUSES))


if __name__ == "__main__":
    raise SystemExit(main())
