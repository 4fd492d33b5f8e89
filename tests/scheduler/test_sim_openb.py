"""``xpod replay openb`` through the scheduler core: the method, invariants, determinism, the
published baselines, the same cycle as the live scheduler, the CLI and its bad input."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core.frag import TypicalPods, fragmentation
from xpod.scheduler.core.model import Queue
from xpod.scheduler.core.profile import default_profile, load_profile
from xpod.scheduler.core.scheduler import Scheduler
from xpod.scheduler.sim import openb

HERE = os.path.dirname(__file__)
REPO = os.path.join(HERE, "..", "..")
FIX = os.path.join(HERE, "..", "fixtures", "scheduler")
DATA = os.path.join(REPO, "bench", "data", "openb")
PROFILES = os.path.join(REPO, "examples", "profiles")
NODES_SLICE = os.path.join(FIX, "openb_nodes_slice.csv")
PODS_SLICE = os.path.join(FIX, "openb_pods_slice.csv")


def xpod_cli(*args: str, timeout: float = 300, cwd: str | None = None):
    """The installed ``xpod`` console script, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def profile(name: str):
    return load_profile(os.path.join(PROFILES, "scheduler-default.yaml" if name == "default" else f"{name}.yaml"))


@pytest.fixture(scope="module")
def slice_tables():
    return openb.load_nodes(NODES_SLICE), openb.load_pods(PODS_SLICE)


def _check_placements(nodes, work, result):
    """Recompute every node's use from the placements: nothing over-allocated, specs kept."""
    idx = {n: i for i, n in enumerate(nodes.names)}
    cpu = nodes.cpu_milli.copy()
    mem = nodes.memory_mib.copy()
    gpu = np.zeros((len(nodes.names), 8), dtype=np.int64)
    pods = iter(range(len(work)))
    placed_req = 0
    for p in result.placements:
        k = next(j for j in pods if work.names[j] == p.pod)  # placements come in arrival order
        i = idx[p.node]
        cpu[i] -= work.cpu_milli[k]
        mem[i] -= work.memory_mib[k]
        assert len(p.gpu_indices) == work.num_gpu[k] and len(set(p.gpu_indices)) == len(p.gpu_indices)
        if work.spec[k] and work.num_gpu[k]:
            assert nodes.model[i] in work.spec[k].split("|")
        for g in p.gpu_indices:
            assert g < nodes.gpu_count[i]
            gpu[i, g] += p.gpu_milli
        placed_req += work.num_gpu[k] * work.gpu_milli[k]
    assert (cpu >= 0).all() and (mem >= 0).all() and (gpu <= 1000).all()
    assert placed_req == result.allocated_gpu_milli


@pytest.mark.parametrize("name", ["default", "fgd", "bestfit", "random"])
def test_replay_is_valid_deterministic_and_seeded(slice_tables, name):
    nodes, pods = slice_tables
    a = openb.replay(nodes, pods, profile(name), seed=7)
    b = openb.replay(nodes, pods, profile(name), seed=7)
    assert a.placements == b.placements
    assert a.pods_placed == len(a.placements) > 0
    one_pod_pct = 100 * 8000 / nodes.gpu_capacity_milli  # the largest pod (8 GPUs)
    assert 130.0 - one_pod_pct <= a.arrived_pct <= 130.0 + one_pod_pct
    assert 0 < a.alloc_pct <= 100
    assert len(a.alloc_curve_pct) == len(a.frag_curve_pct) == int(a.arrived_pct) + 1
    assert all(x <= y + 1e-9 for x, y in zip(a.alloc_curve_pct, a.alloc_curve_pct[1:]))  # arrivals only
    _check_placements(nodes, openb.shuffle_and_tune(pods, nodes.gpu_capacity_milli, 1.3, 7), a)
    assert openb.replay(nodes, pods, profile(name), seed=8).placements != a.placements


def test_tuning_reaches_the_load_and_no_further(slice_tables):
    nodes, pods = slice_tables
    cap = nodes.gpu_capacity_milli
    up = openb.shuffle_and_tune(pods, cap, 2.0, 1)
    req = up.gpu_request_milli
    assert req.sum() > 2.0 * cap and req[:-1].sum() <= 2.0 * cap
    down = openb.shuffle_and_tune(pods, cap, 0.2, 1)
    assert down.gpu_request_milli.sum() <= 0.2 * cap
    assert len(set(down.names)) == len(down.names)  # removal never duplicates


def test_tuning_down_drops_pods_of_every_kind_as_the_authors_simulator_does():
    # a list asking for twice the target loses random pods, CPU-only ones among them, until it
    # fits (tuneDownPods in the FGD authors' simulator); before, only GPU pods were dropped and
    # every CPU-only pod stayed, which put Random 1.3 points below its published multigpu50 figure
    n = 400
    pods = openb.PodTable(
        names=tuple(f"p{i}" for i in range(n)),
        cpu_milli=np.full(n, 4000),
        memory_mib=np.full(n, 1024),
        num_gpu=np.where(np.arange(n) % 2 == 0, 1, 0),
        gpu_milli=np.where(np.arange(n) % 2 == 0, 1000, 0),
        spec=("",) * n,
    )
    cap = 200 * 1000  # the 200 GPU pods ask for 1.0 x capacity; the target is half of it
    down = openb.shuffle_and_tune(pods, cap, 0.5, 3)
    assert down.gpu_request_milli.sum() <= 0.5 * cap
    gpu_left, cpu_left = int((down.num_gpu > 0).sum()), int((down.num_gpu == 0).sum())
    assert gpu_left == 100
    # about as many CPU-only pods go as GPU pods (a random half of the list): not none of them
    assert 60 <= cpu_left <= 140, cpu_left
    assert len(set(down.names)) == len(down.names)


def test_fragmentation_by_hand():
    # one node, 4 GPUs free [1000, 500, 200, 0], 10 cores; typical pods: A = 1 x 300m, 2 cores
    # (p .5), B = 2 x 1000m (p .25), C = CPU-only (p .25)
    tp = TypicalPods(
        models=("G",),
        cpu_milli=np.array([2000, 1000, 1000]),
        milli=np.array([300, 1000, 0]),
        count=np.array([1, 2, 0]),
        access=np.ones((3, 1), dtype=bool),
        p=np.array([0.5, 0.25, 0.25]),
    )
    model = np.zeros((1, 4), dtype=np.int64)
    f = fragmentation(np.array([10000]), np.array([[1000, 500, 200, 0]]), model, tp)
    # A fits: fragments = GPUs below 300m = 200; B does not fit (one whole GPU): all 1700;
    # C: all idle GPU = 1700
    assert f[0] == pytest.approx(0.5 * 200 + 0.25 * 1700 + 0.25 * 1700)
    # CPU exhausted: A no longer fits either
    assert fragmentation(np.array([1000]), np.array([[1000, 500, 200, 0]]), model, tp)[0] == pytest.approx(1700)


def test_the_live_scheduler_makes_the_replays_decisions_and_a_profile_change_changes_both(slice_tables):
    """``xpod server``'s link to the core (``InProcessCore`` over ``Scheduler``) fed the replay's
    pods one per cycle places each where the replay did, profile by profile; two profiles differ
    in both."""
    from xpod.scheduler.service.core_link import InProcessCore

    nodes, pods = slice_tables
    work = openb.shuffle_and_tune(pods, nodes.gpu_capacity_milli, 1.3, 5)
    seen = {}
    for name in ("default", "fgd"):
        prof = profile(name)
        replayed = openb.replay(nodes, pods, prof, seed=5, history=False)
        live = InProcessCore(scheduler=Scheduler(nodes.to_nodes(), queues=(Queue("default"),), profile=prof))
        got = []
        for j in range(len(work)):
            jid = f"{j:06d}-{work.names[j]}"
            live.scheduler.submit(work.job(j, jid))
            out = live.cycle(float(j + 1))
            for allocs in out.bindings.values():
                got += [(work.names[j], a.node, tuple(int(d.rsplit("/", 1)[1]) for d in a.devices)) for a in allocs]
            if jid in live.scheduler.pending:
                live.remove_job(jid)
        assert got == [(p.pod, p.node, p.gpu_indices) for p in replayed.placements]
        seen[name] = got
    assert seen["default"] != seen["fgd"]


def test_never_fitting_pods_are_counted(tmp_path, slice_tables):
    nodes, _ = slice_tables
    path = tmp_path / "pods.csv"
    path.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "a,1000,1024,1,500,\n"
        "huge,1000,1024,16,1000,\n"  # no node has 16 GPUs
        "nomodel,1000,1024,1,1000,H800\n"  # no node has this model
        "b,2000,2048,2,1000,\n"
    )
    r = openb.replay(nodes, openb.load_pods(str(path)), default_profile(), load=0.5, seed=1)
    assert r.pods_never_fit > 0
    assert r.to_json()["pods_never_fit"] == r.pods_never_fit <= r.pods_arrived - r.pods_placed


@pytest.mark.parametrize(
    "content, where",
    [
        ("name,cpu_milli,memory_mib,num_gpu\np,1,1,0\n", r"pods.csv:1: .*missing column\(s\) gpu_milli"),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,-5,1,500\n",
            r"pods.csv:2: column memory_mib: -5 is negative",
        ),
        (
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,64,1,lots\n",
            r"pods.csv:2: column gpu_milli: 'lots' is not",
        ),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,64,2,500\n", r"pods.csv:2: column gpu_milli"),
        ("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1000,64,,500\n", r"pods.csv:2: column num_gpu: empty"),
    ],
)
def test_bad_pod_lists_name_file_line_and_column(tmp_path, content, where):
    path = tmp_path / "pods.csv"
    path.write_text(content)
    with pytest.raises(XpodError, match=where):
        openb.load_pods(str(path))
    r = xpod_cli("replay", "openb", "--nodes", NODES_SLICE, "--pods", str(path), "--no-progress")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "pods.csv:" in r.stderr


def test_bad_node_lists_and_gzip_input(tmp_path):
    bad = tmp_path / "nodes.csv"
    bad.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,1024,x,T4\n")
    with pytest.raises(XpodError, match=r"nodes.csv:2: column gpu: 'x' is not a whole number"):
        openb.load_nodes(str(bad))
    bad.write_text("sn,cpu_milli,memory_mib,gpu,model\nn1,64000,1024,2,T4\nn1,64000,1024,2,T4\n")
    with pytest.raises(XpodError, match="already on line 2"):
        openb.load_nodes(str(bad))
    gz = tmp_path / "pods.csv.gz"
    with open(PODS_SLICE, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    assert len(openb.load_pods(str(gz))) == len(openb.load_pods(PODS_SLICE))


# ---------------------------------------------------------------- the published experiment


@pytest.fixture(scope="module")
def full_cluster():
    return openb.load_nodes(os.path.join(DATA, "openb_node_list_gpu_node.csv"))


def _published(pod_list: str, policy: str) -> float:
    with open(os.path.join(DATA, "published_curves.csv"), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["workload"] == f"openb_pod_list_{pod_list}" and r["policy"] == policy and r["metric"] == "alloc":
                return float(r["130"])
    raise AssertionError(f"no published curve for {pod_list} {policy}")


@pytest.mark.parametrize(
    "pod_list, name",
    [
        ("default", "bestfit"),
        ("default", "fgd"),
        # the CPU-heaviest list: FGD reproduces only with ties to the largest name (fgd.yaml)
        ("cpu250", "fgd"),
    ],
)
def test_baselines_reproduce_the_published_mean(full_cluster, pod_list, name):
    """Seed 42 against the authors' 10-seed mean (their seed-to-seed std is 0.1-0.3 here)."""
    pods = openb.load_pods(os.path.join(DATA, f"openb_pod_list_{pod_list}.csv.gz"))
    r = openb.replay(full_cluster, pods, profile(name), seed=42)
    assert len(full_cluster.names) == 1213 and full_cluster.gpu_capacity_milli == 6212 * 1000
    assert abs(r.alloc_pct - _published(pod_list, name)) < 0.5


# --------------------------------------------------------------------------------- the CLI


def test_cli_writes_json_placements_and_plot(tmp_path):
    out, pl, png = tmp_path / "r.json", tmp_path / "p.csv", tmp_path / "p.png"
    r = xpod_cli(
        "replay", "openb", "--nodes", NODES_SLICE, "--pods", PODS_SLICE, "--seed", "3",
        "--json", str(out), "--placements", str(pl), "--plot", str(png), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["engine"] == "scheduler" and "scheduler-default.yaml" in doc["profile"]
    assert len(doc["alloc_curve_pct"]) == len(doc["frag_curve_pct"]) == int(doc["arrived_pct"]) + 1
    assert doc["pods_failed"] == doc["pods_arrived"] - doc["pods_placed"] and doc["seconds"] > 0
    rows = list(csv.reader(pl.open()))
    assert rows[0] == ["pod", "node", "gpu_indices", "gpu_milli"] and len(rows) - 1 == doc["pods_placed"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_policy_names_profiles_and_errors_are_one_line(tmp_path):
    r = xpod_cli(
        "replay", "openb", "--nodes", NODES_SLICE, "--pods", PODS_SLICE, "--policy", "random,fgd",
        "--json", "-", "--no-progress", cwd=str(tmp_path),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [os.path.basename(x["profile"]) for x in runs] == ["random.yaml", "fgd.yaml"]
    prof = tmp_path / "p.yaml"
    prof.write_text("actions: [enqueue, allocate]\npolicies: [{name: fgd, args: {ties: sideways}}]\n")
    for args, needle in [
        (["--policy", "kube"], "--policy kube"),
        (["--profile", str(prof)], "ties"),
        (["--nodes", str(tmp_path / "none.csv")], "none.csv"),
        (["--policy", "fgd,default", "--placements", str(tmp_path / "x.csv")], "--placements"),
        (["--load", "0"], "--load"),
    ]:
        base = ["replay", "openb", "--nodes", NODES_SLICE, "--pods", PODS_SLICE, "--no-progress"]
        if args[0] == "--nodes":
            base[3] = args[1]
            args = []
        bad = xpod_cli(*base, *args)
        assert bad.returncode == 1 and needle in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr and bad.stderr.strip().count("\n") == 0
