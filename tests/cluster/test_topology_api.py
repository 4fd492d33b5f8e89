"""Topology API on the examples, and hypothesis properties on generated clusters."""

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.hal.cluster import load_cluster, parse_cluster_text
from xpod.hal.errors import XpodError

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples", "clusters"
)


@pytest.fixture(scope="module")
def cm():
    return load_cluster(os.path.join(EXAMPLES, "cloudmatrix384.yaml")).topology()


def test_cloudmatrix_devices_are_dies(cm):
    devs = cm.devices()
    assert len(devs) == 768
    d = cm.device("cm-n00/3")
    assert (d.node, d.index, d.package, d.die, d.model) == ("cm-n00", 3, 1, 1, "ascend-910c")
    assert len(cm.devices_of_node("cm-n47")) == 16
    with pytest.raises(XpodError, match="no device 'cm-n99/0'"):
        cm.device("cm-n99/0")


def test_cloudmatrix_tiers_between_devices(cm):
    same_package = cm.tier_between("cm-n00/0", "cm-n00/1")
    same_node = cm.tier_between("cm-n00/0", "cm-n00/2")
    other_node = cm.tier_between("cm-n00/0", "cm-n47/15")
    assert (same_package.number, same_package.scope, same_package.link) == (1, "package", "SIO")
    assert (same_node.number, same_node.scope, same_node.bandwidth_bytes_per_s) == (2, "node", 196_000_000_000)
    assert (other_node.number, other_node.scope) == (3, "supernode")
    assert cm.latency_seconds("cm-n00/0", "cm-n47/15") == pytest.approx(1e-6)
    assert cm.tier_between("cm-n00/0", "cm-n00/0") is None


def test_cloudmatrix_groups_and_domains(cm):
    assert [len(g) for g in cm.groups(1)] == [2] * 384
    assert [len(g) for g in cm.groups(2)] == [16] * 48
    assert [len(g) for g in cm.groups(3)] == [768]
    assert cm.supernode_of("cm-n05/0") == "cm-a"
    assert cm.domain_of("cm-n05/0", "rack") == "cm-a-r01"
    assert cm.node_of("cm-n05/7") == "cm-n05"
    with pytest.raises(XpodError, match="no tier 9"):
        cm.groups(9)


def test_two_supernodes_meet_only_over_roce():
    t = load_cluster(os.path.join(EXAMPLES, "cloudmatrix384x2.yaml")).topology()
    cross = t.tier_between("cm-a-n00/0", "cm-b-n00/0")
    assert (cross.number, cross.fabric, cross.link, cross.bandwidth_bytes_per_s) == (4, "rdma", "RoCE", 25_000_000_000)
    assert t.tier_between("cm-a-n00/0", "cm-a-n47/0").number == 3
    assert sorted(len(g) for g in t.groups(3)) == [768, 768]
    assert {t.supernode_of(g[0]) for g in t.groups(3)} == {"cm-a", "cm-b"}
    m = t.distance_matrix(
        [t.device("cm-a-n00/0"), t.device("cm-a-n00/1"), t.device("cm-a-n01/0"), t.device("cm-b-n00/0")]
    )
    assert m.tolist() == [[0, 1, 3, 4], [1, 0, 3, 4], [3, 3, 0, 4], [4, 4, 4, 0]]


def test_atlas_a2_has_two_hccs_groups_of_four_per_node():
    t = load_cluster(os.path.join(EXAMPLES, "atlas-800t-a2.yaml")).topology()
    groups = t.groups(1)
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    assert [d.index for d in groups[0]] == [0, 1, 2, 3]
    assert t.tier_between("a2-n01/0", "a2-n01/3").link == "HCCS"
    assert t.tier_between("a2-n01/3", "a2-n01/4").link == "PCIe"
    assert t.tier_between("a2-n01/0", "a2-n02/0").link == "RoCE"


def test_heterogeneous_groups_stay_on_their_own_fabric():
    t = load_cluster(os.path.join(EXAMPLES, "heterogeneous.yaml")).topology()
    assert t.tier_between("npu01/0", "npu01/7").link == "HCCS"
    assert t.tier_between("gpu01/0", "gpu01/1").link == "NVLink"
    assert t.tier_between("mlu01/0", "mlu01/7").link == "MLU-Link"
    assert t.tier_between("npu01/0", "mlu01/0").name == "leaf"  # same rack
    assert t.tier_between("npu01/0", "gpu01/0").name == "spine"  # other rack
    assert t.supernode_of("npu01/0") is None
    assert t.devices_of_node("cpu01") == ()


# ---------------------------------------------------------------- generated clusters

MODELS = {"ascend-910c": 2, "nvidia-h100-sxm": 1, "ascend-910b3": 1}


@st.composite
def clusters(draw):
    """A random valid descriptor: 1-2 super-nodes of 1-3 racks of 1-3 nodes; one node group
    per super-node; optional package / group / rack / supernode tiers; node and cluster tiers."""
    n_sn = draw(st.integers(1, 2))
    use_group = draw(st.booleans())
    groups, domains, hosts_all = [], [], []
    for s in range(n_sn):
        racks = draw(st.integers(1, 3))
        per_rack = draw(st.integers(1, 2))
        sn_hosts = []
        for r in range(racks):
            hosts = [f"s{s}r{r}n{i}" for i in range(per_rack)]
            sn_hosts += hosts
            domains.append(f'      - {{name: s{s}-r{r}, level: rack, hosts: "{",".join(hosts)}"}}')
        domains.append(f'      - {{name: s{s}, level: supernode, hosts: "{",".join(sn_hosts)}"}}')
        model = draw(st.sampled_from(sorted(MODELS)))
        pkgs = draw(st.sampled_from([2, 4] if use_group else [1, 2, 4]))
        groups.append((f"g{s}", ",".join(sn_hosts), model, pkgs))
        hosts_all += sn_hosts
    use = {k: draw(st.booleans()) for k in ("package", "rack", "supernode")}
    use["group"] = use_group
    fabrics = []
    n = 1
    if use["package"]:
        fabrics.append(f"    - {{name: pkg, plane: scale-up, tiers: [{{tier: {n}, scope: package}}]}}")
        n += 1
    if use["group"]:
        fabrics.append(f"    - {{name: grp, plane: scale-up, tiers: [{{tier: {n}, scope: group, groupSize: 2}}]}}")
        n += 1
    fabrics.append(f"    - {{name: up, plane: scale-up, tiers: [{{tier: {n}, scope: node, bandwidth: {n}00GB/s}}]}}")
    n += 1
    out_tiers = []
    for scope in ("rack", "supernode"):
        if use[scope]:
            out_tiers.append(f"{{tier: {n}, scope: {scope}, bandwidth: 400Gb/s}}")
            n += 1
    out_tiers.append(f"{{tier: {n}, scope: cluster, bandwidth: 100Gb/s, latency: 5us}}")
    fabrics.append(f"    - {{name: out, plane: scale-out, tiers: [{', '.join(out_tiers)}]}}")
    text = (
        "\n".join(
            [
                "apiVersion: xpod/v1",
                "kind: Cluster",
                "metadata: {name: gen}",
                "spec:",
                "  fabrics:",
                *fabrics,
                "  topology:",
                "    levels: [supernode, rack, node]",
                "    domains:",
                *domains,
                "  nodeGroups:",
                *[
                    f'    - {{name: {g}, hosts: "{h}", devices: {{model: {m}, packagesPerNode: {p}}}}}'
                    for g, h, m, p in groups
                ],
            ]
        )
        + "\n"
    )
    return text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_generated_topologies_are_ultrametric(text):
    topo = parse_cluster_text(text, "gen.yaml").topology()
    devs = topo.devices()
    m = topo.distance_matrix()
    numbers = topo.tier_numbers()
    n = len(devs)
    group_at = {num: {d: gi for gi, g in enumerate(topo.groups(num)) for d in g} for num in numbers}
    assert (m == m.T).all()
    for i, j in itertools.product(range(n), repeat=2):
        # zero exactly on the diagonal; every pair joined by exactly one tier: the closest
        # tier whose group holds both, and no closer tier holds both
        assert (m[i, j] == 0) == (i == j)
        if i != j:
            t = topo.tier_between(devs[i], devs[j])
            assert t is not None and t.number == m[i, j]
            a, b = devs[i], devs[j]
            assert group_at[t.number].get(a) == group_at[t.number].get(b) is not None
            assert all(
                group_at[c].get(a) is None or group_at[c].get(a) != group_at[c].get(b) for c in numbers if c < t.number
            )
    # tiers nest: d(a, c) <= max(d(a, b), d(b, c))
    for i, j, k in itertools.product(range(min(n, 16)), repeat=3):
        assert m[i, k] <= max(m[i, j], m[j, k])
    # groups of a tier partition the devices on it, and each lies inside one group of every wider tier
    for lo, hi in itertools.combinations(numbers, 2):
        wide = {d: gi for gi, g in enumerate(topo.groups(hi)) for d in g}
        for g in topo.groups(lo):
            assert len({wide.get(d) for d in g}) == 1
    for num in numbers:
        seen = [d for g in topo.groups(num) for d in g]
        assert len(seen) == len(set(seen))


def test_rank_tiers_for_hierarchical_collectives(cm):
    ranks = [f"cm-n0{n}/{i}" for n in (0, 1) for i in range(16)]
    tiers = cm.rank_tiers(ranks)
    assert [(t.number, t.scope) for t in tiers] == [(1, "package"), (2, "node"), (3, "supernode")]
    assert tiers[0].groups[:2] == ((0, 1), (2, 3)) and len(tiers[0].groups) == 16
    assert tiers[1].groups == (tuple(range(16)), tuple(range(16, 32)))
    assert tiers[2].groups == (tuple(range(32)),)
    assert tiers[2].bandwidth_bytes_per_s == 196_000_000_000 and tiers[2].latency_seconds == pytest.approx(1e-6)
    # one die on each of 4 nodes: no package or node tier joins any two of them
    assert [t.number for t in cm.rank_tiers([f"cm-n0{n}/0" for n in range(4)])] == [3]
    with pytest.raises(XpodError, match="appears twice"):
        cm.rank_tiers(["cm-n00/0", "cm-n00/0"])


def test_rank_tiers_carry_groups_across_fabrics_a_rank_is_not_on():
    t = load_cluster(os.path.join(EXAMPLES, "heterogeneous.yaml")).topology()
    ranks = ["npu01/0", "npu01/1", "gpu01/0", "gpu01/1", "mlu01/0"]
    tiers = t.rank_tiers(ranks)
    assert [(x.number, x.groups) for x in tiers] == [
        (1, ((0, 1), (2, 3), (4,))),
        (2, ((0, 1, 4), (2, 3))),  # npu01 and mlu01 share rack-a
        (3, ((0, 1, 2, 3, 4),)),
    ]
    assert tiers[0].fabrics == ("hccs", "mlulink", "nvlink")
    assert tiers[0].bandwidth_bytes_per_s is None  # HCCS bandwidth is unknown, so the slowest is unknown
    assert t.group_of("npu01/0", 2) == tuple(
        d for d in t.devices() if d.node in ("npu01", "npu02", "npu03", "npu04", "mlu01", "mlu02")
    )
    assert t.group_of("npu01/0", 1) == t.devices_of_node("npu01")
    assert t.supernodes() == []
