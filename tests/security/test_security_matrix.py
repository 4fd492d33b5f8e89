"""Issue 18, item 9: every role x every RPC, with agents bound to their nodes (the token file's
``nodes:`` hostlist). Expected outcomes are written out per role, not derived from the code's
own table; a node call is tried once for a node of the caller and once for another agent's."""

from __future__ import annotations

import pytest
from security_harness import job_doc, make_api, principals

from xpod.scheduler.contract import LoadReport, MoeLoadReport, TaskState, cluster_records
from xpod.scheduler.service.api import ApiError
from xpod.scheduler.service.auth import Call

OK, DENIED, NOT_FOUND = "OK", "PERMISSION_DENIED", "NOT_FOUND"
RACK = {"g1": "rack-a", "g2": "rack-a", "g3": "rack-b", "g4": "rack-b"}
JOB_CALLS = (
    Call.SUBMIT_JOB,
    Call.GET_JOB,
    Call.LIST_JOBS,
    Call.CANCEL_JOB,
    Call.WATCH_JOBS,
    Call.EXPLAIN_JOB,
    Call.GET_MOE_HISTORY,
)
NODE_CALLS = (
    Call.REGISTER_NODES,
    Call.HEARTBEAT,
    Call.WATCH_ASSIGNMENTS,
    Call.REPORT_TASK_STATUS,
    Call.REPORT_EXPERT_LOADS,
    Call.REPORT_LOAD,
)
#: node calls made for the node the setup job is bound to (not for a node the test picks)
BOUND_NODE_CALLS = (Call.REPORT_TASK_STATUS, Call.REPORT_EXPERT_LOADS, Call.REPORT_LOAD)
#: codes that mean the call got past authorisation (the setup job has no spec.moe, no spec.autoscale)
PAST_AUTH = ("FAILED_PRECONDITION",)


def expected(who: str, call: Call, mine: bool) -> str:
    """``mine``: a node call names a node the caller's token lists (agents)."""
    if who == "admin":
        return OK
    if call in (Call.GET_CLUSTER, Call.LIST_NODES, Call.LIST_DEVICES):
        return OK
    if who in ("rack-a", "rack-b"):
        if call in JOB_CALLS:
            return DENIED
        return OK if mine else DENIED
    if call in NODE_CALLS:
        return DENIED
    if who == "alice":  # submitter of research; every job here is in research
        return OK
    # bob: submitter of prod: research's jobs look like no job at all; research itself is denied
    lookups = (Call.GET_JOB, Call.CANCEL_JOB, Call.EXPLAIN_JOB, Call.WATCH_JOBS, Call.GET_MOE_HISTORY)
    return NOT_FOUND if call in lookups else DENIED


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    api = make_api(str(tmp / "m.db"))
    yield api, principals(tmp), {r.name: r for r in cluster_records(api_cluster(api))}
    api.close()


def api_cluster(api):
    from security_harness import CLUSTER

    from xpod.hal.cluster import load_cluster

    return load_cluster(CLUSTER)


def _name(prefix: str, tag: str) -> str:
    return f"{prefix}-{tag}".lower().strip("-")[:60].strip("-")


def _bound_job(api, admin, tag: str):
    view, _ = api.submit_job(admin, f"setup-{tag}", job_doc(_name("s", tag), count=8))
    api.schedule_once()
    job = api.get_job(admin, view.record.id)[0].record
    assert job.allocations, "the setup job should be bound"
    return job


def invoke(api, p, admin, records, call: Call, node: str, tag: str) -> tuple[str, str]:
    """(outcome, the node the setup job is bound to)."""
    job = _bound_job(api, admin, tag)
    return _outcome(api, p, admin, records, call, node, job), job.allocations[0].node


def _outcome(api, p, admin, records, call: Call, node: str, job) -> str:
    try:
        if call is Call.SUBMIT_JOB:
            api.submit_job(p, f"r-{job.id}", job_doc(_name("n", job.id)))
        elif call is Call.GET_JOB:
            api.get_job(p, job.id)
        elif call is Call.LIST_JOBS:
            api.list_jobs(p, queue="research")
        elif call is Call.CANCEL_JOB:
            api.cancel_job(p, job.id, timeout_s=10)
        elif call is Call.WATCH_JOBS:
            next(iter(api.watch_jobs(p, job_id=job.id, is_active=lambda: True)))
        elif call is Call.EXPLAIN_JOB:
            api.explain_job(p, job.id)
        elif call is Call.REGISTER_NODES:
            api.register_nodes(p, [records[node]], timeout_s=10)
        elif call is Call.HEARTBEAT:
            api.heartbeat(p, {node: {}})
        elif call is Call.WATCH_ASSIGNMENTS:
            sub, _ = api.watch_assignments(p, [node], lambda batch: None)
            sub.close()
        elif call is Call.REPORT_TASK_STATUS:
            api.report_task_status(p, job.id, job.allocations[0].node, TaskState.RUNNING, timeout_s=10)
        elif call is Call.GET_MOE_HISTORY:
            api.moe_history(p, job.id)
        elif call is Call.REPORT_EXPERT_LOADS:
            bound = job.allocations[0].node
            api.report_expert_loads(p, MoeLoadReport(job.id, bound, 0, 1, 2, (1, 1), 0))
        elif call is Call.REPORT_LOAD:
            api.report_load(p, LoadReport(job.id, job.allocations[0].node, 0, 1.0))
        elif call is Call.GET_CLUSTER:
            api.get_cluster(p)
        elif call is Call.LIST_NODES:
            api.list_nodes(p)
        elif call is Call.LIST_DEVICES:
            api.list_devices(p)
        return OK
    except ApiError as err:
        return OK if err.code.value in PAST_AUTH else err.code.value
    finally:
        api.cancel_job(admin, job.id, timeout_s=10) if not api.jobs.get(job.id).state.terminal else None


def test_role_by_rpc_matrix_with_node_bound_agents(setup):
    api, who, records = setup
    admin = who["admin"]
    got, want = {}, {}
    for call in Call:
        for name, p in who.items():
            if call in NODE_CALLS and call not in BOUND_NODE_CALLS:
                cases = [("g1", RACK["g1"] == name), ("g3", RACK["g3"] == name)]
            else:
                cases = [("", True)]  # reports: from the node the task is bound to
            for node, mine in cases:
                outcome, bound = invoke(api, p, admin, records, call, node, f"{call.value}-{name}-{node}")
                if call in BOUND_NODE_CALLS:
                    mine = RACK[bound] == name
                got[(call.value, name, node)] = outcome
                want[(call.value, name, node)] = expected(name, call, mine)
    assert got == want
    assert all(v in (OK, DENIED, NOT_FOUND) for v in got.values())


@pytest.mark.parametrize("owner_of_node", [True, False], ids=["own-node", "other-agents-node"])
def test_task_reports_only_from_the_agent_of_the_node_the_task_is_bound_to(setup, owner_of_node):
    """A forged SUCCEEDED/FAILED for another node's job is refused; so is a report from one of
    the agent's own nodes when the task is not bound there."""
    api, who, _ = setup
    admin = who["admin"]
    job = _bound_job(api, admin, f"report-{owner_of_node}")
    node = job.allocations[0].node
    agent = who[RACK[node]] if owner_of_node else who["rack-b" if RACK[node] == "rack-a" else "rack-a"]
    if owner_of_node:
        # its own other node, where the task is not bound: the report is refused, the job unchanged
        other = next(n for n, r in RACK.items() if r == RACK[node] and n != node)
        with pytest.raises(ApiError) as err:
            api.report_task_status(agent, job.id, other, TaskState.FAILED, exit_code=1, timeout_s=10)
        assert (err.value.code.value, err.value.reason) == ("FAILED_PRECONDITION", "NOT_ASSIGNED")
        assert api.report_task_status(agent, job.id, node, TaskState.SUCCEEDED, timeout_s=10).record.state.value in (
            "SCHEDULED",
            "RUNNING",
            "SUCCEEDED",
        )
    else:
        with pytest.raises(ApiError) as err:
            api.report_task_status(agent, job.id, node, TaskState.SUCCEEDED, timeout_s=10)
        assert (err.value.code.value, err.value.reason) == (DENIED, "NODE_NOT_ALLOWED")
        assert api.get_job(admin, job.id)[0].record.state.value == "SCHEDULED"
        api.cancel_job(admin, job.id, timeout_s=10)


def test_an_agent_cannot_mark_another_nodes_devices_critical_nor_reregister_it(setup):
    """The probe evicted 28 jobs by heartbeating another node's devices as critical, and could
    re-register a node with a live agent; both need that node's credential now."""
    from xpod.hal.device import Health

    api, who, records = setup
    for call in (
        lambda: api.heartbeat(who["rack-a"], {"g3": {0: Health.CRITICAL}}),
        lambda: api.register_nodes(who["rack-a"], [records["g4"]], timeout_s=10),
        lambda: api.watch_assignments(who["rack-a"], ["g1", "g4"], lambda batch: None),
    ):
        with pytest.raises(ApiError) as err:
            call()
        assert (err.value.code.value, err.value.reason) == (DENIED, "NODE_NOT_ALLOWED")
        assert "rack-a" in err.value.message
    assert all(n.ready for n in api.list_nodes(who["admin"]))
