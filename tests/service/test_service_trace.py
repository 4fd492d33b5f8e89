"""The submit-path debug timeline (scheduler/trace.py, XPOD_TRACE) and the switch-interval tuning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WRITER = textwrap.dedent(
    """
    import gc
    from xpod.scheduler.store import Store, SubmitWrite, spec_hash
    with Store({db!r}) as store:
        futs = [store.submit(SubmitWrite(f"r{{i}}", spec_hash({{"i": i}}), "q", "BatchJob", "n", {{"i": i}}, 1.0))
                for i in range(50)]
        for f in futs:
            f.result(timeout=30)
        gc.collect()
    """
)


def _run(tmp_path, env_trace: str | None) -> None:
    env = dict(os.environ)
    env.pop("XPOD_TRACE", None)
    if env_trace is not None:
        env["XPOD_TRACE"] = env_trace
    subprocess.run([sys.executable, "-c", _WRITER.format(db=str(tmp_path / "s.db"))], env=env, check=True, timeout=60)


def test_trace_records_each_group_commit_in_order(tmp_path):
    from xpod.scheduler.trace import FIELDS

    path = str(tmp_path / "t.tsv")
    _run(tmp_path, path)
    rows = [ln.rstrip("\n").split("\t") for ln in open(path, encoding="utf-8")]
    batches = [r for r in rows if r[0] == "batch"]
    assert batches, rows[:5]
    assert all(len(r) == 1 + len(FIELDS["batch"]) for r in batches)
    # every write went through a commit, counted once, front lane only
    assert sum(int(r[7]) for r in batches) == 50
    assert all(int(r[8]) == 0 for r in batches)
    for r in batches:
        times = [float(v) for v in r[1:7]]
        assert times == sorted(times), r  # popped <= begun <= applied <= committed <= mirrored <= acked
    gcs = [r for r in rows if r[0] == "gc"]
    assert any(r[3] == "2" for r in gcs)  # the explicit full collection was seen
    assert all(len(r) == 1 + len(FIELDS["gc"]) for r in gcs)


def test_trace_off_by_default_writes_nothing(tmp_path):
    _run(tmp_path, None)
    assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if p.startswith("s.db"))


def test_trace_report_attributes_latency(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import service_trace_report
    finally:
        sys.path.pop(0)
    path = tmp_path / "t.tsv"
    # two requests; the second waited 40 ms for a commit whose fsync took 30 ms
    path.write_text(
        "submit\t1.000\t1.001\t1.009\t1.010\n"
        "submit\t2.000\t2.001\t2.041\t2.042\n"
        "batch\t1.002\t1.002\t1.003\t1.008\t1.008\t1.008\t1\t0\n"
        "batch\t2.005\t2.005\t2.006\t2.036\t2.037\t2.040\t1\t3\n"
        "gc\t2.010\t2.012\t1\t77\n"
    )
    (tmp_path / "t.tsv.client0").write_text("client\t0.999\t0.015\nclient\t1.999\t0.050\n")
    out = "\n".join(service_trace_report.report(str(path)))
    assert "2 client requests, 2 handled, 2 group commits" in out
    assert "group commits, with scheduling lane: 1" in out
    commit = next(ln for ln in out.splitlines() if "COMMIT (fsync)" in ln)
    assert "max   30.00 ms" in commit
    assert "gc pid 77 gen 1" in out


def test_tune_switch_interval_sets_and_returns_the_old_value():
    from xpod.scheduler.gc_tuning import SERVER_SWITCH_INTERVAL_S, tune_switch_interval

    before = sys.getswitchinterval()
    try:
        assert tune_switch_interval() == before
        assert abs(sys.getswitchinterval() - SERVER_SWITCH_INTERVAL_S) < 1e-9
    finally:
        sys.setswitchinterval(before)


def test_a_batch_with_waiting_callers_carries_few_scheduling_writes(tmp_path):
    """The writer's lanes: beside front-lane writes at most ``max_background_beside_front``
    scheduling-lane writes ride along; with no caller waiting, up to ``max_background_per_batch``."""
    import threading

    from xpod.scheduler.store import Store, SubmitWrite, spec_hash

    def write(rid: str) -> SubmitWrite:
        return SubmitWrite(rid, spec_hash({"r": rid}), "q", "BatchJob", "n", {"r": rid}, 1.0)

    store = Store(str(tmp_path / "s.db"), max_background_per_batch=64, max_background_beside_front=8)
    seen: list[tuple[int, int]] = []
    hold = threading.Event()
    inner = store._commit_batch

    def recording(batch):
        if not seen:
            hold.wait(30)  # the first batch holds the writer while the lanes fill up
        seen.append(
            (
                sum(p.write.request_id.startswith("f") for p in batch),
                sum(p.write.request_id.startswith("b") for p in batch),
            )
        )
        inner(batch)

    store._commit_batch = recording
    try:
        first = store.submit(write("f-first"))
        while store._lanes[0]:  # the writer took it and is held
            threading.Event().wait(0.01)
        futs = [store.submit(write(f"b{i}"), background=True) for i in range(100)]
        futs += [store.submit(write(f"f{i}")) for i in range(5)]
        hold.set()
        for f in [first] + futs:
            f.result(timeout=30)
    finally:
        store.close()
    assert seen == [(1, 0), (5, 8), (0, 64), (0, 28)]
