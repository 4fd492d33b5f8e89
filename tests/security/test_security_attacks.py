"""Issue 18: each finding of the security probe, as an attack that must now be refused (or made
harmless), against the real service in process (real core, real SQLite)."""

from __future__ import annotations

import pytest
from security_harness import job_doc, make_api, refused

from xpod.scheduler.service.api import Code, Limits


@pytest.fixture
def api(tmp_path):
    a = make_api(str(tmp_path / "a.db"))
    yield a
    a.close()


@pytest.mark.parametrize(
    "key",
    ["CUDA_VISIBLE_DEVICES", "XPOD_SIM_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES",
     "HIP_VISIBLE_DEVICES", "MLU_VISIBLE_DEVICES", "MUSA_VISIBLE_DEVICES", "XPOD_TOKEN", "MASTER_PORT", "RANK"],
)  # fmt: skip
def test_env_may_not_set_device_rendezvous_or_xpod_variables(api, who, key):
    """The probe's job given one device ran with CUDA_VISIBLE_DEVICES=0,1 from its spec.env."""
    doc = job_doc("env", env={key: "0,1"})
    err = refused(lambda: api.submit_job(who["alice"], "env", doc))
    assert err.code is Code.INVALID_ARGUMENT
    assert err.field == f"spec.env.{key}" and key in err.message


def test_reserved_variables_come_from_the_backends_own_data():
    from xpod.hal.registry import device_env_vars
    from xpod.scheduler.contract import is_reserved_env

    names = device_env_vars()
    assert {"CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"} <= names
    assert all(is_reserved_env(n) for n in names)
    assert not is_reserved_env("HF_HOME") and not is_reserved_env("PYTHONPATH")


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"tasks": 2**63}, "spec.tasks", "NUMBER_OUT_OF_RANGE"),
        ({"tasks": 10**15}, "spec.tasks", "TOO_MANY_TASKS"),
        ({"tasks": 1025}, "spec.tasks", "TOO_MANY_TASKS"),  # 4 nodes x 256
        ({"kind": "ServingJob", "replicas": 2**40}, "spec.replicas", "TOO_MANY_TASKS"),
        ({"priority": 2**70}, "spec.priority", "NUMBER_OUT_OF_RANGE"),
    ],
)
def test_counts_no_cluster_could_hold_are_refused_at_submission(api, who, spec, field, reason):
    """The probe's ``tasks: 2^63`` without a resource request hung the core, SIGTERM and every
    restart; a 2^40-replica ServingJob took the server to 2 GB in 3 s."""
    kind = spec.pop("kind", "TrainingJob")
    doc = job_doc("big", count=None, kind=kind, **spec)
    if kind == "ServingJob":
        del doc["spec"]["tasks"]
    err = refused(lambda: api.submit_job(who["alice"], "big", doc))
    assert (err.code, err.reason) == (Code.INVALID_ARGUMENT, reason)
    assert err.field == field
    if reason == "TOO_MANY_TASKS":
        assert err.metadata["clusterMaxTasks"] == "1024" and "1024" in err.message
    assert api.list_jobs(who["admin"])[0] == []  # nothing written


def test_a_task_that_asks_for_nothing_gets_one_cpu_and_nodes_hold_a_bounded_number(api, who):
    """Zero-resource tasks piled onto one node without limit (50 processes through one agent)."""
    view, _ = api.submit_job(who["alice"], "many", job_doc("many", tasks=1024, count=None, kind="BatchJob"))
    assert api.jobs.parsed(view.record.id).core.cpu_milli == 1000
    api.schedule_once()
    job = api.get_job(who["admin"], view.record.id)[0].record
    per_node: dict[str, int] = {}
    for a in job.allocations:
        per_node[a.node] = per_node.get(a.node, 0) + 1
    assert per_node and max(per_node.values()) <= Limits().max_tasks_per_node


def test_a_restart_on_a_database_with_a_huge_job_answers_at_once(tmp_path, who):
    """The hostile job survived restarts and hung each one. A job of the most tasks the cluster
    holds is accepted, and a restarted service still answers and can cancel it."""
    db = str(tmp_path / "r.db")
    api = make_api(db)
    jid = api.submit_job(who["alice"], "h", job_doc("h", tasks=1024, count=None))[0].record.id
    api.schedule_once()
    api.close()
    api = make_api(db)
    try:
        api.schedule_once()
        assert [v.record.id for v in api.list_jobs(who["alice"])[0]] == [jid]
        assert api.cancel_job(who["alice"], jid, timeout_s=10).record.state.value == "CANCELLED"
    finally:
        api.close()


def test_queue_names_are_dns_labels_and_queues_are_capped(tmp_path, who):
    """3,000 hostile queue names gave 37,849 series; a 100 KB name a 20.8 MB scrape."""
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL

    api = make_api(str(tmp_path / "q.db"), limits=Limits(max_queues=4))
    try:
        for bad in ("x" * 100_000, "Research", "a_b", "-a", "a" * 64, "q\x1b[2J"):
            err = refused(lambda: api.submit_job(OPEN_PRINCIPAL, "", job_doc("q", queue=bad)))
            assert (err.code, err.field) == (Code.INVALID_ARGUMENT, "spec.queue")
            assert len(err.message) < 400
        for q in ("q1", "q2", "q3"):  # with "default", 4 queues
            api.submit_job(OPEN_PRINCIPAL, "", job_doc("q", queue=q))
        err = refused(lambda: api.submit_job(OPEN_PRINCIPAL, "", job_doc("q", queue="q4")))
        assert (err.code, err.reason, err.field) == (Code.FAILED_PRECONDITION, "TOO_MANY_QUEUES", "spec.queue")
        api.submit_job(OPEN_PRINCIPAL, "", job_doc("q", queue="q2"))  # an existing queue still takes jobs
    finally:
        api.close()


def test_pending_jobs_per_queue_are_capped(tmp_path, who):
    api = make_api(str(tmp_path / "p.db"), limits=Limits(max_pending_per_queue=3))
    try:
        for i in range(3):
            api.submit_job(who["alice"], f"p{i}", job_doc(f"p{i}", count=8, tasks=4 * 1))
        err = refused(lambda: api.submit_job(who["alice"], "p9", job_doc("p9", count=8, tasks=4)))
        assert (err.code, err.reason) == (Code.RESOURCE_EXHAUSTED, "QUEUE_FULL") and err.retry_after_s
        api.submit_job(who["bob"], "b", job_doc("b", queue="prod"))  # another tenant is not blocked
    finally:
        api.close()


def test_request_ids_are_scoped_per_tenant(api, who):
    """One tenant squatted another's idempotency keys (ALREADY_EXISTS on the victim's submit)."""
    mine, created = api.submit_job(who["bob"], "deploy-1", job_doc("b", queue="prod"))
    assert created
    theirs, created = api.submit_job(who["alice"], "deploy-1", job_doc("a"))
    assert created and theirs.record.id != mine.record.id
    again, created = api.submit_job(who["alice"], "deploy-1", job_doc("a"))
    assert not created and again.record.id == theirs.record.id


def test_list_devices_hides_other_tenants_job_ids(api, who):
    jid = api.submit_job(who["bob"], "b", job_doc("b", queue="prod"))[0].record.id
    api.schedule_once()
    assert any(jid in ids for *_, ids in api.list_devices(who["admin"]))
    assert any(jid in ids for *_, ids in api.list_devices(who["bob"]))
    rows = api.list_devices(who["alice"])
    assert not any(jid in ids for *_, ids in rows)
    assert sum(milli for _, _, milli, _ in rows) == 8000  # the allocation itself still shows


@pytest.mark.parametrize(
    "name", ["g1\x1b[31m", "bad\nname", "a/b", "", "n" * 254, "-lead", "x y"]
)  # fmt: skip
def test_node_names_and_labels_are_validated(api, who, name):
    import dataclasses

    from xpod.scheduler.contract import NodeRecord

    err = refused(lambda: api.register_nodes(who["admin"], [NodeRecord(name, ())], timeout_s=10))
    assert (err.code, err.reason) == (Code.INVALID_ARGUMENT, "INVALID_NODE")
    assert "\x1b" not in err.message and "\n" not in err.message
    good = NodeRecord("n9", ())
    for labels in ((("k", "v\x07"),), (("k" * 300, "v"),), tuple((f"k{i}", "v") for i in range(65))):
        err = refused(
            lambda: api.register_nodes(who["admin"], [dataclasses.replace(good, labels=labels)], timeout_s=10)
        )
        assert err.field == "nodes[0].labels"


def test_pages_are_bounded_by_bytes(tmp_path, who):
    """A 1,000-job page passed gRPC's 4 MiB and broke ``xpod jobs`` for everyone."""
    api = make_api(str(tmp_path / "b.db"), limits=Limits(max_page_bytes=64 * 1024))
    try:
        big = {f"V{i}": "x" * 1000 for i in range(20)}  # ~20 KB of env per job
        for i in range(10):
            api.submit_job(who["alice"], f"j{i}", job_doc(f"j{i}", env=big))
        seen, token, pages = [], "", 0
        while True:
            views, token = api.list_jobs(who["alice"], page_size=1000, page_token=token)
            pages += 1
            assert 1 <= len(views) <= 4
            seen += [v.record.id for v in views]
            if not token:
                break
        assert len(seen) == len(set(seen)) == 10 and pages >= 3
    finally:
        api.close()


def test_a_stored_job_the_server_now_refuses_is_failed_at_restart_not_loaded(tmp_path, who):
    """A job written before these checks (here: straight into the store, with a device variable
    in its env and 2^63 tasks) must neither stop the server from starting nor run."""
    from xpod.scheduler.store import SubmitWrite, open_store

    db = str(tmp_path / "old.db")
    make_api(db).close()
    store = open_store(db, holder="test")
    for rid, spec in (
        ("env", {"tasks": 1, "queue": "research", "env": {"CUDA_VISIBLE_DEVICES": "0,1"}}),
        ("huge", {"tasks": 2**63, "queue": "research"}),
    ):
        doc = {"apiVersion": "xpod/v1", "kind": "TrainingJob", "metadata": {"name": rid}, "spec": spec}
        store.submit(SubmitWrite(rid, rid * 8, "research", "TrainingJob", rid, doc, 1.0)).result(timeout=30)
    store.close()
    api = make_api(db)
    try:
        api.start()
        states = {v.record.name: (v.record.state.value, v.record.message) for v in api.list_jobs(who["admin"])[0]}
        assert set(states) == {"env", "huge"}
        assert all(state == "FAILED" and "refused at restart" in msg for state, msg in states.values())
    finally:
        api.close()


def test_a_store_that_cannot_write_answers_unavailable_and_says_so(tmp_path, who):
    """A read-only database came back as UNKNOWN while health stayed SERVING. Here SQLite's own
    query-only mode refuses the writer's next transaction, as a read-only file does."""
    api = make_api(str(tmp_path / "ro.db"))
    failures = []
    api.store.on_failure = failures.append
    try:
        api.store._conn.execute("PRAGMA query_only = ON")  # the writer's connection (test-only access)
        err = refused(lambda: api.submit_job(who["alice"], "ro", job_doc("ro"), timeout_s=10))
        assert (err.code, err.reason) == (Code.UNAVAILABLE, "STORE_UNAVAILABLE") and err.retry_after_s
        assert len(failures) == 1 and "cannot be written" in str(failures[0])
    finally:
        api.close()
