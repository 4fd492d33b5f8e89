"""The live rebalancing loop of one serving job, as the scheduler service runs it: pure (no
clock, no I/O, no threads; the caller passes the time and stores what comes out).

A ServingJob with ``moe: {experts, layers, slots_per_device, rebalance: {every_s, max_moves}}``
(``scheduler.contract.MoeSpec``) gets one ``LiveLoop``. Its replicas' load reports
(``add``: token counts ``[layers, experts]`` since their previous report) are summed into the
current window; every ``every_s`` seconds (``due``) the window closes (``step``) and goes to the
``Rebalancer`` (``rebalance``: window history, bounded moves, publish only when the predicted
gain pays for the moves). Each closed window is one ``LiveEntry``: what ``xpod moe history``
shows and what the service stores; a published entry carries its plan, which every replica
loads (xpod's plan JSON and SGLang's ``--init-expert-location`` document, ``export.to_sglang``).

The plan is for ONE replica (every replica runs the same plan): its expert-parallel ranks are
the replica's devices (``tasks_per_replica`` x ``devices.count``), one node per task, tokens
split evenly over an expert's replicas, the same slots on every device (what SGLang runs).

After a restart or a failover the loop is rebuilt from the stored entries (``LiveLoop(...,
entries=...)``): the last published plan is the plan in force (the next window improves on it
with at most ``max_moves`` moves, never a plan from scratch); the window history starts anew.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from xpod.hal.errors import XpodError

from .export import to_sglang
from .io import placement_from_json
from .placement import Placement, PodShape
from .rebalance import RebalanceConfig, Rebalancer


def groups_for(experts: int) -> int:
    """Expert groups the planner keeps together: 8 (DeepSeek-V3's) or the largest of 4, 2, 1
    that divides the expert count."""
    return next(g for g in (8, 4, 2, 1) if experts % g == 0)


@dataclasses.dataclass(frozen=True)
class LiveEntry:
    """One closed window of a job's loop. ``plan_revision`` is the plan in force after it
    (1, 2, ... in publication order; 0 before the first); ``plan`` is set only on the entry
    that published it. Balances are predicted over the window history (``rebalance``):
    ``balance_before`` of the plan in force before (None for the first plan)."""

    window: int
    time_s: float
    tokens: float  # tokens counted in the window (all replicas, all layers)
    reports: int  # load reports summed into it
    published: bool
    initial: bool
    moves: int
    balance_before: float | None
    balance_after: float
    reason: str
    plan_revision: int
    plan: Placement | None = dataclasses.field(default=None, compare=False)

    def to_json(self, with_plan: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "window": self.window,
            "time_s": self.time_s,
            "tokens": self.tokens,
            "reports": self.reports,
            "published": self.published,
            "initial": self.initial,
            "moves": self.moves,
            "balance_before": self.balance_before,
            "balance_after": self.balance_after,
            "reason": self.reason,
            "plan_revision": self.plan_revision,
        }
        if with_plan and self.plan is not None:
            out["plan"] = self.plan.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str = "stored moe entry") -> "LiveEntry":
        plan = placement_from_json(d["plan"], where) if d.get("plan") is not None else None
        before = d.get("balance_before")
        return cls(
            int(d["window"]),
            float(d["time_s"]),
            float(d.get("tokens", 0.0)),
            int(d.get("reports", 0)),
            bool(d["published"]),
            bool(d.get("initial", False)),
            int(d["moves"]),
            None if before is None else float(before),
            float(d["balance_after"]),
            str(d.get("reason", "")),
            int(d["plan_revision"]),
            plan,
        )


@dataclasses.dataclass(frozen=True)
class PlanDocuments:
    """The plan in force as the files a replica reads."""

    revision: int
    plan_json: str  # xpod's plan JSON (``xpod moe place --out``)
    sglang_json: str  # SGLang's ``--init-expert-location`` document (``physical_to_logical_map``)


class LiveLoop:
    """One job's loop (module docstring)."""

    def __init__(
        self,
        experts: int,
        layers: int,
        slots_per_device: int,
        ep_devices: int,
        ep_nodes: int,
        every_s: float,
        max_moves: int,
        *,
        start_s: float,
        entries: Sequence[LiveEntry] = (),
    ) -> None:
        """``entries``: the stored history, oldest first (after a restart); ``start_s``: when the
        first window opens."""
        self.experts, self.layers = experts, layers
        self.every_s = every_s
        shape = PodShape(ep_devices, max(1, min(ep_nodes, ep_devices)), slots_per_device)
        published = [e for e in entries if e.plan is not None]
        plan = published[-1].plan if published else None
        if plan is not None and (plan.phy2log.shape != (layers, shape.num_devices * slots_per_device)):
            plan = None  # a plan for another shape (the job was resubmitted differently): plan afresh
        self._rebalancer = Rebalancer(shape, groups_for(experts), RebalanceConfig(max_moves=max_moves), plan)
        self._window = np.zeros((layers, experts))
        self._reports = 0
        self._next_window = entries[-1].window + 1 if entries else 0
        self._revision = max((e.plan_revision for e in entries), default=0)
        self._opened_s = start_s
        self._documents: PlanDocuments | None = None
        if plan is not None:
            self._documents = self._render(self._revision, plan)

    def add(self, counts: np.ndarray) -> None:
        """Add one report's counts ``[layers, experts]`` to the open window."""
        if counts.shape != (self.layers, self.experts):
            raise XpodError(
                f"loads: {counts.shape[0]} layers x {counts.shape[1]} experts, but the job's moe is "
                f"{self.layers} x {self.experts}"
            )
        if not np.all(np.isfinite(counts)) or counts.min(initial=0.0) < 0:
            raise XpodError("loads: counts must be finite numbers >= 0")
        self._window += counts
        self._reports += 1

    def due(self, now_s: float) -> bool:
        return now_s - self._opened_s >= self.every_s

    def step(self, now_s: float) -> LiveEntry | None:
        """Close the open window at ``now_s`` and re-plan; None (and the window stays open) when
        no tokens were reported in it."""
        tokens = float(self._window.sum())
        if tokens <= 0:
            return None
        update = self._rebalancer.observe(self._window)
        revision = self._revision + 1 if update.published else self._revision
        entry = LiveEntry(
            self._next_window,
            now_s,
            tokens,
            self._reports,
            update.published,
            update.initial,
            update.moves,
            None if math.isnan(update.predicted_before) else update.predicted_before,
            update.predicted_after,
            update.reason,
            revision,
            update.placement if update.published else None,
        )
        if update.published:
            self._revision = revision
            self._documents = self._render(revision, update.placement)
        self._next_window += 1
        self._window = np.zeros((self.layers, self.experts))
        self._reports = 0
        self._opened_s = now_s
        return entry

    @property
    def documents(self) -> PlanDocuments | None:
        """The plan in force as files (None before the first plan)."""
        return self._documents

    def _render(self, revision: int, plan: Placement) -> PlanDocuments:
        doc = {**plan.to_json(), "revision": revision}
        sglang = to_sglang(plan, f"plan {revision}", self.experts).document
        return PlanDocuments(revision, json.dumps(doc), json.dumps(sglang))
