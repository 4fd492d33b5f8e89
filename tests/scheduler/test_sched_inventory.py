"""What the service needs from the core's inventory: node labels with a job's node selector,
nodes present but not ready (their agent has not registered), device health as
``xpod.hal.Health``, and the one "can never fit" check admission shares with the queue."""

from __future__ import annotations

import pytest

from xpod.hal.device import Health
from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.model import ReasonCode
from xpod.scheduler.core.spec import parse_job
from xpod.scheduler.core.testing import job, node, placements, run_case

H = "nvidia-h100-sxm"


def test_a_node_selector_keeps_a_job_off_nodes_without_its_labels():
    s, r = run_case(
        dict(
            # the simulated node is fuller (binpack would choose it first)
            nodes=[node("a-sim").devices(H, 8).labels(xpod_simulated="true"), node("b-real").devices(H, 8)],
            running=[job("r").devices(H, 4)],
            jobs=[
                job("cmd").devices(H, 2).selector(xpod_simulated="false"),
                job("any").devices(H, 2),
            ],
        )
    )
    # nothing carries xpod/simulated=false: the selector admits no node, so it can never fit
    assert r.pending["cmd"].code is ReasonCode.NEVER_FITS
    assert "on nodes labelled xpod/simulated=false" in r.pending["cmd"].message
    assert placements(r)["any"] == [("a-sim", (4, 5))]


def test_selected_nodes_only_even_when_others_are_fuller():
    s, r = run_case(
        dict(
            nodes=[
                node("a-sim").devices(H, 8).labels(xpod_simulated="true"),
                node("b-real").devices(H, 8).labels(xpod_simulated="false"),
            ],
            running=[job("r").devices(H, 4)],
            jobs=[job("cmd").training(tasks=2).devices(H, 2).selector(xpod_simulated="false")],
        )
    )
    assert placements(r)["cmd"] == [("b-real", (0, 1)), ("b-real", (2, 3))]
    big = job("big").training(tasks=5).devices(H, 2).selector(xpod_simulated="false").build()
    verdict = s.never_fits(big)
    assert verdict is not None and verdict.need_devices == 10 and verdict.cluster_devices == 8
    assert s.never_fits(job("fits").training(tasks=4).devices(H, 2).selector(xpod_simulated="false").build()) is None


def test_nodes_present_but_not_ready_take_no_work_and_the_reason_says_so():
    s = Scheduler(clock=lambda: 1.0)
    for i in range(3):
        s.add_node(node(f"n{i}").devices(H, 8).build(), ready=False, not_ready_reason="waiting for agents")
    gang = job("g").training(tasks=3).devices(H, 8).submitted(0.5).build()
    assert s.never_fits(gang) is None  # the cluster file's nodes count for what could ever fit
    s.submit(gang)
    s.submit(job("cpu").cpu(1).build())
    r = s.cycle()
    assert r.bindings == ()
    assert r.pending["g"].code is ReasonCode.UNSCHEDULABLE
    assert "waiting for agents: 0 of 3 nodes ready" in r.pending["g"].message
    assert r.pending["g"].numbers["nodes_ready"] == 0 and r.pending["g"].numbers["nodes"] == 3
    s.set_node_ready("n0", True)
    s.set_node_ready("n1", True)
    r = s.cycle()
    assert "waiting for agents: 2 of 3 nodes ready" in r.pending["g"].message
    s.set_node_ready("n2", True)
    r = s.cycle()
    assert sorted(b.node for b in r.bindings if b.job_id == "g") == ["n0", "n1", "n2"]
    # the CPU job went ahead of g while g's start was unknown (lent: the default profile's
    # backfill), on a ready node; g did not need its CPU
    assert "g" not in r.pending and set(s.running) == {"g", "cpu"} and not r.evictions
    with pytest.raises(XpodError, match="node gone: not registered"):
        s.set_node_ready("gone", True)


def test_device_health_is_the_hal_health_and_warning_still_schedules():
    s = Scheduler([node("n0").devices(H, 2).build()], clock=lambda: 1.0)
    s.set_device_health("n0", 0, Health.WARNING)
    s.set_device_health("n0", 1, Health.ALARM)
    s.submit(job("one").devices(H, 1).build())
    s.submit(job("two").devices(H, 2).build())
    r = s.cycle()
    assert placements(r) == {"one": [("n0", (0,))]}
    assert r.pending["two"].code is ReasonCode.NEVER_FITS


def test_never_fits_is_the_check_the_queue_makes():
    s = Scheduler([node(f"n{i}").devices(H, 8).supernode("sn0").build() for i in range(2)], clock=lambda: 1.0)
    too_big = job("big").training(tasks=3).devices(H, 8).within("supernode").build()
    verdict = s.never_fits(too_big)
    assert verdict is not None and (verdict.need_devices, verdict.cluster_devices) == (24, 16)
    assert verdict.where == "one super-node"
    s.submit(too_big)
    r = s.cycle()
    assert r.pending["big"].code is ReasonCode.NEVER_FITS
    assert r.pending["big"].message == verdict.message
    assert s.never_fits(job("ok").training(tasks=2).devices(H, 8).within("supernode").build()) is None
    s.set_device_health("n1", 0, Health.CRITICAL)  # the inventory changed: asked again, not cached
    assert s.never_fits(job("ok").training(tasks=2).devices(H, 8).within("supernode").build()) is not None


@pytest.mark.parametrize(
    "selector, says",
    [
        ({"xpod/simulated": False}, "node_selector.xpod/simulated: False is not text (YAML reads true/false"),
        (["a"], "node_selector: a mapping of label names"),
        ({"": "x"}, "node_selector: '' is not a label name"),
    ],
)
def test_bad_node_selectors_are_one_line_errors(selector, says):
    with pytest.raises(XpodError, match="^job .*" + says.replace("(", "\\(").replace(".", "\\.")):
        parse_job({"id": "j", "kind": "batch", "node_selector": selector})
    ok = parse_job({"id": "j", "kind": "batch", "node_selector": {"b": "2", "a": "1"}})
    assert ok.node_selector == (("a", "1"), ("b", "2"))
