"""One fabric model: the core's tiers come from the cluster descriptor (``hal.topology``), a
job's ``within`` names a tier or scope of it, and the placement a job receives goes back out as
a topology file that collectives and MoE placement read (``XPOD_TOPOLOGY``)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import yaml

from xpod.hal.cluster import load_cluster
from xpod.hal.collectives.topology_adapter import tiers_from_env, tiers_from_topology
from xpod.hal.errors import XpodError
from xpod.hal.topology import TOPOLOGY_ENV, load_job_topology
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.from_cluster import (
    enrich_device,
    fabric_from_cluster,
    load_inventory,
    node_from_devices,
    nodes_from_cluster,
)
from xpod.scheduler.core.testing import job, placements

ROOT = pathlib.Path(__file__).resolve().parents[2]
CM384 = str(ROOT / "examples" / "clusters" / "cloudmatrix384.yaml")
A2 = str(ROOT / "examples" / "clusters" / "atlas-800t-a2.yaml")
MIXED = str(ROOT / "examples" / "clusters" / "heterogeneous.yaml")
A3 = "ascend-910c"
MOE_LOADS = ROOT / "tests" / "fixtures" / "moe" / "sglang_expert_load_slice.npz"


def test_the_fabric_is_the_descriptors_tiers():
    cm = fabric_from_cluster(load_cluster(CM384))
    assert cm.levels == ("package", "node", "supernode", "cluster")
    ub = cm.tier("supernode")
    assert ub is not None and ub.names == ("ub-l2",) and ub.scale_up
    assert ub.bandwidth_bytes_per_s == 196 * 10**9 and ub.latency_seconds == pytest.approx(1e-6)
    assert cm.scale_up_level == "supernode" and cm.tier("cluster").names == ("roce",)
    # rack is a topology level of CloudMatrix384 but no fabric tier joins at it (UB is flat)
    assert cm.resolve("ub-l2") == "supernode" and cm.resolve("any") == "cluster" and cm.resolve("rack") is None
    assert fabric_from_cluster(load_cluster(A2)).resolve("hccs-group") == "group"
    mixed = fabric_from_cluster(load_cluster(MIXED))
    assert mixed.levels == ("node", "rack", "cluster") and mixed.scale_up_level is None
    assert mixed.tier("rack").names == ("leaf",) and mixed.walk("rack") == ("node", "rack")


def test_nodes_carry_their_domains_groups_packages_and_catalog_facts():
    nodes = {n.name: n for n in nodes_from_cluster(load_cluster(CM384))}
    n = nodes["cm-n05"]
    assert dict(n.domains) == {"supernode": "cm-a", "rack": "cm-a-r01"} and n.failure_domain == "cm-a-r01"
    assert [d.package for d in n.devices[:4]] == [0, 0, 1, 1]
    assert n.devices[0].bf16_tflops > 0 and n.devices[0].memory_bytes > 0
    a2 = nodes_from_cluster(load_cluster(A2))[0]
    assert [d.group for d in a2.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    # an agent-registered node gets the same catalog facts as the cluster file's
    agent = node_from_devices("x", [(i, A3, "ascend", None) for i in range(16)])
    assert agent.devices == n.devices
    assert enrich_device(0, "made-up-model", "cuda", 10).bf16_tflops == 0.0


def test_within_names_a_tier_of_the_descriptor_and_unknown_words_are_refused():
    nodes, fabric = load_inventory(CM384)
    s = Scheduler(nodes, fabric=fabric, clock=lambda: 1.0)
    j = s.submit(job("g").training(tasks=2).devices(A3, 16).within("ub-l2").build())
    assert j.within == "supernode"
    with pytest.raises(
        XpodError, match=r"job r: within: 'rack' is not a tier of this cluster \(tiers: package, node, supernode"
    ):
        s.submit(job("r").training(tasks=2).devices(A3, 16).within("rack").build())
    nodes, fabric = load_inventory(A2)
    s = Scheduler(nodes, fabric=fabric, clock=lambda: 1.0)
    s.submit(job("h").batch(tasks=2).devices("ascend-910b3", 2).within("hccs-group").build())
    for _, idx in placements(s.cycle())["h"]:
        assert len({i // 4 for i in idx}) == 1  # each task inside one HCCS group


def _placed_gang(tmp_path):
    nodes, fabric = load_inventory(CM384)
    s = Scheduler(nodes, fabric=fabric, clock=lambda: 1.0)
    s.submit(job("train-1").batch(tasks=4).devices(A3, 8).build())
    s.cycle()
    r = s.cycle()  # a batch job's tasks fill one node per cycle
    r = s.running["train-1"]
    assert len(r.bindings) == 4
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(s.placement_topology("train-1")))
    return s, r, str(path)


def test_a_placement_renders_as_a_topology_file_hal_reads_back(tmp_path):
    s, r, path = _placed_gang(tmp_path)
    job_topo = load_job_topology(path)
    bindings = sorted(r.bindings, key=lambda b: b.task)
    assert [d.id for d in job_topo.ranks] == [f"{b.node}/{b.device_indices[0]}" for b in bindings]
    assert sorted(d.id for d in job_topo.devices) == sorted(f"{b.node}/{i}" for b in bindings for i in b.device_indices)
    assert job_topo.node_count() == 2 and job_topo.supernode_count() == 1
    # the collectives see two ranks per node: node tier, then the super-node's UB
    tiers = tiers_from_topology(job_topo.topology, job_topo.ranks, bounded_by_wider=True)
    assert [t.groups for t in tiers] == [((0, 1), (2, 3)), ((0, 1, 2, 3),)]
    assert tiers[0].bandwidth_bytes_per_s == 196e9 and tiers[1].latency_s == pytest.approx(1e-6)
    # the node tier's latency is not in the file: bounded by the wider tier's, never invented
    assert tiers[0].latency_s == pytest.approx(1e-6)
    with pytest.raises(XpodError, match="has no latency"):
        tiers_from_topology(job_topo.topology, job_topo.ranks)
    assert len(tiers_from_env(4, {TOPOLOGY_ENV: path})) == 2
    assert tiers_from_env(4, {}) is None
    with pytest.raises(XpodError, match="the file lists 4 ranks, this job's world has 8"):
        tiers_from_env(8, {TOPOLOGY_ENV: path})
    with pytest.raises(XpodError, match="not running"):
        s.placement_topology("nope")


def test_moe_place_plans_on_the_jobs_devices_from_the_topology_file(tmp_path):
    _, r, path = _placed_gang(tmp_path)
    out = tmp_path / "plan.json"
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    args = ["moe", "place", "--loads", str(MOE_LOADS), "--workload", "decode_in1000out1000", "--slots", "9"]
    args += ["--topology", path, "--traffic-tokens", "0", "--out", str(out), "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "xpod.runtime.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    held = sorted(f"{b.node}/{i}" for b in r.bindings for i in b.device_indices)
    assert sorted(doc["device_ids"]) == held and max(doc["slot_device"]) == len(held) - 1
    bad = subprocess.run(
        [sys.executable, "-m", "xpod.runtime.cli", *args[:-3], "--nodes", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode != 0 and "--nodes 3 disagrees with --topology" in bad.stderr
    assert "Traceback" not in bad.stderr
