"""The device catalog: every required model is there, figures are sane, lookups work."""

import pytest

from xpod.hal.catalog import SchedulableUnit, all_models, get_model, load_catalog_text, match_model
from xpod.hal.errors import XpodError

REQUIRED = [
    "ascend-910b1",
    "ascend-910b2",
    "ascend-910b3",
    "ascend-910b4",
    "ascend-910c",
    "ascend-310p3",
    "cambricon-mlu370-x8",
    "cambricon-mlu590",
    "mthreads-s4000",
    "mthreads-s5000",
    "hygon-z100",
    "hygon-k100",
    "hygon-k100-ai",
    "nvidia-a100-sxm4-80gb",
    "nvidia-h100-sxm",
    "nvidia-h200",
    "cpu",
]


def test_every_required_model_is_present_once():
    ids = [m.id for m in all_models()]
    assert sorted(ids) == sorted(REQUIRED)


@pytest.mark.parametrize("model", all_models(), ids=lambda m: m.id)
def test_every_known_figure_has_a_source(model):
    for field in (
        "memory_bytes",
        "bf16_tflops",
        "bf16_tflops_alt",
        "intra_node_bandwidth_bytes_per_s",
        "intra_node_bandwidth_alt_bytes_per_s",
        "devices_per_node",
    ):
        if getattr(model, field) is not None:
            assert field in model.sources, f"{model.id}.{field} has no source"
    if model.bf16_tflops_alt is not None:
        assert model.disputed, f"{model.id} keeps two BF16 figures without saying why"
    if model.intra_node_bandwidth_alt_bytes_per_s is not None:
        assert model.bandwidth_disputed, f"{model.id} keeps two bandwidths without saying why"
    if model.dies_per_package > 1:
        assert "dies_per_package" in model.sources
    if model.memory_bytes is None or model.bf16_tflops is None:
        assert model.notes or model.id == "cpu", f"{model.id} has unknown figures without a note"


def test_910c_is_two_schedulable_dies_of_64_gib():
    m = get_model("ascend-910c")
    assert m.dies_per_package == 2 and m.schedulable_unit is SchedulableUnit.DIE
    assert m.units_per_package == 2
    assert m.memory_bytes_per_unit == 64 * 2**30
    assert m.bf16_tflops_per_unit == 376.0


@pytest.mark.parametrize(
    "printed, expected",
    [
        ("910B3", "ascend-910b3"),
        ("Ascend910B3", "ascend-910b3"),
        ("910B2C", "ascend-910b2"),
        ("Ascend910", "ascend-910c"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-sxm"),
        ("NVIDIA A100-SXM4-80GB", "nvidia-a100-sxm4-80gb"),
        ("NVIDIA H200", "nvidia-h200"),
        ("MLU370-X8", "cambricon-mlu370-x8"),
        ("MTT S4000", "mthreads-s4000"),
        ("K100_AI", "hygon-k100-ai"),
        ("ascend-910c", "ascend-910c"),
    ],
)
def test_match_model_reads_tool_names(printed, expected):
    assert match_model(printed).id == expected


def test_match_model_returns_none_for_unknown():
    assert match_model("Quantum Flux 9000") is None
    assert match_model("") is None and match_model(None) is None


def test_get_model_unknown_has_did_you_mean():
    with pytest.raises(XpodError, match=r"unknown device model 'ascend-910x' \(did you mean 'ascend-910c'\?\)"):
        get_model("ascend-910x")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{id: x, vendor: intel, display_name: X, dies_per_package: 1, schedulable_unit: package}", "vendor 'intel'"),
        ("{id: x, vendor: cpu, display_name: X, dies_per_package: 0, schedulable_unit: package}", "dies_per_package"),
        ("{id: x, vendor: cpu, display_name: X, dies_per_package: 1, schedulable_unit: chip}", "schedulable_unit"),
        (
            "{id: x, vendor: cpu, display_name: X, dies_per_package: 1, schedulable_unit: package, memory_bytes: -1}",
            "memory_bytes",
        ),
        (
            "{id: x, vendor: cpu, display_name: X, dies_per_package: 1, schedulable_unit: package, colour: red}",
            "unknown catalog field 'colour'",
        ),
    ],
)
def test_bad_catalog_entries_are_rejected(entry, message):
    with pytest.raises(XpodError, match=message):
        load_catalog_text(f"models: [{entry}]")


def test_duplicate_alias_across_models_is_rejected():
    text = (
        "models:\n"
        "  - {id: a, vendor: cpu, display_name: A, dies_per_package: 1, schedulable_unit: package, aliases: [Z]}\n"
        "  - {id: b, vendor: cpu, display_name: B, dies_per_package: 1, schedulable_unit: package, aliases: [z]}\n"
    )
    with pytest.raises(XpodError, match="also a name of 'a'"):
        load_catalog_text(text)
