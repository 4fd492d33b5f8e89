"""``lifetime``: a task goes where it does not extend a node's expected busy life, so nodes
empty together and a job needing a whole node starts sooner (scheduler/core/plugins/lifetime.py)."""

from __future__ import annotations

from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.profile import profile_from_dict
from xpod.scheduler.core.testing import job, node, placements

H = "H100"


def profile(lifetime: bool, **args):
    policies = ["gang", "topology", "binpack"] + ([{"name": "lifetime", "args": args}] if lifetime else [])
    return profile_from_dict({"actions": ["enqueue", "allocate", "backfill"], "policies": [*policies, "priority"]})


def _two_nodes_one_short_one_long(lifetime: bool):
    """Node ``a`` runs a 600 s job on 6 of its 8 devices, node ``b`` a 100,000 s job on 6 of
    8 (binpack puts the second beside the first only if it fits); then a 90,000 s job of 2
    devices arrives: the two nodes are equally full."""
    t = [0.0]
    nodes = [node("a").devices(H, 8).build(), node("b").devices(H, 8).build()]
    s = Scheduler(nodes, profile=profile(lifetime), clock=lambda: t[0])
    s.submit(job("short").devices(H, 6).duration(600).submitted(0).build())
    first = placements(s.cycle())
    t[0] = 1.0
    s.submit(job("long").devices(H, 6).duration(100_000).submitted(1).build())
    first.update(placements(s.cycle()))
    assert first["short"][0][0] != first["long"][0][0]
    t[0] = 10.0
    s.submit(job("new").devices(H, 2).duration(90_000).submitted(10).build())
    return s, t, first, placements(s.cycle())


def test_a_long_task_joins_the_long_lived_node_not_the_one_about_to_empty():
    _, _, first, got = _two_nodes_one_short_one_long(lifetime=True)
    assert got["new"][0][0] == first["long"][0][0]
    # binpack alone: the nodes are equally full, the first by name (the short job's) takes it
    _, _, first, got = _two_nodes_one_short_one_long(lifetime=False)
    assert got["new"][0][0] == first["short"][0][0]


def test_so_a_whole_node_job_starts_when_the_short_job_ends():
    """After ``short`` ends at 600 s its node is empty with ``lifetime`` and a job of 8 devices
    (a whole node) starts at once; with binpack alone ``new`` still runs there and it cannot."""
    for lifetime, starts in ((True, True), (False, False)):
        s, t, first, _ = _two_nodes_one_short_one_long(lifetime)
        t[0] = 600.0
        s.finish("short")
        s.submit(job("whole").devices(H, 8).duration(3600).submitted(600).build())
        assert ("whole" in placements(s.cycle())) is starts, lifetime


def test_a_short_task_still_fills_the_fullest_node():
    """A task that ends before every busy node would empty extends none: binpack's order
    (fullest first) decides, as without the plugin."""
    t = [0.0]
    nodes = [node("a").devices(H, 8).build(), node("b").devices(H, 8).build()]
    s = Scheduler(nodes, profile=profile(True), clock=lambda: t[0])
    s.submit(job("six").devices(H, 6).duration(40_000).submitted(0).build())
    s.cycle()
    t[0] = 1.0
    s.submit(job("four").devices(H, 4).duration(50_000).submitted(1).build())
    s.cycle()
    t[0] = 5.0
    s.submit(job("tiny").devices(H, 1).duration(60).submitted(5).build())
    got = placements(s.cycle())
    assert got["tiny"][0][0] == s.running["six"].bindings[0].node  # 2 free there, 4 on the other


def test_a_job_without_a_duration_is_placed_by_the_walk():
    """No declared duration: the plugin skips the job and binpack's walk places it."""
    s, t, first, _ = _two_nodes_one_short_one_long(lifetime=True)
    s.submit(job("anon").devices(H, 2).submitted(10).build())
    assert "anon" in placements(s.cycle())
