"""How many replicas a serving job wants from its reported load: the one decision ``xpod server``
and ``xpod replay mix`` share (the ``autoscale`` plugin applies it; the ``Scheduler`` feeds it
the load its replicas report).

Two rules, on KServe/Knative's per-replica target (``model.Autoscale``):

**forecast** (the default profile's): provision now for the load expected when a replica started
now would serve, with spare capacity sized by how much the load has been seen to rise within that
time, not by a fixed margin.

* the *basis* at time t is the highest load reported in ``[t - basis_s, t]``;
* each report at t is compared with the basis of ``lead_s`` earlier (the scale-up lead time: the
  report's age, freeing devices by shrinking or preempting training, loading the model): the
  *rise* ``load(t) / basis(t - lead_s)`` is what a replica decided on at ``t - lead_s`` had to
  cover (a basis below one replica's target counts as one replica's target, so that a rise from
  nothing, on/off traffic, is a finite ratio too). The rises of the last ``history_s`` are kept;
* the recommendation is ``ceil(basis x headroom / target)`` where ``headroom`` is the
  ``rise_quantile`` of the kept rises (1.0: the largest; never below 1). Until
  ``min_rises_s`` of rises were seen (a job that just started) it is at least the profile's
  fixed margin ``1 / utilisation``.

The sources of the idea: Knative's KPA keeps a short *panic* window beside its stable one so that
a sudden rise is met before the stable average sees it; Google's Autopilot (EuroSys'20) sizes
from a moving window of past usage plus a safety margin; empirical (conformal) forecast-error
quantiles size a margin from the errors observed rather than a constant. Here the forecast is
the recent peak and its error the rise seen within the lead time (docs/concepts/
training-and-serving.md has the references; ``bench/tune_mix.py`` tuned the defaults on traces
that are not the reported test).

**The error budget** (``slo_attainment``, ``slo_window_s``, ``slo_interval_s``; off by default):
the SLO "the ready capacity covers the load in ``slo_attainment`` of the ``slo_interval_s``
intervals of any ``slo_window_s``" leaves ``floor((1 - slo_attainment) x slo_window_s /
slo_interval_s)`` intervals that may go short: the error budget of Google's SRE book (ch. 3,
"Embracing Risk": 1 - SLO is a budget to spend on purpose, and spending stops when it is gone),
with the budget's consumption tracked as the SRE workbook's burn-rate alerts do ("Alerting on
SLOs"). A report whose load exceeds what its reporting replicas serve at their target
(``observe(..., capacity=)``; a live replica over its target is queueing) marks its interval
short; the intervals before the job first covered its load (it is starting) do not count. The
forecast rule then provisions for ``rise_quantile`` of the rises (spending the budget: the
rises above it go uncovered) only while the budget left affords one uncovered rise, which may
leave ``ceil((scale_up_after_s + lead_s) / slo_interval_s)`` intervals short before replicas
added on seeing it serve (``miss_cost``); otherwise for the largest rise. So the intervals the
quantile leaves short never take the window past its budget, provided the replicas come within
``lead_s`` (devices to take from training) and aside from the largest-rise rule's own misses (a
rise larger than any seen): a bound by construction, not a tuned hope. At a one-hour window of 10 s intervals and 0.995 the
budget is 1 interval and a miss costs up to 4: the guard never spends, and the rule is the
largest-rise rule; a longer window (an SRE SLO is usually 28-30 days) lets it spend. Without an
SLO (``slo_attainment`` unset) ``rise_quantile`` applies as given.

**follow** (Kubernetes HPA's rule, the reactive-HPA baseline and ``mode: follow``):
``ceil(demand / (target x utilisation))`` (``utilisation``: the share of its target a replica is
meant to run at; Knative's default target utilisation is 70 %).

Both then act with hysteresis:

* scale up to the lowest recommendation of the last ``scale_up_after_s`` seconds (a rise must
  last that long; 0: at once), scale down to the highest recommendation of the last
  ``scale_down_after_s`` seconds (a trough must last that long; the replicas it frees go back
  to the training that lent them);
* ``lag_s`` delays the load the rule sees (a metrics pipeline's delay; the reactive-HPA
  baseline's 60 s);
* ``mode: peak`` always wants max replicas (the static-partition baseline: serving reserved at
  its peak).

Pure: no clock of its own, no I/O; a ``ScaleWindow`` per job holds the loads and rises seen.
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
    forecast: bool = False  # spare capacity from the rises seen (the job's lead_s ...), not 1 / utilisation


def recommendation(spec: Autoscale, rule: ScaleRule, demand: float, lo: int, hi: int) -> int:
    """Replicas ``demand`` (metric units) needs at the job's target and the rule's utilisation,
    clamped to ``[lo, hi]``."""
    return _clamp(max(0.0, demand) / (spec.target_per_replica * rule.utilisation), lo, hi)


def _clamp(replicas: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, math.ceil(replicas - 1e-9)))


#: a rise is recorded at most this often (a live service observes at every cycle)
RISE_EVERY_S = 1.0


class ScaleWindow:
    """One job's loads and rises over time, and the replicas it wants (``desired``).

    ``observe(now, demand)`` records the load as reported at ``now``; ``desired(now, current,
    lo, hi)`` answers from the loads seen up to ``now - lag_s``. Times must not go back.
    Idempotent for repeated calls at the same time with the same load."""

    def __init__(self, spec: Autoscale, rule: ScaleRule) -> None:
        self.spec = spec
        self.rule = rule
        self._t: list[float] = []  # report times, ascending
        self._demand: list[float] = []  # the load reported at each time
        self._rec: list[float] = []  # the replicas (unclamped, fractional) recommended at each time
        self._rise_t: list[float] = []  # times rises were recorded, ascending
        self._rise: list[float] = []  # load(t) / basis(t - lead_s)
        self._short: list[int] = []  # the slo_interval_s intervals (index) a report found short, ascending
        self._served = False  # a report found its replicas covering the load (before: the job is starting)

    # ------------------------------------------------------------------ observing
    def observe(self, now: float, demand: float, capacity: float | None = None) -> None:
        """Record ``demand`` reported at ``now``; ``capacity``: the load the replicas that
        reported it serve at their target (replicas x ``target_per_replica``), when known: a
        report above it marks its ``slo_interval_s`` interval short (the error budget spent)."""
        if capacity is not None and demand <= capacity * (1.0 + 1e-9):
            self._served = True
        elif capacity is not None and self._served:
            k = int(math.floor(now / self.spec.slo_interval_s + 1e-9))
            if not self._short or self._short[-1] < k:
                self._short.append(k)
        if self._t and now < self._t[-1]:
            raise ValueError(f"load reported at {now} after one at {self._t[-1]}: time went back")
        if self._t and now == self._t[-1]:
            self._demand[-1] = demand
        else:
            self._t.append(now)
            self._demand.append(demand)
            self._rec.append(0.0)
        if self.rule.forecast:
            self._record_rise(now, demand)
        self._rec[-1] = self._replicas_at(len(self._t) - 1)
        # keep what the longest window (and the lag) may still read, plus the one before it
        spec = self.spec
        reach = max(spec.scale_up_after_s, spec.scale_down_after_s)
        if self.rule.forecast:
            reach = max(reach, spec.lead_s + spec.basis_s)
        cut = max(0, bisect.bisect_left(self._t, now - self.rule.lag_s - reach) - 1)
        if cut > 64:
            del self._t[:cut], self._demand[:cut], self._rec[:cut]
        cut = bisect.bisect_left(self._rise_t, now - spec.history_s)
        if cut > 64:
            del self._rise_t[:cut], self._rise[:cut]
        cut = bisect.bisect_left(self._short, (now - spec.slo_window_s) / spec.slo_interval_s)
        if cut > 64:
            del self._short[:cut]

    # ------------------------------------------------------------------ the error budget
    def allowed_short(self) -> int:
        """Intervals the job's SLO lets go short in any ``slo_window_s`` (its error budget; 0
        without an SLO)."""
        spec = self.spec
        if spec.slo_attainment is None:
            return 0
        return int(math.floor((1.0 - spec.slo_attainment) * spec.slo_window_s / spec.slo_interval_s + 1e-9))

    def short_intervals(self, now: float) -> int:
        """Intervals found short in the last ``slo_window_s`` (the budget spent)."""
        first = (now - self.spec.slo_window_s) / self.spec.slo_interval_s
        return len(self._short) - bisect.bisect_right(self._short, first)

    def budget_left(self, now: float) -> int:
        """Short intervals the SLO still allows in the window ending at ``now`` (>= 0)."""
        return max(0, self.allowed_short() - self.short_intervals(now))

    def miss_cost(self) -> int:
        """Short intervals one uncovered rise may cost: the load is short from the interval it
        rises in until replicas added on seeing it serve, ``scale_up_after_s + lead_s`` later."""
        wait_s = self.spec.scale_up_after_s + self.spec.lead_s
        return max(1, math.ceil(wait_s / self.spec.slo_interval_s - 1e-9))

    def may_spend(self, now: float) -> bool:
        """Whether the forecast rule may provision for ``rise_quantile`` of the rises at ``now``
        rather than the largest: always without an SLO (``slo_attainment`` None, the quantile
        as given), else only while the budget left covers one uncovered rise's cost."""
        if self.spec.slo_attainment is None:
            return True
        return self.budget_left(now) >= self.miss_cost()

    def _basis(self, at: float) -> float | None:
        """The highest load reported in ``[at - basis_s, at]`` (the one in force at its start
        included); None before the first report."""
        last = bisect.bisect_right(self._t, at)
        if last == 0:
            return None
        first = max(0, bisect.bisect_right(self._t, at - self.spec.basis_s) - 1)
        return max(self._demand[first:last])

    def _record_rise(self, now: float, demand: float) -> None:
        if self._rise_t and now - self._rise_t[-1] < RISE_EVERY_S:
            return
        if not self._t or self._t[0] > now - self.spec.lead_s:
            return  # nothing was reported lead_s ago: no rise to measure yet
        before = self._basis(now - self.spec.lead_s)
        if before is None:
            return
        self._rise_t.append(now)
        self._rise.append(demand / self._floor(before))

    def headroom(self, now: float) -> float:
        """The factor over the basis the forecast rule provisions at ``now`` (>= 1; see the
        module docstring); ``1 / utilisation`` for the follow rule."""
        fixed = 1.0 / self.rule.utilisation
        if not self.rule.forecast:
            return fixed
        first = bisect.bisect_left(self._rise_t, now - self.spec.history_s)
        rises = sorted(self._rise[first:])
        learned = 1.0
        if rises:
            q = self.spec.rise_quantile if self.may_spend(now) else 1.0
            k = min(len(rises) - 1, max(0, math.ceil(q * len(rises)) - 1))
            learned = max(1.0, rises[k])
        seen_s = (self._rise_t[-1] - self._rise_t[first]) if rises else 0.0
        return learned if seen_s >= self.spec.min_rises_s else max(learned, fixed)

    def _floor(self, basis: float) -> float:
        """The basis a rise is measured against, at least one replica's load: a rise from
        (nearly) nothing is measured against one replica, so that on/off traffic is learned too.
        (The recommendation uses the basis itself: a job with no load goes to its min replicas.)"""
        return max(basis, self.spec.target_per_replica)

    def _replicas_at(self, i: int) -> float:
        """The (fractional) replicas recommended by the report ``i``."""
        now = self._t[i]
        target = self.spec.target_per_replica
        if not self.rule.forecast:
            return max(0.0, self._demand[i]) / (target * self.rule.utilisation)
        basis = self._basis(now) or 0.0
        return max(0.0, basis) * self.headroom(now) / target

    # ------------------------------------------------------------------- deciding
    def demand(self, now: float) -> float | None:
        """The load the rule sees at ``now`` (the last report at or before ``now - lag_s``)."""
        i = bisect.bisect_right(self._t, now - self.rule.lag_s) - 1
        return self._demand[i] if i >= 0 else None

    def _recs(self, now: float, window_s: float, lo: int, hi: int) -> list[int]:
        """Recommendations of the reports in force during ``[now - lag - window, now - lag]``."""
        end = now - self.rule.lag_s
        first = bisect.bisect_right(self._t, end - window_s) - 1  # the report in force at the window's start
        last = bisect.bisect_right(self._t, end)
        return [_clamp(r, lo, hi) for r in self._rec[max(0, first) : last]]

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
