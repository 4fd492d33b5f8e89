"""The in-process service API (scheduler.service.api) over the real scheduler core and store."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from service_harness import job_doc, make_api
from xpod.hal.device import Health
from xpod.scheduler.contract import DeviceRecord, NodeRecord
from xpod.scheduler.service.api import ApiError, Code, Limits, TaskState
from xpod.scheduler.service.auth import OPEN_PRINCIPAL as ADMIN, Principal, Role
from xpod.scheduler.store import EventType, JobState


def test_submit_schedule_and_idempotency(api):
    view, created = api.submit_job(ADMIN, "r1", job_doc(tasks=2))
    assert created and view.record.state is JobState.QUEUED
    again, created2 = api.submit_job(ADMIN, "r1", job_doc(tasks=2))
    assert not created2 and again.record.id == view.record.id
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "r1", job_doc(tasks=3))
    assert err.value.code is Code.ALREADY_EXISTS and err.value.metadata["jobId"] == view.record.id
    api.schedule_once()
    job, events = api.get_job(ADMIN, view.record.id)
    assert job.record.state is JobState.SCHEDULED
    assert sum(len(a.devices) for a in job.record.allocations) == 16
    assert [e.type for e in events] == [EventType.SUBMITTED, EventType.SCHEDULED]


def test_job_that_does_not_fit_now_is_queued_with_reason_and_position(api):
    ids = [api.submit_job(ADMIN, f"r{i}", job_doc(f"j{i}", tasks=4))[0].record.id for i in range(3)]
    api.schedule_once()
    states = [api.get_job(ADMIN, i)[0] for i in ids]
    assert states[0].record.state is JobState.SCHEDULED
    for pos, v in enumerate(states[1:], start=1):
        assert v.record.state is JobState.QUEUED
        assert v.pending is not None and v.pending.reason == "UNSCHEDULABLE" or v.pending.reason == "WAITING_BEHIND"
        assert v.queue_position == pos
    ex = api.explain_job(ADMIN, ids[1])
    assert ex.numbers["queuePosition"] == 1 and "needDevices" in ex.numbers
    # waiting is shown live but not logged: no event per cycle
    for _ in range(3):
        api.schedule_once()
    events = api.get_job(ADMIN, ids[2])[1]
    assert [e.type for e in events] == [EventType.SUBMITTED]
    # cancelling the running job frees its devices for the next one
    api.cancel_job(ADMIN, ids[0])
    api.schedule_once()
    assert api.get_job(ADMIN, ids[1])[0].record.state is JobState.SCHEDULED


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["spec"]["devices"].update(count=-3), "spec.devices.count"),
        (lambda d: d["spec"].update(tasks="four"), "spec.tasks"),
        (lambda d: d["spec"].update(tasks=0), "spec.tasks"),
        (lambda d: d["spec"].update(gpus=8), "spec.gpus"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(kind="Pod"), "kind"),
        (lambda d: d["metadata"].update(name="Bad Name!"), "metadata.name"),
        (lambda d: d.pop("metadata"), ""),  # a missing key: the document that lacks it
        (lambda d: d.update(spec=[1, 2]), "spec"),
        (lambda d: d["spec"].update(within="galaxy"), "spec.within"),
        (lambda d: d["spec"].update(priority_class="urgent"), "spec.priority_class"),
        (lambda d: d["spec"]["devices"].update(count=True), "spec.devices.count"),
        (lambda d: d["spec"].update(kind="TrainingJob"), "spec.kind"),
    ],
)
def test_malformed_specs_are_invalid_argument_naming_the_field(api, mutate, field):
    doc = job_doc()
    mutate(doc)
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "bad", doc)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert err.value.field == field, str(err.value)
    assert "\n" not in str(err.value)
    assert api.list_jobs(ADMIN)[0] == []


def test_hostile_documents(api):
    huge = job_doc()
    huge["metadata"]["labels"] = {f"k{i}": "x" * 100 for i in range(5000)}
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "huge", huge)
    assert err.value.code is Code.INVALID_ARGUMENT and err.value.reason == "SPEC_TOO_LARGE"
    for bad in (None, [], "job", 42):
        with pytest.raises(ApiError) as err:
            api.submit_job(ADMIN, "x", bad)
        assert err.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "x" * 1000, job_doc())
    assert err.value.field == "request_id"
    nan = job_doc(expected_duration_seconds=float("nan"))
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "nan", nan)
    assert err.value.code is Code.INVALID_ARGUMENT
    # still serving
    assert api.submit_job(ADMIN, "fine", job_doc())[1]


def test_can_never_fit_is_failed_precondition(api):
    for doc in (job_doc(tasks=5, count=8), job_doc(tasks=1, count=16), job_doc(tasks=2, count=8, within="node")):
        with pytest.raises(ApiError) as err:
            api.submit_job(ADMIN, "big", doc)
        assert err.value.code is Code.FAILED_PRECONDITION, doc
        assert err.value.reason == "EXCEEDS_CLUSTER_CAPACITY"
        assert "largestDomainDevices" in err.value.metadata
    other = job_doc()
    other["spec"]["devices"] = {"count": 1, "model": "ascend-910c"}
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "other", other)
    assert err.value.code is Code.FAILED_PRECONDITION


def test_list_filters_and_pages(api):
    for i in range(7):
        api.submit_job(ADMIN, f"r{i}", job_doc(f"j{i}", tasks=1, queue="research" if i % 2 else "prod"))
    api.schedule_once()
    page, token = api.list_jobs(ADMIN, page_size=3)
    seen = [v.record.id for v in page]
    while token:
        page, token = api.list_jobs(ADMIN, page_size=3, page_token=token)
        seen += [v.record.id for v in page]
    assert seen == [f"job-{i}" for i in range(1, 8)]
    prod = api.list_jobs(ADMIN, queue="prod")[0]
    assert len(prod) == 4 and all(v.record.queue == "prod" for v in prod)
    queued = api.list_jobs(ADMIN, states=[JobState.QUEUED])[0]
    running = api.list_jobs(ADMIN, states=[JobState.SCHEDULED])[0]
    assert len(running) == 4 and len(queued) == 3
    for bad in ({"page_size": -1}, {"page_size": 5000}, {"page_token": "garbage"}):
        with pytest.raises(ApiError) as err:
            api.list_jobs(ADMIN, **bad)
        assert err.value.code is Code.INVALID_ARGUMENT


def test_cancel_rules(api):
    jid = api.submit_job(ADMIN, "r", job_doc())[0].record.id
    assert api.cancel_job(ADMIN, jid).record.state is JobState.CANCELLED
    with pytest.raises(ApiError) as err:
        api.cancel_job(ADMIN, jid)
    assert err.value.code is Code.FAILED_PRECONDITION
    with pytest.raises(ApiError) as err:
        api.cancel_job(ADMIN, "job-404")
    assert err.value.code is Code.NOT_FOUND


def test_watch_resumes_from_a_revision(api):
    for i in range(3):
        api.submit_job(ADMIN, f"r{i}", job_doc(f"j{i}"))
    api.schedule_once()
    first = list(_take(api.watch_jobs(ADMIN, from_revision=0), 6))
    revs = [e.revision for e in first]
    assert revs == sorted(revs) and len(set(revs)) == 6
    resumed = list(_take(api.watch_jobs(ADMIN, from_revision=revs[2]), 3))
    assert [e.revision for e in resumed] == revs[3:]
    # a new event reaches a live watcher
    got = []
    stop = threading.Event()

    def watch():
        for ev in api.watch_jobs(ADMIN, from_revision=revs[-1], is_active=lambda: not stop.is_set(), poll_s=0.05):
            got.append(ev)
            stop.set()

    t = threading.Thread(target=watch)
    t.start()
    api.submit_job(ADMIN, "late", job_doc("late"))
    t.join(timeout=10)
    stop.set()
    assert got and got[0].type is EventType.SUBMITTED and got[0].job.name == "late"


def _take(it, n):
    for i, x in enumerate(it):
        yield x
        if i + 1 == n:
            return


def test_restart_recovers_jobs_allocations_and_log(tmp_path):
    db = str(tmp_path / "x.db")
    api = make_api(db)
    a = api.submit_job(ADMIN, "a", job_doc("a", tasks=3))[0].record.id
    b = api.submit_job(ADMIN, "b", job_doc("b", tasks=2))[0].record.id
    api.schedule_once()
    before = {v.record.id: v.record for v in api.list_jobs(ADMIN)[0]}
    last = api.last_revision
    api.close()
    api = make_api(db)
    try:
        after = {v.record.id: v.record for v in api.list_jobs(ADMIN)[0]}
        assert after == before
        assert after[a].state is JobState.SCHEDULED and after[b].state is JobState.QUEUED
        assert api.last_revision == last
        # the core got the allocations back: b still does not fit, and a's devices stay taken
        api.schedule_once()
        assert api.get_job(ADMIN, b)[0].record.state is JobState.QUEUED
        api.cancel_job(ADMIN, a)
        api.schedule_once()
        assert api.get_job(ADMIN, b)[0].record.state is JobState.SCHEDULED
        # same request id after restart: same job
        assert api.submit_job(ADMIN, "a", job_doc("a", tasks=3))[0].record.id == a
    finally:
        api.close()


def test_agents_drive_the_job_to_completion(api):
    jid = api.submit_job(ADMIN, "r", job_doc(tasks=2))[0].record.id
    api.schedule_once()
    job = api.get_job(ADMIN, jid)[0].record
    nodes = sorted({a.node for a in job.allocations})
    assert len(nodes) == 2
    news = []
    subscription, [first] = api.watch_assignments(ADMIN, [nodes[0]], news.extend)
    assert first.run and first.job.id == jid and all(a.node == nodes[0] for a in first.allocations)
    with pytest.raises(ApiError) as err:
        api.report_task_status(ADMIN, jid, "g-elsewhere", TaskState.RUNNING)
    assert err.value.code is Code.FAILED_PRECONDITION
    assert api.report_task_status(ADMIN, jid, nodes[0], TaskState.RUNNING).record.state is JobState.SCHEDULED
    assert api.report_task_status(ADMIN, jid, nodes[1], TaskState.RUNNING).record.state is JobState.RUNNING
    api.report_task_status(ADMIN, jid, nodes[0], TaskState.SUCCEEDED)
    done = api.report_task_status(ADMIN, jid, nodes[1], TaskState.SUCCEEDED)
    assert done.record.state is JobState.SUCCEEDED and done.record.allocations == ()
    [stop] = news
    assert not stop.run and stop.job.id == jid and stop.node == nodes[0]
    subscription.close()
    assert all(milli == 0 for _, _, milli, _ in api.list_devices(ADMIN))


def test_unhealthy_device_evicts_and_requeues(api):
    jid = api.submit_job(ADMIN, "r", job_doc(tasks=1))[0].record.id
    api.schedule_once()
    alloc = api.get_job(ADMIN, jid)[0].record.allocations[0]
    index = int(alloc.devices[0].split("/")[1])
    api.heartbeat(ADMIN, {alloc.node: {index: Health.CRITICAL}})
    api.liveness.check()  # applies the health change (the liveness thread does it in a server)
    api.schedule_once()
    job, events = api.get_job(ADMIN, jid)
    assert EventType.EVICTED in [e.type for e in events]
    # placed again, elsewhere (another node has 8 healthy devices)
    assert job.record.state is JobState.SCHEDULED
    assert all(d != f"{alloc.node}/{index}" for a in job.record.allocations for d in a.devices)
    assert api.heartbeat(ADMIN, {"nope": {}})[1] == ["nope"]  # unknown: its agent registers it again


def test_registered_nodes_are_schedulable_and_durable(tmp_path):
    db = str(tmp_path / "x.db")
    api = make_api(db)
    node = NodeRecord("agent-node", tuple(DeviceRecord(i, "cambricon", "mlu590", 80 * 2**30) for i in range(4)))
    api.register_node(ADMIN, node)
    doc = job_doc(tasks=1, count=4)
    doc["spec"]["devices"] = {"count": 4, "vendor": "cambricon"}
    jid = api.submit_job(ADMIN, "m", doc)[0].record.id
    api.schedule_once()
    assert api.get_job(ADMIN, jid)[0].record.allocations[0].node == "agent-node"
    for bad in (NodeRecord("", ()), NodeRecord("x", (DeviceRecord(1, "v", "m"),)), NodeRecord("a/b", ())):
        with pytest.raises(ApiError) as err:
            api.register_node(ADMIN, bad)
        assert err.value.code is Code.INVALID_ARGUMENT
    api.close()
    api = make_api(db)
    try:
        assert "agent-node" in {n.record.name for n in api.list_nodes(ADMIN)}
        assert api.get_job(ADMIN, jid)[0].record.state is JobState.SCHEDULED
        assert api.get_cluster(ADMIN)["devices"] == 36
    finally:
        api.close()


def test_load_is_shed_with_retry_info(tmp_path):
    api = make_api(str(tmp_path / "x.db"), limits=Limits(max_inflight_submissions=2))
    try:
        barrier = threading.Barrier(8)

        def submit(i):
            barrier.wait()
            try:
                api.submit_job(ADMIN, f"r{i}", job_doc(f"j{i}"))
                return None
            except ApiError as err:
                return err

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            errors = [e for e in pool.map(submit, range(8)) if e is not None]
        for e in errors:
            assert e.code is Code.RESOURCE_EXHAUSTED and e.retry_after_s and e.retry_after_s > 0
        accepted = len(api.list_jobs(ADMIN)[0])
        assert accepted + len(errors) == 8 and accepted >= 2
    finally:
        api.close()


def test_submitter_sees_only_its_queues(api):
    alice = Principal("alice", Role.SUBMITTER, frozenset({"research"}))
    api.submit_job(ADMIN, "p", job_doc("p", queue="prod"))
    mine = api.submit_job(alice, "a", job_doc("a", queue="research"))[0].record.id
    assert [v.record.id for v in api.list_jobs(alice)[0]] == [mine]
    assert {e.job.queue for e in _take(api.watch_jobs(alice), 1)} == {"research"}
    with pytest.raises(ApiError) as err:
        api.submit_job(alice, "x", job_doc("x", queue="prod"))
    assert err.value.code is Code.PERMISSION_DENIED
    with pytest.raises(ApiError) as err:
        api.get_job(alice, "job-1")
    # issue 18: another queue's job answers as a job that does not exist (no existence oracle)
    assert err.value.code is Code.NOT_FOUND


def test_every_problem_at_once_and_a_typod_model_is_named_not_a_capacity_error(api):
    """Issue 19: job specs got only their first error, and a typo'd model came back as a
    capacity error. The server checks as ``xpod job validate`` does: every problem, by field."""
    doc = job_doc()
    doc["spec"]["devices"]["model"] = "nvidia-h100-sxn"
    doc["spec"]["tasks"] = 0
    doc["spec"]["gpus"] = 1
    with pytest.raises(ApiError) as err:
        api.submit_job(ADMIN, "typo", doc)
    assert err.value.code is Code.INVALID_ARGUMENT and err.value.reason == "INVALID_SPEC"
    fields = [f for f, _ in err.value.violations]
    assert {"spec.devices.model", "spec.tasks"} <= set(fields) and any("gpus" in f for f in fields), fields
    model = dict(err.value.violations)["spec.devices.model"]
    assert "unknown device model 'nvidia-h100-sxn'" in model and "nvidia-h100-sxm" in model
