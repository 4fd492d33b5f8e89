"""``xpod replay mix`` on small slices of the Azure conversation trace and the Philly job trace
(tests/fixtures/mix, SOURCES.md there): ten virtual minutes on the simulated CloudMatrix384."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core.profile import default_profile
from xpod.scheduler.sim import mix

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "mix"
CLUSTER = str(ROOT / "examples" / "clusters" / "cloudmatrix384.yaml")
SERVING = str(FIX / "azure_conv_first10min.csv")
TRAINING = str(FIX / "philly_day30_10min.csv")
JOB = str(FIX / "chat.yaml")
TEN_MINUTES = mix.MixSettings(hour_s=600.0, training_from_s=2592000.0)


def run(profile, name: str) -> mix.MixResult:
    return mix.run_mix(CLUSTER, SERVING, JOB, 40, TRAINING, profile, name, TEN_MINUTES)


@pytest.fixture(scope="module")
def results() -> dict[str, mix.MixResult]:
    return {
        "default": run(default_profile(), "default"),
        "static": run(mix.baseline_profile("static-partition"), "static-partition"),
        "reactive": run(mix.baseline_profile("reactive-hpa"), "reactive-hpa"),
    }


def test_demand_is_scaled_so_its_peak_needs_the_peak_replicas():
    reqs = mix.read_serving_trace(SERVING)
    load = mix.demand_series(reqs, "tokens_per_s", 600.0, 10.0)
    assert len(load) == 60
    manual = sum(a + b for t, a, b in reqs if 20.0 <= t < 30.0) / 10.0
    assert load[2] == pytest.approx(manual)
    r = mix.run_mix(CLUSTER, SERVING, JOB, 40, TRAINING, default_profile(), "d", TEN_MINUTES)
    assert max(r.curve_demand) == pytest.approx(40.0)


def test_every_profile_places_legally_and_static_keeps_its_peak(results):
    for r in results.values():
        assert r.violations == 0, r.violation_examples
        assert 0 < r.utilisation <= 1
        assert len(r.curve_ready) == 60
    static = results["static"]
    assert static.curve_ready[5:] == [40] * 55  # serving reserved at its peak (after its start-up)
    assert static.preemptions == 0 and static.gang_restarts == 0


def test_following_demand_lends_training_more_than_the_static_partition(results):
    d, s, r = results["default"], results["static"], results["reactive"]
    # these ten minutes peak early: the default's spare capacity (70 % target utilisation, a
    # 120 s scale-down window) keeps nearly the peak; replicas aimed at the full target do not
    assert r.serving_device_hours < s.serving_device_hours
    # reactive-hpa lends training more devices, but its preemptions (no notice) lose work: its
    # kept device-hours need not beat the static partition's in ten minutes
    assert sum(r.curve_training) > sum(s.curve_training)
    assert d.training_device_hours >= s.training_device_hours
    assert d.slo_attainment >= r.slo_attainment


def test_cli_writes_json_table_and_plot(tmp_path):
    out, png = tmp_path / "mix.json", tmp_path / "mix.png"
    cmd = [sys.executable, "-m", "xpod.runtime.cli.main", "replay", "mix", "--cluster", CLUSTER, "--serving", SERVING]
    cmd += ["--serving-job", JOB, "--peak-replicas", "40", "--training", TRAINING, "--training-from", "2592000"]
    cmd += ["--hour", "300", "--json", str(out), "--plot", str(png), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    docs = json.loads(out.read_text())
    assert [d["profile"] for d in docs] == ["default", "static-partition", "reactive-hpa"]
    keys = {"engine", "profile", "slo_attainment", "scale_up_p99_s", "training_device_hours", "gang_restarts"}
    keys |= {"preemptions", "utilisation", "seconds"}
    assert all(keys <= set(d) for d in docs)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "static-partition" in done.stdout


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("trace.csv", "TIMESTAMP,ContextTokens\n", "trace.csv:1: missing column 'GeneratedTokens'"),
        (
            "trace.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,12,x\n",
            "trace.csv:2: GeneratedTokens: 'x'",
        ),
        (
            "trace.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n",
            "trace.csv:2: TIMESTAMP: 'yesterday'",
        ),
        ("trace.jsonl", '{"timestamp": 0, "input_length": 5}\n', "trace.jsonl:1: missing field 'output_length'"),
    ],
)
def test_bad_serving_trace_one_line_naming_file_line_field(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(XpodError) as err:
        mix.read_serving_trace(str(p))
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0]) + message[len(message.split(":")[0]) :])


def test_bad_training_trace_and_serving_job(tmp_path):
    bad = tmp_path / "jobs.csv"
    bad.write_text("job_id,submit_s,duration_s,num_devices\na,0,-5,1\n")
    with pytest.raises(XpodError, match=r"jobs.csv:2: duration_s: '-5' must be a finite number >= 0"):
        mix.run_mix(CLUSTER, SERVING, JOB, 40, str(bad), default_profile(), "d", TEN_MINUTES)
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "kind: ServingJob\nmetadata: {name: s}\nspec:\n  replicas: {min: 1, max: 4}\n"
        "  devices: {count: 8, model: ascend-910c}\n"
    )
    with pytest.raises(XpodError, match=r"plain.yaml: spec.autoscale: missing"):
        mix.run_mix(CLUSTER, SERVING, str(plain), 40, TRAINING, default_profile(), "d", TEN_MINUTES)


PD_CLUSTER = str(ROOT / "examples" / "clusters" / "pd-mixed.yaml")
PD_JOB = str(ROOT / "examples" / "jobs" / "prefill-decode-autoscale.yaml")


def test_a_serving_job_with_roles_replays_each_role_on_its_own_tokens():
    reqs = mix.read_serving_trace(SERVING)
    prompt = mix.demand_series(reqs, "tokens_per_s", 600.0, 10.0, "prompt")
    generated = mix.demand_series(reqs, "tokens_per_s", 600.0, 10.0, "generated")
    assert prompt[2] == pytest.approx(sum(a for t, a, _ in reqs if 20.0 <= t < 30.0) / 10.0)
    assert generated[2] == pytest.approx(sum(b for t, _, b in reqs if 20.0 <= t < 30.0) / 10.0)
    prefill, decode = mix.serving_jobs_from_file(PD_JOB, 8)
    assert (mix.role_tokens(prefill), mix.role_tokens(decode)) == ("prompt", "generated")
    assert (prefill.devices.model, decode.devices.model, decode.group) == (
        "ascend-910b3",
        "ascend-910c",
        "pd-autoscale",
    )
    r = mix.run_mix(PD_CLUSTER, SERVING, PD_JOB, 8, TRAINING, default_profile(), "d", TEN_MINUTES)
    assert r.violations == 0, r.violation_examples
    assert set(r.roles) == {"prefill", "decode"} and r.peak_replicas == 16
    assert r.roles["prefill"]["tokens"] == "prompt" and r.roles["decode"]["tokens"] == "generated"
    # each role's own peak needs 8 of its replicas; the curve sums the roles' replicas
    assert max(r.curve_demand) <= 16.0 + 1e-9 and len(r.curve_ready) == 60
    assert r.slo_attainment <= min(role["slo_attainment"] for role in r.roles.values())
    assert "roles" in r.to_json() and r.training_device_hours > 0


def test_a_role_without_autoscale_is_refused_naming_it(tmp_path):
    text = (
        pathlib.Path(PD_JOB)
        .read_text()
        .replace("      autoscale: {metric: tokens_per_s, target_per_replica: 4000}\n", "")
    )
    bad = tmp_path / "pd.yaml"
    bad.write_text(text)
    with pytest.raises(XpodError, match=r"spec.roles\[1\].autoscale: missing"):
        mix.run_mix(PD_CLUSTER, SERVING, str(bad), 8, TRAINING, default_profile(), "d", TEN_MINUTES)
