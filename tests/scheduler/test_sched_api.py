"""Job specs, profiles, the Statement, the facade's inventory calls, pending reasons, the bench CLI."""

from __future__ import annotations

import json
import os
import re

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.hal.device import Health
from xpod.scheduler.core.model import JobKind, ReasonCode
from xpod.scheduler.core.profile import load_profile, profile_from_dict
from xpod.scheduler.core.snapshot import Snapshot, Statement
from xpod.scheduler.core.spec import parse_job
from xpod.scheduler.core.testing import job, node, placements

A3 = "ascend-910c"
H = "nvidia-h100-sxm"
REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def xpod_cli(*args: str, timeout: float = 300):
    """Run the installed ``xpod`` console script as a user would (not via conftest: several
    test folders have a conftest module and their names clash when the suite runs together)."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    env = dict(os.environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_parse_full_spec():
    j = parse_job(
        {
            "id": "t1",
            "kind": "training",
            "tasks": 4,
            "min_tasks": 2,
            "devices": {"count": 16, "model": A3},
            "cpu": 8,
            "memory": "64Gi",
            "within": "supernode",
            "queue": "research",
            "priority_class": "high",
            "expected_duration_seconds": 3600,
            "domain_block": 32,
        }
    )
    assert (j.kind, j.tasks, j.min_tasks, j.devices.count, j.cpu_milli, j.memory_bytes, j.within, j.domain_block) == (
        JobKind.TRAINING,
        4,
        2,
        16,
        8000,
        64 * 2**30,
        "supernode",
        32,
    )
    s = parse_job(
        {
            "id": "s",
            "kind": "serving",
            "replicas": {"min": 2, "max": 5},
            "devices": {"count": 1, "milli": 250, "memory": "8Gi", "model": H},
            "cpu": "500m",
        }
    )
    assert (s.tasks, s.min_tasks, s.devices.milli, s.devices.memory_bytes, s.cpu_milli) == (5, 2, 250, 8 * 2**30, 500)
    c = parse_job({"id": "c", "kind": "batch", "devices": {"count": 2, "min_memory": "80Gi", "min_bf16_tflops": 500}})
    assert c.devices.model is None and c.devices.min_memory_bytes == 80 * 2**30


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"id": "x"}, "kind"),
        ({"id": "x", "kind": "train"}, "kind"),
        ({"id": "x", "kind": "batch", "gpus": 1}, "gpus"),
        ({"id": "x", "kind": "batch", "tasks": 0}, "tasks"),
        ({"id": "x", "kind": "batch", "tasks": 2.5}, "tasks"),
        ({"id": "x", "kind": "training", "tasks": 2, "min_tasks": 3}, "min_tasks"),
        ({"id": "x", "kind": "serving", "tasks": 2}, "tasks"),
        ({"id": "x", "kind": "serving", "replicas": {"min": 3, "max": 2}}, "replicas.min"),
        ({"id": "x", "kind": "batch", "devices": {"count": 2, "milli": 500}}, "devices.milli"),
        ({"id": "x", "kind": "batch", "devices": {"count": 1, "memory": "8Gi"}}, "devices.memory"),
        ({"id": "x", "kind": "batch", "devices": {"count": 1, "colour": "red"}}, "devices.colour"),
        ({"id": "x", "kind": "batch", "memory": "lots"}, "memory"),
        ({"id": "x", "kind": "batch", "within": "Rack 1"}, "within"),
        ({"id": "x", "kind": "batch", "within": 3}, "within"),
        ({"id": "x", "kind": "batch", "expected_duration_seconds": -1}, "expected_duration_seconds"),
        ({"kind": "batch"}, "id"),
    ],
)
def test_spec_errors_name_the_field_in_one_line(doc, field):
    with pytest.raises(XpodError) as err:
        parse_job(doc, source="jobs/x.yaml")
    msg = str(err.value)
    assert "\n" not in msg and f"{field}:" in msg and msg.startswith("jobs/x.yaml")


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"actions": ["allocate", "shuffle"]}, "actions[1]: unknown action 'shuffle'"),
        ({"policies": ["gang", "magic"]}, "policies[1]: unknown plugin 'magic'"),
        ({"policies": [{"name": "priority", "args": {"aging": 1}}]}, "unknown argument 'aging'"),
        ({"policies": [{"name": "priority", "args": {"aging_per_hour": "fast"}}]}, "non-negative number"),
        ({"policies": ["binpack", "spread"]}, "contradict"),
        ({"plugins": []}, "unknown key 'plugins'"),
        # built once at load: a value no int holds is one line, not an OverflowError
        ({"policies": [{"name": "random", "args": {"seed": float("inf")}}]}, "p.yaml: policies[0] (random).args: "),
    ],
)
def test_profile_errors_at_load(doc, needle):
    with pytest.raises(XpodError, match=re.escape(needle)):
        profile_from_dict(doc, "p.yaml")


def test_profile_yaml_file(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("actions: [enqueue, allocate]\npolicies:\n  - gang\n  - name: ascend\n    args: {reserve_nodes: 0}\n")
    prof = load_profile(str(p))
    assert prof.actions == ("enqueue", "allocate")
    assert prof.build_plugins()[1].reserve_nodes == 0
    p.write_text("actions: [enqueue\n")
    with pytest.raises(XpodError, match=r"p.yaml:\d+:\d+: not valid YAML"):
        load_profile(str(p))


def test_submit_validates():
    s = Scheduler([node("n").devices(A3, 16).build()], clock=lambda: 0.0)
    with pytest.raises(XpodError, match="takes 1 or an even number of dies"):
        s.submit(job("odd").devices(A3, 3).build())
    with pytest.raises(XpodError, match="distributed Ascend 910C task takes all 16"):
        s.submit(job("d").training(tasks=2).devices(A3, 8).build())
    with pytest.raises(XpodError, match="domain_block"):
        s.submit(job("sp").training(tasks=3).devices(A3, 16).domain_block(32).build())
    with pytest.raises(XpodError, match="unknown queue"):
        s.submit(job("q").queue("nope").build())
    with pytest.raises(XpodError, match="unknown class"):
        s.submit(job("p").priority("urgent").build())
    s.submit(job("ok").devices(A3, 2).build())
    s.submit(job("ok").devices(A3, 2).build())  # idempotent
    with pytest.raises(XpodError, match="already used"):
        s.submit(job("ok").devices(A3, 4).build())


def test_statement_discard_restores_exactly():
    snap = Snapshot([node("n1").devices(H, 8).cpu(16).build(), node("n2").devices(H, 8).build()])
    s = Scheduler(clock=lambda: 0.0)
    s.snapshot = snap
    s.submit(job("r").devices(H, 3).cpu(2).build())
    s.cycle()
    before = {n: (st.cpu_left, list(st.free_milli)) for n, st in snap.nodes.items()}
    idx_before = {m: dict(v) for m, v in snap.free_whole.items()}
    from xpod.scheduler.core.model import Binding

    j = job("t").devices(H, 2).build()
    stmt = Statement(snap, 0.0)
    stmt.evict("r")
    stmt.bind(j, Binding("t", 0, "n1", (0, 1), 1000, 1000))
    stmt.bind(j, Binding("t", 1, "n2", (5,), 300, 1000))
    stmt.discard()
    assert {n: (st.cpu_left, list(st.free_milli)) for n, st in snap.nodes.items()} == before
    assert {m: dict(v) for m, v in snap.free_whole.items()} == idx_before
    assert "r" in snap.running


def test_device_failure_evicts_whole_gang_and_avoids_device():
    s = Scheduler([node("n1").devices(H, 8).build(), node("n2").devices(H, 8).build()], clock=lambda: 0.0)
    s.submit(job("g").training(tasks=2).devices(H, 8).build())
    s.cycle()
    assert s.set_device_health("n2", 3, Health.CRITICAL) == ["g"]
    assert "g" not in s.running and "g" in s.pending
    r = s.cycle()
    assert r.evictions[0].job_id == "g" and "n2/3" in r.evictions[0].reason
    assert r.pending["g"].code is ReasonCode.NEVER_FITS  # 15 healthy devices for 16
    s.submit(job("one").devices(H, 7).build())
    r = s.cycle()
    assert placements(r) == {"one": [("n2", (0, 1, 2, 4, 5, 6, 7))]}  # skips the bad device
    s.set_device_health("n2", 3, Health.OK)
    s.cancel("one")
    assert placements(s.cycle()) == {"g": [("n1", tuple(range(8))), ("n2", tuple(range(8)))]}
    with pytest.raises(XpodError, match="no device 9"):
        s.set_device_health("n1", 9, Health.CRITICAL)


def test_remove_node_requeues_and_cancel():
    s = Scheduler([node("n1").devices(H, 8).build()], clock=lambda: 0.0)
    s.submit(job("a").devices(H, 4).build())
    s.cycle()
    assert s.remove_node("n1") == ["a"] and "a" in s.pending
    assert s.cancel("a") and not s.cancel("a")
    s.add_node(node("n1").devices(H, 8).build())
    with pytest.raises(XpodError, match="already registered"):
        s.add_node(node("n1").devices(H, 8).build())


def test_pending_reason_has_numbers_position_and_estimate():
    nodes = [node(f"n{i}").devices(A3, 16).supernode("sp0").build() for i in range(4)]
    t = [0.0]
    s = Scheduler(nodes, clock=lambda: t[0])
    s.submit(job("r").training(tasks=1).devices(A3, 16).duration(500).build())
    s.cycle()
    t[0] = 10.0
    s.submit(job("big").training(tasks=4).devices(A3, 16).within("supernode").submitted(1).build())
    s.submit(job("next").training(tasks=4).devices(A3, 16).within("supernode").submitted(2).build())
    r = s.cycle()
    big, nxt = r.pending["big"], r.pending["next"]
    assert big.code is ReasonCode.UNSCHEDULABLE and big.queue_position == 1 and big.jobs_ahead == 0
    assert "needs 4 x 16 ascend-910c = 64 devices in one super-node; largest free block 48; 0 jobs ahead" in big.message
    assert big.estimated_start == 500.0  # when r ends
    assert nxt.queue_position == 2 and "1 jobs ahead" in nxt.message
    # big, ahead of it on the same dies, has no expected duration: no number is invented
    assert nxt.estimated_start is None
    assert "estimated start unknown: job big ahead of it has no expected_duration_seconds" in nxt.message
    assert r.decisions == 2


def test_cycle_result_decisions_and_bench_cli(tmp_path):
    cluster = os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml")
    if not os.path.exists(cluster):
        cluster = os.path.join(REPO, "hal", "clusters", "cloudmatrix384.yaml")
    r = xpod_cli("bench", "scheduler", "--cluster", cluster, "--pending", "300", "--cycles", "3", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["nodes"] == 48 and doc["devices"] == 768 and doc["pending"] == 300
    assert doc["decisions_per_s"] > 0 and doc["cold_decisions"] == 300
    r = xpod_cli("bench", "scheduler", "--cluster", str(tmp_path / "nope.yaml"), "--pending", "10")
    assert r.returncode == 1 and "nope.yaml" in r.stderr and "Traceback" not in r.stderr
    r = xpod_cli("bench", "scheduler", "--synthetic-nodes", "50", "--pending", "0")
    assert r.returncode == 1 and "--pending" in r.stderr


def test_from_cluster_adapter():
    from xpod.scheduler.core.from_cluster import load_nodes

    nodes = load_nodes(os.path.join(REPO, "hal", "clusters", "cloudmatrix384.yaml"))
    assert len(nodes) == 48 and {len(n.devices) for n in nodes} == {16}
    assert {n.domains.get("supernode") for n in nodes} == {"cm-a"}
    d = nodes[0].devices
    assert d[0].package == d[1].package != d[2].package  # die pairs


def test_example_profile_is_the_default():
    from xpod.scheduler.core.profile import default_profile

    prof = load_profile(os.path.join(REPO, "examples", "profiles", "scheduler-default.yaml"))
    assert prof.actions == default_profile().actions
    assert [n for n, _ in prof.policies] == [n for n, _ in default_profile().policies]


@pytest.mark.parametrize("order", ["binpack", "spread"])
def test_bucket_walk_follows_the_node_order_policy(order):
    """The placer's lazy bucket walk yields nodes exactly in the order the NodeOrder plugin's
    answer defines (``WalkOrder.key`` is the specification, the walk the fast implementation)."""
    import random

    from xpod.scheduler.core.framework import CycleContext
    from xpod.scheduler.core.placer import Placer

    rng = random.Random(5)
    nodes = [node(f"n{i:02d}").devices(H, 8).build() for i in range(30)]
    prof = profile_from_dict({"policies": ["gang", "topology", order, "priority"]})
    s = Scheduler(nodes, profile=prof, clock=lambda: 0.0)
    for i in range(40):
        s.submit(job(f"j{i}").devices(H, rng.choice([1, 2, 3, 4])).build())
    s.cycle()
    ctx = CycleContext(snap=s.snapshot, now=0.0, queues=s.queues, total_devices=240.0, queue_usage={})
    placer = Placer(s.framework, ctx)
    probe = job("probe").devices(H, 2).build()
    order = placer.walk_order(probe)
    walked = [st.node.name for st in placer.ordered_nodes(probe, 2)]
    expected = sorted(
        (st for st in s.snapshot.nodes.values() if s.snapshot.free_whole[H][st.node.name] >= 2),
        key=lambda st: order.key(s.snapshot.free_whole[H][st.node.name], st.node.name),
    )
    assert walked == [st.node.name for st in expected]
