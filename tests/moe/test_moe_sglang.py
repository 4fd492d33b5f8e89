"""From SGLang's recorder dumps to SGLang's ``--init-expert-location`` file, and the one-line refusals.

Fixtures (tests/fixtures/moe/SOURCES.md): dumps of the exact shape SGLang writes, made from real
DeepSeek-V3 loads for a 7-layer model (3 dense layers, 4 MoE layers, 256 experts).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xpod.runtime.cli import main

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "moe")
DUMP_A = os.path.join(FIX, "sglang_stat_dump_a.pt")
DUMP_B = os.path.join(FIX, "sglang_stat_dump_b.pt")
LOGICAL_JSON = os.path.join(FIX, "sglang_logical_count.json")
CONFIG = os.path.join(FIX, "deepseek_v3_like_config.json")
SLICE = os.path.join(FIX, "sglang_expert_load_slice.npz")


def xpod(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def sglang_physical_lists(p2l: list[list[int]], experts: int) -> list[list[list[int]]]:
    """What SGLang derives from the file: the physical slots of every logical expert per layer."""
    lists = [[[] for _ in range(experts)] for _ in p2l]
    for layer, row in enumerate(p2l):
        for phys, logical in enumerate(row):
            lists[layer][logical].append(phys)
    return lists


def place(capsys, tmp_path, *extra: str, loads=(DUMP_A, DUMP_B), name="plan.json") -> str:
    out = str(tmp_path / name)
    code, _, err = xpod(
        capsys, "moe", "place", "--loads", *loads, "--devices", "32", "--nodes", "4", "--slots", "288",
        "--traffic-tokens", "0", "--out", out, *extra,
    )  # fmt: skip
    assert code == 0, err
    return out


def test_a_recorded_run_becomes_an_sglang_file_in_two_commands(capsys, tmp_path):
    plan = place(capsys, tmp_path)  # 1: two recorder dumps (windows, oldest first) -> a plan
    loc = str(tmp_path / "loc.json")
    code, out, err = xpod(capsys, "moe", "export", "--plan", plan, "--format", "sglang", "--out", loc,
                          "--model-config", CONFIG)  # fmt: skip
    assert code == 0, err
    doc = json.loads(open(loc, encoding="utf-8").read())
    assert list(doc) == ["physical_to_logical_map"]  # SGLang passes the keys on as arguments
    p2l = doc["physical_to_logical_map"]
    assert len(p2l) == 7 and {len(row) for row in p2l} == {288}  # num_hidden_layers x (256 + 32)
    # every expert has a slot in every layer, and no rank holds one expert twice (9 slots per rank)
    for layer, lists in enumerate(sglang_physical_lists(p2l, 256)):
        assert all(lists), layer
        for slots in lists:
            ranks = [s // 9 for s in slots]
            assert len(ranks) == len(set(ranks))
    plan_doc = json.loads(open(plan, encoding="utf-8").read())
    assert p2l == plan_doc["phy2log"]  # the dump already lists the 3 dense (all-zero) layers
    assert "--ep-size 32 --ep-num-redundant-experts 32 --init-expert-location " + loc in out
    assert "7 layers from the plan + 0 dense-layer rows" in out


def test_a_plan_of_the_moe_layers_gets_the_dense_rows(capsys, tmp_path):
    plan = place(capsys, tmp_path, "--workload", "prefill_in4096", loads=(SLICE,))  # 4 MoE layers only
    loc = str(tmp_path / "loc.json")
    code, out, err = xpod(capsys, "moe", "export", "--plan", plan, "--format", "sglang", "--out", loc,
                          "--model-config", CONFIG)  # fmt: skip
    assert code == 0, err
    p2l = json.loads(open(loc, encoding="utf-8").read())["physical_to_logical_map"]
    assert len(p2l) == 7 and "4 layers from the plan + 3 dense-layer rows" in out
    assert p2l[:3] == [(np.arange(288) % 256).tolist()] * 3  # SGLang's own trivial map for dense layers
    assert p2l[3:] == json.loads(open(plan, encoding="utf-8").read())["phy2log"]
    # the JSON format SGLang's team published reads the same way as the .pt dumps
    plan2 = place(capsys, tmp_path, loads=(LOGICAL_JSON,), name="plan2.json")
    assert len(json.loads(open(plan2, encoding="utf-8").read())["phy2log"]) == 7


def test_recorded_passes_are_summed_into_the_window(tmp_path):
    import torch

    from xpod.runtime.moe.io import load_sglang_dump

    doc = torch.load(DUMP_A, weights_only=True)
    assert doc["logical_count"].shape == (3, 7, 256) and doc["logical_count"].dtype == torch.int32
    got = load_sglang_dump(DUMP_A)
    real = np.load(SLICE)["decode_in1000out1000"]
    assert got.shape == (7, 256) and (got[:3] == 0).all() and (got[3:] == real).all()


@pytest.mark.parametrize(
    "policy,needle",
    [
        ("balanced", "uneven slot_share (policy balanced); SGLang splits an expert's tokens evenly"),
        ("budget", "slots per layer vary"),
    ],
)
def test_plans_sglang_cannot_run_are_refused_with_the_nearest_one(capsys, tmp_path, policy, needle):
    if policy == "budget":  # per-layer budgets need few slots per device to differ
        out = str(tmp_path / "plan.json")
        code, _, err = xpod(capsys, "moe", "place", "--loads", SLICE, "--workload", "prefill_in4096", "--devices",
                            "320", "--nodes", "40", "--slots", "320", "--policy", "budget", "--traffic-tokens", "0",
                            "--out", out)  # fmt: skip
        assert code == 0, err
        plan = out
    else:
        plan = place(capsys, tmp_path, "--policy", policy)
    loc = tmp_path / "loc.json"
    code, out, err = xpod(capsys, "moe", "export", "--plan", plan, "--format", "sglang", "--out", str(loc))
    assert code == 1 and needle in err and err.count("\n") == 1, err
    assert "nearest it can run" in err and "--policy even" in err
    assert not loc.exists()
    if policy == "balanced":  # the same slots with SGLang's even split, asked for out loud
        code, out, err = xpod(capsys, "moe", "export", "--plan", plan, "--format", "sglang", "--out", str(loc),
                              "--even-split")  # fmt: skip
        assert code == 0, err
        assert json.loads(loc.read_text())["physical_to_logical_map"] == json.loads(open(plan).read())["phy2log"]


def _bad_files(tmp_path):
    import torch

    counts = torch.zeros((2, 7, 256), dtype=torch.int32)
    torch.save({"rank": 0, "logical_count": counts, "physical_count": counts}, tmp_path / "newer.pt")
    torch.save({"records": [], "last_physical_to_logical_map": torch.zeros((7, 288))}, tmp_path / "pertoken.pt")
    torch.save({"rank": 0, "logical_count": counts.float()}, tmp_path / "floats.pt")
    (tmp_path / "flat.json").write_text(json.dumps({"logical_count": [1, 2, 3]}))
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    np.savez(tmp_path / "other.npz", w=np.ones((5, 128)))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["place", "--loads", "{t}/newer.pt"], "newer.pt: unknown SGLang dump version: keys ['logical_count', "),
        (["place", "--loads", "{t}/pertoken.pt"], "pertoken.pt: a per-pass/per-token SGLang dump"),
        (["place", "--loads", "{t}/floats.pt"], "floats.pt: 'logical_count' must be integer counts"),
        (["place", "--loads", "{t}/flat.json"], "flat.json: 'logical_count' must be integer counts"),
        (["place", "--loads", "{t}/garbage.pt"], "garbage.pt: not a torch.save file SGLang wrote"),
        (["place", "--loads", DUMP_A, SLICE], "several files must all be SGLang dumps"),
        (["place", "--loads", DUMP_A, "--workload", "x"], "SGLang dumps have none"),
        (["place", "--loads", SLICE], "needs --workload"),
        (["place", "--loads", DUMP_A, "{t}/other.npz"], "several files must all be SGLang dumps"),
        (["place", "--loads", "{t}/other.npz", "--workload", "w", "--previous", "{t}/plan.json"],
         "plan.json: a plan for 7 layers x 256 experts, but the loads have 5 layers x 128 experts"),
        (["show", "{t}/plan.json", "--loads", "{t}/other.npz", "--workload", "w", "--png", "{t}/x.png"],
         "plan.json: a plan for 7 layers x 256 experts, but the loads have 5 layers x 128 experts"),
        (["export", "--plan", "{t}/plan.json", "--format", "sglang", "--out", "{t}/x.json", "--model-config",
          "{t}/cfg128.json"], "plan.json: the plan has 256 experts per layer, the model 128"),
        (["export", "--plan", "{t}/plan.json", "--format", "sglang", "--out", "{t}/x.json", "--model-config",
          "{t}/cfg9.json"], "plan.json: 7 layers, but the model has 9 (3 dense + 6 MoE)"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_file(capsys, tmp_path, args, needle):
    _bad_files(tmp_path)
    place(capsys, tmp_path, loads=(DUMP_A,))
    (tmp_path / "cfg128.json").write_text(json.dumps({"num_hidden_layers": 7, "n_routed_experts": 128}))
    (tmp_path / "cfg9.json").write_text(
        json.dumps({"num_hidden_layers": 9, "n_routed_experts": 256, "first_k_dense_replace": 3})
    )
    argv = [a.replace("{t}", str(tmp_path)) for a in args]
    if argv[0] == "place":
        argv += ["--devices", "32", "--nodes", "4", "--slots", "288", "--traffic-tokens", "0"]
        argv += ["--out", str(tmp_path / "out.json")]
    code, _, err = xpod(capsys, "moe", *argv)
    assert code in (1, 2) and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "x.json").exists()
