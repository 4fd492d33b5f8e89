"""Issue 18, bounded storage: every event copied the job's whole spec (642 MB after ~5,000
jobs) and nothing was ever removed. Now a spec is stored once, finished jobs are compacted
after the retention period (their spec and all but their last event dropped), and the bytes a
queue has stored are counted. Real service, real SQLite."""

from __future__ import annotations

import sqlite3
import time

import pytest
from security_harness import job_doc, make_api

from xpod.scheduler.service.retention import Retention, parse_retention
from xpod.scheduler.store import JobState


def test_specs_are_stored_once_and_finished_jobs_are_compacted_after_retention(tmp_path, who):
    db = str(tmp_path / "r.db")
    api = make_api(db)
    try:
        pad = {"PAD": "x" * 50_000}
        ids = [
            api.submit_job(who["alice"], f"r{i}", job_doc(f"r{i}", env=pad), timeout_s=30)[0].record.id
            for i in range(3)
        ]
        for job_id in ids[:2]:
            api.cancel_job(who["alice"], job_id, timeout_s=30)
        stored = api.store.stored_bytes("research")
        assert 150_000 < stored < 160_000  # three specs, each once
        conn = sqlite3.connect(db)
        assert max(n for (n,) in conn.execute("SELECT length(job) FROM events")) < 5_000  # no event copies a spec
        now = time.time()
        keep = Retention(api.jobs, api.store, lambda: now, retention_s=3600.0)
        assert keep.compact_once() == 0  # finished a moment ago: within the period
        later = Retention(api.jobs, api.store, lambda: now + 3601.0, retention_s=3600.0)
        assert later.compact_once() == 2 and later.bytes_freed > 100_000
        assert api.store.stored_bytes("research") == stored - later.bytes_freed
        for job_id in ids[:2]:
            job = api.get_job(who["alice"], job_id)[0].record
            assert job.state is JobState.CANCELLED and job.spec == {}
            assert [e.type.value for e in api.store.events_since(0, job_id=job_id)] == ["CANCELLED"]
        live = api.get_job(who["alice"], ids[2])[0].record
        assert live.spec["spec"]["env"]["PAD"] == pad["PAD"]  # the queued job keeps everything
        assert later.compact_once() == 0  # nothing left to compact
        conn.close()
    finally:
        api.close()


@pytest.mark.parametrize("text, seconds", [("7d", 604800.0), ("12h", 43200.0), ("30m", 1800.0), ("90", 90.0)])
def test_retention_periods(text, seconds):
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["-1d", "soon", "1y", "nan", "inf", ""])
def test_bad_retention_periods_are_one_line(text):
    from xpod.hal.errors import XpodError

    with pytest.raises(XpodError, match="--retention"):
        parse_retention(text)


def test_a_queue_past_its_stored_bytes_is_refused_until_retention_frees_them(tmp_path, who):
    """The probe filled the database without limit. A queue's stored specs are capped
    (RESOURCE_EXHAUSTED naming the limit); another queue is unaffected; the retention thread of
    a started service frees a finished job's spec and the queue accepts again."""
    from xpod.scheduler.service.api import ApiError, Code, Limits

    api = make_api(str(tmp_path / "q.db"), limits=Limits(max_stored_bytes_per_queue=120_000), retention_s=0.5)
    try:
        api.start()
        pad = {"PAD": "x" * 50_000}
        first = api.submit_job(who["alice"], "a", job_doc("a", env=pad), timeout_s=30)[0].record.id
        api.submit_job(who["alice"], "b", job_doc("b", env=pad), timeout_s=30)
        with pytest.raises(ApiError) as err:
            api.submit_job(who["alice"], "c", job_doc("c", env=pad), timeout_s=30)
        assert (err.value.code, err.value.reason) == (Code.RESOURCE_EXHAUSTED, "QUEUE_STORAGE_FULL")
        assert err.value.metadata["limitBytes"] == "120000" and "max_stored_bytes" in err.value.message
        api.submit_job(who["bob"], "p", job_doc("p", queue="prod", env=pad), timeout_s=30)  # bob's queue has room
        api.cancel_job(who["alice"], first, timeout_s=30)
        deadline = time.monotonic() + 60
        while api.store.stored_bytes("research") > 60_000:
            assert time.monotonic() < deadline, "the retention thread never compacted the cancelled job"
            time.sleep(0.1)
        assert api.submit_job(who["alice"], "c", job_doc("c", env=pad), timeout_s=30)[1]
    finally:
        api.close()
