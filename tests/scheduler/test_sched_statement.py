"""The Statement: every operation (bind, evict, restore and the look-aheads assume_ended, mask,
close) is undone exactly by ``discard``, in reverse order, with the snapshot's indexes; a
statement holding a look-ahead is never committed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.scheduler.core.model import MILLI, Binding
from xpod.scheduler.core.snapshot import Snapshot, Statement
from xpod.scheduler.core.testing import job, node

H = "nvidia-h100-sxm"


def state(snap: Snapshot) -> dict:
    """Everything a statement may change, including the indexes, in a comparable form."""
    return {
        "nodes": {
            n: (
                s.cpu_left,
                s.memory_left,
                tuple(s.free_milli),
                tuple(s.free_memory),
                tuple(s.usable),
                s.schedulable,
                s.masked,
            )
            for n, s in snap.nodes.items()
        },
        "running": {j: rj for j, rj in snap.running.items()},
        "free_whole": {m: {n: c for n, c in v.items()} for m, v in snap.free_whole.items()},
        "buckets": {m: {c: frozenset(ns) for c, ns in v.items() if ns} for m, v in snap.buckets.items()},
        "free_total": {m: c for m, c in snap.free_total.items() if c},
        "partial": {m: frozenset(v) for m, v in snap.partial.items() if v},
        "partial_buckets": {
            m: {b: frozenset(ns) for b, ns in v.items() if ns} for m, v in snap.partial_buckets.items()
        },
    }


def cluster() -> Snapshot:
    snap = Snapshot([node(f"n{i}").devices(H, 4).build() for i in range(3)])
    # two running jobs: a whole-device one and a fractional one
    for jid, b in (
        ("r0", Binding("r0", 0, "n0", (0, 1), MILLI, 1000, 0)),
        ("r1", Binding("r1", 0, "n1", (2,), 300, 1000, 0, 2**30)),
    ):
        stmt = Statement(snap, 0.0)
        stmt.bind(job(jid).devices(H).build(), b)
        stmt.commit({jid: job(jid).devices(H).build()})
    return snap


OPS = st.lists(
    st.tuples(
        st.sampled_from(["bind", "evict", "restore", "assume_ended", "mask", "close"]),
        st.integers(0, 2),
        st.integers(0, 3),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_discard_undoes_every_operation_exactly(ops):
    snap = cluster()
    before = state(snap)
    stmt = Statement(snap, 5.0)
    for k, (op, n, i) in enumerate(ops):
        name = f"n{n}"
        if op == "bind":
            b = Binding(f"b{k}", 0, name, (i,), MILLI, 1000, 0)
            if snap.can_apply([b]):
                stmt.bind(job(f"b{k}").devices(H).build(), b)
        elif op == "evict" and snap.running:
            stmt.evict(sorted(snap.running)[0])
        elif op == "restore" and stmt.evicted:
            rj = stmt.evicted[-1]
            if snap.can_apply(rj.bindings):
                stmt.restore(rj)
        elif op == "assume_ended" and snap.running:
            stmt.assume_ended(sorted(snap.running)[-1])
        elif op == "mask":
            stmt.mask([(name, i), ("gone", 0)])
            assert not snap.nodes[name].usable[i]
        elif op == "close":
            stmt.close([name])
            assert not snap.nodes[name].schedulable
    stmt.discard()
    assert state(snap) == before
    with pytest.raises(RuntimeError, match="closed"):
        stmt.discard()


def test_masked_devices_leave_the_free_indexes_until_discard():
    snap = cluster()
    assert snap.free_whole[H]["n2"] == 4
    stmt = Statement(snap, 0.0)
    stmt.mask([("n2", 0), ("n2", 3)])
    assert snap.free_whole[H]["n2"] == 2 and snap.free_total[H] == 2 + 3 + 2  # n0: 2 taken; n1: 1 shared
    stmt.discard()
    assert snap.free_whole[H]["n2"] == 4


def test_a_statement_with_a_look_ahead_is_never_committed():
    snap = cluster()
    stmt = Statement(snap, 0.0)
    stmt.close(["n0"])
    with pytest.raises(RuntimeError, match="look-aheads \\(close\\)"):
        stmt.commit({})
    stmt.discard()
    assert snap.nodes["n0"].schedulable


def test_restore_gives_back_a_victim_and_commit_keeps_it_running():
    snap = cluster()
    stmt = Statement(snap, 0.0)
    rj = stmt.evict("r0")
    assert "r0" not in snap.running and snap.free_whole[H]["n0"] == 4
    stmt.restore(rj)
    assert stmt.evicted == [] and snap.running["r0"] is rj and snap.free_whole[H]["n0"] == 2
    stmt.commit({})
    assert snap.running["r0"] is rj
    other = Statement(snap, 0.0)
    with pytest.raises(ValueError, match="not evicted by this statement"):
        other.restore(rj)


def test_assume_ended_frees_the_resources_but_keeps_the_job_running():
    snap = cluster()
    stmt = Statement(snap, 0.0)
    stmt.assume_ended("r0")
    assert "r0" in snap.running and snap.free_whole[H]["n0"] == 4 and snap.nodes["n0"].cpu_left == 256_000
    stmt.discard()
    assert snap.free_whole[H]["n0"] == 2 and snap.nodes["n0"].cpu_left == 255_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_the_numpy_vectors_and_watch_follow_every_change(ops):
    """``Snapshot.vectors`` (what scored placement filters with) equals the dict indexes after
    any statement, and ``watch`` names every node whose free counts moved."""
    snap = cluster()
    vec = snap.vectors()
    seen = snap.watch()
    seen.clear()
    before = {n: tuple(st.free_milli) for n, st in snap.nodes.items()}
    stmt = Statement(snap, 5.0)
    for k, (op, n, i) in enumerate(ops):
        b = Binding(f"b{k}", 0, f"n{n}", (i,), 300 if op == "mask" else MILLI, 0, 0)
        if op in ("bind", "mask") and snap.can_apply([b]):
            stmt.bind(job(f"b{k}").devices(H).build(), b)
        elif op == "evict" and snap.running:
            stmt.evict(sorted(snap.running)[0])
        elif op == "close":
            stmt.mask([(f"n{n}", i)])
    for state in snap.nodes.values():
        assert vec.states[state.row] is state
        assert vec.free[H][state.row] == snap.free_whole[H][state.node.name]
        assert vec.partial[H][state.row] == snap.partial_bucket_of[H].get(state.node.name, -1)
        if tuple(state.free_milli) != before[state.node.name]:
            assert state.node.name in seen
    stmt.discard()
    snap.remove_node("n2")
    assert "n2" in seen and vec.free[H][2] == 0 and [snap.nodes[n].row for n in ("n0", "n1")] == [0, 1]
