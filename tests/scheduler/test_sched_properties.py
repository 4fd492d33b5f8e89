"""Property tests: whatever the cluster and the jobs, the scheduler's invariants hold.

* no device (or node CPU/memory) is ever over-allocated, recomputed from the bindings alone;
* a training gang is all or nothing: 0 tasks or at least its minimum;
* a preemption never leaves the preemptor unplaced;
* every placement obeys the Ascend rules (910C even counts on whole modules, legal sizes,
  distributed tasks take 16 dies, sp-blocks inside one super-node with the reserve kept;
  910B tasks of 1/2/4 inside one HCCS group);
* the same inputs give the same decisions.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.scheduler.core.plugins.ascend import rules as ascend
from xpod.scheduler.core import Scheduler
from xpod.hal.device import Health
from xpod.scheduler.core.model import MILLI, JobKind
from xpod.scheduler.core.testing import assert_supernode_reserve_kept, job, node

A3 = "ascend-910c"
B = "ascend-910b3"
H = "nvidia-h100-sxm"


@st.composite
def clusters(draw):
    nodes = []
    n_sn = draw(st.integers(1, 2))
    for s in range(n_sn):
        for i in range(draw(st.integers(2, 6))):
            nodes.append(node(f"a{s}-{i}").devices(A3, 16).supernode(f"sp{s}").domain(f"r{s}{i // 2}"))
    for i in range(draw(st.integers(0, 3))):
        nodes.append(node(f"b{i}").devices(B, 8).domain(f"rb{i // 2}"))
    for i in range(draw(st.integers(0, 3))):
        nodes.append(node(f"h{i}").devices(H, 8).cpu(draw(st.sampled_from([16, 64, 256]))))
    return [n.build() for n in nodes]


@st.composite
def jobs(draw, n_max=14):
    out = []
    for i in range(draw(st.integers(1, n_max))):
        kind = draw(st.sampled_from(["a3-single", "a3-gang", "a3-sp", "b", "h-frac", "h-gang", "serve", "serve-multi"]))
        prio = draw(st.sampled_from(["low", "normal", "high"]))
        b = job(f"j{i}").priority(prio).submitted(float(i + 1)).duration(float(draw(st.integers(10, 1000))))
        if kind == "a3-single":
            b.devices(A3, draw(st.sampled_from([1, 2, 4, 6, 8, 16])))
        elif kind == "a3-gang":
            t = draw(st.integers(2, 4))
            b.training(tasks=t, min_tasks=draw(st.integers(1, t))).devices(A3, 16).within(
                draw(st.sampled_from(["any", "supernode"]))
            )
        elif kind == "a3-sp":
            sp = draw(st.sampled_from([16, 32, 64]))
            b.training(tasks=sp // 16 * draw(st.integers(1, 2))).devices(A3, 16).domain_block(sp)
        elif kind == "b":
            b.devices(B, draw(st.sampled_from([1, 2, 4, 8])))
        elif kind == "h-frac":
            b.devices(H, 1, milli=draw(st.sampled_from([100, 250, 500, 700]))).cpu(draw(st.sampled_from([1, 8, 32])))
        elif kind == "h-gang":
            b.training(tasks=draw(st.integers(1, 3))).devices(H, draw(st.sampled_from([1, 2, 4, 8]))).cpu(4)
        elif kind == "serve":
            hi = draw(st.integers(1, 3))
            b.serving(draw(st.integers(1, hi)), hi).devices(A3, draw(st.sampled_from([2, 4])))
        else:  # replicas of 2-3 nodes x 16 dies: one logical super-pod each
            hi = draw(st.integers(1, 2))
            b.serving(draw(st.integers(1, hi)), hi, tasks_per_replica=draw(st.integers(2, 3))).devices(A3, 16).within(
                draw(st.sampled_from(["supernode", "any"]))
            )
        out.append(b.build())
    return out


def check_invariants(s: Scheduler) -> None:
    snap = s.snapshot
    used = defaultdict(int)
    cpu = defaultdict(int)
    per_job_nodes = defaultdict(list)
    for jid, rj in snap.running.items():
        j = rj.job
        n_tasks = len(rj.bindings)
        if j.kind is JobKind.TRAINING:
            assert n_tasks >= j.min_required, f"{jid}: gang broken ({n_tasks} < {j.min_required})"
        if j.kind is JobKind.SERVING:
            # below min replicas only while degraded: lost replicas replaced alone stay pending
            assert n_tasks >= j.min_required or (n_tasks >= 1 and jid in s.pending), f"{jid}: below min replicas"
        assert n_tasks <= j.tasks
        for b in rj.bindings:
            st_ = snap.nodes[b.node]
            cpu[b.node] += b.cpu_milli
            per_job_nodes[jid].append(b)
            for i in b.device_indices:
                used[(b.node, i)] += b.milli
                assert st_.healthy[i], f"{jid} on unhealthy {b.node}/{i}"
                assert st_.node.devices[i].model == (j.devices.model or st_.node.devices[i].model)
            check_ascend(j, b, snap)
        if j.domain_block and j.domain_block >= 16:
            check_sp_blocks(j, rj.bindings, snap)
    for (n, i), m in used.items():
        assert m <= MILLI, f"{n}/{i} over-allocated: {m}"
        assert snap.nodes[n].free_milli[i] == MILLI - m
    for n, c in cpu.items():
        assert c <= snap.nodes[n].node.cpu_milli
        assert snap.nodes[n].cpu_left == snap.nodes[n].node.cpu_milli - c


def check_ascend(j, b, snap) -> None:
    fam = ascend.family(j.devices.model if j.devices else None)
    if fam is None or j.devices.fractional:
        return
    devs = snap.nodes[b.node].node.devices
    k = len(b.device_indices)
    if fam == "910c":
        assert k in ascend.A3_LEGAL_SINGLE_NODE
        if (j.kind is JobKind.TRAINING and j.tasks > 1) or j.replica_size > 1:
            assert k == 16
        if k % 2 == 0:
            mods = defaultdict(int)
            for i in b.device_indices:
                mods[devs[i].package] += 1
            assert all(c == 2 for c in mods.values()), f"{b} splits a module"
    else:
        assert k in ascend.B_LEGAL
        if k < 8:
            assert len({devs[i].group for i in b.device_indices}) == 1, f"{b} crosses HCCS groups"


def check_sp_blocks(j, bindings, snap) -> None:
    per_block = j.domain_block // 16
    ordered = sorted(bindings, key=lambda b: b.task)
    for k in range(0, len(ordered), per_block):
        sns = {snap.nodes[b.node].node.domains.get("supernode") for b in ordered[k : k + per_block]}
        assert len(sns) == 1, f"{j.id}: logical super-pod spans {sns}"


PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(clusters(), jobs(), st.lists(st.integers(0, 100), max_size=4), st.randoms(use_true_random=False))
def test_invariants_hold_through_cycles(nodes, js, health_flips, rnd):
    t = [0.0]
    s = Scheduler(nodes, clock=lambda: t[0])
    for j in js:
        s.submit(j)
    for step in range(4):
        t[0] += 100.0
        before_running = set(s.running)
        r = s.cycle()
        check_invariants(s)
        bound = {b.job_id for b in r.bindings}
        for e in r.evictions:
            if e.preemptor is not None:
                assert e.preemptor in s.running, "a preemption left its preemptor unplaced"
                assert e.preemptor in bound
                assert e.job_id in before_running and e.job_id not in s.running
            assert e.job_id in s.pending or e.job_id in s.running, "an evicted job goes back to the queue"
        # finish some running jobs, flip some device health
        for jid in sorted(s.running)[: rnd.randint(0, 2)]:
            s.finish(jid)
        if health_flips and step < len(health_flips):
            names = sorted(s.snapshot.nodes)
            n = names[health_flips[step] % len(names)]
            devs = s.snapshot.nodes[n].node.devices
            if devs:
                s.set_device_health(n, health_flips[step] % len(devs), Health.CRITICAL)
                check_invariants(s)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), jobs())
def test_same_inputs_same_decisions(nodes, js):
    def run():
        t = [0.0]
        s = Scheduler(nodes, clock=lambda: t[0])
        for j in js:
            s.submit(j)
        out = []
        for _ in range(3):
            t[0] += 50
            r = s.cycle()
            out.append(
                (
                    r.bindings,
                    tuple(sorted((e.job_id, e.reason) for e in r.evictions)),
                    tuple(sorted((k, v.code, v.message) for k, v in r.pending.items())),
                )
            )
            for jid in sorted(s.running)[:1]:
                s.finish(jid)
        return out

    assert run() == run()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6))
def test_preemption_is_all_or_nothing(n_low, need_nodes):
    """A high-priority gang either starts (evicting only what it needs) or evicts nothing."""
    nodes = [node(f"n{i}").devices(H, 8).build() for i in range(4)]
    s = Scheduler(nodes, clock=lambda: 0.0)
    for i in range(n_low):
        s.submit(job(f"low{i}").devices(H, 8).priority("low").build())
    s.cycle()
    running_before = set(s.running)
    s.submit(job("hi").training(tasks=need_nodes).devices(H, 8).priority("high").build())
    r = s.cycle()
    evicted = {e.job_id for e in r.evictions}
    if "hi" in s.running:
        free_before = 4 - min(n_low, 4)
        assert len(evicted) == max(0, need_nodes - free_before)
    else:
        assert not evicted
        assert set(s.running) == running_before


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(3, 10), min_size=1, max_size=3),
    st.lists(st.tuples(st.sampled_from([16, 32, 48, 64]), st.integers(1, 2)), min_size=1, max_size=8),
)
def test_sp_blocks_stay_in_one_superpod_and_keep_the_reserve(sizes, specs):
    nodes = [
        node(f"s{k}-{i:02d}").devices(A3, 16).supernode(f"sp{k}").build() for k, n in enumerate(sizes) for i in range(n)
    ]
    s = Scheduler(nodes, clock=lambda: 0.0)
    for i, (sp, mult) in enumerate(specs):
        # equal expected durations: a job behind a blocked head may backfill (it ends in time)
        s.submit(job(f"j{i}").training(tasks=sp // 16 * mult).devices(A3, 16).domain_block(sp).duration(100).build())
    s.cycle()
    check_invariants(s)
    free = defaultdict(int, assert_supernode_reserve_kept(s.snapshot, ascend.DEFAULT_SUPERNODE_RESERVE_NODES))
    # and a job is refused only when the super-pods cannot hold all its blocks with the reserve
    for jid in s.last_reasons:
        j = s.pending[jid]
        per_block = j.domain_block // 16
        blocks = j.tasks // per_block
        room = sum(
            max(0, free[f"sp{k}"] - ascend.DEFAULT_SUPERNODE_RESERVE_NODES) // per_block for k in range(len(sizes))
        )
        assert room < blocks, f"{jid} refused though {room} blocks of {per_block} nodes fit"
