"""Tool-output parsers over the real captured outputs in tests/fixtures/smi.

Expected values were read off the files by eye (see tests/fixtures/smi/SOURCES.md for where
each comes from), not copied from the parser's output.
"""

import os

import pytest

from xpod.backends import parse_tool_output
from xpod.backends.ascend import npu_smi
from xpod.backends.cuda import nvidia_smi
from xpod.backends.hygon import rocm_smi
from xpod.hal import Health, Link, ToolOutputError, XpodError, smi

HERE = os.path.dirname(__file__)
SMI = os.path.join(HERE, "..", "fixtures", "smi")
MiB = 2**20


def read_synthetic(name: str) -> str:
    with open(os.path.join(HERE, "..", "fixtures", "smi_synthetic", name), encoding="utf-8") as f:
        return f.read()


def read(name: str) -> str:
    with open(os.path.join(SMI, name), encoding="utf-8") as f:
        return f.read()


# file, tool, device count, vendor, model, memory total per device (bytes or None), health of every device
CASES = [
    ("npu-smi_info_910B3_8card.txt", "npu-smi", 8, "ascend", "ascend-910b3", 65536 * MiB, Health.OK),
    ("npu-smi_info_910B2C_2card_23.0.3.txt", "npu-smi", 2, "ascend", "ascend-910b2", 65536 * MiB, Health.OK),
    ("npu-smi_info_310P3_2card_25.5.1.txt", "npu-smi", 2, "ascend", "ascend-310p3", 21525 * MiB, Health.OK),
    ("npu-smi_info_-t_topo_910B3_8card.txt", "npu-smi", 8, "ascend", None, None, Health.UNKNOWN),
    ("cnmon_MLU370-X8_2card_v5.10.13.txt", "cnmon", 2, "cambricon", "cambricon-mlu370-x8", 23374 * MiB, Health.UNKNOWN),
    (
        "mthreads-gmi_S4000_1card_mem-anomaly-iommu_1.12.2_excerpt.txt",
        "mthreads-gmi",
        1,
        "mthreads",
        "mthreads-s4000",
        32768 * MiB,
        Health.ALARM,
    ),
    ("hy-smi_hygon_K100_AI_4card_dtk24.04.1.txt", "hy-smi", 4, "hygon", None, None, Health.UNKNOWN),
    ("rocm-smi_hygon_K100_8card_dtk23.10.txt", "rocm-smi", 8, "hygon", None, None, Health.UNKNOWN),
    ("rocm-smi_hygon_4card_legacy-format_dtk23.10.1-image.txt", "rocm-smi", 4, "hygon", None, None, Health.UNKNOWN),
    ("rocm-smi_MI300X_8gpu.txt", "rocm-smi", 8, "amd", "amd-mi300x", None, Health.UNKNOWN),
    ("rocm-smi_MI300X_4gpu.txt", "rocm-smi", 4, "amd", "amd-mi300x", None, Health.UNKNOWN),
    ("rocm-smi_-a_MI300X_4gpu.txt", "rocm-smi", 4, "amd", "amd-mi300x", None, Health.UNKNOWN),
    ("rocm-smi_concise_MI300-class_8gpu.txt", "rocm-smi", 8, "amd", None, None, Health.UNKNOWN),
    ("rocm-smi_-u_--showmeminfo_vram_MI300-class_8gpu.txt", "rocm-smi", 8, "amd", None, 206141652992, Health.UNKNOWN),
    ("rocm-smi_--showtopo_MI300-class_8gpu_xgmi.txt", "rocm-smi", 8, "amd", None, None, Health.UNKNOWN),
    ("nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt", "nvidia-smi", 8, "cuda", "nvidia-h100-sxm", 81559 * MiB, Health.OK),
    (
        "nvidia-smi_capture_nvidia-h100-80gb-hbm3_590.48.01.txt",
        "nvidia-smi",
        1,
        "cuda",
        "nvidia-h100-sxm",
        81559 * MiB,
        Health.OK,
    ),
    ("nvidia-smi_capture_nvidia-h200_590.48.01.txt", "nvidia-smi", 1, "cuda", "nvidia-h200", 143771 * MiB, Health.OK),
    (
        "nvidia-smi_-q_excerpt_A100-SXM4-80GB_8gpu_ecc-row-remap-pending_510.73.08.txt",
        "nvidia-smi",
        1,
        "cuda",
        "nvidia-a100-sxm4-80gb",
        None,
        Health.WARNING,
    ),
    ("nvidia-smi_-q_excerpt_ecc-sram-uncorrectable.txt", "nvidia-smi", 1, "cuda", None, None, Health.CRITICAL),
    ("nvidia-smi_topo_-m_A100_8gpu_NV12_spaces.txt", "nvidia-smi", 8, "cuda", None, None, Health.UNKNOWN),
    ("nvidia-smi_topo_-m_H100_8gpu_NV18_spaces.txt", "nvidia-smi", 8, "cuda", None, None, Health.UNKNOWN),
]


def test_every_fixture_has_a_case():
    files = {f for f in os.listdir(SMI) if f.endswith(".txt")}
    assert files == {c[0] for c in CASES}


@pytest.mark.parametrize("name,tool,count,vendor,model,total,health", CASES, ids=[c[0] for c in CASES])
def test_fixture_inventory(name, tool, count, vendor, model, total, health):
    devices = parse_tool_output(tool, read(name), source=name)
    assert len(devices) == count
    assert [d.index for d in devices] == list(range(count))
    assert len({d.physical_index for d in devices}) == count
    for d in devices:
        assert d.vendor == vendor
        assert d.model == model
        assert d.memory_total_bytes == total
        assert d.health is health
        json_ = d.to_json()
        assert {"vendor", "model", "index", "memory_total_bytes", "memory_used_bytes", "health"} <= set(json_)


def test_npu_smi_details():
    devs = parse_tool_output("npu-smi", read("npu-smi_info_910B3_8card.txt"))
    assert [d.memory_used_bytes // MiB for d in devs] == [3318, 3314, 3314, 3314, 3314, 3314, 3314, 3315]
    assert devs[0].pci_bus_id == "0000:c1:00.0" and devs[7].pci_bus_id == "0000:42:00.0"
    assert devs[0].name == "910B3" and all(d.dies == 1 for d in devs)
    p310 = parse_tool_output("npu-smi", read("npu-smi_info_310P3_2card_25.5.1.txt"))
    assert [d.physical_index for d in p310] == [4, 5]  # NPU ids need not start at 0
    assert [d.memory_used_bytes // MiB for d in p310] == [1848, 1849]
    b2c = parse_tool_output("npu-smi", read("npu-smi_info_910B2C_2card_23.0.3.txt"))
    assert [d.name for d in b2c] == ["910B2C", "910B2C"]  # raw name kept; process table ignored


# An Atlas A3 (910C) table in the layout of vllm-project/vllm-ascend issue 2534: one NPU id is
# printed once per die (an NPU row + chip row pair each). No attributable capture exists, so
# this one is written by hand with made-up values (tests/fixtures/smi_synthetic/README.md).
A3 = read_synthetic("npu-smi_info_A3-layout_2npu_synthetic.txt")


def test_a3_one_npu_id_is_two_dies():
    devs = parse_tool_output("npu-smi", A3)
    assert len(devs) == 2
    assert [d.dies for d in devs] == [2, 2]
    assert [d.model for d in devs] == ["ascend-910c", "ascend-910c"]
    assert devs[0].memory_total_bytes == 2 * 65536 * MiB
    assert devs[0].memory_used_bytes == (3400 + 3200) * MiB
    assert devs[1].health is Health.CRITICAL  # the worst die decides
    assert devs[0].extra["phy_ids"] == [0, 1] and devs[1].extra["phy_ids"] == [2, 3]


def test_npu_smi_wider_columns_and_extra_column():
    # Column widths changed and an extra column appended: columns are found by header words.
    text = A3.replace("| OK            |", "| OK                 |").replace(
        "| Health        |", "| Health             |"
    )
    assert [d.dies for d in parse_tool_output("npu-smi", text)] == [2, 2]


def test_unhealthy_nvidia_details():
    (a100,) = parse_tool_output(
        "nvidia-smi", read("nvidia-smi_-q_excerpt_A100-SXM4-80GB_8gpu_ecc-row-remap-pending_510.73.08.txt")
    )
    assert a100.pci_bus_id == "0000:10:1c.0"
    assert a100.extra["excerpt"] is True and a100.extra["attached_gpus"] == 8
    assert any("remapped rows pending" in r for r in a100.extra["health_reasons"])
    (sram,) = parse_tool_output("nvidia-smi", read("nvidia-smi_-q_excerpt_ecc-sram-uncorrectable.txt"))
    assert any("SRAM Uncorrectable" in r for r in sram.extra["health_reasons"])


def test_nvidia_capture_uses_one_snapshot():
    # The capture holds -L, two default tables, two -q blocks and two CSV rows of ONE GPU.
    (gpu,) = parse_tool_output("nvidia-smi", read("nvidia-smi_capture_nvidia-h100-80gb-hbm3_590.48.01.txt"))
    assert gpu.pci_bus_id == "0000:00:09.0"
    assert gpu.memory_used_bytes == 19818 * MiB  # the later ("load") -q snapshot
    eight = parse_tool_output("nvidia-smi", read("nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt"))
    assert len({d.uuid for d in eight}) == 8 and len({d.pci_bus_id for d in eight}) == 8


def test_nvidia_default_table_alone():
    text = read("nvidia-smi_capture_nvidia-h200_590.48.01.txt")
    start = text.index("# load :: nvidia-smi (default table)")
    table = text[start:].split("#" * 80)[1]
    (gpu,) = parse_tool_output("nvidia-smi", table)
    assert gpu.model == "nvidia-h200" and gpu.memory_total_bytes == 143771 * MiB
    assert gpu.health is Health.OK  # Volatile Uncorr. ECC column reads 0


def test_memory_anomaly_is_alarm():
    (s4000,) = parse_tool_output("mthreads-gmi", read("mthreads-gmi_S4000_1card_mem-anomaly-iommu_1.12.2_excerpt.txt"))
    assert s4000.memory_used_bytes == 44302 * MiB > s4000.memory_total_bytes
    assert s4000.pci_bus_id == "0000:08:00.0"


def test_rocm_smi_merges_sections_by_index():
    topo_devs = parse_tool_output("rocm-smi", read("rocm-smi_--showtopo_MI300-class_8gpu_xgmi.txt"))
    assert [d.numa_node for d in topo_devs] == [0, 0, 0, 0, 1, 1, 1, 1]
    both = (
        read("rocm-smi_concise_MI300-class_8gpu.txt")
        + "\n"
        + read("rocm-smi_-u_--showmeminfo_vram_MI300-class_8gpu.txt")
    )
    devs = parse_tool_output("rocm-smi", both)
    assert len(devs) == 8  # the same 8 GPUs, not 16
    assert devs[0].memory_used_bytes == 297611264 and devs[0].extra["device_id"] == "0x74a2"


# --------------------------------------------------------------------------- topology


def test_topologies():
    npu = npu_smi.parse_topo(read("npu-smi_info_-t_topo_910B3_8card.txt"))
    assert npu.indices == tuple(range(8)) and npu.fabric_name == "HCCS"
    assert npu.link(0, 7) is Link.FABRIC and npu.link(3, 3) is Link.SELF
    nv = nvidia_smi.parse_topo(read("nvidia-smi_topo_-m_H100_8gpu_NV18_spaces.txt"))
    assert nv.fabric_name == "NVLink" and nv.link(0, 5) is Link.FABRIC
    one = nvidia_smi.parse_topo(read("nvidia-smi_capture_nvidia-h100-80gb-hbm3_590.48.01.txt"))  # TAB + ANSI form
    assert one.indices == (0,) and one.links == ((Link.SELF,),)
    amd = rocm_smi.parse_topology(read("rocm-smi_--showtopo_MI300-class_8gpu_xgmi.txt"))
    assert amd.fabric_name == "xGMI" and amd.link(2, 6) is Link.FABRIC


def test_topology_mixed_links():
    text = "\tGPU0\tGPU1\tGPU2\tCPU Affinity\tNUMA Affinity\nGPU0\t X \tNV4\tSYS\t0-7\t0\nGPU1\tNV4\t X \tPIX\t0-7\t0\nGPU2\tSYS\tPIX\t X \t8-15\t1\n"
    topo = nvidia_smi.parse_topo(text)
    assert topo.link(0, 1) is Link.FABRIC and topo.link(1, 2) is Link.PCIE_SWITCH and topo.link(0, 2) is Link.NUMA


# ------------------------------------------------------------------------------ errors

TOOLS = ["npu-smi", "cnmon", "mthreads-gmi", "hy-smi", "rocm-smi", "nvidia-smi"]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("text", ["", "   \n\n", "hello world\nthis is not a tool output\n", "\x00\x01binary"])
def test_garbage_and_empty_raise_named_error(tool, text):
    with pytest.raises(ToolOutputError) as info:
        parse_tool_output(tool, text)
    msg = str(info.value)
    assert msg.startswith(f"{tool} output") and "\n" not in msg


def test_unknown_tool():
    with pytest.raises(XpodError, match="unknown tool 'dcgmi'"):
        parse_tool_output("dcgmi", "x")


def _cut_after(text: str, needle: str, occurrence: int = 1) -> str:
    pos = -1
    for _ in range(occurrence):
        pos = text.index(needle, pos + 1)
    return text[: text.index("\n", pos) + 1]


TRUNCATED = [
    # an NPU row whose chip row was cut off
    ("npu-smi", _cut_after(read("npu-smi_info_910B3_8card.txt"), "| 3     910B3"), "line 16"),
    # a cnmon card row without its memory row
    ("cnmon", _cut_after(read("cnmon_MLU370-X8_2card_v5.10.13.txt"), "| 1     /   MLU370-X8"), "line 10"),
    # an mthreads-gmi device row cut before the memory value
    (
        "mthreads-gmi",
        read("mthreads-gmi_S4000_1card_mem-anomaly-iommu_1.12.2_excerpt.txt").replace(
            "88%   44302MiB(32768MiB)", "88%"
        ),
        "line 9",
    ),
    # a Hygon row cut in the middle
    (
        "hy-smi",
        read("hy-smi_hygon_K100_AI_4card_dtk24.04.1.txt").replace(
            "3       49.0C    138.0W     auto     800.0W     0%         0%        Normal", "3       49.0C    138.0W"
        ),
        "line 8",
    ),
    # nvidia-smi -q that promises 8 GPUs and stops after 3
    ("nvidia-smi", _cut_after(read("nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt"), "Capabilities", 3), "8"),
    # nvidia-smi -q cut inside the last GPU section (the GPU count still matches)
    (
        "nvidia-smi",
        _cut_after(read("nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt"), "Product Name", 8),
        "last GPU section lacks",
    ),
    # a default-table GPU row without its memory row
    (
        "nvidia-smi",
        _cut_after(
            read("nvidia-smi_capture_nvidia-h200_590.48.01.txt")
            .split("# idle :: query (-q)")[0]
            .split("# idle :: nvidia-smi (default table)")[1],
            "|   0  NVIDIA H200",
        ),
        "line",
    ),
    # a topology matrix missing rows
    ("npu-smi", _cut_after(read("npu-smi_info_-t_topo_910B3_8card.txt"), "NPU5       HCCS"), "truncated"),
]


@pytest.mark.parametrize("tool,text,where", TRUNCATED, ids=[f"{t[0]}-{i}" for i, t in enumerate(TRUNCATED)])
def test_truncated_outputs_raise_not_a_short_inventory(tool, text, where):
    with pytest.raises(ToolOutputError) as info:
        parse_tool_output(tool, text)
    assert str(info.value).startswith(f"{tool} output") and where in str(info.value)


def test_unknown_health_word_is_an_error_not_ok():
    bad = read("npu-smi_info_910B3_8card.txt").replace(
        "| 0     910B3               | OK     ", "| 0     910B3               | Smoking", 1
    )
    with pytest.raises(ToolOutputError, match="unknown health value 'Smoking'"):
        parse_tool_output("npu-smi", bad)


# ------------------------------------------------------------------------- hal.smi helpers


@pytest.mark.parametrize(
    "text,unit,expected",
    [
        ("65536MiB", None, 65536 * MiB),
        ("32768 MB", None, 32768 * MiB),
        ("80 GB", None, 80 * 2**30),
        ("206141652992", None, 206141652992),
        ("3318", "MiB", 3318 * MiB),
        ("1.5 GiB", None, 3 * 2**29),
    ],
)
def test_parse_size_bytes(text, unit, expected):
    assert smi.parse_size_bytes(text, default_unit=unit) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-5 MiB", "12 parsecs", "N/A"])
def test_parse_size_bytes_rejects(text):
    with pytest.raises(ValueError):
        smi.parse_size_bytes(text)


def test_decimal_units_on_request():
    assert smi.parse_size_bytes("80 GB", decimal=True) == 80 * 10**9


def test_pci_bus_id_normalisation():
    assert smi.normalize_pci_bus_id("00000000:18:00.0") == "0000:18:00.0"
    assert smi.normalize_pci_bus_id("0000:C1:00.0") == "0000:c1:00.0"
    assert smi.normalize_pci_bus_id("N/A") is None
