"""PostgreSQL-only parts of the store, on a real server: schema versions, bad URLs, the leader
lease, fencing of a replica that lost it, and losing the database under a writer."""

from __future__ import annotations

import threading
import time

import pytest

from xpod.scheduler.store import (
    EventType,
    JobState,
    JobUpdate,
    NotLeader,
    StoreError,
    StoreUnavailable,
    SubmitWrite,
    open_store,
    spec_hash,
)
from xpod.scheduler.store.postgres import LeaderLease, PostgresStore, connect, mask_url
from xpod.scheduler.store.schema import SCHEMA_VERSION


def submit(store, rid: str):
    doc = {"kind": "BatchJob", "n": rid}
    return store.write(SubmitWrite(rid, spec_hash(doc), "q", "BatchJob", "name", doc, 1.0), timeout_s=30)


def test_mask_url_hides_the_password_only():
    assert mask_url("postgresql://xpod:s3cret@db.example:5433/xpod") == "postgresql://xpod:***@db.example:5433/xpod"
    assert mask_url("postgresql://xpod@db/xpod") == "postgresql://xpod@db/xpod"
    assert "s3cret" not in mask_url("postgresql://u:s3cret@[::1]:5/d")


def test_bad_urls_are_one_line_with_the_password_masked(postgres):
    wrong = postgres.url.replace(postgres.password, "not-the-password")
    with pytest.raises(StoreError) as err:
        open_store(wrong)
    text = str(err.value)
    assert "not-the-password" not in text and "***" in text and "password" in text and "\n" not in text
    with pytest.raises(StoreError, match="check that PostgreSQL runs there"):
        open_store(f"postgresql://xpod:pw@127.0.0.1:{_closed_port()}/xpod")
    with pytest.raises(StoreError, match="create the database"):
        open_store(postgres.database_url("no_such_database"))
    with pytest.raises(StoreError, match="unknown store kind 'mysql'"):
        open_store("mysql://u@h/d")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_newer_schema_is_refused(pg_url):
    open_store(pg_url).close()
    conn = connect(pg_url, autocommit=True)
    conn.execute("UPDATE xpod_schema SET version = %s", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer than this xpod supports"):
        open_store(pg_url)


def test_replicas_migrating_together_make_one_schema(pg_url):
    stores, errors = [], []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(s.schema_version_found for s in stores).count(0) == 1  # exactly one migrated
    for s in stores:
        s.close()


def test_the_lease_has_one_holder_and_moves_only_when_it_lapses(pg_url):
    open_store(pg_url).close()
    a = LeaderLease(pg_url, "replica-a", "127.0.0.1:1", ttl_s=1.0)
    b = LeaderLease(pg_url, "replica-b", "127.0.0.1:2", ttl_s=1.0)
    try:
        token_a = a.try_acquire()
        assert token_a is not None
        assert b.try_acquire() is None
        holder = b.current()
        assert holder is not None and (holder.holder, holder.address, holder.token) == (
            "replica-a",
            "127.0.0.1:1",
            token_a,
        )
        assert a.renew(token_a)
        # a stops renewing: b takes over once the lease lapsed by the database's clock
        deadline = time.monotonic() + 30
        token_b = None
        while token_b is None and time.monotonic() < deadline:
            time.sleep(0.1)
            token_b = b.try_acquire()
        assert token_b is not None, "replica-b never took the lapsed lease"
        assert token_b > token_a
        assert not a.renew(token_a)  # the old holder learns it lost
        b.release(token_b)  # a clean hand-over: free at once
        assert a.try_acquire() == token_b + 1
    finally:
        a.close()
        b.close()


def test_a_replica_that_lost_the_lease_can_never_write(pg_url):
    open_store(pg_url).close()
    a = LeaderLease(pg_url, "replica-a", "a:1", ttl_s=0.5)
    b = LeaderLease(pg_url, "replica-b", "b:1", ttl_s=30)
    token_a = a.try_acquire()
    old = PostgresStore(pg_url, fencing_token=token_a)
    try:
        assert submit(old, "before").created
        # old is "paused": it does not renew; b takes the lapsed lease
        deadline = time.monotonic() + 30
        token_b = None
        while token_b is None and time.monotonic() < deadline:
            time.sleep(0.1)
            token_b = b.try_acquire()
        assert token_b is not None
        with pytest.raises(NotLeader):
            submit(old, "after-takeover")
        with pytest.raises(StoreUnavailable):  # and it stays fenced off
            submit(old, "later")
        with PostgresStore(pg_url, fencing_token=token_b) as new:
            assert (
                new.write(
                    JobUpdate("job-1", JobState.CANCELLED, None, (), EventType.CANCELLED, "by the new leader", 2.0)
                ).job.state
                is JobState.CANCELLED
            )
            assert [j.request_id for j in new.load_jobs()] == ["before"]
    finally:
        old.close()
        a.close()
        b.close()


def test_losing_the_database_acknowledges_nothing_and_a_new_store_recovers():
    from xpod.scheduler.store.pg_local import LocalPostgres, wait_until_ready

    with LocalPostgres.start(fsync=False) as server:
        store = PostgresStore(server.url)
        acked = [submit(store, f"r{i}").job.id for i in range(5)]
        server.take_down()
        with pytest.raises(StoreUnavailable):
            submit(store, "while-down")
        with pytest.raises(StoreUnavailable):  # the writer's view is no longer trusted
            submit(store, "still-down")
        assert not store.ping()
        store.close()
        server.bring_back()
        wait_until_ready(server.url)
        with PostgresStore(server.url) as again:
            assert [j.id for j in again.load_jobs()] == acked
            assert submit(again, "after").job.id == f"job-{len(acked) + 1}"
