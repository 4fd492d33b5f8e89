"""Job specs checked like cluster files (issue 19, item 5): every problem at once as
FILE:LINE:COL, did-you-mean, complete allowed keys, unknown models and vendors named as such,
non-UTF-8 and binary input in one line, the YAML alias guards, the shipped schemas, and
`xpod job validate` / `xpod job schema` as a user runs them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jsonschema
import pytest

from xpod.hal.cluster import load_cluster
from xpod.hal.errors import XpodError
from xpod.scheduler import jobspec
from xpod.scheduler.core import spec as core_spec
from xpod.scheduler.jobspec.schema import KINDS, all_kinds_schema, schema
from xpod.scheduler.contract import SERVING_TASK_KEYS, TASK_KEYS

ROOT = pathlib.Path(__file__).resolve().parents[2]
XPOD = [sys.executable, "-m", "xpod.runtime.cli"]
CM384 = ROOT / "examples" / "clusters" / "cloudmatrix384.yaml"


def xpod(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*XPOD, *args], capture_output=True, text=True, timeout=120)


def problems(tmp_path, text: str, **kw) -> list[str]:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    with pytest.raises(jobspec.DocumentError) as err:
        jobspec.load_job_file(str(p), **kw)
    return [line.removeprefix(f"{p}:") for line in err.value.messages]


def test_every_problem_at_once_each_at_its_line_and_column(tmp_path):
    found = problems(
        tmp_path,
        "apiVersion: xpod/v1\n"
        "kind: TrainingJob\n"
        "metadata:\n"
        "  name: Llama_70B\n"
        "  lables: {team: nlp}\n"
        "spec:\n"
        "  tasks: 0\n"
        "  devices:\n"
        "    count: 16\n"
        "    model: ascend-910x\n"
        "    vendr: ascend\n"
        "  comand: [python, train.py]\n"
        "  restart: {max_restart: 2}\n"
        "  simulate: {duration_s: -1}\n",
    )
    assert found == [
        "4:9: metadata.name: 'Llama_70B' must be 1..63 of a-z, 0-9, '-', '.', starting and ending with a letter or digit",
        "5:3: unknown key 'lables' in metadata (did you mean 'labels'?)",
        "7:10: spec.tasks must be >= 1, got 0",
        "10:12: spec.devices.model: unknown device model 'ascend-910x' (closest: ascend-910c, ascend-910b4, "
        "ascend-910b3; `xpod devices` and hal/catalog.yaml list them)",
        "11:5: unknown key 'vendr' in spec.devices (did you mean 'vendor'?)",
        "12:3: unknown key 'comand' in spec (did you mean 'command'?)",
        "13:13: unknown key 'max_restart' in spec.restart (did you mean 'max_restarts'?)",
        "14:26: spec.simulate.duration_s must be >= 0, got -1",
    ]


def test_allowed_keys_are_complete_per_kind(tmp_path):
    """The agent's keys (command, env, workdir, restart, simulate) are in the list the old
    message left them out of; each kind lists its own keys."""
    base = "metadata: {name: x}\nspec:\n  deadline: 1\n"
    training = problems(tmp_path, "kind: TrainingJob\n" + base)
    assert training == [
        "4:3: unknown key 'deadline' in spec (allowed: command, cpu, devices, domain_block, env, expected_duration_seconds, "
        "grace_period_s, "
        "memory, min_tasks, node_selector, priority_class, queue, restart, roles, simulate, tasks, within, workdir)"
    ]
    serving = problems(tmp_path, "kind: ServingJob\n" + base)
    assert "replicas, restart, roles, simulate, tasks_per_replica, within, workdir)" in serving[0]
    assert " tasks," not in serving[0] and "min_tasks" not in serving[0]
    batch = problems(tmp_path, "kind: BatchJob\n" + base + "  min_tasks: 1\n")
    assert batch[1] == "5:3: unknown key 'min_tasks' in spec (did you mean 'tasks'?)"


def test_schemas_list_exactly_the_keys_the_parsers_read():
    """The schema is the one source of a job file's structure: its spec keys are the core's
    keys (without id, kind, name, which the envelope carries) plus the agent's task keys."""
    core_keys = set(core_spec._TOP) - {"id", "kind", "name"}
    every_kind = set()
    for kind in KINDS:
        props = set(schema(kind)["properties"]["spec"]["properties"])
        assert props <= core_keys | set(TASK_KEYS) | (set(SERVING_TASK_KEYS) if kind == "ServingJob" else set()), kind
        assert set(TASK_KEYS) <= props, kind
        every_kind |= props
        assert set(schema(kind)["properties"]["spec"]["properties"]["devices"]["properties"]) == core_spec._DEV
    assert every_kind == core_keys | set(TASK_KEYS) | set(SERVING_TASK_KEYS)


def test_shipped_schema_files_are_the_schemas():
    folder = ROOT / "scheduler" / "jobspec" / "schemas"
    for kind in KINDS:
        assert json.loads((folder / f"{kind}.json").read_text()) == schema(kind), f"run: xpod job schema {kind}"
    assert json.loads((folder / "job.json").read_text()) == all_kinds_schema(), "run: xpod job schema"
    for path in folder.glob("*.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_the_combined_schema_judges_each_kind_by_its_own_schema():
    validator = jsonschema.Draft202012Validator(all_kinds_schema())
    serving = {"kind": "ServingJob", "metadata": {"name": "s"}, "spec": {"replicas": 2}}
    assert not list(validator.iter_errors(serving))
    training = {"kind": "TrainingJob", "metadata": {"name": "s"}, "spec": {"replicas": 2}}
    assert [e.message for e in validator.iter_errors(training)] == [
        "Additional properties are not allowed ('replicas' was unexpected)"
    ]


#: example jobs written for another example descriptor than CloudMatrix384 (their header says which)
POD_OF = {"prefill-decode-autoscale.yaml": ROOT / "examples" / "clusters" / "pd-mixed.yaml"}


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_job_is_valid_and_fits_the_example_pod(path):
    job = jobspec.load_job_file(str(path), cluster=load_cluster(str(POD_OF.get(path.name, CM384))))
    assert job.document["kind"] in KINDS
    assert all(not found for found in [jobspec.violations(job.document)])


def test_unknown_model_or_vendor_is_named_with_the_closest_catalog_names(tmp_path):
    head = "kind: BatchJob\nmetadata: {name: x}\nspec:\n  devices:\n"
    assert problems(tmp_path, head + "    model: nvidia-h100-sxn\n") == [
        "5:12: spec.devices.model: unknown device model 'nvidia-h100-sxn' (closest: nvidia-h100-sxm, nvidia-h200, "
        "nvidia-a100-sxm4-80gb; "
        "`xpod devices` and hal/catalog.yaml list them)"
    ]
    assert problems(tmp_path, head + "    vendor: nvidia\n") == [
        "5:13: spec.devices.vendor: unknown vendor 'nvidia' (known vendors: ascend, cambricon, cpu, cuda, hygon, "
        "mthreads)"
    ]
    assert problems(tmp_path, head + "    vendor: cambrcon\n") == [
        "5:13: spec.devices.vendor: unknown vendor 'cambrcon' (closest: cambricon)"
    ]
    # a catalog model's display name or alias: the id the scheduler matches on is named
    assert problems(tmp_path, head + "    model: Ascend 910C\n") == [
        "5:12: spec.devices.model: 'Ascend 910C' is a name of the catalog model 'ascend-910c': write the id, "
        "model: ascend-910c"
    ]


def test_models_a_cluster_or_the_server_knows_are_not_unknown(tmp_path):
    doc = {"kind": "BatchJob", "metadata": {"name": "x"}, "spec": {"devices": {"model": "acme-x1"}}}
    assert [v.field for v in jobspec.violations(doc)] == ["spec.devices.model"]
    assert jobspec.violations(doc, known_models={"acme-x1"}) == []
    p = tmp_path / "job.yaml"
    p.write_text("kind: BatchJob\nmetadata: {name: x}\nspec:\n  devices: {model: acme-x1}\n")
    loaded = jobspec.load_job_file(str(p), check_models=False)  # xpod submit: the server judges names
    assert loaded.outside_catalog()
    assert loaded.device_name_problems({"acme-x1": 8}) == []
    assert loaded.device_name_problems({"acme-x2": 8})[0].startswith(f"{p}:4:20: spec.devices.model: unknown")


def test_violations_of_a_document_name_their_fields():
    """What the server answers as INVALID_ARGUMENT field violations: every problem, by path."""
    doc = {
        "kind": "ServingJob",
        "metadata": {"name": "s"},
        "spec": {"replicas": {"min": 0, "mx": 3}, "cpu": "8 cores", "memory": "lots", "command": [""]},
    }
    assert [(v.field, v.message) for v in jobspec.violations(doc)] == [
        ("spec.replicas.min", "spec.replicas.min must be >= 1, got 0"),
        ("spec.replicas.mx", "unknown key 'mx' in spec.replicas (did you mean 'max'?)"),
        ("spec.cpu", "spec.cpu: '8 cores' is not a number of cores: give 8, 0.5 or '500m'"),
        (
            "spec.memory",
            "spec.memory: 'lots' is not a size: give bytes, or a number with K, M, G, T (x1000) or Ki, Mi, Gi, Ti "
            "(x1024), e.g. 64Gi",
        ),
        ("spec.command[0]", "spec.command[0] must not be empty"),
    ]
    assert [v.field for v in jobspec.violations({"kind": "Servingjob"})] == ["kind"]
    assert "did you mean 'ServingJob'" in jobspec.violations({"kind": "Servingjob"})[0].message
    assert jobspec.violations([1]) == [
        jobspec.Violation("", "a job is a mapping with kind, metadata and spec, got a list")
    ]


def test_what_only_the_parsers_and_the_core_know_is_checked_too(tmp_path):
    """Once the structure is right, the agent's and the core's own rules run: reserved variables,
    fractions of devices, unknown priority classes."""
    head = "kind: TrainingJob\nmetadata: {name: x}\nspec:\n"
    assert problems(tmp_path, head + "  env: {RANK: '3'}\n") == [
        "4:15: spec.env.RANK: is reserved: xpod sets the visible-devices, rendezvous and XPOD_* variables itself; remove it"
    ]
    assert problems(tmp_path, head + "  devices: {count: 2, milli: 500}\n") == [
        "4:30: spec.devices.milli: a fraction of a device (500m) needs count: 1, not 2"
    ]
    assert problems(tmp_path, head + "  priority_class: urgent\n") == [
        "4:19: spec.priority_class: unknown class 'urgent' (known: high, low, normal, system)"
    ]


def test_a_job_that_cannot_fit_the_cluster_says_so_with_the_cores_reason(tmp_path):
    found = problems(
        tmp_path,
        "kind: TrainingJob\nmetadata: {name: big}\nspec:\n  tasks: 100\n"
        "  devices: {count: 16, model: ascend-910c}\n  within: supernode\n",
        cluster=load_cluster(CM384),
    )
    assert len(found) == 1 and found[0].startswith(
        f"3:1: spec: does not fit cluster cloudmatrix384 ({CM384}) even when it is empty: NeverFits: needs 100 x 16"
    )
    # a model the cluster lacks (but the catalog has) cannot fit either
    found = problems(
        tmp_path,
        "kind: BatchJob\nmetadata: {name: b}\nspec:\n  devices: {count: 1, model: nvidia-h100-sxm}\n",
        cluster=load_cluster(CM384),
    )
    assert len(found) == 1 and "does not fit cluster cloudmatrix384" in found[0], found


def test_yaml_alias_guards_of_the_cluster_loader_hold_for_job_files(tmp_path):
    recursive = problems(tmp_path, "kind: BatchJob\nmetadata: {name: x}\nspec: &a\n  tasks: 1\n  x: [*a, *a]\n")
    assert "3:7: a YAML alias refers to a value that contains it; remove the recursive alias" in recursive
    laughs = "kind: BatchJob\nmetadata: {name: x}\nspec:\n  env:\n    L0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 7):  # 10 ** 7 values from 7 short lines ("billion laughs")
        laughs += f"    L{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n"
    found = problems(tmp_path, laughs)
    assert any("the document expands to more than 200000 values (YAML aliases?)" in f for f in found), found
    assert problems(tmp_path, "kind: BatchJob\nmetadata: {name: x}\nspec: {<<: {tasks: 1}}\n") == [
        "3:8: merge keys ('<<') are not supported; write the keys out"
    ]
    assert problems(tmp_path, "kind: BatchJob\nkind: BatchJob\nmetadata: {name: x}\nspec: {}\n") == [
        "2:1: duplicate key 'kind' in the document"
    ]


def test_non_utf8_and_binary_files_are_one_line(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_bytes("kind: BatchJob\nmetadata: {name: x}\nspec: {queue: caf\u00e9}\n".encode("latin-1"))
    with pytest.raises(XpodError) as err:
        jobspec.load_job_file(str(p))
    assert str(err.value) == f"{p}: not UTF-8 text (invalid continuation byte at byte 52)"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(XpodError) as err:
        jobspec.load_job_file(str(p))
    assert str(err.value) == f"{p}: binary data (a NUL byte at byte 8), not YAML text"
    assert problems(tmp_path, "") == [
        "1:1: the file is empty; expected a job (apiVersion: xpod/v1, kind: TrainingJob | ServingJob | BatchJob)"
    ]
    assert problems(tmp_path, "kind: BatchJob\n---\nkind: BatchJob\n") == [
        "3:1: more than one YAML document; put one job per file"
    ]


def test_job_validate_and_schema_commands(tmp_path):
    ok = xpod("job", "validate", str(ROOT / "examples" / "jobs" / "llama-pretrain.yaml"), "--cluster", str(CM384))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(
        f"{ROOT / 'examples' / 'jobs' / 'llama-pretrain.yaml'}: ok: TrainingJob 'llama-70b-pretrain', 4 task(s) x "
        "16 ascend-910c, within supernode, queue research, priority high; fits cluster 'cloudmatrix384'"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: TrainingJob\nmetadata: {name: x}\nspec: {tasks: 0, taks: 1}\n")
    r = xpod("job", "validate", str(bad))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.splitlines() == [
        f"{bad}:3:15: spec.tasks must be >= 1, got 0",
        f"{bad}:3:18: unknown key 'taks' in spec (did you mean 'tasks'?)",
    ]
    r = xpod("job", "validate", "--json", str(ROOT / "examples" / "jobs" / "deepseek-serving.yaml"))
    summary = json.loads(r.stdout)
    assert (summary["kind"], summary["tasks"], summary["min_tasks"]) == ("ServingJob", 4, 2)
    r = xpod("job", "schema", "ServingJob")
    assert r.returncode == 0 and json.loads(r.stdout) == schema("ServingJob")
    r = xpod("job", "schema", "Pod")
    assert r.returncode == 2 and "invalid choice: 'Pod'" in r.stderr
