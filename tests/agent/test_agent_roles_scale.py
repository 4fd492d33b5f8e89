"""A disaggregated service whose decode role follows its load, as real processes (issue 14
item 3): ``xpod server`` and one agent on loopback run a router role (``fixtures/agent/
roles_router.py``) and an autoscaled decode role (``fixtures/agent/mix_serve.py``, replicas
{min 1, max 2}). The router learns where decode serves from ``XPOD_ROLES_FILE`` and sends it
load; the agent scrapes decode's counters and reports them for its role (ReportLoad with
``role``); the scheduler adds a second decode replica, and the router's file names it without
the router restarting. Every wait is bounded and names what it waited for."""

from __future__ import annotations

import json
import os

from agent_harness import cluster, wait_until  # noqa: F401 (cluster is a fixture)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "agent")


def _seen(out):
    path = out / "router.jsonl"
    return [json.loads(line)["decode"] for line in path.read_text().splitlines()] if path.exists() else []


def test_decode_scales_on_its_load_and_the_router_learns_its_replicas(cluster):
    import sys

    cluster.start_server()
    cluster.start_agent("n1", "--sim-devices", "nvidia-h100-sxm:2")
    out = cluster.out
    roles = [
        {
            "name": "router",
            "tasks": 1,
            "command": [sys.executable, os.path.join(FIXTURES, "roles_router.py"), str(out), "n1=127.0.0.1"],
        },
        {
            "name": "decode",
            "tasks": 1,
            "devices": {"count": 1, "model": "nvidia-h100-sxm"},
            "replicas": {"min": 1, "max": 2},
            "autoscale": {"metric": "tokens_per_s", "target_per_replica": 200},
            "command": [sys.executable, os.path.join(FIXTURES, "mix_serve.py"), str(out)],
        },
    ]
    job = cluster.submit("pd", {"roles": roles}, kind="ServingJob")
    wait_until(lambda: (out / "router.env.json").exists(), 90, "the router role to start")
    env = json.loads((out / "router.env.json").read_text())
    assert env["XPOD_ROLE"] == "router" and env["XPOD_ROLES"] == "router,decode"
    assert env["XPOD_ROLE_DECODE_HOSTS"] == "n1"  # the first placement: decode's min replicas
    roles_file = env["XPOD_ROLES_FILE"]
    wait_until(lambda: len(_seen(out)[-1:] and _seen(out)[-1]) == 1, 60, "the router to see decode's first replica")
    first = json.loads((cluster.tmp / "state-n1" / "roles" / f"{job}.json").read_text())
    assert roles_file.endswith(f"{job}.json") and first["job"] == job
    (out / "load").touch()
    wait_until(lambda: any(len(d) == 2 for d in _seen(out)), 120, "a second decode replica in the router's roles file")
    (out / "load").unlink()
    addresses = json.loads(open(roles_file).read())["roles"]
    decode = addresses["decode"]["replicas"]
    assert [r["replica"] for r in decode] == [0, 1] and [r["tasks"] for r in decode] == [[1], [2]]
    for r in decode:  # where the file says each replica serves is where it serves
        wait_until(
            lambda: (out / f"{job}.serve.{r['replica']}.json").exists(), 60, f"decode replica {r['replica']} to serve"
        )
        port = json.loads((out / f"{job}.serve.{r['replica']}.json").read_text())["port"]
        assert r["serve"] == f"n1:{port}"
    assert addresses["router"]["replicas"][0]["tasks"] == [0]
    # the router kept running through the change (one start, its environment written once)
    log = (cluster.tmp / "state-n1" / "logs" / job / "task-0.log").read_text()
    assert log.count("=== xpod: task 0 of job") == 1, log
    assert cluster.state(job) == "RUNNING"
