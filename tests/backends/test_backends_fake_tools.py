"""Each accelerator backend end to end through its one seam (``_sdk.py``), with a stand-in
management tool on PATH that prints a real captured output (tests/fixtures/smi). This runs
the real subprocess path: probe, tool run with timeout, parse, visible-devices selection,
topology, health."""

import os
import stat

import pytest

from xpod.backends import ascend, cambricon, cuda, hygon, mthreads
from xpod.backends._common import ToolBackend
from xpod.hal import BackendUnavailable, Health, Link

SMI = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smi")
with open(
    os.path.join(
        os.path.dirname(__file__), "..", "fixtures", "smi_synthetic", "npu-smi_info_A3-layout_2npu_synthetic.txt"
    )
) as _f:
    A3 = _f.read()

MiB = 2**20


@pytest.fixture
def tool_bin(tmp_path, monkeypatch):
    """A folder first on PATH; ``make(name, {args: fixture or text}, default_rc)`` puts a
    script there that prints the fixture chosen by its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    for var in (
        "ASCEND_RT_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "MLU_VISIBLE_DEVICES",
        "MUSA_VISIBLE_DEVICES",
    ):
        monkeypatch.delenv(var, raising=False)

    def make(name, outputs, default_rc=2, sleep_s=0):
        cases = []
        for k, (args, content) in enumerate(outputs.items()):
            path = (
                os.path.join(SMI, content)
                if content.endswith(".txt") and os.path.exists(os.path.join(SMI, content))
                else None
            )
            if path is None:
                path = str(tmp_path / f"{name}-{k}.out")
                with open(path, "w") as f:
                    f.write(content)
            cases.append(f'  "{args}") cat "{path}"; exit 0;;')
        script = (
            "#!/bin/sh\n"
            + (f"sleep {sleep_s}\n" if sleep_s else "")
            + 'case "$*" in\n'
            + "\n".join(cases)
            + f'\n  *) echo "{name}: unknown option $*" >&2; exit {default_rc};;\nesac\n'
        )
        exe = bin_dir / name
        exe.write_text(script)
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    return make


def _check_contract(backend: ToolBackend):
    devices = backend.devices()
    assert devices and [d.index for d in devices] == list(range(len(devices)))
    assert set(backend.health()) == {d.index for d in devices}
    topo = backend.topology()
    n = len(topo.indices)
    assert all(topo.links[i][i] is Link.SELF for i in range(n))
    assert all(topo.links[i][j] == topo.links[j][i] for i in range(n) for j in range(n))
    return devices


def test_ascend_910b_through_npu_smi(tool_bin, monkeypatch):
    tool_bin(
        "npu-smi", {"info": "npu-smi_info_910B3_8card.txt", "info -t topo": "npu-smi_info_-t_topo_910B3_8card.txt"}
    )
    backend = ascend.probe()
    assert isinstance(backend, ascend.AscendBackend) and backend.source == "tool"
    devices = _check_contract(backend)
    assert len(devices) == 8 and {d.health for d in devices} == {Health.OK}
    assert backend.topology().fabric_name == "HCCS" and backend.topology().link(0, 7) is Link.FABRIC
    assert backend.visible_env([3, 1]) == {"ASCEND_RT_VISIBLE_DEVICES": "1,3"}
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "2,5")
    picked = backend.devices()
    assert [(d.index, d.physical_index, d.pci_bus_id) for d in picked] == [
        (0, 2, "0000:81:00.0"),
        (1, 5, "0000:02:00.0"),
    ]


def test_ascend_910c_dies_through_npu_smi(tool_bin, monkeypatch):
    tool_bin("npu-smi", {"info": A3})
    backend = ascend.probe()
    devices = _check_contract(backend)
    assert [d.dies for d in devices] == [2, 2]
    # One NPU id = two dies: the launched process must see both of its dies' logical ids.
    assert backend.visible_env([1]) == {"ASCEND_RT_VISIBLE_DEVICES": "2,3"}
    assert backend.visible_env([0, 1]) == {"ASCEND_RT_VISIBLE_DEVICES": "0,1,2,3"}
    with pytest.raises(ValueError, match="no ascend device with index 5"):
        backend.visible_env([5])
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "2")
    (half,) = backend.devices()
    assert half.physical_index == 1 and half.dies == 1 and half.memory_total_bytes == 65536 * MiB


def test_cuda_through_nvidia_smi(tool_bin, monkeypatch):
    tool_bin(
        "nvidia-smi",
        {"-q": "nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt", "topo -m": "nvidia-smi_topo_-m_H100_8gpu_NV18_spaces.txt"},
    )
    backend = cuda.probe()
    assert isinstance(backend, cuda.CudaBackend) and backend.source == "tool"
    devices = _check_contract(backend)
    assert len(devices) == 8 and devices[0].model == "nvidia-h100-sxm"
    assert backend.topology().fabric_name == "NVLink"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    (gpu,) = backend.devices()
    assert gpu.index == 0 and gpu.physical_index == 3 and gpu.pci_bus_id == "0000:5d:00.0"


def test_cuda_reports_unhealthy_gpu(tool_bin):
    tool_bin("nvidia-smi", {"-q": "nvidia-smi_-q_excerpt_A100-SXM4-80GB_8gpu_ecc-row-remap-pending_510.73.08.txt"})
    backend = cuda.probe()
    assert backend.health() == {0: Health.WARNING}


def test_hygon_through_hy_smi(tool_bin):
    tool_bin("hy-smi", {"": "rocm-smi_hygon_K100_8card_dtk23.10.txt"})  # --showproductname etc. fail: older DTK
    backend = hygon.probe()
    assert isinstance(backend, hygon.HygonBackend)
    devices = _check_contract(backend)
    assert (
        len(devices) == 8
        and {d.vendor for d in devices} == {"hygon"}
        and {d.health for d in devices} == {Health.UNKNOWN}
    )
    assert backend.visible_env([0, 2]) == {"HIP_VISIBLE_DEVICES": "0,2"}


def test_hygon_ignores_amd_gpus_from_rocm_smi(tool_bin):
    tool_bin("rocm-smi", {"": "rocm-smi_MI300X_8gpu.txt"})
    reason = hygon.probe()
    assert isinstance(reason, str) and "lists no devices" in reason


def test_cambricon_and_mthreads_through_their_tools(tool_bin):
    tool_bin("cnmon", {"": "cnmon_MLU370-X8_2card_v5.10.13.txt"})
    tool_bin("mthreads-gmi", {"": "mthreads-gmi_S4000_1card_mem-anomaly-iommu_1.12.2_excerpt.txt"})
    mlu = cambricon.probe()
    assert [d.pci_bus_id for d in _check_contract(mlu)] == ["0000:39:00.0", "0000:3d:00.0"]
    musa = mthreads.probe()
    assert musa.health() == {0: Health.ALARM}
    assert musa.visible_env([0]) == {"MUSA_VISIBLE_DEVICES": "0"}


def test_hung_tool_is_bounded(tool_bin, monkeypatch):
    tool_bin("npu-smi", {"info": "npu-smi_info_910B3_8card.txt"}, sleep_s=5)
    monkeypatch.setattr(ascend._sdk, "TOOL_TIMEOUT_S", 0.3)
    reason = ascend.probe()
    assert isinstance(reason, str) and "'npu-smi info' did not finish within 0.3 s" in reason


def test_failing_and_unreadable_tools_give_reasons(tool_bin):
    tool_bin("npu-smi", {}, default_rc=255)
    reason = ascend.probe()
    assert "'npu-smi info' exited with status 255: npu-smi: unknown option info" in reason
    tool_bin("cnmon", {"": "hello\n"})
    reason = cambricon.probe()
    assert "cnmon output could not be read (cnmon output line 1:" in reason


def test_tool_that_disappears_makes_devices_raise(tool_bin):
    tool_bin("cnmon", {"": "cnmon_MLU370-X8_2card_v5.10.13.txt"})
    backend = cambricon.probe()
    os.remove(os.path.join(os.environ["PATH"].split(os.pathsep)[0], "cnmon"))
    with pytest.raises(BackendUnavailable, match="cnmon is no longer on PATH"):
        backend.devices()


class _FakeTorchNpu:
    """Stands in for the torch_npu module at the seam (``_sdk.import_extension``)."""


def _fake_extension(monkeypatch, sdk, torch_devices):
    from xpod.backends._common import TorchDevice

    devs = [TorchDevice(name=n, memory_total_bytes=m) for n, m in torch_devices]
    monkeypatch.setattr(sdk, "import_extension", lambda: (_FakeTorchNpu(), None))
    monkeypatch.setattr(sdk, "torch_device_count", lambda module: len(devs))
    monkeypatch.setattr(sdk, "torch_devices", lambda: devs)


def test_torch_source_with_and_without_the_tool(tool_bin, monkeypatch):
    # torch_npu on an A3 node counts dies (4 here); npu-smi groups them into 2 NPU ids.
    _fake_extension(monkeypatch, ascend._sdk, [("Ascend910_9391", 64 * 2**30)] * 4)
    backend = ascend.probe()
    assert backend.source == "torch"
    # Without npu-smi only torch's view exists: one device per die, health unknown.
    assert [(d.dies, d.health) for d in backend.devices()] == [(1, Health.UNKNOWN)] * 4
    tool_bin("npu-smi", {"info": A3})
    devices = backend.devices()
    assert [(d.dies, d.health) for d in devices] == [(2, Health.OK), (2, Health.CRITICAL)]


def test_torch_source_alone_lists_torch_devices(tool_bin, monkeypatch):
    _fake_extension(monkeypatch, cambricon._sdk, [("MLU370-X8", 24 * 2**30), ("MLU370-X8", 24 * 2**30)])
    backend = cambricon.probe()
    devices = _check_contract(backend)
    assert [(d.model, d.health, d.extra["source"]) for d in devices] == [
        ("cambricon-mlu370-x8", Health.UNKNOWN, "torch")
    ] * 2
    # torch and the tool agree on 2 devices: the tool's bus ids and health join torch's list
    tool_bin("cnmon", {"": "cnmon_MLU370-X8_2card_v5.10.13.txt"})
    assert [d.pci_bus_id for d in backend.devices()] == ["0000:39:00.0", "0000:3d:00.0"]
