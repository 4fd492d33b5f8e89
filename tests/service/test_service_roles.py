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
