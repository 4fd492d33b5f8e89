"""Every accelerator backend imports and probes on a host with no vendor SDK, a broken vendor
extension does not break discovery, the registry survives bad plugins, and each vendor's
visible-devices mapping is right."""

import importlib
import json
import os
import sys
import textwrap
import time

import pytest

from tests.conftest import xpod_cli
from xpod.backends._common import select_visible
from xpod.hal import Backend, DeviceInfo, Health, parse_visible_devices
from xpod.hal import registry

# backend id -> (torch module, device type, dist backend, process var, container var, tool words in the reason)
VENDORS = {
    "ascend": (
        "torch_npu",
        "npu",
        "hccl",
        "ASCEND_RT_VISIBLE_DEVICES",
        "ASCEND_VISIBLE_DEVICES",
        ("torch_npu", "npu-smi", "/dev/davinci"),
    ),
    "cambricon": (
        "torch_mlu",
        "mlu",
        "cncl",
        "MLU_VISIBLE_DEVICES",
        "CAMBRICON_SPLIT_VISIBLE_DEVICES",
        ("torch_mlu", "cnmon", "/dev/cambricon_dev"),
    ),
    "mthreads": (
        "torch_musa",
        "musa",
        "mccl",
        "MUSA_VISIBLE_DEVICES",
        "MTHREADS_VISIBLE_DEVICES",
        ("torch_musa", "mthreads-gmi", "0x1ed5"),
    ),
    "hygon": (
        "torch",
        "cuda",
        "nccl",
        "HIP_VISIBLE_DEVICES",
        "HCU_VISIBLE_DEVICES",
        ("torch.version.hip", "hy-smi", "rocm-smi", "0x1d94"),
    ),
    "cuda": (
        "torch",
        "cuda",
        "nccl",
        "CUDA_VISIBLE_DEVICES",
        None,
        ("torch.version.cuda", "nvidia-smi", "/dev/nvidia"),
    ),
}
SDKS = ("torch_npu", "torch_mlu", "torch_musa", "pynvml")
NO_HARDWARE = not any(os.path.exists(p) for p in ("/dev/davinci0", "/dev/cambricon_dev0", "/dev/nvidia0", "/dev/kfd"))


def _backend_class(name):
    mod = importlib.import_module(f"xpod.backends.{name}")
    classes = [
        v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Backend) and v.__module__ == mod.__name__
    ]
    assert len(classes) == 1
    return mod, classes[0]


@pytest.mark.parametrize("name", sorted(VENDORS))
def test_vendor_facts(name):
    _, cls = _backend_class(name)
    torch_module, device_type, dist, process, container, _ = VENDORS[name]
    assert (cls.name, cls.torch_module, cls.device_type, cls.dist_backend) == (name, torch_module, device_type, dist)
    assert (cls.visible_vars.process, cls.visible_vars.container) == (process, container)
    assert cls.unsupported and all(reason and len(reason) > 20 for reason in cls.unsupported.values())


@pytest.mark.skipif(not NO_HARDWARE, reason="this host has accelerator device nodes")
@pytest.mark.parametrize("name", sorted(VENDORS))
def test_probe_gives_a_precise_reason_without_sdk(name):
    for sdk in SDKS:
        assert sdk not in sys.modules  # importing the backend package imported no vendor SDK
    mod, _ = _backend_class(name)
    for sdk in SDKS:
        assert sdk not in sys.modules
    result = mod.probe()
    assert isinstance(result, str), result
    for word in VENDORS[name][5]:
        assert word in result, (word, result)
    assert "\n" not in result


@pytest.mark.skipif(not NO_HARDWARE, reason="this host has accelerator device nodes")
def test_broken_torch_npu_leaves_cpu_discovery_working(tmp_path):
    """A torch_npu that raises at import (CANN missing) becomes ascend's reason; cpu still works."""
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise OSError('libascendcl.so: cannot open shared object file: No such file or directory')\n"
    )
    # Registered for torch's device-extension autoload, as the real wheel is.
    dist = tmp_path / "torch_npu-2.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.1.0\n")
    (dist / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    import subprocess

    bare = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=120)
    assert bare.returncode != 0 and "libascendcl.so" in bare.stderr  # the host is really broken
    proc = xpod_cli("doctor", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["backend"]: r for r in json.loads(proc.stdout)}
    assert rows["cpu"]["available"] and rows["cpu"]["devices"] >= 1
    assert not rows["ascend"]["available"]
    assert "torch_npu failed to import: OSError: libascendcl.so" in rows["ascend"]["reason"]
    for name in VENDORS:
        assert rows[name]["reason"]


# ------------------------------------------------------------------------------ registry


class _EP:
    def __init__(self, name, fn):
        self.name, self.value, self._fn = name, f"tests:{name}", fn

    def load(self):
        return self._fn


def _hang():
    time.sleep(3)
    return "never"


def _raise():
    raise RuntimeError("driver exploded\nsecond line")


def test_registry_survives_bad_probes(monkeypatch):
    from xpod.backends.cpu import probe as cpu_probe

    eps = [
        _EP("cpu", cpu_probe),
        _EP("raises", _raise),
        _EP("hangs", _hang),
        _EP("garbage", lambda: 42),
        _EP("empty", lambda: ""),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.GROUP else [])
    started = time.monotonic()
    statuses = {s.name: s for s in registry.probe_all(timeout_s=0.5)}
    assert time.monotonic() - started < 2.5  # the hung probe is not waited for
    assert statuses["cpu"].available
    assert statuses["raises"].reason == "probe raised RuntimeError: driver exploded"
    assert "did not finish within 0.5 s" in statuses["hangs"].reason
    assert "returned int" in statuses["garbage"].reason
    assert "non-empty reason" in statuses["empty"].reason
    assert not any(statuses[n].available for n in ("raises", "hangs", "garbage", "empty"))


def test_probe_timeout_from_environment(tmp_path):
    """XPOD_PROBE_TIMEOUT_S bounds a hanging plugin in a real process."""
    code = textwrap.dedent(
        """
        import time, sys
        from xpod.hal import registry
        class EP:
            name, value = "hangs", "x:hangs"
            def load(self):
                return lambda: time.sleep(2)
        registry.entry_points = lambda group: [EP()]
        t = time.monotonic()
        (s,) = registry.probe_all()
        print(round(time.monotonic() - t, 1), s.reason)
        """
    )
    import subprocess

    env = dict(os.environ, XPOD_PROBE_TIMEOUT_S="0.3")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    seconds, reason = out.stdout.split(" ", 1)
    assert float(seconds) < 2.0 and "within 0.3 s" in reason, out.stdout + out.stderr


# ------------------------------------------------------------------------- visible devices


@pytest.mark.parametrize("name", sorted(VENDORS))
def test_visible_env_per_vendor(name):
    _, cls = _backend_class(name)
    backend = cls("tool")
    assert backend.visible_env([3, 1, 2]) == {VENDORS[name][3]: "1,2,3"}
    assert backend.visible_env([]) == {VENDORS[name][3]: ""}
    with pytest.raises(ValueError):
        backend.visible_env([1, 1])


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, None),
        ("", []),
        ("NoDevFiles", []),
        ("0,1,2", [0, 1, 2]),
        ("1, 2,3", [1]),
        ("1,2,x,3", [1, 2]),
        ("2,2,3", [2]),
    ],
)
def test_parse_visible_devices(value, expected):
    assert parse_visible_devices(value) == expected


def _listing(ids):
    return [
        DeviceInfo(vendor="ascend", model="ascend-310p3", index=k, physical_index=i, health=Health.OK)
        for k, i in enumerate(ids)
    ]


def test_select_visible_maps_ordinals_to_logical_indices():
    devs = _listing([4, 5, 6, 7])  # npu-smi may number NPUs from 4
    env = {"ASCEND_RT_VISIBLE_DEVICES": "1,3"}
    picked = select_visible(devs, "ASCEND_RT_VISIBLE_DEVICES", env)
    assert [(d.index, d.physical_index) for d in picked] == [(0, 5), (1, 7)]
    assert [d.index for d in select_visible(devs, "ASCEND_RT_VISIBLE_DEVICES", {})] == [0, 1, 2, 3]
    assert select_visible(devs, "ASCEND_RT_VISIBLE_DEVICES", {"ASCEND_RT_VISIBLE_DEVICES": ""}) == []
    # Ascend stops at the first bad token: "1, 2,3" shows only ordinal 1
    assert [
        d.physical_index
        for d in select_visible(devs, "ASCEND_RT_VISIBLE_DEVICES", {"ASCEND_RT_VISIBLE_DEVICES": "1, 2,3"})
    ] == [5]
    # an id past the end stops the list, as the runtimes do
    assert [d.physical_index for d in select_visible(devs, "X", {"X": "0,9,1"})] == [4]


# ---------------------------------------------------------------------------------- CLI

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smi")


def test_cli_parse_json_contract():
    proc = xpod_cli(
        "devices", "--parse", os.path.join(FIX, "npu-smi_info_910B3_8card.txt"), "--tool", "npu-smi", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 8
    for row in rows:
        assert {"vendor", "model", "index", "memory_total_bytes", "memory_used_bytes", "health"} <= set(row)
        assert row["vendor"] == "ascend" and row["health"] == "ok" and row["memory_total_bytes"] == 65536 * 2**20
    hy = json.loads(
        xpod_cli(
            "devices",
            "--parse",
            os.path.join(FIX, "hy-smi_hygon_K100_AI_4card_dtk24.04.1.txt"),
            "--tool",
            "hy-smi",
            "--json",
        ).stdout
    )
    assert [r["memory_total_bytes"] for r in hy] == [None] * 4 and [r["model"] for r in hy] == [None] * 4


def test_cli_parse_error_is_one_line(tmp_path):
    bad = tmp_path / "garbage.txt"
    bad.write_text("nothing to see here\n")
    proc = xpod_cli("devices", "--parse", str(bad), "--tool", "cnmon", "--json")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpod: cnmon output line 1:") and "Traceback" not in proc.stderr
