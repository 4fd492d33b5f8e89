"""The ``fragmentation`` plugin (the default profile's scoring): its terms by hand, and the
decisions they change on tiny clusters, through the scheduler core."""

from __future__ import annotations

import numpy as np
import pytest

from xpod.scheduler.core.frag import TypicalPods
from xpod.scheduler.core.model import DeviceRequest, Job, JobKind, Queue
from xpod.scheduler.core.plugins import fragmentation as frag_plugin
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.scheduler import Scheduler
from xpod.scheduler.core.testing import job, node, placements

G = "openb-g"


def _tp(milli, count, p, cpu_milli=None):
    k = len(milli)
    return TypicalPods(
        models=(G,),
        cpu_milli=np.array(cpu_milli if cpu_milli is not None else [4000] * k),
        milli=np.array(milli),
        count=np.array(count),
        access=np.ones((k, 1), dtype=bool),
        p=np.array(p, dtype=float) / sum(p),
    )


# sharing pods 810/470/650/320 common, 160 rare (0.5 % of the sharing pods), whole GPUs common
SHARING_MIX = ([810, 470, 650, 320, 160, 1000], [1] * 6, [0.3, 0.25, 0.1, 0.15, 0.004, 0.2])


def test_hole_waste_by_hand():
    d = frag_plugin.hole_waste(_tp(*SHARING_MIX))
    assert d.shape == (1001,)
    assert d[0] == 0 and d[1000] == 0  # whole-GPU pods fill an empty GPU
    assert d[680] == 30  # 650
    assert d[530] == 60  # 470
    assert d[350] == 30  # 320
    assert d[210] == 210  # only the rare 160-milli pod fits: not counted on
    assert d[190] == 190  # the hole beside an 810-milli pod
    assert d[960] == 0  # 320 x 3 (repeats allowed)
    assert (d >= 0).all() and (d <= np.arange(1001)).all()
    d_all = frag_plugin.hole_waste(_tp(*SHARING_MIX), share_min=0.0)  # the rare size counted
    assert d_all[210] == 50 and d_all[190] == 30
    d_share = frag_plugin.hole_waste(_tp([470, 320], [1, 1], [0.5, 0.5]))
    assert d_share[1000] == 1000 - 960  # 320 x 3 beats 470 + 470 (940)
    d_none = frag_plugin.hole_waste(_tp([0, 1000], [0, 4], [0.5, 0.5]))  # CPU-only, multi-GPU
    assert (d_none == np.arange(1001)).all()


def test_empty_device_fragmentation_and_whole_share_by_hand():
    # GPU pods 810m (p .5), 470m (p .25), one whole GPU (p .25); CPU-only pods are ignored
    tp = _tp([810, 470, 1000, 0], [1, 1, 1, 0], [0.4, 0.2, 0.2, 0.2])
    # takers of an empty GPU: 810m (hole 190; every GPU pod needs more than 190) and the whole
    # GPU (hole 0), weighted .5 : .25
    assert frag_plugin.empty_device_fragmentation(tp) == pytest.approx((0.5 * 190 + 0.25 * 0) / 0.75)
    assert frag_plugin.whole_device_share(tp) == pytest.approx(0.25 / 0.75)
    tp2 = _tp([810, 1000], [1, 4], [0.5, 0.5])  # multi-GPU pods count their GPUs, leave no hole
    assert frag_plugin.whole_device_share(tp2) == pytest.approx(0.5 * 4 / (0.5 + 0.5 * 4))
    tp3 = _tp([300, 200], [1, 1], [0.5, 0.5])  # nothing needs an empty GPU: nothing to displace
    assert frag_plugin.empty_device_fragmentation(tp3) == 0.0 and frag_plugin.whole_device_share(tp3) == 1.0
    assert frag_plugin.cpu_per_milli(_tp([500, 0], [1, 0], [0.5, 0.5], cpu_milli=[2000, 6000])) == pytest.approx(
        (0.5 * 2000 + 0.5 * 6000) / (0.5 * 500)
    )


def _history(shapes, n: int = 200) -> list[Job]:
    """``n`` past jobs with these (milli, share) shapes: the workload the plugin learns."""
    out = []
    total = sum(p for _, p in shapes)
    for milli, p in shapes:
        for i in range(round(n * p / total)):
            out.append(job(f"h{milli}-{i}").devices(G, 1, milli=milli).cpu(4).build())
    return out


def _sched(args: dict, cpu_b: float = 64) -> Scheduler:
    """Node a: one GPU holding a 320-milli pod (680 left); node b: one empty GPU."""
    prof = profile_from_dict(
        {"actions": ["enqueue", "allocate"], "policies": [{"name": "fragmentation", "args": args}]}
    )
    nodes = [node("a").devices(G, 1).cpu(64).build(), node("b").devices(G, 1).cpu(cpu_b).build()]
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, clock=lambda: 1.0)
    s.learn_history(_history(list(zip(SHARING_MIX[0], SHARING_MIX[2]))))
    s.submit(job("r").devices(G, 1, milli=320).cpu(4).build())
    assert placements(s.cycle())["r"] == [("a", (0,))]
    return s


@pytest.mark.parametrize(
    "hole_weight, expected",
    [
        # FGD's gradient alone fills the 680-milli hole to a dead 210 (F counts 680 x P(810 or
        # whole) as fragmented although a common 650-milli pod would fill it to 30)
        (0.0, "a"),
        # the hole term keeps the 680 for a 650 and opens the empty GPU (530 left: a 470 fits)
        (6.0, "b"),
    ],
)
def test_hole_term_keeps_a_hole_for_its_snug_partner(hole_weight, expected):
    s = _sched({"hole_weight": hole_weight, "empty_credit": 0})
    s.submit(job("p").devices(G, 1, milli=470).cpu(4).build())
    assert placements(s.cycle())["p"][0][0] == expected


def test_too_few_jobs_seen_means_best_fit():
    """Before ``min_jobs`` jobs the plugin does not trust its typical pods: best fit."""
    prof = profile_from_dict({"actions": ["enqueue", "allocate"], "policies": ["fragmentation"]})
    nodes = [node("a").devices(G, 2).build(), node("b").devices(G, 2).build()]
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, clock=lambda: 1.0)
    for i, m in enumerate((600, 300, 500)):
        s.submit(job(f"f{i}").devices(G, 1, milli=m).build())
    got = placements(s.cycle())
    assert got == {"f0": [("a", (0,))], "f1": [("a", (0,))], "f2": [("a", (1,))]}


def _any(jid: str) -> Job:
    return Job(jid, JobKind.BATCH, 1, DeviceRequest(count=1), cpu_milli=1000)


def _only_small(jid: str) -> Job:
    return Job(jid, JobKind.BATCH, 1, DeviceRequest(count=1, model_choices=frozenset({"small"})), cpu_milli=1000)


def test_the_reserve_keeps_a_scarce_model_for_the_tasks_that_can_use_only_it():
    """Node a: 2 devices of model ``small``; node b: 8 of model ``big``. A fifth of the workload
    can run only on ``small``: tasks that may run anywhere leave ``a`` alone until ``b`` is
    full, and take it then (the reserve orders, it never refuses)."""
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate"],
            "policies": [{"name": "fragmentation", "args": {"reserve_factor": 4.0}}],
        }
    )
    nodes = [node("a").devices("small", 2).cpu(64).build(), node("b").devices("big", 8).cpu(64).build()]
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, clock=lambda: 1.0)
    s.learn_history([_any(f"h{i}") for i in range(80)] + [_only_small(f"r{i}") for i in range(20)])
    for i in range(9):
        s.submit(_any(f"u{i}"))
    got = placements(s.cycle())
    assert sorted(got[f"u{i}"][0][0] for i in range(9)) == ["a"] + ["b"] * 8
    assert got["u8"][0][0] == "a"  # the last one, when b was full
    s.submit(_only_small("r"))
    assert placements(s.cycle())["r"][0][0] == "a"
    reserve = s_plugin(s).reserve
    assert reserve.restricted(frag_plugin.shape_of(_only_small("x")), s_plugin(s).arrays)
    assert not reserve.restricted(frag_plugin.shape_of(_any("x")), s_plugin(s).arrays)


def s_plugin(s: Scheduler):
    return next(p for p in s.plugins if p.name == "fragmentation")


@pytest.mark.parametrize("pressure_cpu, expected", [("all", "b"), ("surplus", "a")])
def test_pressure_cpu_counts_all_the_cpu_or_only_what_the_free_devices_need(pressure_cpu, expected):
    """Node a: one device of the pressured model ``small`` (a fifth of the workload can run only
    there) and 64 cores, far more than its device needs; node b: 8 ``big`` devices and exactly
    the CPU they need (8 cores each, the workload's ratio). A CPU-only task pays for the CPU it
    takes from a pressured model: all of it (``all``: it goes to b, where the free devices lose
    CPU they need) or only the part the node's free devices would need (``surplus``: a's spare
    CPU costs nothing, and a wins the tie by name)."""
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate"],
            "policies": [{"name": "fragmentation", "args": {"reserve_factor": 0, "pressure_cpu": pressure_cpu}}],
        }
    )
    nodes = [node("a").devices("small", 1).cpu(64).build(), node("b").devices("big", 8).cpu(64).build()]
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, clock=lambda: 1.0)
    anywhere = [Job(f"h{i}", JobKind.BATCH, 1, DeviceRequest(count=1), cpu_milli=8000) for i in range(80)]
    only = [
        Job(f"r{i}", JobKind.BATCH, 1, DeviceRequest(count=1, model_choices=frozenset({"small"})), cpu_milli=8000)
        for i in range(20)
    ]
    s.learn_history(anywhere + only)
    s.submit(Job("c", JobKind.BATCH, 1, None, cpu_milli=4000))
    assert placements(s.cycle())["c"][0][0] == expected
    assert s_plugin(s).pressure[s_plugin(s).arrays.models.index("small")] > 0


def _gang_task(jid: str, devices: int, cores: int) -> Job:
    return Job(jid, JobKind.BATCH, 1, DeviceRequest(count=devices), cpu_milli=cores * 1000)


@pytest.mark.parametrize("reserve_empty, half_on, whole_on", [("unrestricted", "a", None), ("partial", "b", "a")])
def test_a_restricted_task_that_needs_part_of_a_node_keeps_off_the_empty_nodes_whole_claimants_need(
    reserve_empty, half_on, whole_on
):
    """multigpu50's dip in small. Node a: 8 ``g3`` devices, 128 cores, the only node an 8-device
    120-core task fits; node b: 8 ``g2`` devices, 96 cores; node c: 2 ``p100`` devices, so a
    4-device task is restricted (c cannot hold it). A 4-device 60-core task scores a best
    (``unrestricted``: a claimant passes the reserve) and the 8-device task that follows fits
    nowhere; with ``partial`` it needs only part of a, so a's empty node is kept for the task
    that needs all of it."""
    prof = profile_from_dict(
        {
            "actions": ["enqueue", "allocate"],
            "policies": [{"name": "fragmentation", "args": {"reserve_empty": reserve_empty}}],
        }
    )
    nodes = [
        node("a").devices("g3", 8).cpu(128).build(),
        node("b").devices("g2", 8).cpu(96).build(),
        node("c").devices("p100", 2).cpu(16).build(),
    ]
    s = Scheduler(nodes, queues=(Queue("default"),), profile=prof, clock=lambda: 1.0)
    s.learn_history(
        [_gang_task(f"w{i}", 8, 120) for i in range(10)]
        + [_gang_task(f"h{i}", 4, 60) for i in range(20)]
        + [_gang_task(f"o{i}", 1, 4) for i in range(40)]
    )
    s.submit(_gang_task("half", 4, 60))
    assert placements(s.cycle())["half"][0][0] == half_on
    s.submit(_gang_task("whole", 8, 120))
    got = placements(s.cycle())
    assert (got["whole"][0][0] if "whole" in got else None) == whole_on
    shape = frag_plugin.shape_of(_gang_task("x", 4, 60))
    assert s_plugin(s).reserve.restricted(shape, s_plugin(s).arrays)
    g3, g2 = (s_plugin(s).arrays.models.index(m) for m in ("g3", "g2"))
    assert not s_plugin(s).reserve.needs_whole(shape)[g3] and s_plugin(s).reserve.needs_whole(shape)[g2]
