"""Jobs with roles (issue 14): every role placed whole in one cycle or none (a gang across
roles), evicted together; the job-spec keys with FILE:LINE:COL errors."""

from __future__ import annotations

import pytest

from xpod.hal.errors import XpodError
from tests.jobspec.test_jobspec_check import problems
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.spec import parse_roles
from xpod.scheduler.core.testing import job, node

ROLES = {
    "id": "rl",
    "kind": "training",
    "priority_class": "normal",
    "roles": [
        {"name": "actor", "tasks": 3, "devices": {"count": 4, "model": "gpu"}},
        {"name": "learner", "tasks": 1, "devices": {"count": 8, "model": "gpu"}},
    ],
}


def pod(n: int):
    return [node(f"n{i}").devices("gpu", 8).build() for i in range(n)]


def test_roles_are_placed_together_or_not_at_all():
    s = Scheduler(pod(3))
    s.submit(job("other").training(tasks=1).devices("gpu", 8).build())
    s.cycle(now=0.0)  # 16 of 24 devices left: actor (12) or learner (8) alone would fit, not both
    for j in parse_roles(ROLES):
        s.submit(j)
    r = s.cycle(now=1.0)
    assert not [b for b in r.bindings if b.job_id.startswith("rl/")]
    assert set(r.pending) >= {"rl/actor", "rl/learner"}
    assert "rl/actor" not in s.running and "rl/learner" not in s.running
    s.finish("other")
    r = s.cycle(now=2.0)
    placed = {b.job_id for b in r.bindings}
    assert placed == {"rl/actor", "rl/learner"}
    assert len(s.running["rl/actor"].bindings) == 3 and len(s.running["rl/learner"].bindings) == 1


def test_a_role_evicted_stops_its_sibling_roles_too():
    s = Scheduler(pod(3))
    for j in parse_roles(ROLES):
        s.submit(j)
    s.cycle(now=0.0)
    learner_node = s.running["rl/learner"].bindings[0].node
    gone = s.remove_node(learner_node)
    assert set(gone) == {"rl/learner", "rl/actor"}
    assert "rl/actor" not in s.running and set(s.pending) >= {"rl/actor", "rl/learner"}
    r = s.cycle(now=1.0)
    assert {e.job_id for e in r.evictions} == {"rl/learner", "rl/actor"}


def test_roles_share_the_jobs_settings_and_refuse_keys_above_them():
    actor, learner = parse_roles(ROLES)
    assert (actor.id, actor.group, actor.group_size, actor.tasks) == ("rl/actor", "rl", 2, 3)
    assert learner.devices.count == 8 and learner.priority_class == "normal"
    with pytest.raises(XpodError, match=r"devices: set per role"):
        parse_roles({**ROLES, "devices": {"count": 1}})
    with pytest.raises(XpodError, match=r"roles: a list of at least one role"):
        parse_roles({**ROLES, "roles": []})
    with pytest.raises(XpodError, match=r"roles\[1\].name: 'actor' is already roles\[0\]"):
        parse_roles({**ROLES, "roles": [{"name": "actor"}, {"name": "actor"}]})


def test_role_file_errors_name_the_line_and_field(tmp_path):
    head = "kind: TrainingJob\nmetadata: {name: rl}\nspec:\n"
    assert problems(tmp_path, head + "  roles: []\n") == ["4:10: spec.roles must list at least 1 item(s)"]
    found = problems(
        tmp_path,
        head + "  roles:\n    - name: actor\n      devices: {count: 4, model: ascend-910x}\n    - {name: Learner}\n",
    )
    assert found[0].startswith("6:34: spec.roles[0].devices.model: unknown device model 'ascend-910x'")
    assert found[1].startswith("7:14: spec.roles[1].name: 'Learner' is not a role name")
    above = problems(tmp_path, head + "  tasks: 2\n  roles:\n    - {name: actor}\n")
    assert above == ["4:10: spec.tasks: set per role when the job has roles (roles[].tasks)"]
    assert problems(tmp_path, "kind: BatchJob\nmetadata: {name: b}\nspec:\n  roles: [{name: a}]\n")[0].startswith(
        "4:3: unknown key 'roles' in spec"
    )


# --- a ServingJob's roles with replicas and autoscale (prefill / decode scaled apart) -------------

PD = {
    "id": "pd",
    "kind": "serving",
    "priority_class": "high",
    "roles": [
        {
            "name": "prefill",
            "tasks": 1,
            "devices": {"count": 8, "model": "gpu-a"},
            "replicas": {"min": 1, "max": 3},
            # basis 0 and no down delay: the rule follows each report at once (the test's clock)
            "autoscale": {"metric": "requests_per_s", "target_per_replica": 10, "basis_s": 0, "scale_down_after_s": 0},
        },
        {
            "name": "decode",
            "tasks": 2,
            "devices": {"count": 8, "model": "gpu-b"},
            "replicas": {"min": 1, "max": 2},
            "autoscale": {"metric": "tokens_per_s", "target_per_replica": 100, "basis_s": 0, "scale_down_after_s": 0},
        },
    ],
}


def pd_pod():
    return [node(f"a{i}").devices("gpu-a", 8).build() for i in range(3)] + [
        node(f"b{i}").devices("gpu-b", 8).build() for i in range(4)
    ]


def replicas(s: Scheduler, jid: str) -> int:
    rj = s.running.get(jid)
    return 0 if rj is None else len({b.task // rj.job.replica_tasks for b in rj.bindings})


def test_serving_roles_start_with_every_roles_min_replicas_or_none():
    prefill, decode = parse_roles(PD)
    assert (prefill.kind.value, prefill.tasks, prefill.min_tasks, prefill.replica_tasks) == ("serving", 3, 1, 1)
    assert (decode.tasks, decode.min_tasks, decode.replica_tasks, decode.group) == (4, 2, 2, "pd")
    s = Scheduler(pd_pod(), resizes=True)
    s.submit(job("hog").training(tasks=3).devices("gpu-b", 8).build())  # 1 gpu-b node left: no decode replica
    s.cycle(now=0.0)
    for j in (prefill, decode):
        s.submit(j)
    r = s.cycle(now=1.0)
    assert not [b for b in r.bindings if b.job_id.startswith("pd/")], "prefill alone must not start"
    s.finish("hog")
    r = s.cycle(now=2.0)
    assert {b.job_id for b in r.bindings} == {"pd/prefill", "pd/decode"}
    assert (replicas(s, "pd/prefill"), replicas(s, "pd/decode")) == (1, 1)  # autoscaled: min until loads come


def test_each_role_scales_on_its_own_load_and_takes_devices_from_training():
    s = Scheduler(pd_pod(), resizes=True)
    for j in parse_roles(PD):
        s.submit(j)
    s.cycle(now=0.0)
    # elastic low-priority training on the two gpu-a nodes prefill does not use
    s.submit(job("train").training(tasks=2, min_tasks=1).devices("gpu-a", 8).priority("low").build())
    s.cycle(now=1.0)
    s.cycle(now=1.5)  # (an elastic gang may start below its size and regrow)
    assert len(s.running["train"].bindings) == 2
    s.report_load("pd/prefill", 0, 14.0)  # needs 2 replicas at 10 per replica and 70 % utilisation
    r = s.cycle(now=2.0)
    assert replicas(s, "pd/prefill") == 2 and replicas(s, "pd/decode") == 1, "decode's load did not move"
    shrunk = [z for z in r.resizes if z.job_id == "train"]
    assert shrunk and shrunk[0].tasks_after == 1 and shrunk[0].by == "pd/prefill"
    assert not r.evictions, "scaling one role evicts nothing (its sibling role keeps running)"
    decode_before = s.running["pd/decode"].bindings
    s.report_load("pd/decode", 0, 120.0)  # 2 replicas of decode (a gang of 2 tasks each)
    s.cycle(now=3.0)
    assert replicas(s, "pd/decode") == 2 and len(s.running["pd/decode"].bindings) == 4
    assert set(decode_before) <= set(s.running["pd/decode"].bindings), "decode's first replica kept its place"
    assert replicas(s, "pd/prefill") == 2
    s.report_load("pd/prefill", 0, 0.0)
    s.report_load("pd/prefill", 1, 0.0)
    r = s.cycle(now=4.0)
    down = [z for z in r.resizes if z.job_id == "pd/prefill"]
    assert down and down[0].released == (1,) and replicas(s, "pd/prefill") == 1
    assert replicas(s, "pd/decode") == 2
    with pytest.raises(XpodError, match=r"replica 5 is not running"):
        s.report_load("pd/decode", 5, 1.0)
    with pytest.raises(XpodError, match=r"no autoscaled serving job"):
        s.report_load("pd/router", 0, 1.0)


def test_serving_role_keys_errors():
    def roles(**prefill):
        return {**PD, "roles": [{"name": "prefill", **prefill}, {"name": "decode"}]}

    with pytest.raises(XpodError, match=r"roles\[0\].replicas.min: 4 is above replicas.max \(2\)"):
        parse_roles(roles(replicas={"min": 4, "max": 2}))
    with pytest.raises(XpodError, match=r"roles\[0\].autoscale.metric: 'flops' is not one of"):
        parse_roles(roles(autoscale={"metric": "flops", "target_per_replica": 1}))
    with pytest.raises(XpodError, match=r"roles\[0\].autoscale: only a ServingJob's roles have replicas"):
        parse_roles({**roles(autoscale={"metric": "tokens_per_s", "target_per_replica": 1}), "kind": "training"})
    with pytest.raises(XpodError, match=r"autoscale: set per role when the job has roles \(roles\[\].autoscale\)"):
        parse_roles({**PD, "autoscale": {"metric": "tokens_per_s", "target_per_replica": 1}})
    plain = parse_roles(roles())[0]  # a role without replicas or autoscale: one gang, as before
    assert (plain.kind.value, plain.tasks, plain.replica_tasks) == ("training", 1, 1)


def test_serving_role_file_errors_name_the_line_and_field(tmp_path):
    head = "kind: ServingJob\nmetadata: {name: pd}\nspec:\n"
    assert problems(tmp_path, head + "  replicas: 2\n  roles:\n    - {name: prefill}\n") == [
        "4:13: spec.replicas: set per role when the job has roles (roles[].replicas)"
    ]
    assert problems(tmp_path, head + "  roles:\n    - name: prefill\n      replicas: {min: 4, max: 2}\n") == [
        "6:23: spec.roles[0].replicas.min: 4 is above replicas.max (2): give min <= max"
    ]
    bad_metric = head + "  roles:\n    - name: decode\n      autoscale: {metric: flops, target_per_replica: 5}\n"
    assert problems(tmp_path, bad_metric) == [
        "6:27: spec.roles[0].autoscale.metric: 'flops' is not one of tokens_per_s, requests_per_s"
    ]
    training = "kind: TrainingJob\nmetadata: {name: rl}\nspec:\n  roles:\n    - name: actor\n"
    assert problems(tmp_path, training + "      autoscale: {metric: tokens_per_s, target_per_replica: 5}\n") == [
        "6:7: unknown key 'autoscale' in spec.roles[0]: only a ServingJob's roles have autoscale; a TrainingJob "
        "role is one gang of its tasks"
    ]


def test_the_shipped_autoscaled_roles_example_validates_with_its_replicas():
    import pathlib

    from xpod.scheduler import jobspec

    root = pathlib.Path(__file__).resolve().parents[2]
    summary = jobspec.load_job_file(str(root / "examples" / "jobs" / "prefill-decode-autoscale.yaml")).summary()
    assert [(r["name"], r["tasks"], r["replicas"]) for r in summary["roles"]] == [
        ("prefill", 8, {"min": 1, "max": 8}),
        ("decode", 8, {"min": 1, "max": 8}),
    ]
