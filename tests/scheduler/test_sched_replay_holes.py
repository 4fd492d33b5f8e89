"""The `default` replay policy's hole term: the hole-waste table by hand, the decision it
changes on a tiny cluster, and the three pod lists where it closed the gap to the target."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xpod.scheduler.replay import openb

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "data", "openb")


def _tp(gpu_milli, num_gpu, p):
    k = len(gpu_milli)
    return openb.TypicalPods(
        cpu_milli=np.array([4000] * k),
        gpu_milli=np.array(gpu_milli),
        num_gpu=np.array(num_gpu),
        access=np.ones((k, 1), dtype=bool),
        p=np.array(p, dtype=float) / sum(p),
    )


# sharing pods 810/470/650/320 common, 160 rare (0.5 % of the sharing pods), whole GPUs common
SHARING_MIX = ([810, 470, 650, 320, 160, 1000], [1] * 6, [0.3, 0.25, 0.1, 0.15, 0.004, 0.2])


def test_hole_waste_table_by_hand():
    d = openb.hole_waste_table(_tp(*SHARING_MIX))
    assert d.shape == (1001,)
    assert d[0] == 0 and d[1000] == 0  # whole-GPU pods fill an empty GPU
    assert d[680] == 30  # 650
    assert d[530] == 60  # 470
    assert d[350] == 30  # 320
    assert d[210] == 210  # only the rare 160-milli pod fits: not counted on
    assert d[190] == 190  # the hole beside an 810-milli pod
    assert d[960] == 0  # 320 x 3 (repeats allowed)
    assert (d >= 0).all() and (d <= np.arange(1001)).all()
    # counting the rare size as plentiful fills those holes (what a 1 % share did on gpushare60)
    d_all = openb.hole_waste_table(_tp(*SHARING_MIX), share_min=0.0)
    assert d_all[210] == 50 and d_all[190] == 30
    # no whole-GPU pods: an empty GPU is only as good as its best sharing combination
    d_share = openb.hole_waste_table(_tp([470, 320], [1, 1], [0.5, 0.5]))
    assert d_share[1000] == 1000 - 960  # 320 x 3 beats 470 + 470 (940) and 470 + 320 (790)
    # CPU-only and multi-GPU typical pods fill no hole of one GPU
    d_none = openb.hole_waste_table(_tp([0, 1000], [0, 4], [0.5, 0.5]))
    assert (d_none == np.arange(1001)).all()


def _two_nodes():
    """Node a: one GPU with 680 milli left; node b: one empty GPU."""
    nodes = openb.NodeTable(
        names=("a", "b"),
        cpu_milli=np.array([64000, 64000]),
        memory_mib=np.array([65536, 65536]),
        gpu_count=np.array([1, 1]),
        model_id=np.array([0, 0]),
        models=("G",),
    )
    state = openb.ClusterState(nodes)
    state.gpu_left[0, 0] = 680
    return state


@pytest.mark.parametrize(
    "hole_weight, expected",
    [
        # FGD's gradient alone fills the 680-milli hole to a dead 210 (F(680) counts 680 x P(810 or
        # whole) as fragmented although a common 650-milli pod would fill it to 30)
        (0.0, "a"),
        # the hole term keeps the 680 for a 650 and opens the empty GPU (530 left: another 470 fits)
        (6.0, "b"),
    ],
)
def test_hole_term_keeps_a_hole_for_its_snug_partner(hole_weight, expected):
    pol = openb.DefaultPolicy(_two_nodes(), _tp(*SHARING_MIX), hole_weight=hole_weight, empty_credit=0.0)
    shape = openb.PodShape(cpu_milli=4000, memory_mib=1024, gpu_milli=470, num_gpu=1, spec="")
    ev = pol.evaluate(shape, np.arange(2), np.ones(1, dtype=bool))
    assert np.isfinite(ev.score).all()
    best = ev.score.max()
    chosen = max(i for i in range(2) if ev.score[i] == best)  # the policy's tie rule: largest name
    assert ("a", "b")[chosen] == expected


@pytest.mark.parametrize("pod_list", ["gpushare60", "gpushare40", "multigpu40"])
def test_default_meets_the_target_where_it_used_to_miss(pod_list):
    """Seed 42 against the authors' 10-seed FGD mean: at least 10 % fewer unallocated GPUs
    (before the hole term: ratios 0.947, 0.912 and 0.924)."""
    nodes = openb.load_nodes(os.path.join(DATA, "openb_node_list_gpu_node.csv"))
    pods = openb.load_pods(os.path.join(DATA, f"openb_pod_list_{pod_list}.csv.gz"))
    pub = openb.load_published(os.path.join(DATA, "summary_by_workload_policy.csv"))
    r = openb.replay(nodes, pods, "default", seed=42)
    fgd_unalloc = pub[(f"openb_pod_list_{pod_list}", "fgd")]["unallocated_pct_at_130"]
    assert 100 - r.alloc_pct <= 0.9 * fgd_unalloc
