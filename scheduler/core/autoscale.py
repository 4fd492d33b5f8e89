"""How many replicas a serving job wants from its reported load: the one decision ``xpod server``
and ``xpod replay mix`` share (the ``autoscale`` plugin applies it; the ``Scheduler`` feeds it
the load its replicas report).

The rule is Kubernetes HPA's, on KServe/Knative's per-replica target (``model.Autoscale``):

* each evaluation records a *recommendation*: ``ceil(demand / (target x utilisation))``,
  clamped to the job's min and max replicas (``utilisation``: the share of its target a replica
  is meant to run at; the rest is spare capacity kept ready for a rise not seen yet. Knative's
  default target utilisation is 70 %, the default here);
* scale up to the lowest recommendation of the last ``scale_up_after_s`` seconds (a rise must
  last that long; 0: at once), scale down to the highest recommendation of the last
  ``scale_down_after_s`` seconds (a trough must last that long; the replicas it frees go back
  to the training that lent them);
* ``lag_s`` delays the load the rule sees (a metrics pipeline's delay; the reactive-HPA
  baseline's 60 s);
* ``mode: peak`` always wants max replicas (the static-partition baseline: serving reserved at
  its peak).

Pure: no clock of its own, no I/O; a ``ScaleWindow`` per job holds the recommendations seen.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

from .model import Autoscale


@dataclasses.dataclass(frozen=True)
class ScaleRule:
    """The profile's side of the decision (the ``autoscale`` plugin's arguments)."""

    utilisation: float = 1.0  # share of its target a replica runs at (0.7: 30 % of it kept spare)
    lag_s: float = 0.0  # the load is seen this late (0: as reported)
    peak: bool = False  # always max replicas (serving reserved at its peak)


def recommendation(spec: Autoscale, rule: ScaleRule, demand: float, lo: int, hi: int) -> int:
    """Replicas ``demand`` (metric units) needs at the job's target and the rule's utilisation,
    clamped to ``[lo, hi]``."""
    need = math.ceil(max(0.0, demand) / (spec.target_per_replica * rule.utilisation) - 1e-9)
    return max(lo, min(hi, need))


class ScaleWindow:
    """One job's recommendations over time, and the replicas it wants (``desired``).

    ``observe(now, demand)`` records the load as reported at ``now``; ``desired(now, current,
    lo, hi)`` answers from the loads seen up to ``now - lag_s``. Times must not go back.
    Idempotent for repeated calls at the same time with the same load."""

    def __init__(self, spec: Autoscale, rule: ScaleRule) -> None:
        self.spec = spec
        self.rule = rule
        self._t: list[float] = []  # report times, ascending
        self._demand: list[float] = []  # the load reported at each time

    def observe(self, now: float, demand: float) -> None:
        if self._t and now < self._t[-1]:
            raise ValueError(f"load reported at {now} after one at {self._t[-1]}: time went back")
        if self._t and now == self._t[-1]:
            self._demand[-1] = demand
        else:
            self._t.append(now)
            self._demand.append(demand)
        # keep what the longest window (and the lag) may still read, plus the one before it
        horizon = now - self.rule.lag_s - max(self.spec.scale_up_after_s, self.spec.scale_down_after_s)
        cut = max(0, bisect.bisect_left(self._t, horizon) - 1)
        if cut > 64:
            del self._t[:cut], self._demand[:cut]

    def demand(self, now: float) -> float | None:
        """The load the rule sees at ``now`` (the last report at or before ``now - lag_s``)."""
        i = bisect.bisect_right(self._t, now - self.rule.lag_s) - 1
        return self._demand[i] if i >= 0 else None

    def _recs(self, now: float, window_s: float, lo: int, hi: int) -> list[int]:
        """Recommendations of the loads in force during ``[now - lag - window, now - lag]``."""
        end = now - self.rule.lag_s
        first = bisect.bisect_right(self._t, end - window_s) - 1  # the report in force at the window's start
        last = bisect.bisect_right(self._t, end)
        return [recommendation(self.spec, self.rule, d, lo, hi) for d in self._demand[max(0, first) : last]]

    def desired(self, now: float, current: int, lo: int, hi: int) -> int:
        """Replicas wanted at ``now`` given ``current`` wanted so far (see the module docstring);
        ``current`` clamped to ``[lo, hi]`` while nothing has been reported yet."""
        if self.rule.peak:
            return hi
        current = max(lo, min(hi, current))
        if self.demand(now) is None:
            return current
        up = self._recs(now, self.spec.scale_up_after_s, lo, hi)
        if up and min(up) > current:
            return min(up)
        down = self._recs(now, self.spec.scale_down_after_s, lo, hi)
        if down and max(down) < current:
            return max(down)
        return current
