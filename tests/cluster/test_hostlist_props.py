"""Slurm hostlists: examples, malformed input, and hypothesis properties of expand/compress."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpod.hal.hostlist import HostlistError, compress, expand, repeats, sorted_hosts


@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("n1", ["n1"]),
        ("cm-n[00-03]", ["cm-n00", "cm-n01", "cm-n02", "cm-n03"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("gpu[01-02,07],cpu1", ["gpu01", "gpu02", "gpu07", "cpu1"]),
        ("r[1-2]-n[01-02]", ["r1-n01", "r1-n02", "r2-n01", "r2-n02"]),
        ("a[1-2]b", ["a1b", "a2b"]),
        ("[1-2]x", ["1x", "2x"]),
        ("node.example.com", ["node.example.com"]),
    ],
)
def test_expand_examples(expr, hosts):
    assert expand(expr) == hosts


@pytest.mark.parametrize(
    "expr, message",
    [
        ("n[01-04", "'[' is never closed"),
        ("n01-04]", "']' at character 7 has no matching '['"),
        ("n[0[1-2]]", "nested '['"),
        ("n[]", "empty brackets"),
        ("n[a-b]", "'a-b' is not a number"),
        ("n[4-1]", "runs backwards"),
        ("n1,,n2", "empty host name"),
        ("n1 n2", "spaces are not allowed"),
        ("n@1", "character '@' is not allowed"),
        ("", "hostlist is empty"),
        ("n[0-99999999]", "more than 1000000 hosts"),
    ],
)
def test_malformed_hostlists_name_the_problem(expr, message):
    with pytest.raises(HostlistError, match=message.replace("[", r"\[")):
        expand(expr)


def test_compress_examples():
    assert compress([f"cm-n{i:02d}" for i in range(48)]) == "cm-n[00-47]"
    assert compress(["n8", "n9", "n10"]) == "n[8-9],n10"
    assert compress(["n1", "n3", "n2", "n5", "x"]) == "n[1-3,5],x"
    assert compress(["a1b", "a2b", "a4b"]) == "a[1-2,4]b"
    assert compress(["n01", "n1"]) == "n1,n01"


def test_repeats():
    assert repeats(expand("n[1-3],n2,n3,n2")) == ["n2", "n3"]


prefixes = st.sampled_from(["n", "cm-n", "gpu", "r1-n", "x.", ""])
suffixes = st.sampled_from(["", "a", "-ib"])
host = st.builds(
    lambda p, num, width, s: f"{p}{str(num).zfill(width)}{s}",
    prefixes,
    st.integers(0, 300),
    st.integers(1, 4),
    suffixes,
) | st.sampled_from(["login", "head", "storage"])


@settings(max_examples=200, deadline=None)
@given(st.lists(host, max_size=60))
def test_compress_then_expand_gives_the_set_back(hosts):
    text = compress(hosts)
    if not hosts:
        assert text == ""
        return
    back = expand(text)
    assert back == sorted_hosts(set(hosts))
    assert not repeats(back)


@settings(max_examples=200, deadline=None)
@given(st.lists(host, min_size=1, max_size=60))
def test_compress_is_a_fixed_point(hosts):
    once = compress(hosts)
    assert compress(expand(once)) == once
    assert once.count(",") <= len(set(hosts)) - 1


@settings(max_examples=100, deadline=None)
@given(prefixes.filter(bool), st.integers(0, 500), st.integers(0, 40), st.integers(1, 4))
def test_range_expansion_is_padded_by_lower_bound(prefix, lo, span, width):
    lo_s = str(lo).zfill(width)
    hosts = expand(f"{prefix}[{lo_s}-{lo + span}]")
    assert len(hosts) == span + 1
    assert hosts == [f"{prefix}{str(n).zfill(len(lo_s))}" for n in range(lo, lo + span + 1)]
