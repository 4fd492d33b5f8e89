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
