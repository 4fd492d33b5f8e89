"""Jobs with roles in the service (issue 14 item 3): one stored job whose roles the core places
as one gang per role, all in one cycle or none. The stored allocations number role i's tasks
after the earlier roles' (actor: task 0; learner: tasks 1, 2); a cancel frees every role in the
core; a lost node requeues the job whole and the roles are placed again together; a restarted
service restores each role where the store says it runs. Real core, real SQLite store."""

from __future__ import annotations

from service_harness import make_api

from xpod.scheduler.contract import TaskState
from xpod.scheduler.service.api import ApiError, Code
from xpod.scheduler.service.auth import OPEN_PRINCIPAL as P
from xpod.scheduler.service.restarts import Loss

H100 = {"count": 8, "model": "nvidia-h100-sxm"}


def _doc(learners=2, actor_count=8):
    return {
        "apiVersion": "xpod/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "rl"},
        "spec": {
            "queue": "research",
            "roles": [
                {"name": "actor", "tasks": 1, "devices": {**H100, "count": actor_count}, "command": ["true"]},
                {"name": "learner", "tasks": learners, "devices": H100, "command": ["true"], "env": {"LR": "1"}},
            ],
        },
    }


def _core_ids(api):
    s = api.core.scheduler
    return sorted(set(s.pending) | set(s.snapshot.running))


def test_roles_are_placed_together_and_stored_as_one_job(tmp_path):
    api = make_api(str(tmp_path / "x.db"))
    try:
        view, _ = api.submit_job(P, "rl-1", _doc())
        jid = view.record.id
        assert api.jobs.parsed(jid).core.tasks == 3  # the whole job: every role's tasks
        api.schedule_once()
        job = api.jobs.get(jid)
        assert sorted(a.task for a in job.allocations) == [0, 1, 2], job.allocations
        assert len({a.node for a in job.allocations}) == 3  # 8 devices a task: a node each
        assert _core_ids(api) == [f"{jid}/actor", f"{jid}/learner"]
        running = api.core.scheduler.snapshot.running
        assert sorted(b.task for b in running[f"{jid}/learner"].bindings) == [0, 1]
        # a node of the learner is lost: the job is requeued whole and both roles come back
        learner = next(a for a in job.allocations if a.task == 2)
        for node in {a.node for a in job.allocations}:
            api.report_task_status(P, jid, node, TaskState.RUNNING)
        assert api.liveness.lose(jid, Loss("node lost", node=learner.node)) is not None
        assert api.jobs.get(jid).state.value == "QUEUED" and not api.core.scheduler.snapshot.running
        api.schedule_once()
        again = api.jobs.get(jid)
        assert sorted(a.task for a in again.allocations) == [0, 1, 2] and again.restarts == 1
        api.cancel_job(P, jid)
        assert _core_ids(api) == [] and not api.core.scheduler.snapshot.running
    finally:
        api.close()


def test_a_restarted_service_restores_each_role_where_it_ran(tmp_path):
    db = str(tmp_path / "x.db")
    api = make_api(db)
    view, _ = api.submit_job(P, "rl-1", _doc())
    jid = view.record.id
    api.schedule_once()
    where = {a.task: a.devices for a in api.jobs.get(jid).allocations}
    api.close()
    api = make_api(db, agents=False)  # the nodes are known from the store (registering them again would evict)
    try:
        running = api.core.scheduler.snapshot.running
        assert sorted(running) == [f"{jid}/actor", f"{jid}/learner"]
        learner = {b.task: b for b in running[f"{jid}/learner"].bindings}
        assert sorted(learner) == [0, 1]
        assert tuple(f"{learner[1].node}/{i}" for i in learner[1].device_indices) == where[2]
        api.schedule_once()
        assert {a.task: a.devices for a in api.jobs.get(jid).allocations} == where  # nothing moved
    finally:
        api.close()


def test_a_role_that_can_never_fit_or_is_malformed_is_refused_naming_it(tmp_path):
    api = make_api(str(tmp_path / "x.db"))
    try:
        for doc, field in (
            (_doc(actor_count=16), "spec.roles[0]"),  # 16 devices a task: no node has them
            ({**_doc(), "spec": {**_doc()["spec"], "roles": []}}, "spec.roles"),
        ):
            try:
                api.submit_job(P, f"bad-{field}", doc)
            except ApiError as err:
                assert err.code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION), err
                assert field in str(err) or field in str(err.violations), (field, str(err), err.violations)
            else:
                raise AssertionError(f"{field}: accepted")
        bad_env = _doc()
        bad_env["spec"]["roles"][1]["env"] = {"RANK": "3"}
        try:
            api.submit_job(P, "bad-env", bad_env)
        except ApiError as err:
            assert "spec.roles[1].env" in str(err) + str(err.violations), (str(err), err.violations)
        else:
            raise AssertionError("a reserved variable in a role's env: accepted")
    finally:
        api.close()


# --- a ServingJob whose roles scale apart (prefill / decode) ---------------------------------------


def _pd_doc():
    scale = {"basis_s": 0, "scale_down_after_s": 0}  # the rule follows each report at once (a test clock)
    return {
        "apiVersion": "xpod/v1",
        "kind": "ServingJob",
        "metadata": {"name": "pd"},
        "spec": {
            "queue": "research",
            "roles": [
                {
                    "name": "prefill",
                    "tasks": 1,
                    "devices": H100,
                    "replicas": {"min": 1, "max": 2},
                    "autoscale": {"metric": "requests_per_s", "target_per_replica": 10, **scale},
                    "command": ["true"],
                },
                {
                    "name": "decode",
                    "tasks": 1,
                    "devices": H100,
                    "replicas": {"min": 1, "max": 2},
                    "autoscale": {"metric": "tokens_per_s", "target_per_replica": 100, **scale},
                    "command": ["true"],
                },
            ],
        },
    }


def test_serving_roles_scale_on_their_own_load_reports(tmp_path):
    from xpod.scheduler.contract import LoadReport
    from xpod.scheduler.service.metrics import ServiceMetrics

    from test_service_autoscale import Clock, _scrape

    clock = Clock()
    api = make_api(str(tmp_path / "x.db"), clock=clock, metrics=ServiceMetrics())
    try:
        view, _ = api.submit_job(P, "pd-1", _pd_doc())
        jid = view.record.id
        api.schedule_once()
        job = api.jobs.get(jid)
        # prefill: tasks 0-1 (2 replicas of 1 task), decode: tasks 2-3; each starts at its min
        assert sorted(a.task for a in job.allocations) == [0, 2], job.allocations
        for node in {a.node for a in job.allocations}:
            api.report_task_status(P, jid, node, TaskState.RUNNING)
        where = {a.task: a.node for a in job.allocations}
        refused = [
            (LoadReport(jid, where[2], 0, 1.0, "router"), Code.NOT_FOUND, "ROLE_NOT_FOUND"),
            (LoadReport(jid, where[2], 0, 1.0), Code.NOT_FOUND, "ROLE_NOT_FOUND"),  # a job with roles names one
            (LoadReport(jid, where[2], 1, 1.0, "decode"), Code.NOT_FOUND, "REPLICA_NOT_FOUND"),
        ]
        for report, code, reason in refused:
            try:
                api.report_load(P, report)
            except ApiError as err:
                assert (err.code, err.reason) == (code, reason), (report, err)
            else:
                raise AssertionError(f"{report}: accepted")
        clock.now += 1
        api.schedule_once()
        assert sorted(a.task for a in api.jobs.get(jid).allocations) == [0, 2], "a refused report changed nothing"
        api.report_load(P, LoadReport(jid, where[2], 0, 150.0, "decode"))  # decode wants 2, prefill stays
        clock.now += 1
        api.schedule_once()
        job = api.jobs.get(jid)
        assert sorted(a.task for a in job.allocations) == [0, 2, 3], job.allocations
        why = api.explain_job(P, jid)
        assert why.numbers["decode.desiredReplicas"] == 2 and why.numbers["decode.demand"] == 150
        assert why.numbers["prefill.desiredReplicas"] == 1 and "prefill.demand" not in why.numbers
        assert any(line.startswith("role decode: autoscale: demand 150 tokens_per_s") for line in why.lines)
        scraped = _scrape(api)
        decode = (("job", jid), ("queue", "research"), ("role", "decode"), ("state", "placed"))
        assert scraped[("xpod_scheduler_serving_replicas", decode)] == 2
        prefill = (("job", jid), ("metric", "requests_per_s"), ("queue", "research"), ("role", "prefill"))
        assert scraped[("xpod_scheduler_serving_target_per_replica", prefill)] == 10
        # the load goes: decode's second replica (the job's task 3) is released alone
        for replica, task in ((0, 2), (1, 3)):
            node = next(a.node for a in job.allocations if a.task == task)
            api.report_load(P, LoadReport(jid, node, replica, 0.0, "decode"))
        clock.now += 1
        api.schedule_once()
        job = api.jobs.get(jid)
        assert sorted(a.task for a in job.allocations) == [0, 2] and job.state.value == "RUNNING", job
        assert job.restarts == 0  # a role scaled down is no restart
    finally:
        api.close()


def test_a_lost_replica_of_a_role_is_replaced_alone_a_lost_gang_role_requeues_the_job(tmp_path):
    doc = _pd_doc()
    del doc["spec"]["roles"][0]["replicas"], doc["spec"]["roles"][0]["autoscale"]  # prefill: one gang
    doc["spec"]["roles"][1]["replicas"] = 2  # decode: two replicas, always
    del doc["spec"]["roles"][1]["autoscale"]
    api = make_api(str(tmp_path / "x.db"))
    try:
        view, _ = api.submit_job(P, "pd-1", doc)
        jid = view.record.id
        api.schedule_once()
        job = api.jobs.get(jid)
        assert sorted(a.task for a in job.allocations) == [0, 1, 2], job.allocations
        for node in {a.node for a in job.allocations}:
            api.report_task_status(P, jid, node, TaskState.RUNNING)
        where = {a.task: a.node for a in job.allocations}
        d = api.liveness.lose(jid, Loss("node lost", node=where[2]))  # decode replica 1
        assert d is not None and d.action.value == "replace" and d.lost_tasks == (2,), d
        assert "decode replica 1 replaced: node lost" in d.message
        job = api.jobs.get(jid)
        assert job.state.value == "RUNNING" and sorted(a.task for a in job.allocations) == [0, 1]
        assert f"{jid}/prefill" in api.core.scheduler.snapshot.running  # the other roles keep running
        api.schedule_once()
        assert sorted(a.task for a in api.jobs.get(jid).allocations) == [0, 1, 2]  # placed again
        d = api.liveness.lose(jid, Loss("node lost", node=where[0]))  # prefill, a gang: the whole job
        assert d is not None and d.action.value == "requeue", d
        assert api.jobs.get(jid).state.value == "QUEUED" and not api.core.scheduler.snapshot.running
    finally:
        api.close()
