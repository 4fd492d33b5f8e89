"""Live rebalancing: re-plan as the expert loads move, with few expert weights moved.

A pure object (no clock, no I/O): feed it one window of per-layer expert loads at a time
(``Rebalancer.observe``), get back a :class:`PlanUpdate` saying whether a new plan is published
and how many expert weights it moves. A serving job wires it up by calling ``observe`` every
``every_s`` seconds with the loads its replicas recorded (SGLang's recorder dumps, read with
``io.load_sglang_dump``) and, when an update is published, handing ``update.placement`` to the
replicas (``export.to_sglang``). The plan is always one SGLang can run: the same slots on every
device in every layer, tokens split evenly (no ``slot_share``).

Per window:

1. the window joins a history of the last ``history_windows`` windows (oldest dropped);
2. the first window gets a robust plan from scratch (``robust.robust_place``); that initial
   load of every slot is reported apart (``initial``), it is no rebalance;
3. later windows: the scenarios are the history windows, each normalised per layer to the
   latest one's totals (``robust.drift_scenarios``); a candidate is improved from the plan in
   force with at most ``max_moves`` expert weights loaded (``incremental.improve_within_budget``
   on the weighted ``quantile`` of each expert's load over the scenarios: re-pointing spare
   replicas to hot experts, then swaps), and kept only if it lowers the expected max device
   load over the scenarios;
4. **publish rule**: the predicted balancedness over the scenarios (sum over layers of mean
   device load / expected max device load) must rise by more than ``move_cost`` per expert
   weight moved; otherwise the plan in force stays and nothing moves.

Measured in ``bench/moe_rebalance.py`` (a time series replayed window by window against EPLB
re-planned every window, DeepSeek's practice).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xpod.hal.errors import XpodError

from .incremental import improve_within_budget
from .placement import Placement, PodShape, _validate_loads
from .robust import RobustConfig, drift_scenarios, expected_max_load, robust_place, weighted_quantile
from .score import weight_moves


@dataclasses.dataclass(frozen=True)
class RebalanceConfig:
    """Knobs of :class:`Rebalancer` (the ServingJob's ``moe.rebalance`` block)."""

    max_moves: int = 1200  # expert weights loaded per rebalance, at most (DeepSeek-V3 FP8: 44 MB each)
    history_windows: int = 4  # windows the plan is made for: the latest and up to 3 before it
    move_cost: float = 1e-6  # predicted balancedness a published plan must gain per expert weight moved
    quantile: float = 0.75  # replica counts follow this quantile of an expert's load over the history

    def __post_init__(self) -> None:
        if not isinstance(self.max_moves, int) or self.max_moves < 0:
            raise XpodError(f"rebalance: max_moves must be an integer >= 0, got {self.max_moves!r}")
        if not isinstance(self.history_windows, int) or self.history_windows < 1:
            raise XpodError(f"rebalance: history_windows must be an integer >= 1, got {self.history_windows!r}")
        if not self.move_cost >= 0:
            raise XpodError(f"rebalance: move_cost must be >= 0, got {self.move_cost!r}")
        if not 0.0 <= self.quantile <= 1.0:
            raise XpodError(f"rebalance: quantile must be in [0, 1], got {self.quantile!r}")


@dataclasses.dataclass(frozen=True)
class PlanUpdate:
    """What one window did to the plan."""

    window: int  # 0-based index of the window observed
    placement: Placement  # the plan in force after this window
    published: bool  # a new plan was published (replicas must load it)
    initial: bool  # the first plan: every slot loaded once, not a rebalance
    moves: int  # expert weights loaded by this update (0 when nothing was published)
    predicted_before: float  # predicted balancedness of the previous plan over the history (nan at first)
    predicted_after: float  # predicted balancedness of the plan in force after this window
    reason: str  # one line: why it was or was not published

    def to_json(self) -> dict:
        return {
            "window": self.window,
            "published": self.published,
            "initial": self.initial,
            "moves": self.moves,
            "predicted_before": self.predicted_before,
            "predicted_after": self.predicted_after,
            "reason": self.reason,
        }


def predicted_balancedness(
    X: np.ndarray, weights: np.ndarray, phy2log: np.ndarray, slot_device: np.ndarray, num_devices: int
) -> float:
    """Sum over layers of the mean device load / expected max device load over the scenarios
    ``X [scenarios, layers, experts]`` (even split): what a plan is predicted to score."""
    mean = np.einsum("k,kl->l", weights, X.sum(axis=2)) / num_devices
    return float(mean.sum() / max(expected_max_load(X, weights, phy2log, slot_device, num_devices).sum(), 1e-300))


class Rebalancer:
    """The rebalancing loop of one serving job's expert placement (module docstring).
    ``observe`` is its only input; it is deterministic for a given series of windows."""

    def __init__(
        self,
        shape: PodShape,
        num_groups: int = 8,
        config: RebalanceConfig = RebalanceConfig(),
        plan: Placement | None = None,
    ) -> None:
        if plan is not None and (plan.slot_share is not None or (plan.phy2log < 0).any()):
            raise XpodError("rebalance: the plan in force must be an even, fixed-layout plan (--policy even or wrap)")
        self.shape = shape
        self.num_groups = num_groups
        self.config = config
        self._plan = plan
        self._history: list[np.ndarray] = []
        self._shape: tuple[int, int] | None = None if plan is None else (plan.phy2log.shape[0], plan.num_experts)
        self.updates: list[PlanUpdate] = []

    @property
    def plan(self) -> Placement | None:
        """The plan in force (None before the first window)."""
        return self._plan

    def observe(self, loads: np.ndarray) -> PlanUpdate:
        """Take one window of loads ``[layers, experts]`` (token counts) and return what it did."""
        w = _validate_loads(loads, "rebalance window")
        if w.ndim != 2:
            raise XpodError(f"rebalance window: expected [layers, experts], got shape {w.shape}")
        if self._shape is not None and w.shape != self._shape:
            raise XpodError(
                f"rebalance window {len(self.updates)}: {w.shape[0]} layers x {w.shape[1]} experts, but the plan is for "
                f"{self._shape[0]} x {self._shape[1]}"
            )
        self._shape = w.shape
        self._history = (self._history + [w])[-self.config.history_windows :]
        hist = np.stack(self._history[:-1]) if len(self._history) > 1 else None
        X, weights = drift_scenarios(w, hist)
        window = len(self.updates)
        sd, devices = None, self.shape.num_devices
        if self._plan is None:
            plan = robust_place(
                w, self.shape, self.num_groups, history=hist, config=RobustConfig(quantile=self.config.quantile)
            )
            after = predicted_balancedness(X, weights, plan.phy2log, plan.slot_device, devices)
            update = PlanUpdate(
                window, plan, True, True, int((plan.phy2log >= 0).sum()), float("nan"), after, "first plan"
            )
            return self._record(update)
        current = self._plan
        sd = current.slot_device
        before = predicted_balancedness(X, weights, current.phy2log, sd, devices)
        q = weighted_quantile(X, weights, self.config.quantile)
        candidate, moves = improve_within_budget(q, current.phy2log, sd, current.device_node, self.config.max_moves)
        after = predicted_balancedness(X, weights, candidate, sd, devices)
        gain = after - before
        if moves == 0 or gain <= self.config.move_cost * moves:
            reason = (
                "no move improves the predicted balance"
                if moves == 0
                else f"gain {gain:+.4f} does not pay for {moves} moves ({self.config.move_cost:g} each)"
            )
            return self._record(PlanUpdate(window, current, False, False, 0, before, before, reason))
        plan = dataclasses.replace(
            current, phy2log=candidate, weight_moves=weight_moves(current.phy2log, candidate, sd, devices)
        )
        update = PlanUpdate(window, plan, True, False, moves, before, after, f"gain {gain:+.4f} for {moves} moves")
        return self._record(update)

    def _record(self, update: PlanUpdate) -> PlanUpdate:
        self._plan = update.placement
        self.updates.append(update)
        return update
