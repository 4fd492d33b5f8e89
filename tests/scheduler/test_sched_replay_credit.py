"""The `default` replay policy's empty-GPU credit: its inputs by hand, its decisions on a tiny
cluster, and the gpushare100 target it was built for."""

from __future__ import annotations

import os

import numpy as np
import pytest

from xpod.scheduler.replay import openb

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "data", "openb")


def _tp(gpu_milli, num_gpu, p, cpu_milli=None):
    k = len(gpu_milli)
    return openb.TypicalPods(
        cpu_milli=np.array(cpu_milli if cpu_milli is not None else [4000] * k),
        gpu_milli=np.array(gpu_milli),
        num_gpu=np.array(num_gpu),
        access=np.ones((k, 1), dtype=bool),
        p=np.array(p, dtype=float) / sum(p),
    )


def test_empty_gpu_fragmentation_and_whole_share_by_hand():
    # typical GPU pods: 810m (p .5), 470m (p .25), one whole GPU (p .25); CPU-only pods are ignored
    tp = _tp([810, 470, 1000, 0], [1, 1, 1, 0], [0.4, 0.2, 0.2, 0.2])
    # takers of an empty GPU: 810m (hole 190; pods needing more than 190: all -> 190) and the
    # whole-GPU pod (hole 0), weighted 0.5 : 0.25 among GPU pods
    assert openb.empty_gpu_fragmentation(tp) == pytest.approx((0.5 * 190 + 0.25 * 0) / 0.75)
    assert openb.whole_gpu_share(tp) == pytest.approx(0.25 / 0.75)
    # multi-GPU pods count their GPUs in the demand and leave no hole
    tp2 = _tp([810, 1000], [1, 4], [0.5, 0.5])
    assert openb.whole_gpu_share(tp2) == pytest.approx(0.5 * 4 / (0.5 + 0.5 * 4))
    assert openb.empty_gpu_fragmentation(tp2) == pytest.approx(0.5 * 190 / 1.0)
    # no pod needs an empty GPU: nothing to displace, no credit
    tp3 = _tp([300, 200], [1, 1], [0.5, 0.5])
    assert openb.empty_gpu_fragmentation(tp3) == 0.0
    assert openb.whole_gpu_share(tp3) == 1.0


def _tiny_cluster(cpu_b: int):
    """Node a: one GPU with 530m left (a 470m pod on it); node b: one empty GPU."""
    nodes = openb.NodeTable(
        names=("a", "b"),
        cpu_milli=np.array([64000, cpu_b]),
        memory_mib=np.array([65536, 65536]),
        gpu_count=np.array([1, 1]),
        model_id=np.array([0, 0]),
        models=("G",),
    )
    state = openb.ClusterState(nodes)
    state.gpu_left[0, 0] = 530
    state.cpu_left[0] -= 4000
    return state


@pytest.mark.parametrize(
    "credit, cpu_b, expected",
    [
        (4.0, 64000, "b"),  # sharing-heavy workload: opening the empty GPU displaces a lone 810m pod
        (0.0, 64000, "a"),  # without the credit the pod pairs up (best fit), as FGD would
        (4.0, 4000, "a"),  # node b would have no CPU left for its GPU: no credit there
    ],
)
def test_credit_moves_a_sharing_pod_to_an_empty_gpu_only_where_cpu_remains(credit, cpu_b, expected):
    tp = _tp([810, 470, 160], [1, 1, 1], [0.6, 0.3, 0.1], cpu_milli=[3000, 4000, 1000])
    state = _tiny_cluster(cpu_b)
    pol = openb.DefaultPolicy(state, tp, empty_credit=credit)
    assert pol.empty_credit_milli == pytest.approx(credit * openb.empty_gpu_fragmentation(tp))
    shape = openb.PodShape(cpu_milli=4000, memory_mib=1024, gpu_milli=470, num_gpu=1, spec="")
    ev = pol.evaluate(shape, np.arange(2), np.ones(1, dtype=bool))
    assert np.isfinite(ev.score).all()
    best = ev.score.max()
    chosen = max(i for i in range(2) if ev.score[i] == best)  # the policy's tie rule: largest name
    assert ("a", "b")[chosen] == expected


def test_credit_vanishes_when_empty_gpus_go_to_whole_gpu_pods():
    tp = _tp([1000, 470], [1, 1], [0.7, 0.3])
    pol = openb.DefaultPolicy(_tiny_cluster(64000), tp)
    assert pol.empty_credit_milli == 0.0


def test_default_meets_the_gpushare100_target():
    """gpushare100 (every GPU pod shares a GPU) is where FGD leaves the most unallocated; the
    credit was built for it. Seed 42 against the authors' 10-seed FGD mean."""
    nodes = openb.load_nodes(os.path.join(DATA, "openb_node_list_gpu_node.csv"))
    pods = openb.load_pods(os.path.join(DATA, "openb_pod_list_gpushare100.csv.gz"))
    pub = openb.load_published(os.path.join(DATA, "summary_by_workload_policy.csv"))
    r = openb.replay(nodes, pods, "default", seed=42)
    fgd_unalloc = pub[("openb_pod_list_gpushare100", "fgd")]["unallocated_pct_at_130"]
    assert 100 - r.alloc_pct <= 0.9 * fgd_unalloc
