"""YAML aliases that recurse or expand without bound are reported, not followed (regressions
found by test_cluster_fuzz)."""

import pytest

from xpod.hal.cluster import ClusterValidationError, parse_cluster_text


def _messages(text: str) -> list[str]:
    with pytest.raises(ClusterValidationError) as info:
        parse_cluster_text(text, source="c.yaml")
    return info.value.messages


def test_recursive_alias_is_an_error_with_its_position():
    text = "apiVersion: xpod/v1\nkind: Cluster\nmetadata: {name: x}\nspec: &b [*b]\n"
    assert "c.yaml:4:7: a YAML alias refers to a value that contains it; remove the recursive alias" in _messages(text)


def test_alias_expansion_is_bounded():
    lines = ["apiVersion: xpod/v1", "kind: Cluster", "metadata: {name: x}", "a0: &a0 [x,x,x,x,x,x,x,x,x,x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("spec: *a8")
    msgs = _messages("\n".join(lines) + "\n")
    assert any("expands to more than 200000 values" in m for m in msgs), msgs


def test_a_line_break_inside_a_quoted_name_keeps_messages_on_one_line():
    text = (
        "apiVersion: xpod/v1\nkind: Cluster\nmetadata: {name: x}\n"
        'spec:\n  topology:\n    levels: ["r\\nack"]\n  nodeGroups:\n'
        '    - {name: g, hosts: "n[1-2]", devices: {model: nvidia-h100-sxm, packagesPerNode: 8}, labels: {rack: a}}\n'
    )
    try:
        parse_cluster_text(text, source="c.yaml")
    except ClusterValidationError as err:
        assert err.messages and all("\n" not in m for m in err.messages), err.messages
        assert any("\\n" in m for m in err.messages), err.messages
    else:
        raise AssertionError("a level name with a line break was accepted")
