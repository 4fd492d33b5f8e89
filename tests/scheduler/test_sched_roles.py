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
    assert above == ["4:10: spec.tasks: set per role when the job has roles (roles[].tasks, roles[].devices, ...)"]
    assert problems(tmp_path, "kind: BatchJob\nmetadata: {name: b}\nspec:\n  roles: [{name: a}]\n")[0].startswith(
        "4:3: unknown key 'roles' in spec"
    )
