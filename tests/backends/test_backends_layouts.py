"""Layouts the captured fixtures do not cover, and robustness to formatting changes.

The small outputs below are written by hand in the layouts these tools print (driver
generations not in tests/fixtures/smi); their numbers are made up. They check that the
parsers locate columns by header words and tolerate width changes, extra columns, CRLF line
ends and ANSI escapes, and that what they cannot read fails loudly.
"""

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpod.backends import parse_tool_output
from xpod.hal import Health, ToolOutputError

SMI = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smi")
MiB = 2**20


def read(name):
    with open(os.path.join(SMI, name), encoding="utf-8") as f:
        return f.read()


# Atlas 300I Duo: one NPU id (one card) with two 310P3 chips, each with its own logical device id.
DUO = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                                   Version: 23.0.0                                       |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 1       310P3                 | OK              | NA           52                0     / 0             |
| 0       0                     | 0000:01:00.0    | 0            1600 / 44000                            |
| 1       1                     | 0000:01:00.0    | 0            1500 / 43000                            |
+===============================+=================+======================================================+
| 2       310P3                 | Alarm           | NA           50                0     / 0             |
| 0       2                     | 0000:81:00.0    | 0            1600 / 44000                            |
| 1       3                     | 0000:81:00.0    | 0            1500 / 43000                            |
+===============================+=================+======================================================+
"""

# First-generation Ascend 910 (npu-smi 22.x) with a running process.
ASCEND_910A = """\
+-------------------------------------------------------------------------------------------+
| npu-smi 22.0.3                   Version: 22.0.3                                          |
+----------------------+---------------+----------------------------------------------------+
| NPU   Name           | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                 | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+======================+===============+====================================================+
| 0     910A           | Warning       | 70.1        40                0    / 0             |
| 0                    | 0000:C1:00.0  | 10          2000 / 15000      1000 / 32768         |
+======================+===============+====================================================+
+----------------------+---------------+----------------------------------------------------+
| NPU   Chip           | Process id    | Process name             | Process memory(MB)      |
+======================+===============+====================================================+
| 0     0              | 4242          | python3                  | 900                     |
+======================+===============+====================================================+
"""

# Older nvidia-smi table ('|---' rules, truncated names), a MIG table and running processes.
NVIDIA_OLD = """\
Mon Jan  1 00:00:00 2024
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
| Fan  Temp  Perf  Pwr:Usage/Cap|         Memory-Usage | GPU-Util  Compute M. |
|                               |                      |               MIG M. |
|===============================+======================+======================|
|   0  NVIDIA A100-SXM...  On   | 00000000:07:00.0 Off |                    0 |
| N/A   31C    P0    59W / 400W |   1200MiB / 40536MiB |      0%      Default |
|                               |                      |             Disabled |
+-------------------------------+----------------------+----------------------+
|   1  NVIDIA A100-SXM...  On   | 00000000:0F:00.0 Off |                    2 |
| N/A   30C    P0    61W / 400W |      0MiB / 40536MiB |      0%      Default |
|                               |                      |              Enabled |
+-------------------------------+----------------------+----------------------+

+-----------------------------------------------------------------------------+
| MIG devices:                                                                |
+------------------+----------------------+-----------+-----------------------+
| GPU  GI  CI  MIG |         Memory-Usage |        Vol|         Shared        |
|      ID  ID  Dev |           BAR1-Usage | SM     Unc| CE  ENC  DEC  OFA  JPG|
|                  |                      |        ECC|                       |
|==================+======================+===========+=======================|
|  1    0   0   0  |      0MiB / 40536MiB | 98      0 |  7   0    5    1    1 |
|                  |      1MiB / 65535MiB |           |                       |
+------------------+----------------------+-----------+-----------------------+

+-----------------------------------------------------------------------------+
| Processes:                                                                  |
|  GPU   GI   CI        PID   Type   Process name                  GPU Memory |
|        ID   ID                                                   Usage      |
|=============================================================================|
|    0   N/A  N/A     12345      C   python                           1197MiB |
+-----------------------------------------------------------------------------+
"""

NVIDIA_CSV = """\
index, name, uuid, pci.bus_id, memory.total [MiB], memory.used [MiB], ecc.errors.uncorrected.volatile.total, remapped_rows.pending
0, NVIDIA H100 80GB HBM3, GPU-aaaa, 00000000:18:00.0, 81559 MiB, 10 MiB, 0, No
1, NVIDIA H100 80GB HBM3, GPU-bbbb, 00000000:2A:00.0, 81559 MiB, 12 MiB, 0, Yes
2, NVIDIA H100 80GB HBM3, GPU-cccc, 00000000:3A:00.0, 81559 MiB, 90000 MiB, 0, No
"""

NVIDIA_LIST = """\
GPU 0: NVIDIA H200 (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA H200 (UUID: GPU-66666666-7777-8888-9999-000000000000)
  MIG 1g.18gb     Device  0: (UUID: MIG-abcdefab-0000-0000-0000-000000000000)
"""

# Hygon driver >= 6.3 prints HCU and extra Dec%/Enc% columns; with --showproductname and
# --showmeminfo vram appended (what the hygon backend runs).
HCU = """\

============================ System Management Interface =============================
======================================================================================
HCU     Temp     AvgPwr     Perf     PwrCap     VRAM%      HCU%      Dec%     Enc%     Mode
0       45.0C    60.0W      auto     350.0W     3%         0.0%      0.0%     0.0%     Normal
1       46.0C    61.0W      auto     350.0W     0%         0.0%      0.0%     0.0%     N/A
======================================================================================
=================================== End of SMI Log ===================================

============================ System Management Interface =============================
====================================== Product Info ==================================
HCU[0]          : Card series:          K100_AI
HCU[1]          : Card series:          K100_AI
=================================== End of SMI Log ===================================

============================ System Management Interface =============================
================================== Memory Usage (MiB) ================================
HCU[0]          : vram Total Memory (MiB): 65520
HCU[0]          : vram Total Used Memory (MiB): 1966
HCU[1]          : vram Total Memory (MiB): 65520
HCU[1]          : vram Total Used Memory (MiB): 12
=================================== End of SMI Log ===================================
"""

MTHREADS_TWO = """\
Wed Jan  8 10:00:00 2025
---------------------------------------------------------------
    mthreads-gmi:2.0.0           Driver Version:3.0.0-server
---------------------------------------------------------------
ID   Name           |PCIe                |%GPU  Mem
     Device Type    |Pcie Lane Width     |Temp  MPC Capable
                                         |      ECC Mode
+-------------------------------------------------------------+
0    MTT S5000      |00000000:1b:00.0    |0%    3MiB(81920MiB)
     Physical       |16x(16x)            |35C   YES
                                         |      N/A
---------------------------------------------------------------
1    MTT S5000      |00000000:1c:00.0    |5%    100MiB(81920MiB)
     Physical       |16x(16x)            |36C   YES
                                         |      N/A
---------------------------------------------------------------

---------------------------------------------------------------
Processes:
ID   PID       Process name                             GPU Memory
                                                             Usage
+-------------------------------------------------------------+
0    4242      python3                                  100MiB
---------------------------------------------------------------
"""


def test_atlas_300i_duo_card_with_two_chips():
    devs = parse_tool_output("npu-smi", DUO)
    assert [d.physical_index for d in devs] == [1, 2]
    assert [d.dies for d in devs] == [2, 2]
    assert devs[0].memory_total_bytes == (44000 + 43000) * MiB
    assert [d.extra["logical_ids"] for d in devs] == [[0, 1], [2, 3]]  # from the Device column
    assert [d.health for d in devs] == [Health.OK, Health.ALARM]


def test_first_generation_910_with_processes():
    (npu,) = parse_tool_output("npu-smi", ASCEND_910A)
    assert npu.model == "ascend-910" and npu.health is Health.WARNING
    assert (npu.memory_used_bytes, npu.memory_total_bytes) == (1000 * MiB, 32768 * MiB)  # HBM, not DDR


def test_old_nvidia_table_with_mig_and_processes():
    devs = parse_tool_output("nvidia-smi", NVIDIA_OLD)
    assert len(devs) == 2  # MIG and process tables are not GPUs
    assert [d.memory_total_bytes for d in devs] == [40536 * MiB] * 2
    assert devs[0].memory_used_bytes == 1200 * MiB
    assert [d.health for d in devs] == [Health.OK, Health.CRITICAL]  # 2 volatile uncorrectable
    assert devs[0].extra.get("name_truncated") and devs[0].pci_bus_id == "0000:07:00.0"


def test_nvidia_csv_and_list():
    devs = parse_tool_output("nvidia-smi", NVIDIA_CSV)
    assert [d.model for d in devs] == ["nvidia-h100-sxm"] * 3
    assert [d.health for d in devs] == [Health.OK, Health.WARNING, Health.ALARM]
    assert devs[1].uuid == "GPU-bbbb" and devs[1].pci_bus_id == "0000:2a:00.0"
    listed = parse_tool_output("nvidia-smi", NVIDIA_LIST)
    assert [(d.model, d.physical_index) for d in listed] == [("nvidia-h200", 0), ("nvidia-h200", 1)]
    with pytest.raises(ToolOutputError, match="CSV row has 3 values"):
        parse_tool_output("nvidia-smi", NVIDIA_CSV + "3, NVIDIA H100 80GB HBM3, GPU-dddd\n")


def test_hygon_hcu_layout_with_product_and_memory():
    devs = parse_tool_output("hy-smi", HCU)
    assert [d.vendor for d in devs] == ["hygon", "hygon"]
    assert [d.model for d in devs] == ["hygon-k100-ai"] * 2
    assert [d.memory_total_bytes for d in devs] == [65520 * MiB] * 2
    assert devs[0].memory_used_bytes == 1966 * MiB and devs[1].extra["mode"] == "N/A"


def test_mthreads_two_gpus_with_processes():
    devs = parse_tool_output("mthreads-gmi", MTHREADS_TWO)
    assert [(d.model, d.memory_total_bytes, d.memory_used_bytes) for d in devs] == [
        ("mthreads-s5000", 81920 * MiB, 3 * MiB),
        ("mthreads-s5000", 81920 * MiB, 100 * MiB),
    ]
    assert [d.health for d in devs] == [Health.UNKNOWN, Health.UNKNOWN]


def test_cnmon_ecc_count_is_a_warning():
    text = read("cnmon_MLU370-X8_2card_v5.10.13.txt").replace(
        "| 0%                N/A |", "| 0%                  3 |", 1
    )
    devs = parse_tool_output("cnmon", text)
    assert [d.health for d in devs] == [Health.WARNING, Health.UNKNOWN]


def test_rocm_smi_json():
    text = (
        '{"card0": {"Card Series": "AMD Instinct MI300X OAM", "Card Model": "0x74a1", "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",'
        ' "VRAM Total Memory (B)": "206141652992", "VRAM Total Used Memory (B)": "297611264"}, "system": {"Driver version": "6.7.0"}}'
    )
    (gpu,) = parse_tool_output("rocm-smi", text)
    assert (gpu.vendor, gpu.model, gpu.memory_total_bytes) == ("amd", "amd-mi300x", 206141652992)
    with pytest.raises(ToolOutputError, match="not valid JSON"):
        parse_tool_output("rocm-smi", text[:-5])


@pytest.mark.parametrize(
    "tool,name",
    [
        ("npu-smi", "npu-smi_info_910B3_8card.txt"),
        ("nvidia-smi", "nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt"),
        ("cnmon", "cnmon_MLU370-X8_2card_v5.10.13.txt"),
    ],
)
def test_crlf_and_ansi_do_not_change_the_inventory(tool, name):
    text = read(name)
    plain = [d.to_json() for d in parse_tool_output(tool, text)]
    crlf = [d.to_json() for d in parse_tool_output(tool, text.replace("\n", "\r\n"))]
    ansi = [d.to_json() for d in parse_tool_output(tool, re.sub(r"(?m)^(.)", "\x1b[0m\\1", text))]
    assert plain == crlf == ansi


BOXED = [
    ("npu-smi", "npu-smi_info_910B3_8card.txt"),
    ("cnmon", "cnmon_MLU370-X8_2card_v5.10.13.txt"),
    ("nvidia-smi", "nvidia-smi_capture_nvidia-h200_590.48.01.txt"),
]


@settings(max_examples=20, deadline=None)
@given(pads=st.lists(st.integers(min_value=0, max_value=6), min_size=8, max_size=8), which=st.sampled_from(BOXED))
def test_column_widths_do_not_matter(pads, which):
    """Re-pad every cell of every box table (as a new driver with wider columns would):
    the inventory stays the same."""
    tool, name = which
    text = read(name)

    def repad(line):
        if "|" not in line or not line.strip(" |=+-"):
            return line
        parts = line.split("|")
        return "|".join(p + " " * pads[k % len(pads)] if 0 < k < len(parts) - 1 else p for k, p in enumerate(parts))

    changed = "\n".join(repad(ln) for ln in text.splitlines())
    assert [d.to_json() for d in parse_tool_output(tool, changed)] == [
        d.to_json() for d in parse_tool_output(tool, text)
    ]


def test_nvidia_reset_signals():
    """Driver 550-565 print 'GPU Reset Status'; 590 prints 'GPU Recovery Action'."""
    q8 = read("nvidia-smi_-q_H100-SXM_8gpu_565.57.01.txt")
    flagged = q8.replace("Reset Required                    : No", "Reset Required                    : Yes", 1)
    flagged = flagged.replace("Drain and Reset Recommended       : No", "Drain and Reset Recommended       : Yes", 2)
    health = [d.health for d in parse_tool_output("nvidia-smi", flagged)]
    assert health[:2] == [Health.CRITICAL, Health.WARNING] and set(health[2:]) == {Health.OK}
    h200 = read("nvidia-smi_capture_nvidia-h200_590.48.01.txt")
    assert h200.count("GPU Recovery Action                                : None") == 2
    drained = h200.replace(
        "GPU Recovery Action                                : None",
        "GPU Recovery Action                                : Drain P2P",
    )
    (gpu,) = parse_tool_output("nvidia-smi", drained)
    assert gpu.health is Health.WARNING and "GPU Recovery Action: Drain P2P" in gpu.extra["health_reasons"]


NVIDIA_XML = """\
<?xml version="1.0" ?>
<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">
<nvidia_smi_log>
	<timestamp>Mon Jan  1 00:00:00 2024</timestamp>
	<driver_version>550.54.15</driver_version>
	<attached_gpus>2</attached_gpus>
	<gpu id="00000000:18:00.0">
		<product_name>NVIDIA H100 80GB HBM3</product_name>
		<uuid>GPU-aaaa</uuid>
		<fb_memory_usage><total>81559 MiB</total><reserved>0 MiB</reserved><used>3 MiB</used><free>81000 MiB</free></fb_memory_usage>
		<ecc_errors><volatile><sram_correctable>0</sram_correctable><sram_uncorrectable_parity>0</sram_uncorrectable_parity><dram_uncorrectable>0</dram_uncorrectable></volatile></ecc_errors>
		<remapped_rows><remapped_row_corr>0</remapped_row_corr><remapped_row_pending>No</remapped_row_pending><remapped_row_failure>No</remapped_row_failure></remapped_rows>
	</gpu>
	<gpu id="00000000:2A:00.0">
		<product_name>NVIDIA H100 80GB HBM3</product_name>
		<uuid>GPU-bbbb</uuid>
		<fb_memory_usage><total>81559 MiB</total><reserved>0 MiB</reserved><used>3 MiB</used><free>81000 MiB</free></fb_memory_usage>
		<ecc_errors><volatile><sram_correctable>0</sram_correctable><sram_uncorrectable_parity>0</sram_uncorrectable_parity><dram_uncorrectable>0</dram_uncorrectable></volatile></ecc_errors>
		<remapped_rows><remapped_row_corr>0</remapped_row_corr><remapped_row_pending>Yes</remapped_row_pending><remapped_row_failure>No</remapped_row_failure></remapped_rows>
	</gpu>
</nvidia_smi_log>
"""


def test_nvidia_xml():
    devs = parse_tool_output("nvidia-smi", NVIDIA_XML)
    assert [(d.uuid, d.pci_bus_id, d.model) for d in devs] == [
        ("GPU-aaaa", "0000:18:00.0", "nvidia-h100-sxm"),
        ("GPU-bbbb", "0000:2a:00.0", "nvidia-h100-sxm"),
    ]
    assert [d.health for d in devs] == [Health.OK, Health.WARNING]
    assert devs[0].memory_total_bytes == 81559 * MiB
    with pytest.raises(ToolOutputError, match="XML output is not well-formed"):
        parse_tool_output("nvidia-smi", NVIDIA_XML[:900])
