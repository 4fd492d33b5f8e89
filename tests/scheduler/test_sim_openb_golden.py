"""The openb replay's decisions stay the same when the scheduler only gets faster.

Each case replays a pod list with seed 42 and compares the whole allocation curve, the pods
placed and a digest of every placement (pod, node, devices, milli) with
``tests/fixtures/scheduler/openb_golden.json``, written before a speed change. A change meant to
alter decisions (new constants, a new score term) rewrites that file, on purpose and in the same
commit: ``.venv/bin/python tests/scheduler/test_sim_openb_golden.py --write``.

Cases: the 41-node slice (every profile, at 130 % and 200 % arrived) and every 6th node of the
full openb cluster (203 nodes) with the gpuspec33 and cpu100 lists through the default profile:
CPU-bound, model-restricted and sharing pods, the reserve, failures under overload.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pytest

from xpod.scheduler.core.profile import load_profile
from xpod.scheduler.sim import openb

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
FIX = os.path.join(HERE, "..", "fixtures", "scheduler")
DATA = os.path.join(REPO, "bench", "data", "openb")
GOLDEN = os.path.join(FIX, "openb_golden.json")


def _every_sixth(nodes: openb.NodeTable) -> openb.NodeTable:
    idx = np.arange(0, len(nodes.names), 6)
    return openb.NodeTable(
        tuple(nodes.names[i] for i in idx),
        nodes.cpu_milli[idx],
        nodes.memory_mib[idx],
        nodes.gpu_count[idx],
        tuple(nodes.model[i] for i in idx),
    )


def _cases() -> dict[str, tuple]:
    """name -> (node list loader, pod list path, profile, load)."""
    out: dict[str, tuple] = {}
    for prof in ("default", "fgd", "bestfit", "random"):
        for load in (1.3, 2.0):
            out[f"slice/{prof}@{load}"] = ("slice", os.path.join(FIX, "openb_pods_slice.csv"), prof, load)
    for lst in ("gpuspec33", "cpu100"):
        out[f"sixth/{lst}/default@1.3"] = ("sixth", os.path.join(DATA, f"openb_pod_list_{lst}.csv.gz"), "default", 1.3)
    return out


def _replay(nodes_kind: str, pods_path: str, prof: str, load: float) -> dict:
    if nodes_kind == "slice":
        nodes = openb.load_nodes(os.path.join(FIX, "openb_nodes_slice.csv"))
    else:
        nodes = _every_sixth(openb.load_nodes(os.path.join(DATA, "openb_node_list_gpu_node.csv")))
    name = "scheduler-default.yaml" if prof == "default" else f"{prof}.yaml"
    r = openb.replay(
        nodes,
        openb.load_pods(pods_path),
        load_profile(os.path.join(REPO, "examples", "profiles", name)),
        load=load,
        seed=42,
    )
    placed = repr([(p.pod, p.node, p.gpu_indices, p.gpu_milli) for p in r.placements])
    return {
        "alloc_curve_pct": [round(x, 9) for x in r.alloc_curve_pct],
        "pods_placed": r.pods_placed,
        "placements_sha256": hashlib.sha256(placed.encode()).hexdigest(),
    }


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("case", sorted(_cases()))
def test_replay_decisions_match_the_recorded_ones(golden, case):
    got = _replay(*_cases()[case])
    want = golden[case]
    assert got["pods_placed"] == want["pods_placed"], f"{case}: pods placed changed"
    assert got["alloc_curve_pct"] == want["alloc_curve_pct"], f"{case}: the allocation curve changed"
    assert got["placements_sha256"] == want["placements_sha256"], f"{case}: a placement changed"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_sim_openb_golden.py --write  (records the current decisions as the golden ones)")
    recorded = {case: _replay(*args) for case, args in sorted(_cases().items())}
    with open(GOLDEN, "w", encoding="utf-8") as f:
        json.dump(recorded, f, indent=1)
        f.write("\n")
    print(f"wrote {GOLDEN} ({len(recorded)} cases)")
