"""The torch.distributed world each task of a job joins (issues 6 and 8 seam): a training gang is
one world; a serving job is one world per replica (``tasks_per_replica``), so replicas never
rendezvous with each other. Checked on ``scheduler.contract.task_worlds`` and on the variables
the node agent hands each task (``NodeRuntime.start`` through ``task_env``), without processes."""

from __future__ import annotations

import pytest

from xpod.runtime.agent.agent import JobRun, NodeRuntime, NodeSpec, SimExecutor, TaskHandle, log_path, task_env
from xpod.scheduler.contract import (
    DEFAULT_SIMULATED_DURATION_S,
    RESERVED_ENV,
    Assignment,
    TaskAllocation,
    TaskFieldError,
    parse_task_fields,
    rendezvous_port,
    role_addresses,
    role_spans,
    task_worlds,
)
from xpod.scheduler.jobspec.schema import schema

RANK_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _Running(TaskHandle):
    def __init__(self, task: int) -> None:
        self.task = task

    def poll(self):
        return None

    def terminate(self, grace_s: float) -> None:
        pass


class RecordingExecutor:
    """Records the environment ``ProcessExecutor`` would give each task (``task_env``)."""

    def __init__(self) -> None:
        self.envs: dict[int, dict[str, str]] = {}

    def start(self, job, job_id, alloc, world, master_addr):
        self.envs[alloc.task] = task_env(
            job_id, alloc, world, master_addr, "cpu", {}, parse_task_fields(job["kind"], job["spec"]).env
        )
        return _Running(alloc.task)


def _assignment(job_id: str, kind: str, spec: dict, placements: dict[int, str], node: str) -> Assignment:
    """What an agent serving ``node`` is told for a job bound at ``placements``."""
    doc = {"apiVersion": "xpod/v1", "kind": kind, "metadata": {"name": "j"}, "spec": spec}
    mine = tuple(TaskAllocation(t, (f"{n}/{t}",)) for t, n in sorted(placements.items()) if n == node)
    return Assignment(node, job_id, True, mine, doc, "default", kind, tuple(sorted(placements.items())))


def _envs_on_every_node(job_id: str, kind: str, spec: dict, placements: dict[int, str]) -> dict[int, dict[str, str]]:
    """Each node's agent starts its tasks of the job; the variables every task got, by task."""
    out: dict[int, dict[str, str]] = {}
    for node in sorted(set(placements.values())):
        ex = RecordingExecutor()
        agent = NodeRuntime(NodeSpec(node, ()), ex)
        agent.start(_assignment(job_id, kind, spec, placements, node))
        assert set(agent.runs[job_id].tasks) == {t for t, n in placements.items() if n == node}
        out.update(ex.envs)
    return out


def _rank_vars(env: dict[str, str]) -> tuple:
    return tuple(env[k] for k in RANK_KEYS) + (env.get("XPOD_REPLICA_INDEX"),)


def test_two_replicas_of_two_tasks_are_two_worlds():
    # replica 0 = tasks 0, 1 on n1, n2; replica 1 = tasks 2, 3 on n3, n1 (n1 holds one task of each)
    placements = {0: "n1", 1: "n2", 2: "n3", 3: "n1"}
    spec = {
        "replicas": 2,
        "tasks_per_replica": 2,
        "devices": {"count": 1, "model": "mthreads-s4000"},
        "command": ["serve"],
        "env": {"MODEL": "dsv3"},
    }
    envs = _envs_on_every_node("job-7", "ServingJob", spec, placements)
    p0, p1 = rendezvous_port("job-7", 0), rendezvous_port("job-7", 1)
    assert p0 != p1 and p0 == rendezvous_port("job-7")  # replica 0 keeps the job's port
    # RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, XPOD_REPLICA_INDEX
    assert {t: _rank_vars(e) for t, e in envs.items()} == {
        0: ("0", "2", "0", "1", "127.0.0.1", str(p0), "0"),  # on the master node itself: loopback
        1: ("1", "2", "0", "1", "n1", str(p0), "0"),
        2: ("0", "2", "0", "1", "127.0.0.1", str(p1), "1"),
        3: ("1", "2", "0", "1", "n3", str(p1), "1"),  # on n1, but its world's master is n3
    }
    for t, e in envs.items():
        assert (
            e["XPOD_TASK_INDEX"] == str(t)
            and e["XPOD_JOB_ID"] == "job-7"
            and e["XPOD_DEVICES"] == f"{placements[t]}/{t}"
        )
        assert e["MODEL"] == "dsv3"


def test_a_replica_on_one_node_counts_its_local_ranks_apart_from_other_replicas():
    # both replicas share n1 entirely: each is a world of 2 with local ranks 0, 1 of its own
    worlds = task_worlds("j", "ServingJob", {"tasks_per_replica": 2}, [(0, "n1"), (1, "n1"), (2, "n1"), (3, "n1")])
    assert [(w.rank, w.world_size, w.local_rank, w.local_world_size, w.replica) for w in worlds.values()] == [
        (0, 2, 0, 2, 0),
        (1, 2, 1, 2, 0),
        (0, 2, 0, 2, 1),
        (1, 2, 1, 2, 1),
    ]
    assert len({w.master_port for w in worlds.values()}) == 2  # same master node, distinct ports


def test_a_training_gang_is_one_world():
    placements = {0: "n2", 1: "n2", 2: "n1", 3: "n1"}
    spec = {"tasks": 4, "devices": {"count": 1, "model": "mthreads-s4000"}, "command": ["train"]}
    envs = _envs_on_every_node("gang-1", "TrainingJob", spec, placements)
    port = str(rendezvous_port("gang-1"))
    assert {t: _rank_vars(e) for t, e in envs.items()} == {
        0: ("0", "4", "0", "2", "127.0.0.1", port, None),  # no replicas in a gang: no XPOD_REPLICA_INDEX
        1: ("1", "4", "1", "2", "127.0.0.1", port, None),
        2: ("2", "4", "0", "2", "n2", port, None),
        3: ("3", "4", "1", "2", "n2", port, None),
    }


def test_a_batch_job_keeps_one_world_too():
    worlds = task_worlds("b", "BatchJob", {"tasks": 3}, [(0, "a"), (1, "b"), (2, "a")])
    assert {(w.world_size, w.master_node, w.replica) for w in worlds.values()} == {(3, "a", None)}
    assert [w.rank for w in worlds.values()] == [0, 1, 2]


def test_plain_serving_replicas_are_worlds_of_one():
    # tasks_per_replica absent (1): three replicas, two of them on one node
    placements = {0: "n1", 1: "n1", 2: "n2"}
    envs = _envs_on_every_node("svc", "ServingJob", {"replicas": 3, "command": ["serve"]}, placements)
    ports = {t: e["MASTER_PORT"] for t, e in envs.items()}
    assert len(set(ports.values())) == 3
    for t, e in envs.items():
        assert (e["RANK"], e["WORLD_SIZE"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"]) == ("0", "1", "0", "1")
        assert e["MASTER_ADDR"] == "127.0.0.1" and e["XPOD_REPLICA_INDEX"] == str(t)


def test_a_replaced_replica_keeps_its_world_and_the_others_are_untouched():
    """Replica 0 of a 2 x 2 job was lost and bound again on other nodes: its new tasks form the
    same world (rank t mod 2, its own port); replica 1's running task on n3 is not restarted."""
    spec = {"replicas": 2, "tasks_per_replica": 2, "command": ["serve"]}
    first = {0: "n1", 1: "n2", 2: "n3", 3: "n4"}
    ex = RecordingExecutor()
    agent = NodeRuntime(NodeSpec("n3", ()), ex)
    agent.start(_assignment("s", "ServingJob", spec, first, "n3"))
    running = agent.runs["s"].tasks[2]
    ex.envs.clear()
    agent.start(_assignment("s", "ServingJob", spec, {0: "n3", 1: "n5", 2: "n3", 3: "n4"}, "n3"))
    assert agent.runs["s"].tasks[2] is running and set(ex.envs) == {0}  # only the new task started
    assert _rank_vars(ex.envs[0]) == ("0", "2", "0", "1", "127.0.0.1", str(rendezvous_port("s", 0)), "0")


def test_a_replica_missing_its_first_task_still_ranks_inside_it():
    # a replica whose first task is missing from the list (never bound so by the scheduler, but
    # the agent must not crash): master falls back to its lowest placed task's node
    worlds = task_worlds("j", "ServingJob", {"tasks_per_replica": 3}, [(4, "b"), (5, "c")])
    assert {t: (w.rank, w.world_size, w.master_node, w.replica) for t, w in worlds.items()} == {
        4: (1, 3, "b", 1),
        5: (2, 3, "b", 1),
    }


def test_a_bad_tasks_per_replica_fails_the_tasks_with_the_field_named():
    with pytest.raises(TaskFieldError, match="spec.tasks_per_replica"):
        task_worlds("j", "ServingJob", {"tasks_per_replica": 0}, [(0, "a")])
    agent = NodeRuntime(NodeSpec("a", ()), RecordingExecutor())
    agent.start(_assignment("j", "ServingJob", {"tasks_per_replica": "two"}, {0: "a"}, "a"))
    run: JobRun = agent.runs["j"]
    assert run.tasks[0].poll() == 127 and "spec.tasks_per_replica" in run.tasks[0].reason


def test_rank_variables_are_reserved():
    for name in ("XPOD_REPLICA_INDEX", "LOCAL_RANK", "LOCAL_WORLD_SIZE", *RANK_KEYS):
        assert name in RESERVED_ENV
        with pytest.raises(TaskFieldError, match=f"spec.env.{name}"):
            parse_task_fields("ServingJob", {"env": {name: "1"}})


def test_a_simulated_task_logs_its_world(tmp_path):
    agent = NodeRuntime(NodeSpec("n1", ()), SimExecutor("n1", str(tmp_path), clock=lambda: 0.0))
    agent.start(
        _assignment(
            "s", "ServingJob", {"replicas": 2, "tasks_per_replica": 2}, {0: "n2", 1: "n1", 2: "n1", 3: "n1"}, "n1"
        )
    )
    heads = {t: open(log_path(str(tmp_path), "s", t)).read() for t in (1, 2, 3)}
    p0, p1 = rendezvous_port("s", 0), rendezvous_port("s", 1)
    assert f"(simulated; replica 0, rank 1 of 2, master n2:{p0})" in heads[1]
    assert f"(simulated; replica 1, rank 0 of 2, master 127.0.0.1:{p1})" in heads[2]
    assert f"(simulated; replica 1, rank 1 of 2, master 127.0.0.1:{p1})" in heads[3]


def test_a_simulated_task_without_a_duration_ends_after_the_documented_default(tmp_path):
    # all five examples/jobs give no simulate.duration_s; on a simulated node they once ran forever
    now = [0.0]
    agent = NodeRuntime(NodeSpec("n1", ()), SimExecutor("n1", str(tmp_path), clock=lambda: now[0]))
    agent.start(_assignment("d", "BatchJob", {"tasks": 1}, {0: "n1"}, "n1"))
    task = agent.runs["d"].tasks[0]
    now[0] = DEFAULT_SIMULATED_DURATION_S - 0.5
    assert task.poll() is None
    now[0] = DEFAULT_SIMULATED_DURATION_S
    assert task.poll() == 0
    assert (
        f"default {DEFAULT_SIMULATED_DURATION_S:g}"
        in schema("BatchJob")["properties"]["spec"]["properties"]["simulate"]["properties"]["duration_s"]["description"]
    )


def test_the_same_job_id_of_another_server_gets_other_ports():
    # every fresh server numbers from job-1: two of them on one host (tests side by side, xpod up
    # beside a server) handed out the same MASTER_PORT, and one world failed with EADDRINUSE
    first = task_worlds("job-1", "BatchJob", {"tasks": 1}, [(0, "n1")], "1765000000000000000")
    second = task_worlds("job-1", "BatchJob", {"tasks": 1}, [(0, "n1")], "1765000000123456789")
    assert first[0].master_port != second[0].master_port
    assert first == task_worlds("job-1", "BatchJob", {"tasks": 1}, [(0, "n1")], "1765000000000000000")


def test_only_rank_0_of_an_autoscaled_role_replica_serves_on_the_published_port():
    # the other roles look for a replica at its rank 0's role_serve_port (role_addresses); a second
    # task of the replica on the same node must not be handed the same port (its bind would fail)
    spec = {
        "roles": [
            {"name": "router", "tasks": 1, "command": ["x"]},
            {
                "name": "decode",
                "tasks": 2,
                "devices": {"count": 8},
                "replicas": {"min": 1, "max": 2},
                "autoscale": {"metric": "tokens_per_s", "target_per_replica": 100},
                "command": ["x"],
            },
        ]
    }
    worlds = task_worlds("job-7", "ServingJob", spec, {0: "n1", 1: "n1", 2: "n1"}.items(), "k")
    assert worlds[1].rank == 0 and worlds[1].serve_port > 0
    assert worlds[2].rank == 1 and worlds[2].serve_port == 0  # the agent gives it any free port
    spans = role_spans(spec)
    (decode,) = role_addresses("job-7", spans, {0: "n1", 1: "n1", 2: "n1"}, "k")["roles"]["decode"]["replicas"]
    assert decode["serve"] == f"n1:{worlds[1].serve_port}"
