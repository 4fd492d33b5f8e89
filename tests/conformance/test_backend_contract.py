"""One suite, run against every backend that is available on this host.

cpu (and sim, when registered) are always present; a real accelerator backend joins the
parametrisation on a host that has its hardware. Backends that are unavailable here are
checked by tests/backends/test_backends_contract.py instead (imported with no vendor SDK).
"""

import dataclasses

import pytest

from xpod.hal import Backend, Capability, CapabilityUnsupported, DeviceInfo, Health, Link
from xpod.hal.registry import probe_all

from xpod.backends.sim import SimBackend

AVAILABLE = [s.backend for s in probe_all() if s.backend is not None]
# Simulated backends built explicitly, so the suite always covers die-level (910C), PCIe-only
# (Hygon) and mixed-vendor hosts, whatever XPOD_SIM_DEVICES says.
AVAILABLE += [
    SimBackend([("ascend-910c", 8)]),
    SimBackend([("nvidia-h100-sxm", 2)]),
    SimBackend([("ascend-910b3", 4), ("hygon-k100-ai", 2), ("cambricon-mlu370-x8", 1), ("cpu", 1)]),
]
IDS = [b.name if not b.simulated else "sim-" + "+".join(sorted({d.model for d in b.devices()})) for b in AVAILABLE]


def test_cpu_is_always_available():
    assert "cpu" in IDS


@pytest.fixture(params=AVAILABLE, ids=IDS)
def backend(request) -> Backend:
    return request.param


def test_identity(backend):
    assert backend.name
    assert backend.device_type and backend.dist_backend and backend.torch_module
    assert all(isinstance(c, Capability) and reason for c, reason in backend.unsupported.items())


def test_devices_are_well_formed(backend):
    devices = backend.devices()
    assert devices, f"{backend.name} is available but lists no devices"
    assert [d.index for d in devices] == list(range(len(devices)))
    for d in devices:
        assert isinstance(d, DeviceInfo)
        assert d.vendor == backend.name or (backend.simulated and d.simulated)
        assert d.simulated == backend.simulated
        assert isinstance(d.health, Health)
        assert d.dies >= 1
        if d.memory_total_bytes is not None:
            assert d.memory_total_bytes > 0
        json_ = d.to_json()
        for key in ("vendor", "model", "index", "memory_total_bytes", "memory_used_bytes", "health"):
            assert key in json_
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.index = 99  # type: ignore[misc]


def test_health_and_metrics_cover_every_device(backend):
    indices = {d.index for d in backend.devices()}
    assert set(backend.health()) == indices
    samples = backend.metrics()
    assert {s.index for s in samples} == indices
    for s in samples:
        if s.utilization_ratio is not None:
            assert 0.0 <= s.utilization_ratio <= 1.0


def test_topology_is_symmetric_with_self_on_diagonal(backend):
    topo = backend.topology()
    assert set(topo.indices) == {d.index for d in backend.devices()}
    n = len(topo.indices)
    for i in range(n):
        assert topo.links[i][i] is Link.SELF
        for j in range(n):
            assert topo.links[i][j] == topo.links[j][i]
            if i != j:
                assert topo.links[i][j] is not Link.SELF


def test_visible_env_names_exactly_the_devices(backend):
    idx = [d.index for d in backend.devices()]
    env = backend.visible_env(list(reversed(idx)))
    if backend.visible_vars.process is None:
        assert env == {}
    else:
        (var,) = env
        assert var == backend.visible_vars.process
        ids = [int(x) for x in env[var].split(",")]
        # A package whose dies the runtime numbers separately (Ascend 910C: one NPU id in
        # npu-smi, two runtime devices) lists them in extra["logical_ids"]; the variable
        # must name every one of them.
        expected = sorted(i for d in backend.devices() for i in (d.extra.get("logical_ids") or [d.index]))
        assert ids == expected
    with pytest.raises(ValueError):
        backend.visible_env([0, 0])
    with pytest.raises(ValueError):
        backend.visible_env([-1])


def test_missing_capability_raises_named_error(backend):
    for cap, reason in backend.unsupported.items():
        assert not backend.supports(cap)
        with pytest.raises(CapabilityUnsupported, match=reason[:20].replace("(", r"\(")):
            backend.require(cap)
    for cap in Capability:
        if cap not in backend.unsupported:
            backend.require(cap)


@pytest.mark.parametrize("backend", [b for b in AVAILABLE if b.device_type == "cpu"], ids=lambda b: b.name)
def test_distributed_backend_runs_a_collective(backend):
    """A one-rank process group on the backend's distributed library does a real all_reduce.
    (Multi-rank collectives run in worker processes: tests/collectives/test_collectives_multiproc.py.)"""
    import socket

    import torch
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend.dist_backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        t = torch.ones(4)
        dist.all_reduce(t)
        assert t.tolist() == [1.0] * 4
    finally:
        dist.destroy_process_group()
