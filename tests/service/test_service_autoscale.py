"""The service applies the core's resizes and takes serving replicas' loads (issue 14): an
autoscaled ServingJob's load (``report_load``, the ReportLoad RPC) makes the core want more
replicas; with no free devices it shrinks a lower-priority elastic training gang, which the
service stores as the gang keeping its state with fewer allocations and one restart counted;
when the load goes the serving job scales down and the gang regrows (one more restart). Bad
reports are refused with the code and nothing changes. Real core, real SQLite store, a test
clock."""

from __future__ import annotations

import dataclasses
import math

import pytest
from service_harness import job_doc, make_api

from xpod.scheduler.contract import LoadReport, TaskState
from xpod.scheduler.service.api import ApiError, Code
from xpod.scheduler.service.auth import OPEN_PRINCIPAL as P
from xpod.scheduler.store import EventType


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def svc(tmp_path):
    from xpod.scheduler.service.metrics import ServiceMetrics

    clock = Clock()
    api = make_api(str(tmp_path / "xpod.db"), clock=clock, metrics=ServiceMetrics())
    yield api, clock
    api.close()


def _running(api, job_id):
    job = api.jobs.get(job_id)
    for node in {a.node for a in job.allocations}:
        api.report_task_status(P, job_id, node, TaskState.RUNNING)
    return api.jobs.get(job_id)


def _submit(api, name, doc):
    view, _ = api.submit_job(P, name, doc)
    return view.record.id


def _pod(api):
    """A 3-task elastic training gang (low priority) and an autoscaled serving job (high) on the
    4 x 8 test cluster: 24 + 8 devices, nothing free."""
    train = _submit(api, "t", job_doc("train", tasks=3, min_tasks=1, priority_class="low", grace_period_s=5))
    for _ in range(5):  # an elastic gang may start at its minimum and grow cycle by cycle
        api.schedule_once()
        if len(api.jobs.get(train).allocations) == 3:
            break
    serving = job_doc("chat", kind="ServingJob", priority_class="high")
    del serving["spec"]["tasks"]
    serving["spec"].update(
        replicas={"min": 1, "max": 3},
        autoscale={"metric": "tokens_per_s", "target_per_replica": 100, "scale_down_after_s": 60},
    )
    chat = _submit(api, "c", serving)
    api.schedule_once()
    return _running(api, train), _running(api, chat)


def _scrape(api):
    """The scheduler's metrics as Prometheus would read them: (name, sorted labels) -> value."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(api.metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _replicas(job):
    return sorted({a.task for a in job.allocations})


def test_load_shrinks_training_for_serving_and_a_trough_gives_it_back(svc):
    api, clock = svc
    train, chat = _pod(api)
    assert len(train.allocations) == 3 and _replicas(chat) == [0]
    base = train.restarts  # growing to its size at the start may have counted restarts already
    assert train.resizes == base  # ... each a resize
    node = chat.allocations[0].node
    api.report_load(P, LoadReport(chat.id, node, 0, 250.0))  # 250 tokens/s at 100 per replica (70 %)
    clock.now += 1
    for _ in range(3):
        api.schedule_once()
    train, chat = api.jobs.get(train.id), api.jobs.get(chat.id)
    assert _replicas(chat) == [0, 1, 2], chat.allocations
    assert len(train.allocations) == 1 and train.state.value == "RUNNING"
    assert train.restarts == base + 1  # a gang restart, stored
    texts = [e.message for e in api.store.events_since(0, job_id=train.id)]
    assert any(t.startswith(f"restart (resize, {base + 1}): ") and "shrunk" in t for t in texts), texts
    why = api.explain_job(P, chat.id)
    assert why.numbers["demand"] == 250 and why.numbers["desiredReplicas"] == 3
    assert any("autoscale: demand 250 tokens_per_s" in line for line in why.lines), why.lines
    scraped = _scrape(api)
    job = (("job", chat.id), ("metric", "tokens_per_s"), ("queue", "research"), ("role", ""))
    assert scraped[("xpod_scheduler_serving_demand", job)] == 250
    assert scraped[("xpod_scheduler_serving_target_per_replica", job)] == 100
    for state in ("desired", "placed"):
        labels = (("job", chat.id), ("queue", "research"), ("role", ""), ("state", state))
        assert scraped[("xpod_scheduler_serving_replicas", labels)] == 3

    for replica in (0, 1, 2):  # the load goes
        where = next(a.node for a in chat.allocations if a.task == replica)
        api.report_load(P, LoadReport(chat.id, where, replica, 0.0))
    api.schedule_once()  # the cycle that sees the trough begin
    clock.now += 61  # past scale_down_after_s: the trough has lasted
    for _ in range(4):
        api.schedule_once()
        clock.now += 1
    train, chat = api.jobs.get(train.id), api.jobs.get(chat.id)
    assert _replicas(chat) == [0], chat.allocations
    assert len(train.allocations) == 3, train.allocations
    # each regrow step restarts the gang once (the core may regrow it over several cycles)
    assert train.restarts >= base + 2
    events = api.store.events_since(0, job_id=train.id)
    assert events[-1].type is EventType.SCHEDULED and events[-1].message.startswith(
        f"restart (resize, {train.resizes})"
    )
    assert [e.message.split(":")[0] for e in events if e.message.startswith("restart ")] == [
        f"restart (resize, {k})" for k in range(1, train.restarts + 1)
    ]  # every restart counted is an event saying so
    assert train.resizes == train.restarts  # resizes all: none of its max_restarts (3) is spent
    assert api.jobs.get(chat.id).restarts == 0  # a scale-down is no restart


def test_bad_load_reports_are_refused_and_change_nothing(svc):
    api, clock = svc
    train, chat = _pod(api)
    node = chat.allocations[0].node
    cases = [
        (LoadReport("job-404", node, 0, 1.0), Code.NOT_FOUND, "JOB_NOT_FOUND"),
        (LoadReport(train.id, train.allocations[0].node, 0, 1.0), Code.FAILED_PRECONDITION, "NO_AUTOSCALE"),
        (LoadReport(chat.id, "elsewhere", 0, 1.0), Code.FAILED_PRECONDITION, "NOT_ASSIGNED"),
        (LoadReport(chat.id, node, 7, 1.0), Code.NOT_FOUND, "REPLICA_NOT_FOUND"),
        (LoadReport(chat.id, node, 0, -1.0), Code.INVALID_ARGUMENT, "INVALID_LOAD"),
        (LoadReport(chat.id, node, 0, math.nan), Code.INVALID_ARGUMENT, "INVALID_LOAD"),
    ]
    for report, code, reason in cases:
        with pytest.raises(ApiError) as err:
            api.report_load(P, report)
        assert (err.value.code, err.value.reason) == (code, reason), (report, err.value)
        assert str(err.value) and "\n" not in str(err.value)
    clock.now += 1
    api.schedule_once()
    why = api.explain_job(P, chat.id)
    assert "demand" not in why.numbers and any("nothing reported yet" in line for line in why.lines), why.lines
    assert _replicas(api.jobs.get(chat.id)) == [0] and len(api.jobs.get(train.id).allocations) == 3


def test_the_agent_and_the_core_agree_on_the_default_grace():
    from xpod.scheduler import contract
    from xpod.scheduler.core import model

    assert contract.DEFAULT_GRACE_PERIOD_S == model.DEFAULT_GRACE_PERIOD_S
    assert contract.grace_period_s({}) == model.DEFAULT_GRACE_PERIOD_S
    assert contract.grace_period_s({"grace_period_s": 2}) == 2.0


def test_resizes_spend_none_of_max_restarts():
    from xpod.scheduler.service.restarts import Action, Loss, decide
    from xpod.scheduler.store import AllocationRecord, JobRecord

    alloc = (AllocationRecord("n1", ("n1/0",), task=0), AllocationRecord("n2", ("n2/0",), task=1))
    job = JobRecord("job-1", 1, "r", "h", "q", "TrainingJob", "t", {}, allocations=alloc, restarts=5, resizes=5)
    d = decide(job, Loss("node n1 NotReady", node="n1"), max_restarts=1, serving=False)
    assert (d.action, d.message, d.restarts) == (Action.REQUEUE, "restart 1/1: node n1 NotReady", 6)
    spent = dataclasses.replace(job, restarts=6)  # five resizes and the one failure restart
    d = decide(spent, Loss("node n1 NotReady", node="n1"), max_restarts=1, serving=False)
    assert d.action is Action.FAIL and "no restarts left (max_restarts 1)" in d.message
