"""The scheduling framework: plugins are checked when registered and when a profile loads, the
mechanism reaches them only through the extension points (their statuses tell "not now" from
"never" from "broken"), and never imports a plugin."""

from __future__ import annotations

import ast
import pathlib

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.core import Scheduler
from xpod.scheduler.core.framework import (
    PLUGINS,
    SUCCESS,
    Plugin,
    WalkOrder,
    check_plugin,
    error,
    register,
    unresolvable,
    unschedulable,
)
from xpod.scheduler.core.model import ReasonCode
from xpod.scheduler.core.profile import default_profile, profile_from_dict
from xpod.scheduler.core.testing import job, node, placements

H = "nvidia-h100-sxm"
CORE = pathlib.Path(__file__).resolve().parents[2] / "scheduler" / "core"


@pytest.fixture
def registered():
    """Register test plugins for one test only."""
    added: list[str] = []

    def add(cls):
        register(cls)
        added.append(cls.name)
        return cls

    yield add
    for name in added:
        PLUGINS.pop(name, None)


def test_a_plugin_without_an_extension_point_is_refused():
    class Idle(Plugin):
        name = "idle"

    with pytest.raises(XpodError, match="plugin idle: implements no extension point"):
        check_plugin(Idle)


def test_a_public_method_that_is_no_extension_point_is_refused():
    class Typo(Plugin):
        name = "typo"

        def scor(self, job, nodes, ctx):  # meant: score
            return [0.0] * len(nodes)

    with pytest.raises(XpodError, match="plugin typo: 'scor' is no extension point"):
        check_plugin(Typo)


def test_reserve_needs_unreserve_and_fields_must_be_plugin_fields():
    class Half(Plugin):
        name = "half"

        def reserve(self, job, binding, ctx):
            return SUCCESS

    with pytest.raises(XpodError, match="needs both reserve and unreserve"):
        check_plugin(Half)

    class Bound(Plugin):
        name = "bound"

        def victim_class_bound(self, job, ctx, reclaim):
            return 0

    with pytest.raises(XpodError, match="victim_class_bound bounds its own victims: implement victims too"):
        check_plugin(Bound)

    class Field(Plugin):
        name = "field"
        JOB_FIELDS = ("colour",)

        def min_tasks(self, job):
            return 1

    with pytest.raises(XpodError, match="'colour' is not a job field"):
        check_plugin(Field)


def test_profile_load_refuses_unknown_plugins_arguments_and_two_answers_to_one_point(registered):
    with pytest.raises(XpodError, match=r"policies\[0\]: unknown plugin 'nope'"):
        profile_from_dict({"policies": ["nope"]})

    @registered
    class Order(Plugin):
        name = "test-order"

        def node_order(self, job):
            return WalkOrder.EMPTIEST_FIRST

    with pytest.raises(XpodError, match="binpack and test-order both answer node_order"):
        profile_from_dict({"policies": ["binpack", "test-order"]})
    with pytest.raises(XpodError, match="gang is listed twice"):
        profile_from_dict({"policies": ["gang", "gang"]})
    with pytest.raises(XpodError, match="plugin priority: unknown argument 'fast'"):
        PLUGINS["priority"](fast=True)


def test_the_mechanism_imports_no_plugin():
    """actions/, the placer, the reasons, the snapshot and the framework reach plugins only
    through the extension points: none imports a plugin module."""
    files = [*sorted((CORE / "actions").glob("*.py")), *(CORE / f for f in ("placer.py", "reasons.py", "snapshot.py"))]
    files += sorted((CORE / "framework").glob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text())
        for node_ in ast.walk(tree):
            if isinstance(node_, ast.ImportFrom):
                mod = node_.module or ""
                assert "plugins" not in mod.split("."), f"{path.name} imports {mod}"
        source = path.read_text()
        assert ".name ==" not in source and "isinstance(p, " not in source, path.name


def _with(registered, cls, actions=("enqueue", "allocate")):
    registered(cls)
    names = [n for n, _ in default_profile().policies] + [cls.name]
    return profile_from_dict({"actions": list(actions), "policies": names})


def test_a_filter_that_refuses_for_now_leaves_the_job_unschedulable_with_its_message(registered):
    class Maintenance(Plugin):
        """n0 is in maintenance: nothing new goes there for now."""

        name = "test-maintenance"

        def filter(self, job, node):
            return unschedulable("in maintenance") if node.node.name == "n0" else SUCCESS

    prof = _with(registered, Maintenance)
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    s.submit(job("j").devices(H, 1).build())
    r = s.cycle()
    assert r.pending["j"].code is ReasonCode.UNSCHEDULABLE  # not "never": it may fit later
    assert "test-maintenance: in maintenance" in r.pending["j"].message
    assert s.never_fits(job("j2").devices(H, 1).build()) is None


def test_a_filter_that_rules_a_node_out_for_good_shrinks_what_the_cluster_offers(registered):
    class OnlyN1(Plugin):
        name = "test-only-n1"

        def filter(self, job, node):
            return SUCCESS if node.node.name == "n1" else unresolvable("not n1")

    prof = _with(registered, OnlyN1)
    s = Scheduler([node("n0").devices(H, 8).build(), node("n1").devices(H, 4).build()], profile=prof)
    verdict = s.never_fits(job("big").devices(H, 6).build())
    assert verdict is not None and verdict.cluster_devices == 4
    assert s.never_fits(job("ok").devices(H, 4).build()) is None


def test_a_score_plugin_orders_the_candidates(registered):
    class PreferLast(Plugin):
        """Higher score for later node names: the opposite of the walk's name order."""

        name = "test-prefer-last"

        def score(self, job, nodes, ctx):
            return [float(int(st.node.name[1:])) for st in nodes]

    prof = _with(registered, PreferLast)
    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(4)], profile=prof, clock=lambda: 1.0)
    s.submit(job("j").devices(H, 2).build())
    assert placements(s.cycle()) == {"j": [("n3", (0, 1))]}


def test_reserve_refusal_and_permit_refusal_undo_the_placement(registered):
    calls: list[tuple[str, str]] = []

    class Quota(Plugin):
        """Reserves each binding; refuses the third task of any job; counts unreserves."""

        name = "test-quota"

        def reserve(self, job, binding, ctx):
            calls.append(("reserve", f"{job.id}/{binding.task}"))
            return unschedulable("quota: two tasks at most") if binding.task >= 2 else SUCCESS

        def unreserve(self, job, binding, ctx):
            calls.append(("unreserve", f"{job.id}/{binding.task}"))

    prof = _with(registered, Quota)
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    s.submit(job("g").training(tasks=3).devices(H, 1).build())
    r = s.cycle()
    assert r.bindings == () and "quota: two tasks at most" in r.pending["g"].message
    # every reserve undone, latest first, and the snapshot back to empty
    assert [c for c in calls if c[0] == "unreserve"] == [
        ("unreserve", "g/2"),
        ("unreserve", "g/1"),
        ("unreserve", "g/0"),
    ]
    assert s.snapshot.free_whole[H]["n0"] == 8

    class Broken(Plugin):
        name = "test-broken"

        def permit(self, job, bindings, ctx):
            return error("lost its licence server")

    prof = _with(registered, Broken)
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    s.submit(job("j").devices(H, 1).build())
    r = s.cycle()
    assert r.bindings == () and "test-broken: lost its licence server" in r.pending["j"].message
    assert s.snapshot.free_whole[H]["n0"] == 8


def test_pre_filter_unresolvable_refuses_at_submit_and_skip_spares_the_job(registered):
    seen: list[str] = []

    class NoBig(Plugin):
        name = "test-no-big"

        def pre_filter(self, job):
            if job.devices is None:
                return SKIP_
            return unresolvable("devices.count: at most 4 here") if job.devices.count > 4 else SUCCESS

        def filter(self, job, node):
            seen.append(job.id)
            return SUCCESS

    SKIP_ = __import__("xpod.scheduler.core.framework", fromlist=["SKIP"]).SKIP
    prof = _with(registered, NoBig)
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    with pytest.raises(XpodError, match="job big: devices.count: at most 4 here"):
        s.submit(job("big").devices(H, 8).build())
    s.submit(job("cpu").cpu(1).build())
    s.submit(job("gpu").devices(H, 2).build())
    s.cycle()
    assert "gpu" in seen and "cpu" not in seen  # skipped: its filter never ran for the CPU job


def test_a_plugin_field_no_enabled_plugin_acts_on_is_refused():
    prof = profile_from_dict({"policies": ["gang", "topology", "binpack", "priority"]})
    s = Scheduler([node("n0").devices(H, 8).labels(pool="a").build()], profile=prof)
    with pytest.raises(XpodError, match="node_selector: no enabled plugin acts on it"):
        s.submit(job("j").devices(H, 1).selector(pool="a").build())
    with pytest.raises(XpodError, match="domain_block: no enabled plugin acts on it"):
        s.submit(job("b").training(tasks=2).devices(H, 8).domain_block(16).build())


def test_without_a_victim_plugin_preemption_takes_lower_priority_classes_only():
    prof = profile_from_dict(
        {"actions": ["enqueue", "allocate", "preempt"], "policies": ["gang", "topology", "binpack"]}
    )
    s = Scheduler([node("n0").devices(H, 8).build()], profile=prof, clock=lambda: 1.0)
    s.submit(job("low").devices(H, 8).priority("low").build())
    s.cycle()
    s.submit(job("same").devices(H, 8).priority("low").build())
    s.submit(job("high").devices(H, 8).priority("high").build())
    r = s.cycle()
    assert [e.job_id for e in r.evictions] == ["low"] and placements(r) == {"high": [("n0", tuple(range(8)))]}


def test_a_score_of_minus_infinity_keeps_the_node_out(registered):
    class NotN0(Plugin):
        name = "test-not-n0"

        def score(self, job, nodes, ctx):
            assert list(nodes.rows) == [st.row for st in nodes]  # numpy rows beside the states
            return [float("-inf") if st.node.name == "n0" else 0.0 for st in nodes]

    prof = _with(registered, NotN0)
    s = Scheduler([node(f"n{i}").devices(H, 8).build() for i in range(2)], profile=prof, clock=lambda: 1.0)
    s.submit(job("a").devices(H, 8).build())
    s.submit(job("b").devices(H, 8).build())
    r = s.cycle()
    assert placements(r) == {"a": [("n1", tuple(range(8)))]} and r.pending["b"].code is ReasonCode.UNSCHEDULABLE
