"""Serving that follows its load, and training that yields and comes back (issue 14): the core's
decisions, through the ``Scheduler`` facade, on small declarative clusters."""

from __future__ import annotations

import dataclasses

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.autoscale import ScaleRule, ScaleWindow, recommendation
from xpod.scheduler.core.model import Autoscale, LoadMetric
from xpod.scheduler.core.profile import DEFAULT_PROFILE, profile_from_dict
from xpod.scheduler.core.scheduler import UnknownLoadSource
from xpod.scheduler.core.testing import job, node

SPEC = Autoscale(LoadMetric.TOKENS_PER_S, 100.0, scale_up_after_s=0.0, scale_down_after_s=60.0)


def test_recommendation_is_demand_over_target_at_utilisation_clamped():
    assert recommendation(SPEC, ScaleRule(), 250.0, 1, 10) == 3
    assert recommendation(SPEC, ScaleRule(), 300.0, 1, 10) == 3  # exactly at target: no extra replica
    assert recommendation(SPEC, ScaleRule(utilisation=0.5), 300.0, 1, 10) == 6
    assert recommendation(SPEC, ScaleRule(), 0.0, 2, 10) == 2
    assert recommendation(SPEC, ScaleRule(), 5000.0, 1, 10) == 10


def test_window_scales_up_at_once_and_down_only_after_the_trough_lasts():
    w = ScaleWindow(SPEC, ScaleRule())
    w.observe(0.0, 500.0)
    assert w.desired(0.0, 1, 1, 10) == 5
    w.observe(10.0, 100.0)
    assert w.desired(10.0, 5, 1, 10) == 5  # the 500 of t=0 is still in the 60 s window
    w.observe(50.0, 100.0)
    assert w.desired(50.0, 5, 1, 10) == 5
    w.observe(71.0, 100.0)
    assert w.desired(71.0, 5, 1, 10) == 1  # a trough of more than 60 s


def test_window_lag_and_sustained_rise():
    spec = Autoscale(LoadMetric.REQUESTS_PER_S, 10.0, scale_up_after_s=20.0, scale_down_after_s=0.0)
    w = ScaleWindow(spec, ScaleRule(lag_s=30.0))
    w.observe(0.0, 10.0)
    w.observe(10.0, 40.0)
    assert w.desired(10.0, 1, 1, 8) == 1  # nothing seen yet: the load arrives 30 s late
    assert w.desired(40.0, 1, 1, 8) == 1  # seen since 40, but the rise has not lasted 20 s
    w.observe(60.0, 40.0)
    assert w.desired(60.0, 1, 1, 8) == 4
    assert ScaleWindow(spec, ScaleRule(peak=True)).desired(0.0, 1, 1, 8) == 8


#: the default profile with HPA's rule, replicas aimed at their full target (easier arithmetic)
EXACT = profile_from_dict(
    {
        **DEFAULT_PROFILE,
        "policies": [p for p in DEFAULT_PROFILE["policies"] if p != "autoscale"]
        + [{"name": "autoscale", "args": {"utilisation": 1.0, "mode": "follow"}}],
    }
)


def test_default_profile_starts_at_knatives_70_percent_then_learns_its_margin():
    s = Scheduler(pod(), resizes=True)
    s.submit(serving())
    s.cycle(now=0.0)
    s.report_load("chat", 0, 420.0)
    s.cycle(now=10.0)
    assert s.autoscale_status("chat").desired_replicas == 6  # nothing learned yet: ceil(420 / 70)
    # a steady load for longer than min_rises_s: no rise seen, no spare kept beyond the load
    for t in range(20, 20 + 10 * 40, 10):
        for i in {b.task // 1 for b in s.running["chat"].bindings}:
            s.report_load("chat", i, 420.0 / len(s.running["chat"].bindings))
        s.cycle(now=float(t))
    assert s.autoscale_status("chat").desired_replicas == 5  # ceil(420 / 100)


def pod(nodes: int = 2):
    return [node(f"n{i}").devices("gpu", 8).build() for i in range(nodes)]


def serving(max_replicas: int = 8, min_replicas: int = 1):
    return (
        job("chat")
        .serving(min_replicas, max_replicas)
        .devices("gpu", 2)
        .priority("high")
        .autoscale(100.0, down_after_s=60.0)
        .build()
    )


def test_replicas_follow_reported_load_up_and_down():
    s = Scheduler(pod(), profile=EXACT, resizes=True)
    s.submit(serving())
    r = s.cycle(now=0.0)
    assert len(r.bindings) == 1  # no load reported yet: min replicas
    s.report_load("chat", 0, 420.0)
    r = s.cycle(now=10.0)
    assert len(s.running["chat"].bindings) == 5
    st = s.autoscale_status("chat")
    assert (st.demand, st.desired_replicas, st.running_replicas, st.target_per_replica) == (420.0, 5, 5, 100.0)
    for i in range(5):
        s.report_load("chat", i, 20.0)
    s.cycle(now=20.0)
    assert len(s.running["chat"].bindings) == 5  # the 60 s window still holds the peak
    for t in (40.0, 60.0):
        for i in range(5):
            s.report_load("chat", i, 20.0)
        s.cycle(now=t)
    for i in range(5):
        s.report_load("chat", i, 20.0)
    r = s.cycle(now=81.0)
    assert len(s.running["chat"].bindings) == 1
    (resize,) = r.resizes
    assert (resize.job_id, resize.tasks_before, resize.tasks_after, resize.released) == ("chat", 5, 1, (1, 2, 3, 4))
    assert not resize.restart


def test_report_load_from_unknown_job_or_replica_changes_nothing():
    s = Scheduler(pod())
    s.submit(serving())
    s.submit(job("plain").serving(1, 2).devices("gpu", 1).build())
    s.cycle(now=0.0)
    with pytest.raises(UnknownLoadSource, match="job nope"):
        s.report_load("nope", 0, 1.0)
    with pytest.raises(UnknownLoadSource, match="job plain"):
        s.report_load("plain", 0, 1.0)  # serving without autoscale
    with pytest.raises(UnknownLoadSource, match="replica 3 is not running"):
        s.report_load("chat", 3, 1.0)
    with pytest.raises(XpodError, match="finite number"):
        s.report_load("chat", 0, -1.0)
    s.cycle(now=10.0)
    assert s.autoscale_status("chat").demand is None
    assert len(s.running["chat"].bindings) == 1


def test_autoscale_needs_the_plugin_and_a_serving_job():
    prof = profile_from_dict({"policies": ["gang", "priority"]})
    with pytest.raises(XpodError, match="autoscale: no enabled plugin"):
        Scheduler(pod(), profile=prof).submit(serving())
    bad = job("t").training(tasks=1).devices("gpu", 1).autoscale(10.0).build()
    with pytest.raises(XpodError, match="only a serving job"):
        Scheduler(pod()).submit(bad)


def elastic(tasks: int = 8, min_tasks: int = 4, jid: str = "train"):
    return job(jid).training(tasks=tasks, min_tasks=min_tasks).devices("gpu", 2).priority("normal").build()


def test_serving_shrinks_elastic_training_then_it_regrows_after_the_trough():
    s = Scheduler(pod(2), profile=EXACT, resizes=True)
    s.submit(elastic())  # 8 tasks x 2 devices: the whole pod
    s.cycle(now=0.0)  # no node holds it whole: its minimum on one node (the gang's tightest tier)
    assert len(s.running["train"].bindings) == 4
    s.cycle(now=0.5)  # then it grows onto the other node
    assert len(s.running["train"].bindings) == 8
    s.submit(serving(max_replicas=4))
    r = s.cycle(now=1.0)
    assert len(s.running["chat"].bindings) == 1
    (shrink,) = r.resizes
    assert (shrink.job_id, shrink.tasks_before, shrink.tasks_after, shrink.restart) == ("train", 8, 7, True)
    assert not r.evictions  # shrunk, not preempted
    s.report_load("chat", 0, 350.0)
    r = s.cycle(now=10.0)
    assert len(s.running["chat"].bindings) == 4
    assert len(s.running["train"].bindings) == 4
    assert [x.tasks_after for x in r.resizes] == [4]
    s.report_load("chat", 0, 400.0)
    r = s.cycle(now=11.0)  # at its min_tasks: the next replica would need a whole gang: none is taken
    assert len(s.running["train"].bindings) == 4
    # the trough: serving scales down after 60 s, training regrows whole, once
    for t in range(20, 200, 10):
        for i in {b.task for b in s.running["chat"].bindings}:
            s.report_load("chat", i, 10.0)
        r = s.cycle(now=float(t))
        grown = [x for x in r.resizes if x.job_id == "train"]
        if grown:
            assert (grown[0].tasks_before, grown[0].tasks_after, grown[0].restart) == (4, 7, True)
            assert t >= 71  # not before the trough has lasted the serving job's scale_down_after_s
            break
    else:
        pytest.fail("training did not regrow after the serving trough")
    assert len(s.running["chat"].bindings) == 1
    assert len(s.running["train"].bindings) == 7  # the one task serving still holds is not given back


def test_yield_order_batch_then_elastic_then_whole_gangs_never_higher_priority():
    s = Scheduler(pod(3), profile=EXACT, resizes=True)
    s.submit(job("batch").batch(tasks=4).devices("gpu", 2).priority("low").build())  # 8 devices, n0
    s.submit(elastic(tasks=4, min_tasks=2, jid="elastic"))  # 8 devices
    s.submit(job("rigid").training(tasks=2).devices("gpu", 2).priority("low").build())  # 4 devices
    s.submit(job("vip").training(tasks=2).devices("gpu", 2).priority("system").build())  # 4, never taken
    s.cycle(now=0.0)
    s.cycle(now=0.5)  # the batch tasks the first cycle's walk left
    assert s.free_devices() == 0
    s.submit(serving(max_replicas=12, min_replicas=3))
    r = s.cycle(now=1.0)
    (taken,) = r.resizes  # 3 replicas: three batch tasks suffice; nothing else is touched
    assert (taken.job_id, taken.tasks_after, taken.restart) == ("batch", 1, False) and not r.evictions
    s.report_load("chat", 0, 600.0)  # 6 wanted: the last batch task, then two of the elastic gang's
    r = s.cycle(now=10.0)
    assert [e.job_id for e in r.evictions] == ["batch"]
    (shrunk,) = r.resizes
    assert (shrunk.job_id, shrunk.tasks_before, shrunk.tasks_after, shrunk.restart) == ("elastic", 4, 2, True)
    s.report_load("chat", 0, 1200.0)  # 12 wanted: whole gangs, lowest priority first; vip never
    r = s.cycle(now=20.0)  # every missing replica in one cycle, lowest priority gang first
    assert [e.job_id for e in r.evictions] == ["rigid", "elastic"]
    s.report_load("chat", 0, 1200.0)
    r = s.cycle(now=30.0)
    assert not r.evictions
    assert len(s.running["vip"].bindings) == 2
    assert len(s.running["chat"].bindings) == 10


def test_without_a_caller_that_applies_resizes_nothing_running_is_released():
    """``xpod server`` until its service applies ``Resize``: no shrink, no scale-down; a serving
    job short of devices preempts whole gangs as before."""
    s = Scheduler(pod(2), profile=EXACT)
    s.submit(elastic())
    s.cycle(now=0.0)
    s.cycle(now=0.5)  # its minimum on one node, then the rest on the other
    assert len(s.running["train"].bindings) == 8
    s.submit(serving(max_replicas=4))
    r = s.cycle(now=1.0)
    assert not r.resizes and [e.job_id for e in r.evictions] == ["train"]
    for i in {b.task for b in s.running["chat"].bindings}:
        s.report_load("chat", i, 0.0)
    for t in range(10, 200, 10):
        r = s.cycle(now=float(t))
        assert not r.resizes
    assert s.autoscale_status("chat").desired_replicas == 1
    assert len(s.running["chat"].bindings) >= 1


# ---------------------------------------------------------------- the forecast rule (the default)
FORECAST = ScaleRule(utilisation=0.5, forecast=True)  # a fixed margin of 2x while too little is seen


def forecast_spec(**kw):
    keys = {"lead_s": 20.0, "basis_s": 0.0, "history_s": 600.0, "rise_quantile": 1.0, "min_rises_s": 60.0, **kw}
    return Autoscale(LoadMetric.TOKENS_PER_S, 100.0, scale_up_after_s=0.0, scale_down_after_s=0.0, **keys)


def feed(w: ScaleWindow, loads, start: float = 0.0, step: float = 10.0) -> float:
    t = start
    for load in loads:
        w.observe(t, load)
        t += step
    return t - step


def test_forecast_keeps_the_fixed_margin_until_it_has_seen_min_rises_s():
    w = ScaleWindow(forecast_spec(), FORECAST)
    t = feed(w, [400.0] * 5)  # rises from t=20 on: 20..40 span 20 s < 60 s
    assert w.headroom(t) == 2.0
    assert w.desired(t, 1, 1, 100) == 8  # 400 x 2 / 100
    t = feed(w, [400.0] * 6, start=t + 10.0)  # rises span 20..90: 70 s, all of ratio 1
    assert w.headroom(t) == 1.0
    assert w.desired(t, 8, 1, 100) == 4  # scale_down_after_s 0: at once


def test_forecast_margin_is_the_largest_rise_within_lead_s_and_forgets_after_history_s():
    w = ScaleWindow(forecast_spec(history_s=100.0), FORECAST)
    t = feed(w, [400.0] * 10 + [600.0] + [400.0] * 2)  # at t=100: 600 against 400 two reports back
    assert w.headroom(t) == 1.5
    assert w.desired(t, 1, 1, 100) == 6  # 400 x 1.5
    t = feed(w, [400.0] * 10, start=t + 10.0)  # the rise of t=100 is older than history_s now
    assert w.headroom(t) == 1.0


def test_forecast_rise_quantile_and_basis_window():
    rises = [400.0] * 8 + [800.0, 400.0, 400.0, 440.0, 400.0, 400.0]
    top = ScaleWindow(forecast_spec(), FORECAST)
    t = feed(top, rises)
    assert top.headroom(t) == 2.0  # the largest rise: 800 / 400
    half = ScaleWindow(forecast_spec(rise_quantile=0.5), FORECAST)
    feed(half, rises)
    assert half.headroom(t) == 1.0  # the median rise
    basis = ScaleWindow(forecast_spec(basis_s=60.0, history_s=10.0, min_rises_s=0.0), FORECAST)
    t = feed(basis, [400.0, 900.0] + [400.0] * 5)
    assert basis.desired(t, 1, 1, 100) == 9  # the basis is the highest load of the last 60 s: 900
    t = feed(basis, [400.0] * 2, start=t + 10.0)
    assert basis.desired(t, 9, 1, 100) == 4


def test_forecast_measures_a_rise_from_nothing_against_one_replica():
    w = ScaleWindow(forecast_spec(min_rises_s=0.0), FORECAST)
    t = feed(w, [0.0, 0.0, 0.0, 500.0, 0.0, 0.0, 0.0])
    assert w.headroom(t) == 5.0  # 500 against one replica's 100
    assert w.desired(t, 1, 1, 100) == 1  # no load: min replicas (the trough goes back to training)
    t = feed(w, [60.0], start=t + 10.0)
    assert w.desired(t, 1, 1, 100) == 3  # 60 x 5 / 100: a burst like the last one is covered


# ---------------------------------------------------------------- the error budget
def test_error_budget_spends_the_quantile_only_while_one_uncovered_rise_fits():
    # 0.9 of 10 s intervals over 600 s: 6 may go short; lead 20 s: an uncovered rise costs 2
    spec = forecast_spec(rise_quantile=0.5, history_s=2000.0, slo_attainment=0.9, slo_window_s=600.0)
    w = ScaleWindow(spec, FORECAST)
    assert (w.allowed_short(), w.miss_cost()) == (6, 2)
    t = 0.0
    for load in [900.0, 900.0] + [400.0] * 6 + [800.0, 400.0, 400.0, 440.0, 400.0, 400.0]:
        w.observe(t, load, capacity=300.0 if t < 20.0 else 1000.0)  # short while starting: not counted
        t += 10.0
    t -= 10.0
    assert w.short_intervals(t) == 0 and w.budget_left(t) == 6
    assert w.headroom(t) == 1.0  # the median rise: the budget affords an uncovered one
    for _ in range(5):  # five short intervals (a report twice in one interval counts once)
        t += 10.0
        w.observe(t, 400.0, capacity=300.0)
        w.observe(t, 400.0, capacity=300.0)
    assert (w.short_intervals(t), w.budget_left(t)) == (5, 1)
    assert w.headroom(t) == 2.0  # 1 left < 2 a miss may cost: the largest rise, 800 / 400
    t = feed(w, [400.0] * 61, start=t + 10.0)  # covered (no capacity given) for 610 s more
    assert w.short_intervals(t) == 0
    assert w.headroom(t) == 1.0  # the short intervals left the window: spending again


def test_without_an_slo_the_quantile_applies_and_a_full_slo_never_spends():
    rises = [400.0] * 8 + [800.0, 400.0, 400.0, 440.0, 400.0, 400.0]
    free = ScaleWindow(forecast_spec(rise_quantile=0.5), FORECAST)
    strict = ScaleWindow(forecast_spec(rise_quantile=0.5, slo_attainment=1.0), FORECAST)
    for w in (free, strict):
        t = feed(w, rises)
    assert (free.headroom(t), strict.headroom(t)) == (1.0, 2.0)
    assert strict.allowed_short() == 0 and not strict.may_spend(t)


def test_scheduler_counts_a_report_above_its_replicas_capacity_as_short():
    s = Scheduler(pod(), resizes=True)
    chat = serving(max_replicas=2, min_replicas=2)
    s.submit(dataclasses.replace(chat, autoscale=dataclasses.replace(chat.autoscale, slo_attainment=0.9)))
    s.cycle(now=0.0)
    replicas = sorted({b.task for b in s.running["chat"].bindings})
    assert replicas == [0, 1]
    for t, per_replica in [(10.0, 50.0), (20.0, 150.0), (25.0, 150.0), (30.0, 100.0), (40.0, 101.0)]:
        for r in replicas:  # over its target of 100: the interval is short (two reports in one count once)
            s.report_load("chat", r, per_replica)
        s.cycle(now=t)
    st = s.autoscale_status("chat")
    assert (st.short_intervals, st.allowed_short) == (2, 36)  # 0.1 x 3600 s / 10 s
    s.submit(dataclasses.replace(chat, id="free"))  # no SLO set: no budget
    s.cycle(now=50.0)
    assert s.autoscale_status("free").allowed_short is None
