"""A job with roles as real processes (issue 14 item 3): ``xpod server`` and one agent on
loopback run an actor (1 task) and a learner (2 tasks). Each role is its own torch.distributed
world (its RANK, WORLD_SIZE and MASTER_PORT), runs its own command and env, and every task
knows where every role runs: ``XPOD_ROLES``, ``XPOD_ROLE_<ROLE>_HOSTS``, ``XPOD_ROLE_<ROLE>_MASTER``."""

from __future__ import annotations

import json

from agent_harness import cluster, task_command, wait_until  # noqa: F401 (cluster is a fixture)

S4000 = {"count": 1, "model": "mthreads-s4000"}


def test_each_role_is_a_world_and_knows_the_others(cluster):
    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "mthreads-s4000:3")
    roles = [
        {"name": "actor", "tasks": 1, "devices": S4000, "command": task_command(cluster.out)},
        {"name": "learner", "tasks": 2, "devices": S4000, "command": task_command(cluster.out), "env": {"LR": "1"}},
    ]
    job = cluster.submit("rl", {"roles": roles})
    wait_until(lambda: cluster.state(job) == "SUCCEEDED", 60, "the job with roles to succeed")
    env = {t: json.loads((cluster.out / f"{job}.{t}.env").read_text()) for t in range(3)}
    assert [(e["XPOD_ROLE"], e["RANK"], e["WORLD_SIZE"]) for e in env.values()] == [
        ("actor", "0", "1"), ("learner", "0", "2"), ("learner", "1", "2"),
    ]  # fmt: skip
    assert env[1]["MASTER_PORT"] == env[2]["MASTER_PORT"] != env[0]["MASTER_PORT"]
    assert env[1]["LR"] == env[2]["LR"] == "1" and "LR" not in env[0]  # a role's own env
    for e in env.values():  # every task: where every role runs
        assert e["XPOD_ROLES"] == "actor,learner"
        assert e["XPOD_ROLE_ACTOR_HOSTS"] == "n1" and e["XPOD_ROLE_LEARNER_HOSTS"] == "n1,n1"
        assert e["XPOD_ROLE_ACTOR_MASTER"] == f"n1:{env[0]['MASTER_PORT']}"
        assert e["XPOD_ROLE_LEARNER_MASTER"] == f"n1:{env[1]['MASTER_PORT']}"
    log = (cluster.tmp / "state-n1" / "logs" / job / "task-2.log").read_text().splitlines()[0]
    assert "(role learner, rank 1 of 2, master 127.0.0.1:" in log, log
