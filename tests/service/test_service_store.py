"""The durable store: idempotency, group commit, events with revisions, migrations.

The contract tests run against both implementations (``location``: a SQLite file and a fresh
database on the session's real PostgreSQL); file-format tests are SQLite's, and the lease and
fencing tests PostgreSQL's (tests/service/test_service_store_postgres.py)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sqlite3
import sys

import pytest

from xpod.scheduler.store import (
    AllocationRecord,
    CompactJobs,
    EventType,
    JobState,
    JobUpdate,
    NodeWrite,
    RequestIdConflict,
    StaleUpdate,
    StoreError,
    SubmitWrite,
    open_store,
    spec_hash,
)
from xpod.scheduler.store.schema import MIGRATIONS, SCHEMA_VERSION
from xpod.scheduler.store.sqlite import SqliteStore as Store
from xpod.scheduler.store.sqlite import migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a store lives: a SQLite path, or the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return request.getfixturevalue("pg_url")


def submit(store, rid: str, doc: dict | None = None, queue: str = "q"):
    doc = doc if doc is not None else {"kind": "BatchJob", "n": rid}
    return store.write(SubmitWrite(rid, spec_hash(doc), queue, "BatchJob", "name", doc, 1.0))


def test_submit_is_idempotent_by_request_id(location):
    with open_store(location) as store:
        a = submit(store, "r1", {"x": 1})
        b = submit(store, "r1", {"x": 1})
        assert a.created and not b.created
        assert a.job.id == b.job.id
        with pytest.raises(RequestIdConflict) as err:
            submit(store, "r1", {"x": 2})
        assert err.value.existing.id == a.job.id
        assert len(store.load_jobs()) == 1


def test_spec_hash_ignores_key_order_only():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


def test_concurrent_submissions_share_transactions(location):
    with open_store(location) as store:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda i: submit(store, f"r{i}"), range(800)))
        assert all(r.created for r in results)
        assert len({r.job.id for r in results}) == 800
        # group commit: far fewer transactions than writes
        assert store.batches_committed < 800
        assert store.writes_committed == 800


def test_conflict_in_a_batch_does_not_fail_the_others(location):
    with open_store(location) as store:
        submit(store, "dup", {"v": 1})
        futures = [store.submit(SubmitWrite(f"ok{i}", "h", "q", "BatchJob", "n", {}, 1.0)) for i in range(5)]
        bad = store.submit(SubmitWrite("dup", spec_hash({"v": 2}), "q", "BatchJob", "n", {"v": 2}, 1.0))
        futures += [store.submit(SubmitWrite(f"ok{i}", "h", "q", "BatchJob", "n", {}, 1.0)) for i in range(5, 10)]
        assert all(f.result().created for f in futures)
        with pytest.raises(RequestIdConflict):
            bad.result()
        assert len(store.load_jobs()) == 11


def test_events_have_increasing_revisions_and_resume(location):
    path = location
    with open_store(path) as store:
        job = submit(store, "r1").job
        up = store.write(
            JobUpdate(
                job.id,
                JobState.SCHEDULED,
                None,
                (AllocationRecord("n1", ("n1/0", "n1/1")),),
                EventType.SCHEDULED,
                "bound",
                2.0,
            )
        )
        assert up.event.revision > job.revision
        assert up.job.revision == up.event.revision
        done = store.write(JobUpdate(job.id, JobState.SUCCEEDED, None, (), EventType.SUCCEEDED, "ok", 3.0))
    with open_store(path) as store:  # reopened: everything is there
        events = store.events_since(0)
        assert [e.type for e in events] == [EventType.SUBMITTED, EventType.SCHEDULED, EventType.SUCCEEDED]
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        assert events[1].job.allocations[0].devices == ("n1/0", "n1/1")
        assert [e.type for e in store.events_since(up.event.revision)] == [EventType.SUCCEEDED]
        assert store.last_revision() == done.event.revision
        (loaded,) = store.load_jobs()
        assert loaded.state is JobState.SUCCEEDED and loaded.message == "ok"
        # a new job never reuses an id
        assert submit(store, "r2").job.id != job.id


def test_conditional_update_detects_a_change(location):
    with open_store(location) as store:
        job = submit(store, "r1").job
        store.write(JobUpdate(job.id, JobState.CANCELLED, None, (), EventType.CANCELLED, "x", 2.0))
        with pytest.raises(StaleUpdate):
            store.write(
                JobUpdate(
                    job.id, JobState.SCHEDULED, None, (), EventType.SCHEDULED, "y", 3.0, expect_revision=job.revision
                )
            )
        with pytest.raises(KeyError):
            store.write(JobUpdate("job-999", JobState.CANCELLED, None, (), EventType.CANCELLED, "x", 2.0))


def test_nodes_persist(location):
    path = location
    with open_store(path) as store:
        store.write(NodeWrite("n1", {"name": "n1", "devices": []}, 1.0))
        store.write(NodeWrite("n2", {"name": "n2", "devices": []}, 1.0))
        store.write(NodeWrite("n1", {}, 2.0, remove=True))
    with open_store(path) as store:
        assert [n["name"] for n in store.load_nodes()] == ["n2"]


def test_migration_from_version_1_keeps_jobs(tmp_path):
    path = str(tmp_path / "old.db")
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, path, target=1)
    conn.execute(
        "INSERT INTO jobs (seq, id, request_id, doc) VALUES (1, 'job-1', 'r1', ?)",
        (
            json.dumps(
                {
                    "id": "job-1",
                    "seq": 1,
                    "request_id": "r1",
                    "spec_hash": "h",
                    "queue": "q",
                    "kind": "BatchJob",
                    "name": "n",
                    "spec": {},
                    "state": "QUEUED",
                    "create_time_s": 1,
                    "update_time_s": 1,
                    "revision": 0,
                }
            ),
        ),
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    with Store(path) as store:
        assert store.schema_version_found == 1
        assert [j.id for j in store.load_jobs()] == ["job-1"]
        assert submit(store, "r2").job.id == "job-2"
        store.write(NodeWrite("n1", {"name": "n1", "devices": []}, 1.0))  # table of version 2
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == max(MIGRATIONS)
    conn.close()


def test_newer_or_foreign_files_are_refused(tmp_path):
    newer = str(tmp_path / "newer.db")
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this xpod supports"):
        Store(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(str(junk))


def test_request_id_of_a_finished_job_still_answers(location):
    with open_store(location) as store:
        job = submit(store, "r1", {"x": 1}).job
        store.write(JobUpdate(job.id, JobState.SUCCEEDED, None, (), EventType.SUCCEEDED, "done", 2.0))
        again = submit(store, "r1", {"x": 1})
        assert not again.created and again.job.id == job.id and again.job.state is JobState.SUCCEEDED
        with pytest.raises(RequestIdConflict):
            submit(store, "r1", {"x": 2})


def test_a_sqlite_url_is_the_same_as_a_path(tmp_path):
    path = str(tmp_path / "u.db")
    with open_store(f"sqlite://{path}") as store:
        submit(store, "r1")
    with open_store(path) as store:
        assert [j.request_id for j in store.load_jobs()] == ["r1"]
    with pytest.raises(StoreError, match="sqlite:///absolute/path"):
        open_store("sqlite://relative.db")


def test_migration_to_version_4_stores_restart_counts_from_the_old_event_log(tmp_path):
    path = str(tmp_path / "v2.db")
    with Store(path) as store:
        job = submit(store, "r1").job
        for i, (event, message) in enumerate(
            [
                (EventType.EVICTED, "restart 1/3: node n1 NotReady"),
                (EventType.EVICTED, "preempted by job-9"),
                (EventType.EVICTED, "restart 2/3: task on node n2 exited with code 1"),
            ]
        ):
            store.write(JobUpdate(job.id, JobState.QUEUED, None, (), event, message, 2.0 + i))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE jobs SET doc = json_remove(doc, '$.restarts')")
    conn.execute("DROP TABLE moe_windows")  # version 5's table: the file is as version 3 left it
    # version 6 moved the specs out of the rows: put them back
    conn.execute("UPDATE jobs SET doc = json_set(doc, '$.spec', json((SELECT spec FROM specs WHERE job_id = jobs.id)))")
    conn.execute(
        "UPDATE events SET job = json_set(job, '$.spec', json((SELECT spec FROM specs WHERE job_id = events.job_id)))"
    )
    conn.execute("DROP TABLE specs")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with Store(path) as store:
        assert store.schema_version_found == 3
        assert store.load_jobs()[0].restarts == 2  # the two restarts, not the preemption


def test_a_second_store_on_the_same_file_is_refused_and_touches_nothing(tmp_path):
    from xpod.scheduler.store.lock import StateInUse

    path = str(tmp_path / "s.db")
    with Store(path, holder="xpod server") as store:
        store.set_holder_address("127.0.0.1:7070")
        submit(store, "r1")
        size = os.path.getsize(path)
        with pytest.raises(StateInUse) as err:
            Store(path, holder="xpod server")
        assert str(err.value) == f"{path} is in use by xpod server (pid {os.getpid()}, 127.0.0.1:7070)"
        assert os.path.getsize(path) == size
        submit(store, "r2")  # the first one goes on
    with Store(path) as store:  # released at close
        assert [j.request_id for j in store.load_jobs()] == ["r1", "r2"]


def test_tune_switch_interval_sets_and_returns_the_old_value():
    from xpod.scheduler.service.tuning import SERVER_SWITCH_INTERVAL_S, tune_switch_interval

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

    from xpod.scheduler.store import SubmitWrite, spec_hash

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


def test_moe_windows_are_stored_with_their_plan_event_on_both_databases(location):
    """The live MoE loop's windows (``MoeWindowWrite``): rows read back in window order, a
    published one with a ``MOE_PLAN`` event that leaves the job (and its revision) as it was."""
    from xpod.scheduler.store import MoeWindowWrite

    with open_store(location) as store:
        job = submit(store, "r1").job
        store.write(MoeWindowWrite(job.id, 0, 5.0, {"window": 0, "published": True}, "moe plan 1 published"))
        store.write(MoeWindowWrite(job.id, 1, 6.0, {"window": 1, "published": False}))
        with pytest.raises(KeyError):
            store.write(MoeWindowWrite("job-404", 0, 6.0, {"window": 0}, "moe plan 1 published"))
        assert [d["window"] for d in store.moe_windows(job.id)] == [0, 1]
        assert [d["window"] for d in store.moe_windows(job.id, after=0)] == [1]
        assert store.moe_windows("job-404") == []
        events = store.events_since(0, job_id=job.id)
        assert [e.type for e in events] == [EventType.SUBMITTED, EventType.MOE_PLAN]
        assert events[1].message == "moe plan 1 published" and events[1].revision > job.revision
        assert store.load_jobs()[0].revision == job.revision  # the job did not change


def _version_5_database(location: str) -> None:
    """A database as schema version 5 left it: every job row and every event carries the spec."""
    spec = {"kind": "BatchJob", "spec": {"env": {"BIG": "x" * 5000}}}
    job = {"id": "job-1", "seq": 1, "request_id": "r1", "spec_hash": "h", "queue": "q", "kind": "BatchJob",
           "name": "n", "spec": spec, "state": "QUEUED", "create_time_s": 1, "update_time_s": 1, "revision": 1}  # fmt: skip
    rows = [json.dumps(job), json.dumps({**job, "state": "SUCCEEDED", "revision": 2})]
    if location.startswith("postgresql://"):
        from xpod.scheduler.store.postgres import connect, migrate_postgres

        conn = connect(location, autocommit=True)
        migrate_postgres(conn, "pg", target=5)
        q = "%s"
    else:
        conn = sqlite3.connect(location, isolation_level=None)
        migrate(conn, location, target=5)
        q = "?"
    conn.execute(f"INSERT INTO jobs (seq, id, request_id, doc) VALUES (1, 'job-1', 'r1', {q})", (rows[1],))
    for rev, (kind, doc) in enumerate(zip(("SUBMITTED", "SUCCEEDED"), rows), start=1):
        conn.execute(
            f"INSERT INTO events (revision, job_id, type, time_s, message, job) VALUES ({q}, 'job-1', {q}, 1, 'm', {q})",
            (rev, kind, doc),
        )
    conn.close()


def _sql(location: str, statement: str) -> list:
    if location.startswith("postgresql://"):
        from xpod.scheduler.store.postgres import connect

        conn = connect(location, autocommit=True)
    else:
        conn = sqlite3.connect(location)
    try:
        return conn.execute(statement).fetchall()
    finally:
        conn.close()


def test_migration_to_version_6_stores_each_spec_once(location):
    """Issue 18: every event copied the job's whole spec (642 MB after ~5,000 jobs). From
    version 6 a spec is stored once; rows and events read it back joined."""
    _version_5_database(location)
    with open_store(location) as store:
        assert store.schema_version_found == 5
        job = store.load_jobs()[0]
        assert job.spec["spec"]["env"]["BIG"] == "x" * 5000 and job.state is JobState.SUCCEEDED
        events = store.events_since(0)
        assert [e.job.spec["spec"]["env"]["BIG"][:3] for e in events] == ["xxx", "xxx"]
        assert [e.job.state for e in events] == [JobState.QUEUED, JobState.SUCCEEDED]
        assert store.stored_bytes("q") > 5000
        new = submit(store, "r2", {"kind": "BatchJob", "big": "y" * 3000})
        store.write(JobUpdate(new.job.id, JobState.RUNNING, None, (), EventType.RUNNING, "m", 2.0))
    assert _sql(location, "SELECT COUNT(*) FROM specs")[0][0] == 2
    assert all("xxxxx" not in r[0] and "yyyyy" not in r[0] for r in _sql(location, "SELECT job FROM events"))
    assert all("xxxxx" not in r[0] and "yyyyy" not in r[0] for r in _sql(location, "SELECT doc FROM jobs"))
    with open_store(location) as store:  # the writer's view reads a spec back from its own row
        assert store.events_since(2, job_id="job-2")[-1].job.spec == {"kind": "BatchJob", "big": "y" * 3000}
        assert store.stored_bytes("q") == sum(n for (n,) in _sql(location, "SELECT length(spec) FROM specs"))


def test_compaction_keeps_a_finished_jobs_row_and_last_event_only(location):
    with open_store(location) as store:
        done = submit(store, "r1", {"big": "x" * 4000}).job
        live = submit(store, "r2", {"big": "y" * 4000}).job
        for state, event in ((JobState.RUNNING, EventType.RUNNING), (JobState.SUCCEEDED, EventType.SUCCEEDED)):
            store.write(JobUpdate(done.id, state, None, (), event, "m", 2.0))
        before = store.stored_bytes("q")
        last = store.last_revision()
        result = store.write(CompactJobs((done.id, live.id, "job-99")))
        assert [j.id for j in result.jobs] == [done.id] and result.jobs[0].spec == {}
        assert result.bytes_freed > 4000 and store.stored_bytes("q") == before - result.bytes_freed
        assert [e.type for e in store.events_since(0, job_id=done.id)] == [EventType.SUCCEEDED]
        assert len(store.events_since(0, job_id=live.id)) == 1  # a live job keeps everything
        jobs = {j.id: j for j in store.load_jobs()}
        assert jobs[done.id].spec == {} and jobs[done.id].state is JobState.SUCCEEDED
        assert jobs[live.id].spec == {"big": "y" * 4000}
        assert not submit(store, "r1", {"big": "x" * 4000}).created  # its request id still answers
        assert store.write(CompactJobs((done.id,))).jobs[0].id == done.id  # again: nothing left to free
    with open_store(location) as store:  # revisions and sequence numbers go on after a restart
        assert store.last_revision() == last
        assert submit(store, "r3").job.id == "job-3"
        assert store.stored_bytes("q") == before - result.bytes_freed + len('{"kind":"BatchJob","n":"r3"}')
