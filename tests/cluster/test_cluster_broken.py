"""Broken descriptors: each fails with the exact FILE:LINE:COL messages expected, all at once.

Every case edits tests/fixtures/cluster/base.yaml (a valid 4-node 910C cluster). ``kind`` says
which pass must catch it: "syntax" (YAML), "schema" (the published JSON Schema rejects it
too) or "semantic" (valid against the schema; only the loader can tell). The last test checks
that the schema and the loader agree on that split for every case and every example.
"""

import os

import jsonschema
import pytest
import yaml

from xpod.hal.cluster import ClusterValidationError, parse_cluster_text
from xpod.hal.cluster_schema import schema

HERE = os.path.dirname(os.path.abspath(__file__))
BASE_PATH = os.path.join(os.path.dirname(HERE), "fixtures", "cluster", "base.yaml")
with open(BASE_PATH) as _f:
    BASE = _f.read()

DEV = "      devices: {model: ascend-910c, packagesPerNode: 8}"
HOSTS = '      hosts: "n[01-04]"'
T1 = "        - {tier: 1, scope: node, bandwidth: 196GB/s}"
T2 = "        - {tier: 2, scope: cluster, bandwidth: 400Gb/s, latency: 2us}"
GROUP_B = '\n    - name: b\n      hosts: "m[1-2]"\n      devices: {model: nvidia-h100-sxm, packagesPerNode: 8}\n'

# (id, kind, [(old, new), ...], [expected messages after "t.yaml:"])
CASES = [
    (
        "unknown-key",
        "schema",
        [(DEV, DEV.replace("devices", "device"))],
        ["18:7: unknown key 'device' in spec.nodeGroups[0] (did you mean 'devices'?)"],
    ),
    (
        "yaml-syntax",
        "syntax",
        [(T1, T1.replace("}", ""))],
        [
            "11:11: YAML syntax error: expected ',' or '}', but got ':' (while parsing a flow mapping started at line 10, column 11)"
        ],
    ),
    (
        "number-is-a-word",
        "schema",
        [(DEV, DEV.replace(": 8", ": eight"))],
        ["18:54: spec.nodeGroups[0].devices.packagesPerNode must be a whole number, got 'eight' (text)"],
    ),
    (
        "negative-count",
        "schema",
        [(DEV, DEV.replace(": 8", ": -8"))],
        ["18:54: spec.nodeGroups[0].devices.packagesPerNode must be >= 1, got -8"],
    ),
    (
        "zero-count",
        "schema",
        [(DEV, DEV.replace(": 8", ": 0"))],
        ["18:54: spec.nodeGroups[0].devices.packagesPerNode must be >= 1, got 0"],
    ),
    (
        "unknown-model",
        "semantic",
        [(DEV, DEV.replace("910c", "910x"))],
        [
            "18:24: unknown device model 'ascend-910x' (did you mean 'ascend-910c'?); use a catalog id (hal/catalog.yaml) or declare it under spec.deviceModels"
        ],
    ),
    (
        "malformed-hostlist",
        "semantic",
        [(HOSTS, HOSTS.replace("04]", "04"))],
        ["17:14: hostlist 'n[01-04': '[' is never closed"],
    ),
    (
        "backwards-range",
        "semantic",
        [(HOSTS, HOSTS.replace("01-04", "04-01"))],
        ["17:14: hostlist 'n[04-01]': range '04-01' runs backwards"],
    ),
    (
        "hostlist-repeats",
        "semantic",
        [(HOSTS, HOSTS.replace(']"', '],n02"'))],
        ["17:14: hostlist 'n[01-04],n02' names node 'n02' more than once"],
    ),
    (
        "node-in-two-groups",
        "semantic",
        [(DEV + "\n", DEV + GROUP_B.replace("m[1-2]", "n[04-05]"))],
        ["20:14: node 'n04' is in node group 'a' (line 17) and in 'b'; a node belongs to one group"],
    ),
    (
        "tiers-do-not-nest",
        "semantic",
        [(T2, T2.replace("cluster", "node"))],
        [
            "14:28: tiers do not nest: tier 2 has scope 'node', not wider than tier 1's scope 'node' (tier 1 is the closest; each higher tier must join a wider scope)"
        ],
    ),
    (
        "unit-does-not-parse",
        "schema",
        [(T2, T2.replace("400Gb/s", "400 furlongs"))],
        [
            "14:48: spec.fabrics[1].tiers[0].bandwidth: cannot parse '400 furlongs' as a bandwidth (use bytes/s or e.g. 392GB/s, 400Gb/s)"
        ],
    ),
    (
        "latency-does-not-parse",
        "schema",
        [(T2, T2.replace("2us", "2 fortnights"))],
        [
            "14:66: spec.fabrics[1].tiers[0].latency: cannot parse '2 fortnights' as a latency (use seconds or e.g. 1us, 500ns, 2ms)"
        ],
    ),
    (
        "unknown-scope",
        "semantic",
        [(T2, T2.replace("cluster", "rak"))],
        [
            "14:28: unknown scope 'rak'; scopes here: package, group, node, cluster (declare rack/supernode levels under spec.topology.levels)"
        ],
    ),
    ("wrong-api-version", "schema", [("xpod/v1", "xpod/v2")], ["1:13: apiVersion must be 'xpod/v1', got 'xpod/v2'"]),
    (
        "missing-node-groups",
        "schema",
        [("  nodeGroups:\n", "  nodeGroupz:\n")],
        [
            "5:1: spec: missing required key 'nodeGroups'",
            "15:3: unknown key 'nodeGroupz' in spec (did you mean 'nodeGroups'?)",
        ],
    ),
    (
        "group-scope-without-size",
        "semantic",
        [(T1, T1.replace("node", "group"))],
        ["10:11: tier 1 has scope 'group' but no groupSize (devices per group, e.g. 4)"],
    ),
    (
        "group-size-does-not-divide",
        "semantic",
        [(T1, T1.replace("node,", "group, groupSize: 6,"))],
        ["18:54: node group 'a' has 16 devices per node, which tier 1 (ub) cannot split into groups of 6"],
    ),
    (
        "group-splits-a-package",
        "semantic",
        [(T1, T1.replace("node,", "group, groupSize: 3,"))],
        ["18:24: tier 1 (ub) groups of 3 would split a package of ascend-910c (2 devices each); use a multiple of 2"],
    ),
    (
        "duplicate-key",
        "semantic",
        [(HOSTS, HOSTS + "\n" + HOSTS)],
        ["18:7: duplicate key 'hosts' in spec.nodeGroups[0]"],
    ),
    (
        "no-tier-joins",
        "semantic",
        [(DEV + "\n", DEV + GROUP_B + "      fabrics: [ub]\n")],
        [
            "6:3: no tier joins device n01/0 (node group 'a') and device m1/0 (node group 'b'); attach both groups to a fabric whose scope holds both"
        ],
    ),
    (
        "unknown-fabric",
        "semantic",
        [(DEV + "\n", DEV + "\n      fabrics: [ub, rocee]\n")],
        ["19:21: unknown fabric 'rocee' (did you mean 'roce'?)"],
    ),
    (
        "bad-name",
        "schema",
        [("  name: t\n", "  name: Big_Cluster!\n")],
        [
            "4:9: metadata.name: 'Big_Cluster!' is not a valid name (lower-case letters, digits, '.', '_', '-'; starting and ending with a letter or digit)"
        ],
    ),
    (
        "frontend-with-tiers",
        "semantic",
        [("      plane: scale-out", "      plane: frontend")],
        ["13:7: fabric 'roce' is on the frontend plane, which carries no device tiers; remove its tiers"],
    ),
    (
        "many-at-once",
        "schema",
        [
            (DEV, DEV.replace("devices", "device")),
            (T2, T2.replace("400Gb/s", "fast")),
            (HOSTS, HOSTS.replace("04]", "04")),
        ],
        [
            "14:48: spec.fabrics[1].tiers[0].bandwidth: cannot parse 'fast' as a bandwidth (use bytes/s or e.g. 392GB/s, 400Gb/s)",
            "17:14: hostlist 'n[01-04': '[' is never closed",
            "18:7: unknown key 'device' in spec.nodeGroups[0] (did you mean 'devices'?)",
        ],
    ),
    (
        "empty-file",
        "syntax",
        [(BASE, "")],
        ["1:1: the file is empty; expected a Cluster descriptor (apiVersion: xpod/v1, kind: Cluster)"],
    ),
    (
        "two-documents",
        "syntax",
        [(BASE, BASE + "---\n" + BASE)],
        ["20:1: more than one YAML document; put one cluster per file"],
    ),
]


def broken_text(case) -> str:
    text = BASE
    for old, new in case[2]:
        assert old in text, f"{case[0]}: edit target not in base.yaml: {old!r}"
        text = text.replace(old, new, 1)
    return text


def test_base_is_valid():
    assert parse_cluster_text(BASE, "t.yaml").summary()["devices"] == 64


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_broken_file_fails_with_exact_messages(case):
    with pytest.raises(ClusterValidationError) as info:
        parse_cluster_text(broken_text(case), "t.yaml")
    assert info.value.messages == [f"t.yaml:{m}" for m in case[3]]
    assert "\n" not in str(info.value)


def _schema_rejects(text: str) -> bool | None:
    """True/False for schema validity; None when the text is not one YAML document."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return None
    if len(docs) != 1 or docs[0] is None:
        return None
    return any(True for _ in jsonschema.Draft202012Validator(schema()).iter_errors(docs[0]))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_schema_and_loader_agree(case):
    rejects = _schema_rejects(broken_text(case))
    expected = {"syntax": None, "schema": True, "semantic": False}[case[1]]
    # duplicate keys are invisible once YAML is loaded to a dict, so the schema cannot see them
    assert rejects == expected
    with pytest.raises(ClusterValidationError):
        parse_cluster_text(broken_text(case), "t.yaml")


# ---------------------------------------------------------------- topology, domains, pools

with open(os.path.join(os.path.dirname(BASE_PATH), "base2.yaml")) as _f:
    BASE2 = _f.read()

ASC = (
    '    - {name: ascend, hosts: "npu[1-4]", devices: {model: ascend-910b3, packagesPerNode: 8}, fabrics: [hccs, roce]}'
)
RA = '      - {name: ra, level: rack, hosts: "npu[1-2]"}'
RC = '      - {name: rc, level: rack, hosts: "gpu[1-2],lab1"}'
CASES2 = [
    (
        "rack-spans-supernodes",
        "semantic",
        [(RC, RC.replace("gpu[1-2],lab1", "gpu[1-2],lab1,npu4")), ('hosts: "npu[3-4]"}', 'hosts: "npu3"}')],
        ["24:40: domains do not nest: rack domain 'rc' spans supernode domain(s) 'sn-a', 'sn-b'"],
    ),
    (
        "domains-overlap",
        "semantic",
        [(RA, RA.replace("npu[1-2]", "npu[1-3]"))],
        ["23:40: node 'npu3' is in rack domains 'ra' and 'rb'; domains of one level must not overlap"],
    ),
    (
        "unknown-level",
        "semantic",
        [(RA, RA.replace("level: rack", "level: rak"))],
        [
            "22:27: unknown topology level 'rak' (did you mean 'rack'?); declare it in spec.topology.levels (supernode, rack)"
        ],
    ),
    (
        "domain-unknown-node",
        "semantic",
        [(RC, RC.replace("lab1", "lab[1-2]"))],
        ["24:40: domain 'rc' names 1 node(s) no node group has: lab2"],
    ),
    (
        "node-in-no-rack",
        "semantic",
        [(RA + "\n", "")],
        [
            "25:29: 2 node(s) of node group 'ascend' (npu[1-2]) are on tier 2 (fabric 'roce', scope rack) but in no rack domain"
        ],
    ),
    (
        "unknown-pool-group",
        "semantic",
        [("nodeGroups: [ascend, nvidia]", "nodeGroups: [ascend, nvidai]")],
        ["30:42: unknown node group 'nvidai' (did you mean 'nvidia'?)"],
    ),
    (
        "inline-model-shadows-catalog",
        "semantic",
        [("    lab-card: {", "    h100: {"), ("model: lab-card", "model: h100")],
        [
            "7:5: device model 'h100' is already in the catalog (as 'nvidia-h100-sxm'); use it directly or pick another name"
        ],
    ),
    (
        "two-fabrics-one-tier",
        "semantic",
        [(ASC, ASC.replace("[hccs, roce]", "[hccs, nvlink, roce]"))],
        [
            "26:102: node group 'ascend' is on two fabrics at tier 1 ('hccs' and 'nvlink'); a pair of devices must have one joining tier"
        ],
    ),
    (
        "one-tier-two-scopes",
        "semantic",
        [
            (
                "{name: nvlink, plane: scale-up, tiers: [{tier: 1, scope: node}]}",
                "{name: nvlink, plane: scale-up, tiers: [{tier: 1, scope: package}]}",
            )
        ],
        [
            "10:64: tier 1 has scope 'package' in fabric 'nvlink' but 'node' in fabric 'hccs'; one tier number means one scope"
        ],
    ),
    (
        "group-skips-a-wider-tier",
        "semantic",
        [
            ("        - {tier: 4, scope: cluster, bandwidth: 100Gb/s}\n", ""),
            ("fabrics: [hccs, roce]}", "fabrics: [hccs, roce, wan]}"),
            (
                "  topology:\n",
                "    - {name: wan, plane: scale-out, tiers: [{tier: 4, scope: cluster, bandwidth: 1Gb/s}]}\n  topology:\n",
            ),
        ],
        [
            "27:105: tiers do not nest: node group 'nvidia' is on tier 2 (rack) but on no fabric of the wider tier 4 (cluster); attach it to one",
            "28:89: tiers do not nest: node group 'lab' is on tier 2 (rack) but on no fabric of the wider tier 4 (cluster); attach it to one",
        ],
    ),
]


def broken_text2(case) -> str:
    text = BASE2
    for old, new in case[2]:
        assert old in text, f"{case[0]}: edit target not in base2.yaml: {old!r}"
        text = text.replace(old, new, 1)
    return text


def test_base2_is_valid():
    s = parse_cluster_text(BASE2, "t2.yaml").summary()
    assert (s["nodes"], s["chips"], s["devices"]) == (7, 50, 50)


@pytest.mark.parametrize("case", CASES2, ids=[c[0] for c in CASES2])
def test_broken_topology_fails_with_exact_messages(case):
    with pytest.raises(ClusterValidationError) as info:
        parse_cluster_text(broken_text2(case), "t2.yaml")
    assert info.value.messages == [f"t2.yaml:{m}" for m in case[3]]
    assert _schema_rejects(broken_text2(case)) is False  # all of these are beyond a schema


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", ["1:1: expected a mapping with apiVersion, kind, metadata and spec, got a list"]),
        (
            "a:\n\tb: 1\n",
            [
                "2:1: YAML syntax error: found character '\\t' that cannot start any token (while scanning for the next token)"
            ],
        ),
        (
            BASE.replace("name: t", "name: no"),
            [
                "4:9: metadata.name must be text, got false (a boolean; YAML reads yes/no/on/off unquoted as a boolean: quote it)"
            ],
        ),
        (
            BASE.replace(DEV, "      devices:"),
            ["18:15: spec.nodeGroups[0].devices must be a mapping, got null (an empty value)"],
        ),
        (
            BASE.replace("tier: 1", "tier: 1.5"),
            ["10:18: spec.fabrics[0].tiers[0].tier must be a whole number, got 1.5 (a number)"],
        ),
        (
            BASE.replace("    - name: a\n", "    - <<: {name: z}\n      name: a\n"),
            ["16:7: merge keys ('<<') are not supported; write the keys out"],
        ),
        (
            BASE.replace(HOSTS, '      hosts: "n[0-9999999]"'),
            ["17:14: hostlist 'n[0-9999999]': range '0-9999999' has more than 1000000 hosts"],
        ),
    ],
    ids=["a-list", "tab", "yes-no-boolean", "empty-devices", "float-tier", "merge-key", "huge-hostlist"],
)
def test_odd_inputs_end_in_one_line_each(text, expected):
    with pytest.raises(ClusterValidationError) as info:
        parse_cluster_text(text, "t.yaml")
    assert info.value.messages == [f"t.yaml:{m}" for m in expected]
