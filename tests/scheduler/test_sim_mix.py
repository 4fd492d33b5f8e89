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
    assert mix.role_tokens([prefill, decode]) == ["prompt", "generated"]  # --role-tokens' default
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


def _renamed(tmp_path, prefill: str, decode: str) -> str:
    text = pathlib.Path(PD_JOB).read_text().replace("- name: prefill", f"- name: {prefill}")
    path = tmp_path / "pd.yaml"
    path.write_text(text.replace("- name: decode", f"- name: {decode}"))
    return str(path)


def test_role_tokens_are_what_the_flag_says_not_guessed_from_the_name(tmp_path):
    jobs = mix.serving_jobs_from_file(PD_JOB, 8)
    assert mix.role_tokens(jobs, "prefill=both,decode=prompt") == ["both", "prompt"]
    assert mix.role_tokens(jobs, "decode=generated") == ["both", "generated"]  # a role not named: both
    assert mix.role_tokens(jobs, "") == ["both", "both"]
    # names the default does not give exactly follow both; the flag names them
    other = mix.serving_jobs_from_file(_renamed(tmp_path, "prefill-a", "decoder"), 8)
    assert mix.role_tokens(other) == ["both", "both"]
    assert mix.role_tokens(other, "prefill-a=prompt,decoder=generated") == ["prompt", "generated"]
    # a job without roles follows both; the default (no flag) is no error for it
    assert mix.role_tokens(mix.serving_jobs_from_file(JOB, 40)) == ["both"]
    r = mix.run_mix(
        PD_CLUSTER, SERVING, PD_JOB, 8, TRAINING, default_profile(), "d", TEN_MINUTES, role_tokens_text="decode=both"
    )
    assert (r.roles["prefill"]["tokens"], r.roles["decode"]["tokens"]) == ("both", "both")


@pytest.mark.parametrize(
    "text,job,message",
    [
        ("prefill=promt", PD_JOB, "--role-tokens prefill=promt: prefill=promt: unknown token kind 'promt'"),
        ("prefil=prompt", PD_JOB, "--role-tokens prefil=prompt: the serving job has no role 'prefil'"),
        ("prefill", PD_JOB, "--role-tokens prefill: 'prefill' is not ROLE=KIND"),
        (
            "prefill=prompt,prefill=both",
            PD_JOB,
            "--role-tokens prefill=prompt,prefill=both: role 'prefill' named twice",
        ),
        ("prefill=prompt", JOB, "--role-tokens prefill=prompt: the serving job has no roles"),
    ],
)
def test_bad_role_tokens_one_line_naming_the_flag_and_value(text, job, message):
    jobs = mix.serving_jobs_from_file(job, 8)
    with pytest.raises(XpodError) as err:
        mix.role_tokens(jobs, text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_cli_refuses_an_unknown_token_kind_in_one_line():
    cmd = [sys.executable, "-m", "xpod.runtime.cli", "replay", "mix", "--cluster", PD_CLUSTER, "--serving"]
    cmd += [SERVING, "--serving-job", PD_JOB, "--peak-replicas", "8", "--training", TRAINING, "--no-progress"]
    done = subprocess.run(cmd + ["--role-tokens", "decode=output"], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--role-tokens decode=output: decode=output: unknown token kind 'output'" in lines[0]
    assert mix.DEFAULT_ROLE_TOKENS in (ROOT / "docs" / "reference" / "cli.md").read_text()  # the help says the default


def test_training_is_split_over_every_model_in_proportion_to_its_devices():
    from xpod.scheduler.core.from_cluster import load_inventory

    nodes, _ = load_inventory(PD_CLUSTER)
    models = mix.training_models(nodes)
    assert [(m.model, m.devices, m.per_node) for m in models] == [("ascend-910c", 256, 16), ("ascend-910b3", 128, 8)]
    jobs = mix.read_training(TRAINING, TEN_MINUTES, models)
    work = {m.model: 0.0 for m in models}
    for tj in jobs:
        model = tj.job.devices.model
        work[model] += tj.devices * min(tj.work_s, TEN_MINUTES.hour_s - tj.arrive_s)
        assert mix.ascend_rules.validate(tj.job) is None, tj.job  # each model's rules
    share = work["ascend-910b3"] / sum(work.values())
    assert 0.2 < share < 0.45, share  # 128 of 384 devices: about a third of the work
    # one model: every job on it, as before
    one = mix.read_training(TRAINING, TEN_MINUTES, models[:1])
    assert {tj.job.devices.model for tj in one} == {"ascend-910c"} and len(one) == len(jobs)
    assert mix.shape(3, "ascend-910b3", 8) == (1, 4) and mix.shape(12, "ascend-910b3", 8) == (2, 8)


def test_roles_replay_trains_on_both_models_with_no_violation():
    r = mix.run_mix(PD_CLUSTER, SERVING, PD_JOB, 8, TRAINING, default_profile(), "d", TEN_MINUTES)
    assert r.violations == 0, r.violation_examples
    assert set(r.training_by_model) == {"ascend-910b3", "ascend-910c"}
    assert r.training_by_model["ascend-910b3"] > 0 and r.training_by_model["ascend-910c"] > 0
    doc = r.to_json()["training_device_hours_by_model"]
    assert sum(doc.values()) == pytest.approx(r.training_device_hours, abs=0.02)


def test_audit_names_a_910b_task_that_breaks_its_rules():
    from xpod.scheduler.core.from_cluster import load_inventory
    from xpod.scheduler.core.model import Binding, DeviceRequest, Job, JobKind

    nodes, _ = load_inventory(PD_CLUSTER)
    a2 = next(n for n in nodes if n.name.startswith("a2-"))
    job = Job(id="t", kind=JobKind.TRAINING, tasks=1, devices=DeviceRequest(count=2, model="ascend-910b3"))
    assert mix.audit_binding(Binding("t", 0, a2.name, (0, 1)), a2, job) is None
    assert "span HCCS groups" in mix.audit_binding(Binding("t", 0, a2.name, (3, 4)), a2, job)
    assert "3 NPUs is no legal 910B task" in mix.audit_binding(Binding("t", 0, a2.name, (0, 1, 2)), a2, job)
