"""Robust planning for the next window (runtime/moe/robust.py) and balance upper bounds
(runtime/moe/bounds.py), on real DeepSeek-V3 load slices."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpod.hal.errors import XpodError
from xpod.runtime.moe import PodShape, place, score
from xpod.runtime.moe.bounds import (
    Relaxation,
    _min_plus_over_layers,
    balance_upper_bound,
    budget_bound_by_memory,
    per_replica_max,
)
from xpod.runtime.moe.placement import replica_counts
from xpod.runtime.moe.robust import (
    RobustConfig,
    drift_scenarios,
    drift_sigma,
    expected_max_load,
    plan_for_next_window,
    robust_place,
    robust_swaps,
    stale_history,
    weighted_quantile,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "moe", "sglang_expert_load_slice.npz")


@pytest.fixture(scope="module")
def real():
    data = np.load(FIXTURE)
    return {k: data[k].astype(np.float64) for k in data.files}


class _Guarded(Mapping):
    """A window mapping that fails the test if the target window is ever read."""

    def __init__(self, windows: dict, target: str):
        self._w, self._target = windows, target

    def __getitem__(self, key):
        assert key != self._target, f"the planner read the window it is scored on ({key})"
        return self._w[key]

    def __iter__(self):
        return iter(self._w)

    def __len__(self):
        return len(self._w)


def _check(p, loads):
    """No duplicates, every expert placed, every device the same weights over the layers."""
    sc = p.score(loads)
    assert sc.duplicates == 0 and sc.missing_experts == 0
    assert sc.slots_per_device_min == sc.slots_per_device_max == loads.shape[0] * p.shape.slots_per_device
    assert p.slot_share is None
    return sc


def test_stale_history_never_holds_the_target():
    names = ["decode_a", "decode_b", "decode_c", "prefill_x", "prefill_y"]
    for anchor, target in itertools.permutations(names, 2):
        for scope in ("all", "phase", "none"):
            hist = stale_history(names, anchor, target, scope)
            assert target not in hist and anchor not in hist
            if scope == "phase":
                assert all(h.split("_")[0] == anchor.split("_")[0] for h in hist)
        assert set(stale_history(names, anchor, target, "all")) == set(names) - {anchor, target}
    with pytest.raises(XpodError, match="scope"):
        stale_history(names, "decode_a", "decode_b", "everything")


@pytest.mark.parametrize("scope", ["all", "phase", "none"])
def test_plan_for_next_window_never_reads_the_target(real, scope):
    target = "decode_in2000out100"
    shape = PodShape(72, 9, 4)
    p, used = plan_for_next_window(_Guarded(real, target), "decode_in1000out1000", target, shape, scope=scope)
    assert target not in used
    _check(p, real[target])
    # the same plan whatever the target window holds
    garbage = dict(real, **{target: np.random.default_rng(1).random(real[target].shape)})
    q, _ = plan_for_next_window(_Guarded(garbage, target), "decode_in1000out1000", target, shape, scope=scope)
    np.testing.assert_array_equal(p.phy2log, q.phy2log)


@pytest.mark.parametrize(
    "devices,nodes,slots,policy",
    [(72, 9, 4, "auto"), (32, 4, 9, "auto"), (320, 40, 1, "budget"), (144, 18, 2, "budget")],
)
def test_robust_invariants_and_memory(real, devices, nodes, slots, policy):
    a, hist = real["decode_in1000out1000"], np.stack([real["prefill_in4096"]])
    p = robust_place(a, PodShape(devices, nodes, slots), 8, history=hist, policy=policy)
    sc = _check(p, real["decode_in2000out100"])
    assert 0.0 < sc.balancedness <= 1.0
    # budgets: per layer a device may hold 0..2x its share, but the total over layers is fixed
    if policy == "budget":
        per_layer = np.stack([(p.phy2log[:, p.slot_device == d] >= 0).sum(axis=1) for d in range(devices)], axis=1)
        assert per_layer.max() <= 2 * slots
        assert (per_layer.sum(axis=0) == slots * a.shape[0]).all()


@pytest.mark.parametrize("devices,nodes,slots", [(1, 1, 8), (2, 1, 5), (2, 2, 4), (3, 1, 4), (4, 2, 3)])
def test_robust_tiny_pods(devices, nodes, slots):
    """Fewer than 3 devices (the swap search reads each scenario's top 3) and one device."""
    rng = np.random.default_rng(devices * 10 + slots)
    a, hist = rng.random((3, 8)) * 10, rng.random((2, 3, 8)) * 10
    p = robust_place(a, PodShape(devices, nodes, slots), 2, history=hist)
    sc = _check(p, a)
    assert 0.0 < sc.balancedness <= 1.0


def test_robust_swaps_lower_the_expected_max_and_keep_counts(real):
    a = real["prefill_in4096"]
    hist = np.stack([real["decode_in1000out1000"], real["decode_in2000out100"]])
    X, wts = drift_scenarios(a, hist, RobustConfig(jitter=4, sigma=0.2))
    assert X.shape == (3 * 5, *a.shape) and np.isclose(wts.sum(), 1.0)
    shape = PodShape(72, 9, 4)
    base = place(weighted_quantile(X, wts, 0.9), shape, 8)
    before = expected_max_load(X, wts, base.phy2log, base.slot_device, 72)
    after_p = robust_swaps(X, wts, base.phy2log, base.slot_device, 72, steps=100)
    after = expected_max_load(X, wts, after_p, base.slot_device, 72)
    assert (after <= before + 1e-9).all() and after.sum() < 0.99 * before.sum()
    for layer in range(a.shape[0]):  # swaps move replicas, they never add or drop one
        np.testing.assert_array_equal(np.sort(after_p[layer]), np.sort(base.phy2log[layer]))
    assert score(a, after_p, base.slot_device, shape.device_node()).duplicates == 0


def test_scenarios_weights_and_drift(real):
    a = real["decode_in1000out1000"]
    X, w = drift_scenarios(a, None, RobustConfig(jitter=32))  # no history: A and 32 log-normal draws of it
    assert X.shape[0] == 33 and np.isclose(w.sum(), 1.0)
    np.testing.assert_allclose(X[0], a)
    assert drift_sigma(a, None) is None
    h = np.stack([real["decode_in2000out100"] * 3.0])  # a busier window: only its shape counts
    X, w = drift_scenarios(a, h, RobustConfig(anchor_weight=0.7))
    np.testing.assert_allclose(X[1].sum(axis=1), a.sum(axis=1))
    np.testing.assert_allclose(w, [0.7, 0.3])
    assert 0.1 < drift_sigma(a, h) < 0.6  # moe.md: 0.16-0.32 between real workloads
    assert drift_sigma(a, np.stack([a * 2.0])) < 1e-9


def test_weighted_quantile():
    X = np.array([[1.0, 5.0], [3.0, 2.0], [2.0, 9.0]])
    even = np.full(3, 1 / 3)
    np.testing.assert_allclose(weighted_quantile(X, even, 1.0), X.max(axis=0))
    np.testing.assert_allclose(weighted_quantile(X, even, 0.0), X.min(axis=0))
    np.testing.assert_allclose(weighted_quantile(X, even, 0.5), [2.0, 5.0])
    np.testing.assert_allclose(weighted_quantile(X, np.array([0.0, 1.0, 0.0]), 0.9), X[1])


def test_robust_errors(real):
    a = real["decode_in1000out1000"]
    with pytest.raises(XpodError, match="history"):
        robust_place(a, PodShape(72, 9, 4), 8, history=np.ones((1, 4, 128)))
    with pytest.raises(XpodError, match="previous"):
        robust_place(a, PodShape(72, 9, 4), 8, previous=None)
    with pytest.raises(XpodError, match="latest window"):
        robust_place(np.stack([a, a]), PodShape(72, 9, 4), 8)
    with pytest.raises(XpodError, match="quantile"):
        RobustConfig(quantile=1.5)
    with pytest.raises(XpodError, match="anchor_weight"):
        RobustConfig(anchor_weight=0.0)


# ---------------------------------------------------------------------------------------------
# bounds


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=2, max_size=12), st.integers(0, 20))
def test_per_replica_max_is_the_apportionment_optimum(loads, extra):
    w = np.array([loads])
    experts = w.shape[1]
    cap = 5
    extra = min(extra, experts * (cap - 1))
    counts = replica_counts(w, np.array([experts + extra]), cap=cap)
    curve = per_replica_max(w, experts + extra, cap=cap)
    assert np.isclose(curve[0, -1], (w / counts).max())


def test_min_plus_dp_matches_brute_force():
    rng = np.random.default_rng(3)
    cost = rng.random((4, 5))
    best, choice = _min_plus_over_layers(cost, 9)
    for total in range(10):
        brute = min(
            (sum(cost[layer, x[layer]] for layer in range(4)), x)
            for x in itertools.product(range(5), repeat=4)
            if sum(x) == total
        )
        assert np.isclose(best[total], brute[0])


def test_bounds_hold_and_are_tight_at_one_slot_per_device(real):
    w = real["decode_in1000out1000"]
    shape = PodShape(320, 40, 1)
    even = balance_upper_bound(w, 320, 1, Relaxation.EVEN)
    # at one slot per device, the even split of the apportionment counts is optimal: tight
    assert np.isclose(place(w, shape, 8, policy="even").score(w).balancedness, even.balancedness)
    assert balance_upper_bound(w, 320, 1, "shares").balancedness == even.balancedness
    budget = balance_upper_bound(w, 320, 1, Relaxation.BUDGET)
    assert budget.balancedness >= even.balancedness
    assert budget.slots_per_layer.sum() == 320 * w.shape[0] and budget.slots_per_layer.max() <= 640
    got = place(w, shape, 8, policy="budget").score(w).balancedness
    assert got <= budget.balancedness + 1e-12  # nothing beats the bound
    assert got >= budget.balancedness - 0.01  # and xpod's budget policy comes close to it
    curve = budget_bound_by_memory(w, 320, 1, 8)
    assert np.isclose(curve[0], budget.balancedness) and (np.diff(curve) >= -1e-12).all()


def test_bounds_hold_for_more_slots(real):
    w = real["prefill_in4096"]
    for devices, slots in ((72, 4), (144, 2)):
        bound = balance_upper_bound(w, devices, slots, "budget+shares").balancedness
        for policy in ("balanced", "budget"):
            got = place(w, PodShape(devices, devices // 8, slots), 8, policy=policy).score(w).balancedness
            assert got <= bound + 1e-12
    with pytest.raises(XpodError, match="experts"):
        balance_upper_bound(w, 100, 2, "even")


def test_cli_robust_plan(tmp_path):
    import json
    import subprocess
    import sys

    from xpod.runtime.moe.io import load_placement

    out = tmp_path / "r.json"
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0", COLUMNS="120")
    cmd = [
        sys.executable,
        "-m",
        "xpod.runtime.cli",
        "moe",
        "place",
        "--loads",
        FIXTURE,
        "--workload",
        "prefill_in4096,decode_in1000out1000",
        "--devices",
        "72",
        "--nodes",
        "9",
        "--slots",
        "288",
        "--robust",
        "--traffic-tokens",
        "0",
        "--out",
        str(out),
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    p = load_placement(str(out))
    loads = np.load(FIXTURE)
    # the summary scores the latest window (the last name), from the written file, even split
    assert summary["balancedness"] == pytest.approx(
        p.score(loads["decode_in1000out1000"].astype(float)).balancedness, abs=1e-9
    )
    assert summary["duplicates"] == 0 and "slot_share" not in json.loads(out.read_text())
    bad = subprocess.run(
        cmd[:-3] + ["--hedge", "0.2", "--out", str(out)], capture_output=True, text=True, timeout=120, env=env
    )
    assert bad.returncode != 0 and "--robust" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
