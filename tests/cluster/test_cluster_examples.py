"""Every example descriptor validates, with the right counts; schema file and package data agree."""

import json
import os

import jsonschema
import pytest
import yaml

from xpod.hal.cluster import default_cluster_text, load_cluster, load_default_cluster
from xpod.hal.cluster_schema import schema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples", "clusters")

# file -> (nodes, chips, devices, {model: devices}, tier numbers)
EXPECTED = {
    "cloudmatrix384.yaml": (48, 384, 768, {"ascend-910c": 768}, [1, 2, 3, 4]),
    "cloudmatrix384x2.yaml": (96, 768, 1536, {"ascend-910c": 1536}, [1, 2, 3, 4]),
    "atlas-800t-a2.yaml": (4, 32, 32, {"ascend-910b3": 32}, [1, 2, 3]),
    "dgx-h100.yaml": (4, 32, 32, {"nvidia-h100-sxm": 32}, [1, 2]),
    "pd-mixed.yaml": (32, 256, 384, {"ascend-910b3": 128, "ascend-910c": 256}, [1, 2, 3, 3, 4, 5]),
    "heterogeneous.yaml": (
        15,
        74,
        82,
        {
            "ascend-910b3": 32,
            "cambricon-mlu370-x8": 16,
            "mthreads-s4000": 8,
            "hygon-k100-ai": 8,
            "nvidia-h100-sxm": 16,
            "lab-fpga": 2,
        },
        [1, 1, 1, 1, 1, 2, 3],
    ),
}


def test_every_example_is_in_the_table():
    assert sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_with_expected_counts(name):
    nodes, chips, devices, per_model, tiers = EXPECTED[name]
    s = load_cluster(os.path.join(EXAMPLES, name)).summary()
    assert (s["nodes"], s["chips"], s["devices"]) == (nodes, chips, devices)
    assert {m: v["devices"] for m, v in s["models"].items()} == per_model
    assert [t["tier"] for t in s["tiers"]] == tiers


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_passes_the_published_schema(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        data = yaml.safe_load(f)
    with open(os.path.join(REPO, "hal", "cluster_schema.json")) as f:
        published = json.load(f)
    jsonschema.Draft202012Validator(published).validate(data)


def test_cloudmatrix384_figures_normalised_to_base_units():
    c = load_cluster(os.path.join(EXAMPLES, "cloudmatrix384.yaml"))
    by_name = {t.name: t for t in c.tiers()}
    assert by_name["ub-l2"].bandwidth_bytes_per_s == 196_000_000_000
    assert by_name["ub-l2"].latency_seconds == pytest.approx(1e-6)
    assert by_name["roce"].bandwidth_bytes_per_s == 25_000_000_000  # 200 Gb/s
    s = c.summary()
    assert s["memory_bytes"] == 384 * 128 * 2**30
    assert s["bf16_tflops"] == 384 * 752
    assert s["domains"] == {"supernode": 1, "rack": 12}


def test_published_schema_file_is_the_generated_one():
    with open(os.path.join(REPO, "hal", "cluster_schema.json")) as f:
        assert json.load(f) == schema(), "regenerate with: xpod cluster schema > hal/cluster_schema.json"
    jsonschema.Draft202012Validator.check_schema(schema())


def test_packaged_default_is_the_cloudmatrix384_example():
    with open(os.path.join(EXAMPLES, "cloudmatrix384.yaml")) as f:
        assert default_cluster_text() == f.read()
    assert load_default_cluster().summary()["devices"] == 768
