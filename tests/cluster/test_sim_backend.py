"""The simulated backend: catalog-driven devices, failure injection, the env-var probe."""

import pytest

from xpod.backends.sim import SimBackend, parse_spec, probe
from xpod.hal import Health, Link
from xpod.hal.errors import XpodError


def test_devices_follow_the_catalog():
    b = SimBackend([("ascend-910c", 2), ("nvidia-h100-sxm", 1)])
    devs = b.devices()
    assert [d.vendor for d in devs] == ["ascend", "ascend", "cuda"]
    assert [d.uuid for d in devs] == ["SIM-ascend-910c-0", "SIM-ascend-910c-1", "SIM-nvidia-h100-sxm-0"]
    assert [d.dies for d in devs] == [2, 2, 1]
    assert devs[0].memory_total_bytes == 128 * 2**30 and devs[2].memory_total_bytes == 80 * 2**30
    assert all(d.simulated and d.health is Health.OK for d in devs)
    assert b.name == "sim" and b.device_type == "cpu" and b.dist_backend == "gloo"


def test_failure_injection_changes_health_and_memory():
    b = SimBackend([("ascend-910b3", 4)])
    b.set_health(2, Health.CRITICAL)
    b.set_memory_used(1, 2**30)
    assert b.health() == {0: Health.OK, 1: Health.OK, 2: Health.CRITICAL, 3: Health.OK}
    assert b.devices()[1].memory_used_bytes == 2**30
    with pytest.raises(XpodError, match="no simulated device 4"):
        b.set_health(4, Health.OK)
    with pytest.raises(XpodError, match="outside"):
        b.set_memory_used(0, 65 * 2**30)


def test_topology_uses_the_models_link():
    t = SimBackend([("ascend-910b3", 2), ("hygon-k100", 2)]).topology()
    assert t.link(0, 1) is Link.FABRIC  # HCCS
    assert t.link(2, 3) is Link.PCIE_SWITCH  # Hygon: PCIe only
    assert t.link(1, 2) is Link.PCIE_HOST


def test_bad_counts_and_models_are_user_errors():
    with pytest.raises(XpodError, match="must be an integer >= 1"):
        SimBackend([("ascend-910c", 0)])
    with pytest.raises(XpodError, match="did you mean 'nvidia-h100-sxm'"):
        SimBackend([("nvidia-h100-sx", 1)])


def test_parse_spec():
    assert parse_spec("ascend-910c:8, nvidia-h100-sxm:2") == [("ascend-910c", 8), ("nvidia-h100-sxm", 2)]
    for bad, token in [
        ("ascend-910c", "ascend-910c"),
        ("ascend-910c:x", "ascend-910c:x"),
        ("ascend-910c:1,,cpu:2", ""),
        ("ascend-910c:0", "ascend-910c:0"),
    ]:
        with pytest.raises(XpodError, match=f"bad token {token!r}"):
            parse_spec(bad)


def test_probe_reads_the_environment(monkeypatch):
    monkeypatch.delenv("XPOD_SIM_DEVICES", raising=False)
    assert probe() == "no simulated devices configured (set XPOD_SIM_DEVICES=model:count,...)"
    monkeypatch.setenv("XPOD_SIM_DEVICES", "ascend-910c:8")
    b = probe()
    assert isinstance(b, SimBackend) and len(b.devices()) == 8
    monkeypatch.setenv("XPOD_SIM_DEVICES", "ascend-910c:8,bogus:1")
    reason = probe()
    assert isinstance(reason, str) and "'bogus:1'" in reason
