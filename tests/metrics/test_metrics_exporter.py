"""The device exporter (xpod.runtime.agent.exporter): what it exports, what it leaves out, and how it
fails; `promtool check metrics` on a real HTTP scrape of a running `xpod exporter` process."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from xpod.backends.cpu import CpuBackend
from xpod.backends.sim import SimBackend
from xpod.hal.device import Health
from xpod.hal.errors import XpodError
from xpod.runtime.agent import exporter as ex

import metrics_harness as mh
from metrics_harness import FullBackend


def scrape(collector: ex.DeviceCollector) -> dict[str, list]:
    """name -> samples (Sample tuples), from the text exposition a server would send."""
    text = generate_latest(ex.build_registry(collector)).decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def by_device(samples) -> dict[str, object]:
    return {s.labels["device"]: s for s in samples}


def test_sim_and_full_backends_export_the_device_set_with_hardware_labels():
    sim = SimBackend([("ascend-910c", 4)])
    col = ex.DeviceCollector(ex.host_sources([sim, FullBackend()], node="n1"))
    m = scrape(col)
    # Real backends come first: cuda devices are 0, 1; the 4 simulated 910C packages are 8
    # scheduler devices (dies) 2..9, as the scheduler and the agent count them.
    info = by_device(m["xpod_device_info"])
    assert sorted(info, key=int) == [str(i) for i in range(10)]
    assert info["0"].labels == {
        "node": "n1",
        "device": "0",
        "package": "0",
        "vendor": "cuda",
        "model": "nvidia-h100-sxm",
        "uuid": "GPU-0",
        "pci_bus_id": "0000:01:00.0",
        "simulated": "false",
        "backend": "cuda",
        "name": "NVIDIA H100 80GB HBM3",
    }
    assert info["2"].labels["simulated"] == "true" and info["2"].labels["vendor"] == "ascend"
    assert info["2"].labels["backend"] == "sim" and info["2"].labels["uuid"] == "SIM-ascend-910c-0"
    # die -> package: two dies per 910C package, packages numbered after the cuda ones
    assert {d: info[d].labels["package"] for d in map(str, range(2, 10))} == {
        "2": "2",
        "3": "2",
        "4": "3",
        "5": "3",
        "6": "4",
        "7": "4",
        "8": "5",
        "9": "5",
    }
    assert info["3"].labels["uuid"] == "SIM-ascend-910c-0"
    assert {(s.labels["vendor"], s.labels["simulated"]): s.value for s in m["xpod_devices"]} == {
        ("cuda", "false"): 2,
        ("ascend", "true"): 8,
    }
    total = by_device(m["xpod_device_memory_total_bytes"])
    assert total["3"].value == 64 * 2**30 and total["0"].value == 80 * 2**30  # a die has half the package's HBM
    assert sum(total[str(d)].value for d in range(2, 10)) == 4 * 128 * 2**30
    assert by_device(m["xpod_device_memory_used_bytes"])["1"].value == 2**30
    # Device series carry hardware labels only.
    for name in (
        "xpod_device_memory_used_bytes",
        "xpod_device_utilization_ratio",
        "xpod_device_health",
        "xpod_device_energy_joules_total",
    ):
        for s in m[name]:
            assert set(s.labels) == set(ex.DEVICE_LABELS), (name, s.labels)
    assert by_device(m["xpod_device_utilization_ratio"])["1"].value == 0.5
    assert by_device(m["xpod_device_temperature_celsius"])["1"].value == 41.0
    assert by_device(m["xpod_device_power_watts"])["0"].value == 300.0
    errs = by_device(m["xpod_device_errors_total"])
    assert errs["1"].value == 7 and errs["1"].labels["type"] == "ecc"
    # energy (a counter in joules), clocks in hertz, link states: only the backend that reports them
    assert {s.labels["device"]: s.value for s in m["xpod_device_energy_joules_total"]} == {"0": 1.5e6, "1": 1.5e6 + 1}
    clocks = {(s.labels["device"], s.labels["clock"]): s.value for s in m["xpod_device_clock_hertz"]}
    assert clocks == {("0", "core"): 1.98e9, ("0", "memory"): 2.619e9, ("1", "core"): 1.98e9, ("1", "memory"): 2.619e9}
    links = {
        (s.labels["device"], s.labels["fabric"], s.labels["link"]): s.value
        for s in m["xpod_link_up"]
        if s.labels["vendor"] == "cuda"
    }
    assert links == {("0", "nvlink", "0"): 1, ("0", "nvlink", "1"): 1, ("1", "nvlink", "0"): 1, ("1", "nvlink", "1"): 0}
    assert m["xpod_build_info"][0].labels["version"]


def test_gauges_a_backend_lacks_are_not_emitted():
    m = scrape(ex.DeviceCollector(ex.host_sources([SimBackend([("nvidia-h100-sxm", 2)])], node="n1")))
    # The sim backend reports memory and health only: no zeros stand in for the rest.
    for name in (
        "xpod_device_utilization_ratio",
        "xpod_device_temperature_celsius",
        "xpod_device_power_watts",
        "xpod_device_errors_total",
    ):
        assert name not in m, name
    assert len(m["xpod_device_memory_total_bytes"]) == 2
    assert len(m["xpod_device_health"]) == 2


def test_health_follows_the_backend_and_the_state_is_one_hot():
    sim = SimBackend([("ascend-910b3", 3)])  # one die per package: device = package
    col = ex.DeviceCollector(ex.host_sources([sim], node="n1"))
    sim.set_health(1, Health.CRITICAL)
    sim.set_health(2, Health.WARNING)
    m = scrape(col)
    health = {k: s.value for k, s in by_device(m["xpod_device_health"]).items()}
    assert health == {"0": 1, "1": 0, "2": 1}  # warning still takes work; critical does not
    states = {(s.labels["device"], s.labels["state"]): s.value for s in m["xpod_device_health_state"]}
    assert states[("1", "critical")] == 1 and states[("2", "warning")] == 1 and states[("0", "ok")] == 1
    for dev in ("0", "1", "2"):
        assert sum(v for (d, _), v in states.items() if d == dev) == 1
        assert {st for (d, st) in states if d == dev} == {h.value for h in Health}
    sim.set_health(1, Health.OK)  # recovery shows at the next scrape: nothing is cached
    assert by_device(scrape(col)["xpod_device_health"])["1"].value == 1


def test_sample_health_wins_over_device_health():
    m = scrape(ex.DeviceCollector(ex.host_sources([FullBackend()], node="n1")))
    assert by_device(m["xpod_device_health"])["1"].value == 0  # metrics() says critical


def test_allocation_map_feeds_the_join_series():
    col = ex.DeviceCollector(ex.host_sources([SimBackend([("ascend-910c", 2)])], node="n1"))
    assert "xpod_device_allocation_info" not in scrape(col)
    col.set_allocations(
        {("n1", 0): ex.Allocation("job-7", "prod", "training"), ("n1", "1"): ex.Allocation("job-8", "dev", "serving")}
    )
    got = {s.labels["device"]: s.labels for s in scrape(col)["xpod_device_allocation_info"]}
    assert got == {
        "0": {"node": "n1", "device": "0", "job_id": "job-7", "queue": "prod", "kind": "training"},
        "1": {"node": "n1", "device": "1", "job_id": "job-8", "queue": "dev", "kind": "serving"},
    }
    col.set_allocations({})
    assert "xpod_device_allocation_info" not in scrape(col)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"job_id": "", "queue": "q", "kind": "training"}, "job_id is empty"),
        ({"job_id": "j", "queue": "", "kind": "training"}, "queue is empty"),
        ({"job_id": "j", "queue": "q", "kind": "inference"}, "'inference' is not one of training, serving, batch"),
    ],
)
def test_bad_allocation_is_a_one_line_user_error(kwargs, needle):
    with pytest.raises(XpodError, match=needle):
        ex.Allocation(**kwargs)


def test_a_failing_backend_drops_only_its_own_series():
    broken = FullBackend(fail=True)
    sim = SimBackend([("ascend-910c", 2)])
    col = ex.DeviceCollector([ex.DeviceSource(broken, "n1"), ex.DeviceSource(sim, "n1", 2)])
    for _ in range(2):
        m = scrape(col)
    assert {s.labels["backend"]: s.value for s in m["xpod_exporter_collector_success"]} == {"cuda": 0, "sim": 1}
    assert {s.labels["backend"]: s.value for s in m["xpod_exporter_collector_errors_total"]} == {"cuda": 2, "sim": 0}
    assert sorted(by_device(m["xpod_device_info"])) == ["2", "3", "4", "5"]  # 2 packages, 4 dies
    broken.fail = False
    m = scrape(col)
    assert {s.labels["backend"]: s.value for s in m["xpod_exporter_collector_success"]} == {"cuda": 1, "sim": 1}
    assert sorted(by_device(m["xpod_device_info"])) == ["0", "1", "2", "3", "4", "5"]


def test_overlapping_device_numbers_fail_only_the_later_backend():
    a, b = SimBackend([("ascend-910c", 2)]), FullBackend(n=2)
    m = scrape(ex.DeviceCollector([ex.DeviceSource(a, "n1", 0), ex.DeviceSource(b, "n1", 1)]))
    assert {s.labels["backend"]: s.value for s in m["xpod_exporter_collector_success"]} == {"sim": 1, "cuda": 0}
    assert sorted(by_device(m["xpod_device_info"])) == ["0", "1", "2", "3"]  # the 910C dies
    assert {s.labels["backend"] for s in m["xpod_device_info"]} == {"sim"}


def test_host_sources_numbers_real_before_simulated_and_rejects_duplicates():
    sim, cpu = SimBackend([("ascend-910c", 2)]), CpuBackend()
    srcs = ex.host_sources([sim, cpu], node="n1")
    assert [(s.backend.name, s.index_offset) for s in srcs] == [("cpu", 0), ("sim", len(cpu.devices()))]
    with pytest.raises(XpodError, match="given twice for node 'n1'"):
        ex.DeviceCollector([ex.DeviceSource(sim, "n1"), ex.DeviceSource(sim, "n1", 5)])
    # The same backend may appear on two nodes (a simulated pod is many nodes in one process).
    ex.DeviceCollector([ex.DeviceSource(sim, "n1"), ex.DeviceSource(sim, "n2")])


@pytest.mark.parametrize("value", ["9478", "host:", "host:x", "127.0.0.1:70000", ""])
def test_parse_listen_rejects_bad_addresses(value):
    with pytest.raises(XpodError, match="--listen"):
        ex.parse_listen(value)


def test_parse_listen_defaults_to_loopback():
    assert ex.parse_listen(":9478") == ("127.0.0.1", 9478)
    assert ex.parse_listen("[::1]:0") == ("::1", 0)


def test_promtool_finds_nothing_in_every_family():
    """Lint of the full family set (every gauge, the errors counter, allocations)."""
    col = ex.DeviceCollector(
        ex.host_sources([CpuBackend(), FullBackend(), SimBackend([("ascend-910c", 2)])], node="n1")
    )
    col.set_allocations({("n1", 1): ex.Allocation("j1", "prod", "training")})
    text = generate_latest(ex.build_registry(col))
    r = subprocess.run([mh.tool("promtool"), "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", (r.returncode, r.stdout, r.stderr)


def test_promtool_finds_nothing_on_a_live_exporter_scrape():
    """A running `xpod exporter --simulated` (cpu + 8 simulated 910C from XPOD_SIM_DEVICES)
    scraped over HTTP, linted, then stopped with SIGTERM (exit 0)."""
    import signal

    argv = [mh.XPOD, "exporter", "--listen", "127.0.0.1:0", "--simulated", "--node", "lab-1"]
    with mh.running(argv, "xpod exporter:", env={"XPOD_SIM_DEVICES": "ascend-910c:8"}) as (proc, line, _):
        url = line.rsplit(" on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "(cpu, sim)" in line, line
        code, body = mh.http_get(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert code == 200
    r = subprocess.run([mh.tool("promtool"), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", (r.returncode, r.stdout, r.stderr)
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    sim = [s for s in fams["xpod_device_memory_total_bytes"].samples if s.labels["simulated"] == "true"]
    cpu = [s for s in fams["xpod_device_memory_total_bytes"].samples if s.labels["vendor"] == "cpu"]
    # 8 packages of two dies: 16 scheduler devices of 64 GiB, two per package label
    assert len(sim) == 16 and {(s.labels["node"], s.labels["vendor"]) for s in sim} == {("lab-1", "ascend")}
    assert {s.value for s in sim} == {64 * 2**30} and len({s.labels["package"] for s in sim}) == 8
    assert len(cpu) >= 1 and all(s.value > 0 for s in cpu)


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--listen", "localhost"], {}, "--listen 'localhost': expected HOST:PORT"),
        (["--simulated", "--once"], {"XPOD_SIM_DEVICES": ""}, "exporter --simulated: the sim backend is unavailable"),
        (["--sim-devices", "tpu-v9:2", "--once"], {}, "bad token 'tpu-v9:2'"),
        (["--node", " ", "--once"], {}, "--node: empty name"),
    ],
)
def test_cli_user_errors_are_one_line(args, env, needle):
    import os

    r = subprocess.run(
        [mh.XPOD, "exporter", *args], capture_output=True, text=True, timeout=60, env=dict(os.environ, **env)
    )
    assert r.returncode == 1, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_cli_port_in_use_is_a_one_line_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [mh.XPOD, "exporter", "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
        )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "cannot listen" in r.stderr and str(port) in r.stderr


def _capture_section(text: str, header: str) -> str:
    """The body of one ``# ... :: header`` section of an nvidia_gpu_exporter capture."""
    start = text.index(header)
    return text[start:].split("#" * 80)[1]


def test_cuda_gauges_clocks_and_nvlinks_from_real_nvidia_smi_output(monkeypatch):
    """Through the backend's one seam (_sdk): the H100 capture's `-q` (under load) and
    `nvlink -s`. Energy is absent: this driver prints no energy counter, so none is invented."""
    import os

    from xpod.backends import cuda
    from xpod.backends.cuda import _sdk

    path = os.path.join(mh.REPO, "tests", "fixtures", "smi", "nvidia-smi_capture_nvidia-h100-80gb-hbm3_590.48.01.txt")
    text = open(path, encoding="utf-8").read()
    nvlink = _capture_section(text, "# capabilities :: nvlink -s").replace(
        "Link 17: 26.562 GB/s", "Link 17: <inactive>"
    )
    monkeypatch.setattr(_sdk, "tool_path", lambda: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(_sdk, "run_info", lambda: text)
    monkeypatch.setattr(_sdk, "run_nvlink_status", lambda: nvlink)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    m = scrape(ex.DeviceCollector(ex.host_sources([cuda.CudaBackend("tool")], node="gpu-1")))
    one = lambda name: [s.value for s in m[name]]  # noqa: E731
    assert one("xpod_device_utilization_ratio") == [1.0]  # "GPU : 100 %" under gpu-burn
    assert one("xpod_device_temperature_celsius") == [59.0]
    assert one("xpod_device_power_watts") == [588.39]  # Instantaneous Power Draw
    assert {s.labels["clock"]: s.value for s in m["xpod_device_clock_hertz"]} == {"core": 1.98e9, "memory": 2.619e9}
    links = {s.labels["link"]: s.value for s in m["xpod_link_up"]}
    assert len(links) == 18 and links["17"] == 0 and sum(links.values()) == 17
    assert {s.labels["fabric"] for s in m["xpod_link_up"]} == {"nvlink"}
    assert "xpod_device_energy_joules_total" not in m
    # a failing `nvlink -s` (a PCIe card) drops only the link series
    from xpod.hal.smi import ToolRunError

    def broken():
        raise ToolRunError("nvidia-smi nvlink -s: exit 3")

    monkeypatch.setattr(_sdk, "run_nvlink_status", broken)
    m = scrape(ex.DeviceCollector(ex.host_sources([cuda.CudaBackend("tool")], node="gpu-1")))
    assert "xpod_link_up" not in m and "xpod_device_clock_hertz" in m


def test_ascend_power_temperature_and_aicore_from_real_npu_smi_tables(monkeypatch):
    """Through the seam (_sdk.run_info): the 910B3 table's Power(W), Temp(C) and AICore(%)
    columns; the 310P3 table prints Power `NA`, so that card has no power series."""
    import os

    from xpod.backends import ascend
    from xpod.backends.ascend import _sdk

    def table(name):
        with open(os.path.join(mh.REPO, "tests", "fixtures", "smi", name), encoding="utf-8") as f:
            return f.read()

    monkeypatch.setattr(_sdk, "tool_path", lambda: "/usr/local/bin/npu-smi")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(_sdk, "run_info", lambda: table("npu-smi_info_910B3_8card.txt"))
    m = scrape(ex.DeviceCollector(ex.host_sources([ascend.AscendBackend("tool")], node="a2")))
    assert by_device(m["xpod_device_power_watts"])["0"].value == 101.8
    assert by_device(m["xpod_device_temperature_celsius"])["0"].value == 43.0
    assert (
        len(m["xpod_device_utilization_ratio"]) == 8 and by_device(m["xpod_device_utilization_ratio"])["1"].value == 0.0
    )
    monkeypatch.setattr(_sdk, "run_info", lambda: table("npu-smi_info_310P3_2card_25.5.1.txt"))
    m = scrape(ex.DeviceCollector(ex.host_sources([ascend.AscendBackend("tool")], node="a2")))
    assert "xpod_device_power_watts" not in m and len(m["xpod_device_temperature_celsius"]) == 2


def test_a_910c_package_with_per_die_memory_rows_exports_each_dies_own():
    """npu-smi on A3 prints one row per die; the parser keeps them (extra die_memory_bytes) and
    each die series carries its own, not half the sum."""
    from xpod.hal.backend import Backend
    from xpod.hal.device import DeviceInfo

    class A3(Backend):
        name = "ascend"

        def devices(self):
            return [
                DeviceInfo(
                    vendor="ascend",
                    model="ascend-910c",
                    index=0,
                    physical_index=0,
                    memory_total_bytes=128 * 2**30,
                    memory_used_bytes=30 * 2**30,
                    health=Health.OK,
                    dies=2,
                    extra={"die_memory_bytes": [[10 * 2**30, 64 * 2**30], [20 * 2**30, 64 * 2**30]]},
                )
            ]

    m = scrape(ex.DeviceCollector(ex.host_sources([A3()], node="a3")))
    assert {k: s.value for k, s in by_device(m["xpod_device_memory_used_bytes"]).items()} == {
        "0": 10 * 2**30,
        "1": 20 * 2**30,
    }
    assert {s.labels["package"] for s in m["xpod_device_memory_used_bytes"]} == {"0"}
