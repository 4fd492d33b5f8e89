"""Multi-node serving replicas as real processes on loopback (issues 6 and 8 seam): a serving job
of 2 replicas x 2 tasks (``tasks_per_replica: 2``) runs as two torch.distributed worlds, each of
which really rendezvouses (gloo, ``env://``) through the variables the node agents set.

The two agents are named ``localhost`` and ``127.0.0.1``: node names that resolve to this host,
so a task whose world's master is on the other node can reach it by that node's name, as on a
real pod. ``localhost`` has 1 device and ``127.0.0.1`` has 3, so whatever the placement, one
replica spans both nodes."""

from __future__ import annotations

import json
import os
import sys

from agent_harness import cluster, wait_until  # noqa: F401 (cluster is a fixture)

WORLD_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "agent", "replica_world.py")


def test_each_serving_replica_is_its_own_world(cluster):
    cluster.patient()  # four tasks importing torch beside a CPU hog can stall the agents' heartbeats
    cluster.start_server()
    cluster.start_agent("localhost", "--sim-devices", "mthreads-s4000:1", "--grace", "1")
    cluster.start_agent("127.0.0.1", "--sim-devices", "mthreads-s4000:3", "--grace", "1")
    job = cluster.submit(
        "svc",
        {
            "replicas": 2,
            "tasks_per_replica": 2,
            "devices": {"count": 1, "model": "mthreads-s4000"},
            "command": [sys.executable, WORLD_SCRIPT, str(cluster.out)],
        },
        kind="ServingJob",
    )
    paths = [cluster.out / f"{job}.{t}.world.json" for t in range(4)]
    wait_until(lambda: all(p.exists() for p in paths), 240, "every task to join its world")
    worlds = {t: json.loads(p.read_text()) for t, p in enumerate(paths)}
    where = {a.task: a.node for a in cluster.job(job).allocations}
    assert sorted(where) == [0, 1, 2, 3] and set(where.values()) == {"localhost", "127.0.0.1"}
    for t, w in worlds.items():
        replica, first = t // 2, 2 * (t // 2)
        # each world holds exactly its replica's two tasks, in rank order
        assert w["gathered"] == [first, first + 1], (t, w)
        assert (w["RANK"], w["WORLD_SIZE"], w["XPOD_REPLICA_INDEX"]) == (str(t % 2), "2", str(replica))
        assert w["MASTER_ADDR"] == ("127.0.0.1" if where[first] == where[t] else where[first])
        assert w["XPOD_DEVICES"].startswith(f"{where[t]}/")
        mates = [u for u in (first, first + 1) if where[u] == where[t]]
        assert (w["LOCAL_RANK"], w["LOCAL_WORLD_SIZE"]) == (str(mates.index(t)), str(len(mates)))
    assert worlds[0]["MASTER_PORT"] == worlds[1]["MASTER_PORT"] != worlds[2]["MASTER_PORT"] == worlds[3]["MASTER_PORT"]
    # one replica spans both nodes: its non-master task reached the master by the node's name
    assert any(where[2 * r] != where[2 * r + 1] for r in (0, 1))
    for t in range(4):  # the task's log header names its world (xpod logs)
        head = (cluster.tmp / f"state-{where[t]}" / "logs" / job / f"task-{t}.log").read_text().splitlines()[0]
        assert (
            f"(replica {t // 2}, rank {t % 2} of 2, master {worlds[t]['MASTER_ADDR']}:{worlds[t]['MASTER_PORT']})"
            in head
        ), head
    cluster.client.cancel(job)
    wait_until(lambda: cluster.allocated_milli() == 0, 60, "the devices to be free after cancel")
