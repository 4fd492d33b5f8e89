"""``xpod moe place`` / ``xpod moe show`` as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "moe", "sglang_expert_load_slice.npz")
XPOD = [sys.executable, "-m", "xpod.runtime.cli"]


def run(*args, cwd=None):
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0", COLUMNS="120")
    return subprocess.run([*XPOD, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_place_then_show_then_incremental(tmp_path):
    out = tmp_path / "p.json"
    r = run(
        "moe",
        "place",
        "--loads",
        FIXTURE,
        "--workload",
        "decode_in1000out1000",
        "--devices",
        "32",
        "--nodes",
        "4",
        "--slots",
        "9",
        "--groups",
        "8",
        "--traffic-tokens",
        "256",
        "--out",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    doc = json.loads(out.read_text())
    phy2log = np.array(doc["phy2log"])
    assert phy2log.shape == (4, 288) and len(doc["slot_device"]) == 288
    # the default plan is one SGLang can run: tokens split evenly, so no slot_share
    assert "slot_share" not in doc and doc["policy"] == "even" and doc["seconds"] > 0
    assert doc["num_experts"] == 256
    # the summary is recomputed from the written file, and names the rule it was scored under
    from xpod.runtime.moe.score import score

    loads = np.load(FIXTURE)["decode_in1000out1000"]
    sc = score(loads, phy2log, np.array(doc["slot_device"]), np.arange(32) // 8, None, 8)
    assert summary["balancedness"] == pytest.approx(sc.balancedness, abs=1e-5)
    assert summary["rule"] == "even"
    assert summary["duplicates"] == 0 and summary["remote_nodes_per_token"] > 0

    png = tmp_path / "heat.png"
    r = run("moe", "show", str(out), "--loads", FIXTURE, "--workload", "decode_in2000out100", "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out2 = tmp_path / "p2.json"
    r = run(
        "moe",
        "place",
        "--loads",
        FIXTURE,
        "--workload",
        "decode_in2000out100",
        "--devices",
        "32",
        "--nodes",
        "4",
        "--slots",
        "9",
        "--previous",
        str(out),
        "--max-moves",
        "20",
        "--traffic-tokens",
        "0",
        "--out",
        str(out2),
    )
    assert r.returncode == 0, r.stderr
    assert "expert weights moved" in r.stdout
    assert json.loads(out2.read_text())["weight_moves"] <= 20


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--workload", "nope"], "no workload 'nope'"),
        (["--slots", "3"], "use at least 8 slots per device"),
        (["--groups", "7"], "--groups 7"),
        (["--devices", "x"], "--devices must be a positive integer"),
        (["--max-moves", "5"], "--max-moves needs --previous"),
        (["--hedge", "1.5"], "--hedge"),
        (["--refine-passes", "-1"], "--refine-passes must be an integer >= 0, got -1"),
        (["--previous", "/nonexistent.json"], "/nonexistent.json: no such file"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, args, needle):
    # in-process (the subprocess path is covered above): the same main() the console script runs
    from xpod.runtime.cli import main

    base = {
        "--loads": FIXTURE,
        "--workload": "decode_in1000out1000",
        "--devices": "32",
        "--nodes": "4",
        "--slots": "9",
        "--out": str(tmp_path / "x.json"),
        "--traffic-tokens": "0",
    }
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    try:
        code = main(["moe", "place", *[x for kv in base.items() for x in kv]])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"phy2log": [[0, 1], [0]], "slot_device": [0, 1]}', "ragged"),
        ("{not json", "not valid JSON"),
        ('{"phy2log": [[0, 1]], "slot_device": [0]}', "slot_device has 1"),
        ('{"slot_device": [0]}', "missing field 'phy2log'"),
    ],
)
def test_show_rejects_bad_placement_files(tmp_path, capsys, text, needle):
    from xpod.runtime.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(text)
    code = main(
        [
            "moe",
            "show",
            str(bad),
            "--loads",
            FIXTURE,
            "--workload",
            "decode_in1000out1000",
            "--png",
            str(tmp_path / "x.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and needle in err and err.count("\n") == 1, err


def test_slots_at_or_above_the_expert_count_are_the_total_per_layer():
    from xpod.hal.errors import XpodError
    from xpod.runtime.cli.moe import slots_per_device

    assert slots_per_device(5, 64, 256) == 5  # below the expert count: per device
    assert slots_per_device(320, 64, 256) == 5  # EPLB's num_replicas for EP64
    assert slots_per_device(256, 32, 256) == 8
    with pytest.raises(XpodError, match="multiple of --devices 64; use e.g. 384"):
        slots_per_device(321, 64, 256)


def test_refine_passes_trade_time_for_balance(tmp_path):
    """``--refine-passes 0`` is the packing alone; the default swap passes only raise balance."""
    from xpod.runtime.cli import main

    results = {}
    for passes in ("0", "16"):
        out = tmp_path / f"p{passes}.json"
        code = main(
            [
                "moe",
                "place",
                "--loads",
                FIXTURE,
                "--workload",
                "decode_in1000out1000",
                "--devices",
                "64",
                "--nodes",
                "8",
                "--slots",
                "5",
                "--traffic-tokens",
                "0",
                "--refine-passes",
                passes,
                "--out",
                str(out),
                "--json",
            ]
        )
        assert code == 0
        doc = json.loads(out.read_text())
        from xpod.runtime.moe.score import score

        loads = np.load(FIXTURE)["decode_in1000out1000"]
        results[passes] = score(
            loads,
            np.array(doc["phy2log"]),
            np.array(doc["slot_device"]),
            np.arange(64) // 8,
            None,
            8,
        ).balancedness
    assert results["16"] > results["0"]
