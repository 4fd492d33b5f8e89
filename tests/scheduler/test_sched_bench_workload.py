"""The mixed ``xpod bench scheduler`` workload: realistic queue order (seeded submit times over
the last hour, a mix of priority classes), so every kind of job is placed in the measured
cycles, and the per-kind placements are reported."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest

from xpod.scheduler.core import bench
from xpod.scheduler.core.from_cluster import load_nodes
from xpod.scheduler.core.model import JobKind

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CM384 = os.path.join(ROOT, "examples", "clusters", "cloudmatrix384.yaml")


@pytest.fixture(scope="module")
def cm384():
    return load_nodes(CM384)


def test_mixed_jobs_spread_submit_times_and_priorities(cm384):
    jobs = bench.mixed_jobs(cm384, 2000, seed=7)
    times = [j.submit_time for j in jobs]
    assert all(0 < t < bench.BENCH_START_SECONDS for t in times)
    assert len(set(times)) == len(times)  # no ties left to the job ids
    shares = Counter(j.priority_class for j in jobs)
    for cls, share in bench.PRIORITY_MIX:
        assert abs(shares[cls] / len(jobs) - share) < 0.05, shares
    kinds = Counter(bench.kind_of(j.id) for j in jobs)
    assert set(kinds) == set(bench.KINDS)
    for j in jobs:
        if bench.kind_of(j.id) == "serving-multinode":
            assert j.kind is JobKind.SERVING and j.replica_tasks == 2 and j.within == "supernode"
            assert j.devices.count == 16 and j.tasks % 2 == 0 and j.min_tasks == 2
        if j.kind is JobKind.TRAINING:
            assert 16 <= j.total_devices <= 256
    assert bench.mixed_jobs(cm384, 2000, seed=7) == jobs  # seeded


@pytest.mark.parametrize("seed", [0, 3])
def test_every_kind_is_placed_on_cloudmatrix384(cm384, seed):
    r = bench.run(cm384, bench.mixed_jobs(cm384, 400, seed), max_cycles=8)
    assert set(r.placed_by_kind) == set(bench.KINDS), r.placed_by_kind
    assert all(n > 0 for n in r.placed_by_kind.values()), r.placed_by_kind
    assert sum(r.placed_by_kind.values()) == r.placements
    assert r.decisions >= r.placements


def test_cli_json_reports_placed_by_kind(capsys):
    from xpod.runtime.cli import main

    code = main(["bench", "scheduler", "--cluster", CM384, "--pending", "300", "--cycles", "4", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["placed_by_kind"]["training"] > 0 and doc["placed_by_kind"]["serving-multinode"] > 0
    assert sum(doc["placed_by_kind"].values()) == doc["placements"]
    assert doc["decisions_per_s"] > 0
