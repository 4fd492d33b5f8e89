"""The job-spec keys of issue 14 (autoscale, grace_period_s): bad values in one line each,
FILE:LINE:COL, naming the field; good ones reach the core's ``Job``."""

from __future__ import annotations


import pytest

from tests.jobspec.test_jobspec_check import problems
from xpod.scheduler import jobspec
from xpod.hal.errors import XpodError
from xpod.scheduler.core.model import Autoscale, LoadMetric
from xpod.scheduler.core.spec import parse_job

HEAD = "kind: ServingJob\nmetadata: {name: chat}\nspec:\n"


def test_bad_autoscale_each_problem_at_its_line(tmp_path):
    found = problems(
        tmp_path,
        HEAD + "  replicas: {min: 1, max: 4}\n  autoscale:\n    metric: tokens\n    target_per_replica: 0\n"
        "    scale_down_after: 10\n",
    )
    assert found == [
        "6:13: spec.autoscale.metric: 'tokens' is not one of tokens_per_s, requests_per_s (did you mean 'tokens_per_s'?)",
        "7:25: spec.autoscale.target_per_replica must be > 0, got 0",
        "8:5: unknown key 'scale_down_after' in spec.autoscale (did you mean 'scale_down_after_s'?)",
    ]


def test_min_above_max_negative_target_missing_target_grace(tmp_path):
    assert problems(tmp_path, HEAD + "  replicas: {min: 5, max: 3}\n") == [
        "4:19: spec.replicas.min: 5 is above replicas.max (3): give min <= max"
    ]
    assert problems(tmp_path, HEAD + "  autoscale: {metric: requests_per_s, target_per_replica: -2}\n") == [
        "4:59: spec.autoscale.target_per_replica must be > 0, got -2"
    ]
    missing = problems(tmp_path, HEAD + "  autoscale: {metric: requests_per_s}\n")
    assert missing == ["4:3: spec.autoscale: missing required key 'target_per_replica'"]
    training = "kind: TrainingJob\nmetadata: {name: t}\nspec:\n  tasks: 2\n"
    assert problems(tmp_path, training + "  grace_period_s: -1\n") == ["5:19: spec.grace_period_s must be >= 0, got -1"]
    wrong_kind = problems(tmp_path, training + "  autoscale: {metric: requests_per_s, target_per_replica: 1}\n")
    assert len(wrong_kind) == 1 and wrong_kind[0].startswith("5:3: unknown key 'autoscale' in spec")


def test_good_autoscale_reaches_the_core_job():
    job = parse_job(
        {
            "id": "chat",
            "kind": "serving",
            "replicas": {"min": 1, "max": 8},
            "autoscale": {"metric": "tokens_per_s", "target_per_replica": 2500, "scale_down_after_s": 60},
            "grace_period_s": 5,
        }
    )
    assert job.autoscale == Autoscale(LoadMetric.TOKENS_PER_S, 2500.0, 0.0, 60.0)
    assert job.grace_period_s == 5.0
    assert parse_job({"id": "t", "kind": "training"}).grace_period_s == 30.0


def test_forecast_keys_bad_values_each_at_its_line(tmp_path):
    found = problems(
        tmp_path,
        HEAD + "  replicas: {min: 1, max: 4}\n  autoscale:\n    metric: tokens_per_s\n    target_per_replica: 10\n"
        "    rise_quantile: 1.5\n    history_s: 0\n    lead: 40\n    basis_s: -1\n",
    )
    assert found == [
        "8:20: spec.autoscale.rise_quantile must be <= 1, got 1.5",
        "9:16: spec.autoscale.history_s must be > 0, got 0",
        "10:5: unknown key 'lead' in spec.autoscale (did you mean 'lead_s'?)",
        "11:14: spec.autoscale.basis_s must be >= 0, got -1",
    ]


def parse(**keys):
    """The core job of a serving job whose autoscale block holds ``keys`` (beside metric and target)."""
    doc = {"metric": "tokens_per_s", "target_per_replica": 10, **keys}
    return parse_job({"id": "chat", "kind": "serving", "replicas": {"min": 1, "max": 2}, "autoscale": doc})


def test_forecast_keys_in_the_core_spec_name_the_field():
    with pytest.raises(XpodError, match=r"autoscale.rise_quantile: 0 must be a number in \(0, 1\]"):
        parse(rise_quantile=0)
    with pytest.raises(XpodError, match="autoscale.history_s: 0 must be > 0"):
        parse(history_s=0)
    with pytest.raises(XpodError, match="autoscale.lead_s: -3 must be a number of seconds >= 0"):
        parse(lead_s=-3)
    a = parse(lead_s=25, basis_s=120, history_s=900, rise_quantile=0.99, min_rises_s=60).autoscale
    assert (a.lead_s, a.basis_s, a.history_s, a.rise_quantile, a.min_rises_s) == (25.0, 120.0, 900.0, 0.99, 60.0)
    d = parse().autoscale
    assert (d.lead_s, d.basis_s, d.history_s, d.rise_quantile, d.min_rises_s) == (40.0, 600.0, 1800.0, 1.0, 300.0)


def test_counters_are_prometheus_names(tmp_path):
    head = HEAD + "  replicas: {min: 1, max: 4}\n  autoscale:\n    metric: tokens_per_s\n    target_per_replica: 10\n"
    good = tmp_path / "good.yaml"
    good.write_text(head + "    counters: [myserver:tokens_total, vllm:generation_tokens_total]\n")
    doc = jobspec.load_job_file(str(good)).document
    assert doc["spec"]["autoscale"]["counters"] == ["myserver:tokens_total", "vllm:generation_tokens_total"]
    bad = problems(tmp_path, head + "    counters: ['my server tokens']\n")
    assert len(bad) == 1 and bad[0].startswith("8:16: spec.autoscale.counters[0]"), bad
    assert len(problems(tmp_path, head + "    counters: []\n")) == 1


def test_min_rises_longer_than_history_is_refused(tmp_path):
    """Rises are kept only ``history_s``; a ``min_rises_s`` past it would leave the forecast rule
    never in charge, so the job is refused instead of silently running the fixed margin."""
    found = problems(
        tmp_path,
        HEAD + "  replicas: {min: 1, max: 4}\n  autoscale:\n    metric: tokens_per_s\n    target_per_replica: 10\n"
        "    history_s: 100\n",
    )
    assert len(found) == 1 and "spec.autoscale.min_rises_s: 300 must be <= history_s (100)" in found[0]
    with pytest.raises(XpodError, match=r"autoscale.min_rises_s: 60 must be <= history_s \(30\)"):
        parse_job(
            {
                "id": "chat",
                "kind": "serving",
                "replicas": {"min": 1, "max": 2},
                "autoscale": {"metric": "tokens_per_s", "target_per_replica": 10, "history_s": 30, "min_rises_s": 60},
            }
        )


@pytest.mark.parametrize("replicas", ["3", "{min: 2, max: 2}", "{max: 2}"])
def test_autoscale_with_fixed_replicas_is_refused(tmp_path, replicas):
    # nothing to scale between: the block would be accepted and never act
    head = HEAD + f"  replicas: {replicas}\n  autoscale:\n    metric: tokens_per_s\n    target_per_replica: 10\n"
    bad = problems(tmp_path, head)
    assert len(bad) == 1 and "spec.autoscale" in bad[0] and "give replicas: {min, max} with min < max" in bad[0], bad


def test_error_budget_keys_checked_at_their_line_and_in_the_core(tmp_path):
    found = problems(
        tmp_path,
        HEAD + "  replicas: {min: 1, max: 4}\n  autoscale:\n    metric: tokens_per_s\n    target_per_replica: 10\n"
        "    slo_attainment: 1.5\n    slo_window_s: 0\n",
    )
    assert found == [
        "8:21: spec.autoscale.slo_attainment must be <= 1, got 1.5",
        "9:19: spec.autoscale.slo_window_s must be > 0, got 0",
    ]

    with pytest.raises(XpodError, match=r"autoscale.slo_attainment: 0 must be a number in \(0, 1\]"):
        parse(slo_attainment=0)
    with pytest.raises(XpodError, match="autoscale.slo_interval_s: 0 must be > 0 seconds"):
        parse(slo_interval_s=0)
    with pytest.raises(XpodError, match=r"autoscale.slo_interval_s: 60 must be <= slo_window_s \(30\)"):
        parse(slo_interval_s=60, slo_window_s=30)
    a = parse(slo_attainment=0.995, slo_window_s=86400, slo_interval_s=5).autoscale
    assert (a.slo_attainment, a.slo_window_s, a.slo_interval_s) == (0.995, 86400.0, 5.0)
    d = parse().autoscale
    assert (d.slo_attainment, d.slo_window_s, d.slo_interval_s) == (None, 3600.0, 10.0)
