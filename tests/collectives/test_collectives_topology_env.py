"""XPOD_TOPOLOGY: the agent points a task at its job's placement file (rendered by the
scheduler core from the placement it made); the communicator picks hierarchical algorithms
from it with no tiers passed."""

from __future__ import annotations

import pathlib

import yaml
from collectives_checks import tiers_from_placement_file
from collectives_harness import run_ranks

from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.from_cluster import load_inventory
from xpod.scheduler.core.testing import job

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_communicator_takes_its_tiers_from_the_placement_file(tmp_path, monkeypatch):
    nodes, fabric = load_inventory(str(ROOT / "examples" / "clusters" / "cloudmatrix384.yaml"))
    s = Scheduler(nodes, fabric=fabric, clock=lambda: 1.0)
    s.submit(job("four").batch(tasks=4).devices("ascend-910c", 8).build())
    s.cycle()
    s.cycle()  # a batch job's tasks fill one node per cycle: two nodes, two tasks each
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(s.placement_topology("four")))
    monkeypatch.setenv("XPOD_TOPOLOGY", str(path))
    results = run_ranks(tiers_from_placement_file, 4, timeout_s=150)
    assert sorted(results) == [0, 1, 2, 3], results
    for status, value in results.values():
        assert status == "ok", value
        assert value["hierarchical"] and value["groups"] == [[[0, 1], [2, 3]], [[0, 1, 2, 3]]]
        assert value["sum"] == 1 + 2 + 3 + 4
