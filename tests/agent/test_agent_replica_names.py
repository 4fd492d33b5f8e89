"""How a replacement event names lost serving replicas (``scheduler.service.restarts.replica_names``):
by replica number (task t of a job with ``tasks_per_replica: N`` is replica t // N), never by
task number, with the tasks listed when a replica has several."""

from xpod.scheduler.service.restarts import replica_names


def test_one_task_replicas_are_named_by_their_task():
    assert replica_names([1]) == "replica 1"
    assert replica_names([2, 0]) == "replicas 0, 2"


def test_multi_task_replicas_are_named_by_replica_with_their_tasks():
    assert replica_names([0, 1], 2) == "replica 0 (tasks 0, 1)"
    assert replica_names([5, 4, 0, 1], 2) == "replicas 0, 2 (tasks 0, 1, 4, 5)"
    assert replica_names([3], 3) == "replica 1 (task 3)"
