"""``xpod replay jobs`` (scheduler/sim/jobs.py, trace.py, audit.py): trace reading and its bad
input, legal sizes, metrics and the preemption cost computed by hand on tiny traces, the
independent rule audit, and the same cycle as the live scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core.model import Binding, Queue
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.scheduler import Scheduler
from xpod.scheduler.core.testing import job, node
from xpod.scheduler.sim.audit import PlacementAudit
from xpod.scheduler.sim.jobs import ReplaySettings, build_jobs, replay, run_replay
from xpod.scheduler.sim.trace import Shape, TraceJob, legal_shape, read_trace

A3 = "ascend-910c"
HEADER = "job_id,submit_s,duration_s,num_devices,device_milli,device_type,vc\n"

FIFO = {"actions": ["enqueue", "allocate"], "policies": ["gang", "ascend", "first-fit", "priority"]}
EASY = {"actions": ["enqueue", "allocate", "backfill"], "policies": ["gang", "ascend", "first-fit", "priority"]}
TIRESIAS = {
    "actions": ["enqueue", "allocate-greedy", "preempt"],
    "policies": ["gang", "topology", "ascend", "binpack", "las"],
}


def _trace(tmp_path, rows: str, name: str = "t.csv") -> str:
    p = tmp_path / name
    p.write_text(HEADER + rows)
    return str(p)


def _a3_nodes(n: int = 1, supernode: str | None = "sp0"):
    return [node(f"n{i}").devices(A3, 16).supernode(supernode).build() for i in range(n)]


# ------------------------------------------------------------------------ the trace


def test_a_trace_reads_with_optional_columns_and_extra_ones(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("job_id,submit_s,duration_s,num_devices,extra\nj1,5,10.5,2,x\nj0,0,3,1,y\n")
    got = read_trace(str(path))
    assert [(j.job_id, j.submit_s, j.duration_s, j.num_devices, j.device_milli, j.line) for j in got] == [
        ("j1", 5.0, 10.5, 2, 1000, 2),
        ("j0", 0.0, 3.0, 1, 1000, 3),
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("job_id,submit_s,num_devices\nj,1,1\n", "t.csv:1: missing column 'duration_s'"),
        (HEADER + "j,1,-5,1,1000,,v\n", "t.csv:2: duration_s: '-5' must be a finite number >= 0"),
        (HEADER + "a,0,1,1,1000,,v\nj,x,5,1,1000,,v\n", "t.csv:3: submit_s: 'x' is not a number"),
        (HEADER + "j,1,5,1.5,1000,,v\n", "t.csv:2: num_devices: '1.5' must be a whole number"),
        (HEADER + "j,1,5,0,1000,,v\n", "t.csv:2: num_devices: 0: a replayed job asks for 1 or more devices"),
        (HEADER + "j,1,5,2,500,,v\n", "t.csv:2: device_milli: 500 is a fraction of one device; num_devices must be 1"),
        (HEADER + "j,1,5,1,1000,,v\nj,2,5,1,1000,,v\n", "t.csv:3: job_id: 'j' already used on line 2"),
        (HEADER + "j,1,5\n", "t.csv:2: num_devices: missing"),
        (HEADER + "j,nan,5,1,1000,,v\n", "t.csv:2: submit_s: 'nan' must be a finite number >= 0"),
        ("", "t.csv: empty file"),
    ],
)
def test_bad_traces_name_the_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(XpodError) as err:
        read_trace(str(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_missing_or_binary_trace_is_one_line(tmp_path):
    with pytest.raises(XpodError, match="no such trace file"):
        read_trace(str(tmp_path / "nope.csv"))
    path = tmp_path / "b.csv"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(XpodError, match="not a UTF-8 text file"):
        read_trace(str(path))


def test_sizes_become_legal_under_the_clusters_rules():
    # 910C (CloudMatrix): 1 or an even count up to 16 on one node; more: 16-die tasks in one
    # logical super-pod
    assert legal_shape(1, A3, 16) == Shape(1, 1)
    assert legal_shape(3, A3, 16) == Shape(1, 4)
    assert legal_shape(12, A3, 16) == Shape(1, 12)
    assert legal_shape(16, A3, 16) == Shape(1, 16)
    assert legal_shape(17, A3, 16) == Shape(2, 16, 32)
    assert legal_shape(24, A3, 16) == Shape(2, 16, 32)
    assert legal_shape(128, A3, 16) == Shape(8, 16, 128)
    # 910B: 1, 2, 4, 8 per task
    assert legal_shape(3, "ascend-910b3", 8) == Shape(1, 4)
    assert legal_shape(12, "ascend-910b3", 8) == Shape(2, 8)
    # elsewhere: one node's devices, else whole nodes
    assert legal_shape(3, "nvidia-h100-sxm", 8) == Shape(1, 3)
    assert legal_shape(12, "nvidia-h100-sxm", 8) == Shape(2, 8)


def test_the_size_mapping_is_reported():
    rows = [TraceJob(f"j{i}", 0.0, 1.0, n) for i, n in enumerate((1, 3, 3, 24))]
    built, mapping = build_jobs(rows, _a3_nodes(), ReplaySettings())
    assert [(j.tasks, j.devices.count, j.domain_block) for _, j in built] == [
        (1, 1, None),
        (1, 4, None),
        (1, 4, None),
        (2, 16, 32),
    ]
    assert mapping == [
        {"trace_devices": 1, "devices": 1, "tasks": 1, "per_task": 1, "block": None, "jobs": 1},
        {"trace_devices": 3, "devices": 4, "tasks": 1, "per_task": 4, "block": None, "jobs": 2},
        {"trace_devices": 24, "devices": 32, "tasks": 2, "per_task": 16, "block": 32, "jobs": 1},
    ]


# -------------------------------------------------------------- metrics by hand


def test_fifo_metrics_by_hand(tmp_path):
    """One node of 16 dies. a (8 dies, 0-100); b (16 dies) waits for a: 100-150; c (3 dies, made
    4) waits behind b in strict FIFO: 150-180."""
    trace = read_trace(_trace(tmp_path, "a,0,100,8,1000,,v\nb,10,50,16,1000,,v\nc,20,30,3,1000,,v\n"))
    r = replay(trace, _a3_nodes(), profile_from_dict(FIFO), settings=ReplaySettings(from_s=0, to_s=180, tick_s=None))
    assert (r.jobs, r.finished, r.never_fit, r.violations, r.preemptions) == (3, 3, 0, 0, 0)
    # JCT 100, 140, 160; waits 0, 90, 130
    assert r.mean_jct_s == pytest.approx((100 + 140 + 160) / 3)
    assert r.p50_jct_s == pytest.approx(140)
    assert r.p99_jct_s == pytest.approx(140 + 0.98 * 20)  # numpy's linear interpolation
    assert r.mean_wait_s == pytest.approx((0 + 90 + 130) / 3)
    # allocated: 8 dies for 100 s, 16 for 50 s, 4 for 30 s, over 16 dies x 180 s
    assert r.utilisation == pytest.approx((8 * 100 + 16 * 50 + 4 * 30) / (16 * 180))
    assert r.goodput == pytest.approx(r.utilisation)
    assert r.max_wait_s_large is None and r.large_jobs == 0
    j = r.to_json()
    assert j["engine"] == "scheduler" and j["jobs"] == 3 and j["violations"] == 0
    assert {m["trace_devices"]: m["devices"] for m in j["size_mapping"]} == {3: 4, 8: 8, 16: 16}


def test_easy_backfill_lets_a_short_job_pass_and_the_window_counts_only_its_jobs(tmp_path):
    """The same trace under EASY backfill: c (ends at 50) fits before b's reserved start (100)."""
    trace = read_trace(_trace(tmp_path, "a,0,100,8,1000,,v\nb,10,50,16,1000,,v\nc,20,30,3,1000,,v\n"))
    run = run_replay(trace, _a3_nodes(), profile_from_dict(EASY), settings=ReplaySettings(from_s=0, tick_s=None))
    r = run.window(0, 180)
    assert r.mean_jct_s == pytest.approx((100 + 140 + 30) / 3)
    # a window holding only b: its jobs, the allocation inside it (16 dies 100-150 of 100-200)
    late = run.window(5, 15)
    assert (late.jobs, late.mean_jct_s) == (1, pytest.approx(140))
    assert run.window(100, 200).utilisation == pytest.approx(16 * 50 / (16 * 100))


def test_a_preemption_costs_the_progress_since_the_checkpoint_and_a_restart(tmp_path):
    """Tiresias (2D-LAS, threshold 3,600 device-seconds) on one 16-die node: a (16 dies, 1,000 s
    of work) passes the threshold at 225 s; b (16 dies, 100 s) arrives at 300 in the first queue
    and evicts a. a checkpointed at 200 s of progress: it loses 100 s, restarts at 400 when b is
    done, pays 60 s and runs its last 800 s: it ends at 1,260."""
    trace = read_trace(_trace(tmp_path, "a,0,1000,16,1000,,v\nb,300,100,16,1000,,v\n"))
    settings = ReplaySettings(from_s=0, to_s=400, checkpoint_every_s=200, restart_s=60, tick_s=None)
    r = replay(trace, _a3_nodes(), profile_from_dict(TIRESIAS), settings=settings)
    assert r.preemptions == 1 and r.violations == 0
    assert r.mean_jct_s == pytest.approx((1260 + 100) / 2)
    # lost: 100 s of progress and the 60 s restart, on 16 dies
    assert r.lost_device_s == pytest.approx((100 + 60) * 16)
    # allocated 0-1,260 without a gap (the restart holds the devices), of 16 x 400 in the window
    assert r.utilisation == pytest.approx(1.0)
    assert r.goodput < r.utilisation


def test_never_fitting_jobs_are_counted_not_replayed(tmp_path):
    trace = read_trace(_trace(tmp_path, "a,0,10,1,1000,,v\nhuge,1,10,64,1000,,v\n"))
    r = replay(trace, _a3_nodes(2), profile_from_dict(FIFO), settings=ReplaySettings(tick_s=None))
    assert (r.jobs, r.finished, r.never_fit) == (1, 1, 1)
    assert r.never_fit_examples[0].startswith("huge (64 devices): needs 4 x 16")


def test_an_empty_window_is_one_line(tmp_path):
    trace = read_trace(_trace(tmp_path, "a,0,10,1,1000,,v\n"))
    with pytest.raises(XpodError, match="no job of the trace is submitted in the window"):
        replay(trace, _a3_nodes(), profile_from_dict(FIFO), settings=ReplaySettings(from_s=100, to_s=200))


# ------------------------------------------------------------------------- audit


def test_the_audit_finds_what_a_profile_without_the_cluster_rules_breaks(tmp_path):
    """Without the ascend plugin, first fit gives a 2-die job dies 1 and 2 beside a 1-die job on
    die 0: it splits two 910C modules. With it, the same trace breaks nothing."""
    trace = read_trace(_trace(tmp_path, "a,0,100,1,1000,,v\nb,1,100,2,1000,,v\n"))
    bare = {"actions": ["enqueue", "allocate"], "policies": ["gang", "first-fit"]}
    broken = replay(trace, _a3_nodes(), profile_from_dict(bare), settings=ReplaySettings(tick_s=None))
    assert broken.violations == 1
    assert "b: task 0: 2 dies on n0 split die pair(s) [0, 1]" in broken.violation_examples[0]
    ok = replay(trace, _a3_nodes(), profile_from_dict(FIFO), settings=ReplaySettings(tick_s=None))
    assert ok.violations == 0


def test_the_audit_checks_ownership_gangs_and_super_pod_reserve():
    nodes = _a3_nodes(4)
    audit = PlacementAudit(nodes, reserve_nodes=2)
    one = job("one").training().devices(A3, 2).build()
    audit.started(one, [Binding("one", 0, "n0", (0, 1))])
    twin = job("twin").training().devices(A3, 2).build()
    audit.started(twin, [Binding("twin", 0, "n0", (0, 1))])  # the same dies again
    assert audit.violations == 1 and "already held by one" in audit.examples[-1]
    gang = job("gang").training(tasks=2).devices(A3, 16).build()
    audit.started(gang, [Binding("gang", 0, "n1", tuple(range(16)))])  # half a gang
    assert audit.violations == 2 and "gang broken: 1 of 2 tasks" in audit.examples[-1]
    audit.stopped("gang")
    # a logical super-pod of 2 nodes in a super-pod of 4 with n0 busy: 1 node left free, not 2
    sp = job("sp").training(tasks=2).devices(A3, 16).build()
    sp = type(sp)(**{**sp.__dict__, "domain_block": 32})
    audit.started(sp, [Binding("sp", 0, "n1", tuple(range(16))), Binding("sp", 1, "n2", tuple(range(16)))])
    assert audit.violations == 3 and "leaving 1 wholly free nodes there" in audit.examples[-1]
    assert audit.used_devices == 2 + 2 + 32
    audit.stopped("sp")
    audit.stopped("one")
    audit.stopped("twin")
    assert audit.used_devices == 0


# --------------------------------------------------- the live scheduler's cycle


def test_the_live_scheduler_makes_the_replays_decisions_and_a_profile_change_changes_both(tmp_path):
    """``xpod server``'s link to the core (``InProcessCore`` over ``Scheduler``), fed the replay's arrivals and
    finishes at the same instants, starts every job where and when the replay did; FIFO and EASY
    differ in both."""
    from xpod.scheduler.service.core_link import InProcessCore

    rows = "".join(f"j{i},{i * 7},{40 + (i * 37) % 90},{(1, 3, 8, 16, 2)[i % 5]},1000,,v\n" for i in range(24))
    trace = read_trace(_trace(tmp_path, rows))
    nodes = _a3_nodes(2)
    seen = {}
    for name, prof in (("fifo", FIFO), ("easy", EASY)):
        profile = profile_from_dict(prof)
        run = run_replay(trace, nodes, profile, settings=ReplaySettings(tick_s=None))
        replayed = sorted((r.job.id, r.first_start_s) for r in run.engine.records.values())
        built, _ = build_jobs(trace, nodes, ReplaySettings())
        live = InProcessCore(scheduler=Scheduler(nodes, queues=(Queue("default"),), profile=profile))
        arrivals = {}
        for _, j in built:
            arrivals.setdefault(j.submit_time, []).append(j)
        ends = {}
        for r in run.engine.records.values():
            ends.setdefault(r.end_s, []).append(r.job.id)
        started = {}
        for t in sorted(set(arrivals) | set(ends)):
            for jid in ends.get(t, ()):
                live.scheduler.finish(jid)
            for j in arrivals.get(t, ()):
                live.scheduler.submit(j)
            out = live.cycle(t)
            for jid in out.bindings:
                started.setdefault(jid, t)
        assert sorted(started.items()) == replayed
        seen[name] = replayed
    assert seen["fifo"] != seen["easy"]


# ---------------------------------------------------------------------------- the CLI

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
CM384 = os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml")


def xpod_cli(*args: str, cwd: str | None = None):
    """The installed ``xpod`` console script, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_cli_replays_a_trace_on_cloudmatrix384_with_json_and_plot(tmp_path):
    """Sizes 1..96 on the CloudMatrix384 descriptor: the JSON carries the issue's fields, the
    size mapping (3 -> 4 dies; 24 -> 2 x 16 in one logical super-pod; 96 -> 6 x 16) and no
    violation; 1,000 devices can never fit (one line in the JSON, not a traceback)."""
    rows = "".join(f"j{i},{i * 30},{600 + (i * 97) % 3000},{(1, 3, 8, 24, 96, 2)[i % 6]},1000,,v\n" for i in range(60))
    trace = _trace(tmp_path, rows + "huge,100,50,1000,1000,,v\n")
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    r = xpod_cli(
        "replay", "jobs", "--cluster", CM384, "--trace", trace, "--from", "0", "--to", "1200",
        "--policy", "fifo", "--json", str(out), "--plot", str(png), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    for field in (
        "engine", "profile", "jobs", "finished", "mean_jct_s", "p50_jct_s", "p99_jct_s", "mean_wait_s",
        "utilisation", "violations", "preemptions", "max_wait_s_large", "seconds",
    ):  # fmt: skip
        assert field in doc, field
    assert doc["engine"] == "scheduler" and doc["profile"].endswith("fifo.yaml")
    assert doc["jobs"] == 40 and doc["finished"] == 40 and doc["violations"] == 0
    assert doc["never_fit"] == 1 and "huge" in doc["never_fit_examples"][0]
    assert doc["devices"] == 768 and 0 < doc["utilisation"] <= 1 and doc["max_wait_s_large"] is not None
    shapes = {m["trace_devices"]: (m["tasks"], m["per_task"], m["block"]) for m in doc["size_mapping"]}
    assert shapes[3] == (1, 4, None) and shapes[24] == (2, 16, 32) and shapes[96] == (6, 16, 96)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "fifo" in r.stdout and "0 violations" in r.stdout


def test_cli_bad_input_is_one_line(tmp_path):
    good = _trace(tmp_path, "a,0,10,1,1000,,v\n")
    bad = _trace(tmp_path, "a,0,10,1,1000,,v\nb,5,-3,1,1000,,v\n", name="bad.csv")
    for args, needle in [
        (["--trace", bad], "bad.csv:3: duration_s"),
        (["--trace", str(tmp_path / "none.csv")], "none.csv"),
        (["--trace", good, "--policy", "kube"], "--policy kube"),
        (["--trace", good, "--from", "50", "--to", "10"], "--to"),
        (["--trace", good, "--from", "500"], "no job of the trace"),
        (["--trace", good, "--checkpoint-every", "0"], "--checkpoint-every"),
        (["--trace", good, "--json", str(tmp_path / "no" / "r.json")], "--json"),
    ]:
        r = xpod_cli("replay", "jobs", "--cluster", CM384, *args, "--no-progress", cwd=str(tmp_path))
        assert r.returncode == 1 and needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_preemptions_count_check_only_skips_trials_that_would_fail(tmp_path, monkeypatch):
    """``preempt.enough_devices`` (free devices plus the victims', counted) rules a preemptor out
    before every victim is evicted in a trial: a contended replay on CloudMatrix384 (sizes 1 to
    64 dies, durations 1 min to 5 h) makes the same decisions with the check as with the full
    trial every time (the code before the check), and it does evict and does skip trials
    (Tiresias' profile: it tries the most preemptions)."""
    from xpod.scheduler.core.actions import preempt
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.profile import load_profile

    sizes = (1, 2, 8, 16, 4, 32, 1, 64, 8, 2)
    rows = "".join(f"j{i},{i * 40},{60 + (i * 7919) % 18000},{sizes[i % 10]},1000,,v\n" for i in range(160))
    trace = read_trace(_trace(tmp_path, rows))
    nodes, fabric = load_inventory(CM384)
    prof = load_profile(os.path.join(REPO, "examples", "profiles", "tiresias.yaml"))
    settings = ReplaySettings(from_s=0, tick_s=60.0)
    skipped = []
    real = preempt.enough_devices

    def counted(*args):
        ok = real(*args)
        skipped.append(not ok)
        return ok

    def outcome():
        run = run_replay(trace, nodes, prof, fabric=fabric, settings=settings)
        return {j: (r.first_start_s, r.end_s, r.preemptions) for j, r in run.engine.records.items()}

    monkeypatch.setattr(preempt, "enough_devices", counted)
    fast = outcome()
    monkeypatch.setattr(preempt, "enough_devices", lambda *args: True)
    assert outcome() == fast
    assert any(skipped), "no trial was skipped: the replay does not exercise the check"
    assert sum(p for _, _, p in fast.values()) > 0, "no eviction: the replay does not exercise preemption"


@pytest.mark.parametrize("profile", ["scheduler-default.yaml", "easy-backfill.yaml"])
def test_kept_reservation_walks_make_the_same_decisions(tmp_path, monkeypatch, profile):
    """A blocked head's reservation walk (``actions.reservation``) is kept across cycles until
    the running jobs, the inventory or what the observing plugins learnt changes: a contended
    replay on CloudMatrix384 (sizes 1 to 64 dies, 60 s periodic cycles) makes the same
    decisions with the kept walks as with a walk every cycle, and does reuse walks."""
    from xpod.scheduler.core.actions import reservation
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.profile import load_profile

    sizes = (1, 2, 8, 16, 4, 32, 1, 64, 8, 2)
    rows = "".join(f"j{i},{i * 40},{60 + (i * 7919) % 18000},{sizes[i % 10]},1000,,v\n" for i in range(160))
    trace = read_trace(_trace(tmp_path, rows))
    nodes, fabric = load_inventory(CM384)
    prof = load_profile(os.path.join(REPO, "examples", "profiles", profile))
    walks = [0]
    real = reservation._walk

    def counted(*args):
        walks[0] += 1
        return real(*args)

    monkeypatch.setattr(reservation, "_walk", counted)

    def outcome():
        walks[0] = 0
        run = run_replay(trace, nodes, prof, fabric=fabric, settings=ReplaySettings(from_s=0, tick_s=60.0))
        return {j: (r.first_start_s, r.end_s, r.preemptions) for j, r in run.engine.records.items()}, walks[0]

    kept, kept_walks = outcome()
    monkeypatch.setattr(reservation, "KEEP_WALKS", False)
    every, every_walks = outcome()
    assert kept == every
    assert 0 < kept_walks < every_walks, (kept_walks, every_walks)
