"""`xpod cluster ...` as a user runs it: exit codes, JSON shape, one-line errors, no traceback."""

import json
import os

import pytest
import yaml

from tests.conftest import xpod_cli
from xpod.hal.cluster_schema import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CM = os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml")


def test_validate_json_reports_cloudmatrix384_counts():
    r = xpod_cli("cluster", "validate", CM, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["nodes"], s["chips"], s["devices"]) == (48, 384, 768)
    assert s["models"]["ascend-910c"]["devices"] == 768
    assert s["vendors"] == {"ascend": 768}
    assert [t["tier"] for t in s["tiers"]] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "name, old, new, expected",
    [
        (
            "unknown-key",
            "      devices: {model",
            "      devicez: {model",
            ":61:7: unknown key 'devicez' in spec.nodeGroups[0] (did you mean 'devices'?)",
        ),
        (
            "syntax",
            "levels: [supernode, rack, node]",
            "levels: [supernode, rack, node",
            ":44:5: YAML syntax error: expected ',' or ']'",
        ),
        (
            "word",
            "packagesPerNode: 8",
            "packagesPerNode: eight",
            ":61:54: spec.nodeGroups[0].devices.packagesPerNode must be a whole number, got 'eight' (text)",
        ),
        (
            "negative",
            "packagesPerNode: 8",
            "packagesPerNode: -8",
            ":61:54: spec.nodeGroups[0].devices.packagesPerNode must be >= 1, got -8",
        ),
    ],
)
def test_broken_cloudmatrix_variants_fail_with_file_line(tmp_path, name, old, new, expected):
    with open(CM) as f:
        text = f.read()
    assert old in text
    bad = tmp_path / f"{name}.yaml"
    bad.write_text(text.replace(old, new, 1))
    r = xpod_cli("cluster", "validate", str(bad), "--json")
    assert r.returncode == 1
    assert r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith(str(bad) + expected)
    assert all(line.startswith(str(bad) + ":") for line in r.stderr.splitlines())
    assert "Traceback" not in r.stderr
    if name == "unknown-key":
        r = xpod_cli("cluster", "show", str(bad))
        assert r.returncode == 1 and r.stderr.startswith(str(bad) + expected) and "Traceback" not in r.stderr


def test_show_prints_tables_and_totals():
    r = xpod_cli("cluster", "show", CM, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for text in ("node groups", "ascend-910c", "ub-l2", "196 GB/s", "48 TiB", "288.8 PFLOPS"):
        assert text in r.stdout


def test_schema_is_the_generated_schema():
    r = xpod_cli("cluster", "schema")
    assert r.returncode == 0
    assert json.loads(r.stdout) == schema()


def test_local_descriptor_validates(tmp_path):
    env = {**os.environ, "XPOD_SIM_DEVICES": "ascend-910c:4"}
    r = xpod_cli("cluster", "local", "--simulated", env=env)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["spec"]["nodeGroups"][0]["devices"] == {"model": "ascend-910c", "packagesPerNode": 4}
    path = tmp_path / "local.yaml"
    path.write_text(r.stdout)
    r2 = xpod_cli("cluster", "validate", str(path), "--json")
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["devices"] == 8


def test_missing_file_and_missing_subcommand():
    r = xpod_cli("cluster", "validate", "/nonexistent/c.yaml")
    assert r.returncode == 1
    assert r.stderr.strip() == "xpod: /nonexistent/c.yaml: cannot read: No such file or directory"
    r = xpod_cli("cluster")
    assert r.returncode == 2 and "Traceback" not in r.stderr
