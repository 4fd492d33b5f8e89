"""The live MoE loop in the service (``scheduler.service.moe``): a ServingJob with ``spec.moe``
takes its replicas' expert loads, re-plans every ``every_s`` with the real ``Rebalancer``,
stores every window (and each published plan with a ``MOE_PLAN`` event) in the real SQLite
store, serves the plan in force, and keeps it across a restart. Bad reports are refused with
the code and a message naming the mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_harness import job_doc, make_api

from xpod.scheduler.contract import MoeLoadReport, TaskState
from xpod.scheduler.service.api import ApiError, Code
from xpod.scheduler.service.auth import OPEN_PRINCIPAL as P

LAYERS, EXPERTS = 3, 16
MOE = {"experts": EXPERTS, "layers": LAYERS, "slots_per_device": 5, "rebalance": {"every_s": 10, "max_moves": 6}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _serving(api, moe=MOE, replicas=2):
    doc = job_doc("moe", kind="ServingJob", count=4, queue="prod", moe=moe)
    del doc["spec"]["tasks"]
    doc["spec"]["replicas"] = replicas
    view, _ = api.submit_job(P, "moe-1", doc)
    api.schedule_once()
    job = api.jobs.get(view.record.id)
    for node in {a.node for a in job.allocations}:
        api.report_task_status(P, job.id, node, TaskState.RUNNING)
    return api.jobs.get(job.id)


def _loads(hot: int, scale: float = 1000.0) -> np.ndarray:
    w = np.full((LAYERS, EXPERTS), scale)
    w[:, hot] += 20 * scale  # one hot expert per layer
    return w


def _report(api, job, replica, counts=None, known=0, shape=(LAYERS, EXPERTS)):
    node = job.allocations[min(replica, len(job.allocations) - 1)].node
    flat = () if counts is None else tuple(float(x) for x in np.asarray(counts).ravel())
    return api.report_expert_loads(P, MoeLoadReport(job.id, node, replica, shape[0], shape[1], flat, known))


def _close(api, clock, seconds=10.0):
    clock.now += seconds
    for f in api.moe.run_due():
        f.result(timeout=30)


def test_loads_become_plans_stored_with_events_and_served_after_a_restart(tmp_path):
    clock = Clock()
    db = str(tmp_path / "xpod.db")
    api = make_api(db, clock=clock)
    try:
        job = _serving(api)
        assert _report(api, job, 0).revision == 0  # no plan before the first window closes
        _report(api, job, 0, _loads(3))
        _report(api, job, 1, _loads(3))
        _close(api, clock)
        first = _report(api, job, 1)
        assert first.revision == 1 and first.plan_json and first.sglang_json
        plan = json.loads(first.plan_json)
        assert np.asarray(plan["phy2log"]).shape == (LAYERS, 4 * 5) and plan["num_devices"] == 4
        assert np.asarray(json.loads(first.sglang_json)["physical_to_logical_map"]).shape == (LAYERS, 20)
        assert _report(api, job, 0, known=1).plan_json == ""  # the agent holds it: no documents again
        # the load moves to another expert: a bounded rebalance is published
        for _ in range(2):
            _report(api, job, 0, _loads(11))
            _close(api, clock)
        history = api.moe_history(P, job.id)
        assert [e.window for e in history] == [0, 1, 2]
        assert history[0].published and history[0].initial and history[0].balance_before is None
        moved = [e for e in history[1:] if e.published]
        assert moved, [e.reason for e in history]
        assert all(0 < e.moves <= 6 and e.balance_after > e.balance_before for e in moved)
        assert all(not e.published and e.moves == 0 and e.reason for e in history[1:] if e not in moved)
        revision = history[-1].plan_revision
        assert revision == 1 + len(moved)
        _, events = api.get_job(P, job.id)
        plans = [e for e in events if e.type.value == "MOE_PLAN"]
        assert len(plans) == revision and f"moe plan {revision} published" in plans[-1].message
        assert api.jobs.get(job.id).state.value == "RUNNING"  # a plan changes nothing else of the job
        served = _report(api, job, 0, known=0)
        # a window with no reports closes nothing
        _close(api, clock)
        assert len(api.moe_history(P, job.id)) == 3
    finally:
        api.close()
    again = make_api(db, agents=False, clock=clock)
    try:
        job = again.jobs.get(job.id)
        after = _report(again, job, 0, known=0)  # rebuilt from the store: the same plan in force
        assert (after.revision, after.plan_json) == (served.revision, served.plan_json)
        _report(again, job, 0, _loads(5))
        _close(again, clock)
        history = again.moe_history(P, job.id)
        assert [e.window for e in history] == [0, 1, 2, 3]
        assert not history[-1].initial and history[-1].moves <= 6  # improved from the stored plan, not from scratch
    finally:
        again.close()


def test_bad_reports_are_refused_naming_the_mismatch(tmp_path):
    api = make_api(str(tmp_path / "xpod.db"), clock=Clock())
    try:
        job = _serving(api)
        cases = [
            (
                lambda: _report(api, job, 0, np.ones((2, 8)), shape=(2, 8)),
                Code.INVALID_ARGUMENT,
                "2 layers x 8 experts",
            ),
            (lambda: _report(api, job, 0, np.ones(5), shape=(LAYERS, EXPERTS)), Code.INVALID_ARGUMENT, "5 values"),
            (lambda: _report(api, job, 0, -np.ones((LAYERS, EXPERTS))), Code.INVALID_ARGUMENT, ">= 0"),
            (lambda: _report(api, job, 7), Code.NOT_FOUND, "no replica 7"),
        ]
        for call, code, needle in cases:
            with pytest.raises(ApiError) as err:
                call()
            assert err.value.code is code and needle in err.value.message, err.value.message
        with pytest.raises(ApiError) as err:
            api.report_expert_loads(P, MoeLoadReport("job-404", "n", 0, LAYERS, EXPERTS))
        assert err.value.code is Code.NOT_FOUND
        with pytest.raises(ApiError) as err:
            api.report_expert_loads(P, MoeLoadReport(job.id, "elsewhere", 0, LAYERS, EXPERTS))
        assert err.value.code is Code.FAILED_PRECONDITION and "not bound to node 'elsewhere'" in err.value.message
        # in the spec: one field named
        for moe, field, needle in [
            ({**MOE, "slots_per_device": 3}, "spec.moe.slots_per_device", "raise it to at least 4"),
            ({**MOE, "rebalance": {"every_s": 0}}, "spec.moe.rebalance.every_s", "must be >= 0.5"),
            ({**MOE, "layer": 3}, "spec.moe", "did you mean 'layers'"),
        ]:
            doc = job_doc("bad", kind="ServingJob", count=4, queue="prod", moe=moe)
            del doc["spec"]["tasks"]
            with pytest.raises(ApiError) as err:
                api.submit_job(P, f"bad-{field}-{needle}", doc)
            text = str(err.value) + repr(err.value.violations)
            assert err.value.code is Code.INVALID_ARGUMENT and field in text and needle in text, text
        doc = job_doc("train", queue="prod", moe=MOE)
        with pytest.raises(ApiError) as err:
            api.submit_job(P, "train-moe", doc)
        assert "unknown key 'moe' in spec" in str(err.value)  # the schema's word, before the parser's
    finally:
        api.close()
