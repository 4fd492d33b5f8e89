"""The live rebalancing loop (runtime/moe/rebalance.py) on real loads: bounded moves, the publish
rule, plans SGLang can run, and one-line refusals of windows from another model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xpod.hal.errors import XpodError
from xpod.runtime.moe import PodShape, place
from xpod.runtime.moe.rebalance import RebalanceConfig, Rebalancer
from xpod.runtime.moe.score import weight_moves

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "moe", "sglang_expert_load_slice.npz")


@pytest.fixture(scope="module")
def real():
    data = np.load(FIXTURE)
    return {k: data[k].astype(np.float64) for k in data.files}


def series(real, windows: int, seed: int = 0) -> np.ndarray:
    """Windows drifting from decode_in1000out1000 to prefill_in4096, Poisson-sampled."""
    rng = np.random.default_rng(seed)
    a, b = (real[n] / real[n].sum(axis=1, keepdims=True) for n in ("decode_in1000out1000", "prefill_in4096"))
    return np.stack([rng.poisson(((1 - m) * a + m * b) * 1e6) for m in np.linspace(0, 1, windows)]).astype(float)


def check_even_fixed(plan, experts: int) -> None:
    assert plan.slot_share is None and (plan.phy2log >= 0).all()
    sc = plan.score(np.ones((plan.phy2log.shape[0], experts)))
    assert sc.duplicates == 0 and sc.missing_experts == 0


def test_moves_stay_within_the_budget_and_pay_for_themselves(real):
    windows = series(real, 10)
    config = RebalanceConfig(max_moves=60, move_cost=1e-5)
    loop = Rebalancer(PodShape(64, 8, 5), 8, config)
    previous = None
    for t, w in enumerate(windows):
        update = loop.observe(w)
        assert update.window == t and update.placement is loop.plan
        check_even_fixed(update.placement, 256)
        if t == 0:
            assert update.initial and update.published and update.moves == 64 * 5 * 4
        else:
            assert not update.initial and update.moves <= config.max_moves
            moved = weight_moves(previous.phy2log, update.placement.phy2log, previous.slot_device, 64)
            assert moved == update.moves
            if update.published:
                assert update.predicted_after - update.predicted_before > config.move_cost * update.moves
            else:
                assert update.moves == 0 and update.placement is previous
        previous = update.placement
    assert sum(u.published for u in loop.updates[1:]) >= 3  # the loads drift: it does re-plan
    assert [u.to_json()["window"] for u in loop.updates] == list(range(10))


def test_the_loop_follows_the_drift(real):
    """Held at the far end of the drift, the loop's plan scores better on it than its first plan."""
    windows = series(real, 6)
    loop = Rebalancer(PodShape(72, 9, 4), 8, RebalanceConfig(max_moves=100))
    first = loop.observe(windows[0]).placement
    for w in windows[1:]:
        loop.observe(w)
    for _ in range(4):
        loop.observe(windows[-1])
    target = real["prefill_in4096"]
    assert loop.plan.score(target).balancedness > first.score(target).balancedness + 0.02


def test_a_high_move_cost_publishes_nothing(real):
    windows = series(real, 4)
    loop = Rebalancer(PodShape(32, 4, 9), 8, RebalanceConfig(max_moves=50, move_cost=1.0))
    updates = [loop.observe(w) for w in windows]
    assert not any(u.published for u in updates[1:])
    assert "does not pay" in updates[-1].reason or "no move" in updates[-1].reason


def test_windows_of_another_model_and_bad_configs_are_refused(real):
    loop = Rebalancer(PodShape(32, 4, 9), 8)
    loop.observe(real["decode_in1000out1000"])
    with pytest.raises(XpodError, match=r"window 1: 4 layers x 128 experts, but the plan is for 4 x 256"):
        loop.observe(real["decode_in1000out1000"][:, :128])
    with pytest.raises(XpodError, match="max_moves"):
        RebalanceConfig(max_moves=-1)
    with pytest.raises(XpodError, match="history_windows"):
        RebalanceConfig(history_windows=0)
    shares = place(real["decode_in1000out1000"], PodShape(32, 4, 9), policy="balanced")
    with pytest.raises(XpodError, match="even, fixed-layout plan"):
        Rebalancer(PodShape(32, 4, 9), 8, plan=shares)
