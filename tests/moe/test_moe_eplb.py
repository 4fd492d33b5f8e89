"""The EPLB baseline (runtime/moe/eplb.py) against EPLB's published example and recorded figures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpod.hal.errors import XpodError
from xpod.runtime.moe.bounds import per_replica_max
from xpod.runtime.moe.eplb import EplbPolicy, equal_count_pack, rebalance, replicate
from xpod.runtime.moe.score import score

BENCH_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "data", "moe")


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(BENCH_DATA, "eplb_reference.json"), encoding="utf-8") as f:
        return json.load(f)


def test_readme_example_is_reproduced_exactly(reference):
    ex = reference["readme_example"]
    plan = rebalance(np.array(ex["weight"]), ex["num_replicas"], ex["num_groups"], ex["num_nodes"], ex["num_gpus"])
    assert plan.policy is EplbPolicy.HIERARCHICAL  # 2 nodes divide 4 groups
    assert plan.phy2log.tolist() == ex["phy2log"]


def test_recorded_figures_on_the_real_loads(reference):
    """Every recorded (workload, pod, policy) cell: the same balancedness to 1e-5 (the record
    keeps 6 decimals; layouts may differ where replicas of equal load tie)."""
    data = np.load(os.path.join(BENCH_DATA, "deepseek_v3_sglang_expert_load.npz"))
    assert len(reference["cells"]) == 63
    for cell in reference["cells"]:
        w = data[cell["workload"]].astype(np.float64)
        d, n = cell["devices"], cell["nodes"]
        plan = rebalance(w, cell["slots"], cell["groups"], n, d, cell["policy"])
        got = score(w, plan.phy2log, plan.slot_device, np.arange(d) * n // d).balancedness
        assert abs(got - cell["balancedness"]) < 1e-5, (cell, got)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=4, max_size=16),
    st.integers(0, 20),
)
def test_replication_reaches_the_min_max_load_per_replica(loads, extra):
    w = np.array([loads], dtype=np.float64)
    slot_expert, counts = replicate(w, w.shape[1] + extra)
    assert counts.sum() == w.shape[1] + extra and counts.min() >= 1
    assert (np.bincount(slot_expert[0], minlength=w.shape[1]) == counts[0]).all()
    best = per_replica_max(w, w.shape[1] + extra, cap=w.shape[1] + extra)[0, -1]
    assert np.isclose((w / counts).max(), best)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_equal_count_packing_fills_every_bin_exactly(bins, per_bin, seed):
    loads = np.random.default_rng(seed).lognormal(0, 1, size=(3, bins * per_bin))
    bin_of, position = equal_count_pack(loads, bins)
    for row in range(3):
        assert (np.bincount(bin_of[row], minlength=bins) == per_bin).all()
        for b in range(bins):
            assert sorted(position[row][bin_of[row] == b].tolist()) == list(range(per_bin))
    # the heaviest item of each row lands in bin 0, first
    top = loads.argmax(axis=1)
    assert (bin_of[np.arange(3), top] == 0).all() and (position[np.arange(3), top] == 0).all()


def test_shapes_eplb_cannot_take_are_refused():
    w = np.ones((2, 16))
    with pytest.raises(XpodError, match="slots"):
        rebalance(w, 20, 4, 2, 8)  # 20 slots over 8 devices
    with pytest.raises(XpodError, match="hierarchical"):
        rebalance(w, 24, 4, 3, 6, "hierarchical")  # 3 nodes do not divide 4 groups
    assert rebalance(w, 24, 4, 3, 6).policy is EplbPolicy.GLOBAL  # auto falls back, as EPLB does
