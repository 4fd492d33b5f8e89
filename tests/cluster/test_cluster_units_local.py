"""Quantity parsing (normalised to base units) and the local-descriptor builder."""

import pytest

from xpod.backends.sim import SimBackend
from xpod.hal.cluster import parse_cluster_text
from xpod.hal.cluster_local import _warnings, build_descriptor
from xpod.hal.device import DeviceInfo, Health
from xpod.hal.units import parse_bandwidth, parse_bytes, parse_latency


@pytest.mark.parametrize(
    "text, value",
    [
        (68719476736, 68719476736),
        ("64Gi", 64 * 2**30),
        ("64GiB", 64 * 2**30),
        ("80G", 80 * 10**9),
        ("80GB", 80 * 10**9),
        ("512Mi", 512 * 2**20),
        ("1Ti", 2**40),
        ("1.5Ki", 1536),
    ],
)
def test_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "text, value",
    [
        ("392GB/s", 392 * 10**9),
        ("400Gb/s", 50 * 10**9),
        ("400Gbps", 50 * 10**9),
        ("50GiB/s", 50 * 2**30),
        ("1TB/s", 10**12),
        (12345, 12345),
        ("100 MB/s", 10**8),
    ],
)
def test_bandwidth(text, value):
    assert parse_bandwidth(text) == value


@pytest.mark.parametrize(
    "text, value", [("1us", 1e-6), ("1µs", 1e-6), ("500ns", 5e-7), ("2ms", 2e-3), ("1s", 1.0), (0.5, 0.5), (0, 0.0)]
)
def test_latency(text, value):
    assert parse_latency(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "parser, text",
    [
        (parse_bytes, "64 gigs"),
        (parse_bytes, -1),
        (parse_bytes, "0.5"),
        (parse_bandwidth, "fast"),
        (parse_bandwidth, 0),
        (parse_bandwidth, "400GB"),
        (parse_latency, "soon"),
        (parse_latency, -1),
        (parse_latency, "1 hour"),
    ],
)
def test_bad_quantities_raise_value_error(parser, text):
    with pytest.raises(ValueError):
        parser(text)


def test_local_descriptor_from_simulated_devices_validates():
    devices = SimBackend([("nvidia-h100-sxm", 8)]).devices()
    text = build_descriptor(devices, host="GPU-Box_07")
    c = parse_cluster_text(text, "local.yaml")
    assert c.nodes() == ["gpu-box_07"]
    s = c.summary()
    assert (s["chips"], s["devices"]) == (8, 8)
    assert c.tiers()[0].link == "NVLink" and c.tiers()[0].bandwidth_bytes_per_s == 450 * 10**9


def test_local_descriptor_declares_an_unknown_model_inline():
    dev = DeviceInfo(
        vendor="cuda",
        model="NVIDIA Hopper-Next 999GB",
        index=0,
        physical_index=0,
        memory_total_bytes=999 * 2**30,
        health=Health.OK,
    )
    text = build_descriptor([dev, DeviceInfo(**{**dev.__dict__, "index": 1, "physical_index": 1})], host="h1")
    c = parse_cluster_text(text, "local.yaml")
    (model,) = c.models.values()
    assert model.vendor == "cuda" and model.memory_bytes == 999 * 2**30
    assert c.tiers()[0].link == "PCIe" and c.tiers()[0].bandwidth_bytes_per_s is None  # unknown, not guessed


def test_local_descriptor_warns_about_a_second_model():
    devices = SimBackend([("ascend-910c", 2), ("nvidia-h100-sxm", 1)]).devices()
    assert _warnings(devices) == [
        "this host also has 1 x nvidia-h100-sxm; an xpod/v1 node group holds one device model, "
        "so only ascend-910c is described"
    ]
    assert parse_cluster_text(build_descriptor(devices, host="h"), "l.yaml").summary()["devices"] == 4


INLINE = """\
apiVersion: xpod/v1
kind: Cluster
metadata: {name: inline}
spec:
  deviceModels:
    twin-card: {vendor: cambricon, displayName: Twin, memory: 48Gi, bf16Tflops: 100, diesPerPackage: 2, schedulableUnit: die}
  fabrics:
    - {name: bridge, plane: scale-up, link: MLU-Link, tiers: [{tier: 1, scope: node, bandwidth: 100GB/s}]}
    - {name: eth, plane: scale-out, link: RoCE, tiers: [{tier: 2, scope: cluster, bandwidth: 100Gb/s}]}
  nodeGroups:
    - {name: g, hosts: "h[1-2]", devices: {model: twin-card, packagesPerNode: 4}, memory: 256Gi}
"""


def test_inline_die_model_counts_dies_as_devices():
    c = parse_cluster_text(INLINE, "inline.yaml")
    s = c.summary()
    assert (s["nodes"], s["chips"], s["devices"]) == (2, 8, 16)
    assert s["models"]["twin-card"]["memory_bytes"] == 8 * 48 * 2**30
    assert s["bf16_tflops"] == 800
    assert c.node_groups[0].memory_bytes == 256 * 2**30
    assert c.topology().device("h1/7").package == 3


def test_inline_die_model_needs_two_dies():
    from xpod.hal.cluster import ClusterValidationError

    with pytest.raises(ClusterValidationError) as info:
        parse_cluster_text(INLINE.replace("diesPerPackage: 2", "diesPerPackage: 1"), "inline.yaml")
    assert info.value.messages == [
        "inline.yaml:6:122: device model 'twin-card': schedulableUnit 'die' needs diesPerPackage >= 2"
    ]
