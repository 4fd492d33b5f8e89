"""Random edits of valid descriptors: the loader never crashes, and whatever the published
schema rejects the loader rejects too (the loader runs the schema as its first pass)."""

import os

import jsonschema
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpod.hal.cluster import ClusterValidationError, parse_cluster_text
from xpod.hal.cluster_schema import schema

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(os.path.dirname(HERE), "fixtures", "cluster")
BASES = []
for name in ("base.yaml", "base2.yaml"):
    with open(os.path.join(FIX, name)) as f:
        BASES.append(yaml.safe_load(f))
VALIDATOR = jsonschema.Draft202012Validator(schema())


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["", "x", "n[1-", "64Gi", "1us", "400Gb/s", "node", "cluster", "ascend-910c"]),
    st.just([]),
    st.just({}),
    st.just({"colour": "red"}),
)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(BASES) - 1), st.data())
def test_random_edit_never_crashes_and_schema_implies_loader(which, data):
    import copy

    doc = copy.deepcopy(BASES[which])
    paths = [p for p in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(junk)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    text = yaml.safe_dump(doc, sort_keys=False)
    schema_rejects = any(True for _ in VALIDATOR.iter_errors(doc))
    try:
        parse_cluster_text(text, "fuzz.yaml")
        loader_rejects = False
    except ClusterValidationError as err:
        loader_rejects = True
        assert all(m.startswith("fuzz.yaml:") and "\n" not in m for m in err.messages)
    if schema_rejects:
        assert loader_rejects


with open(os.path.join(FIX, "base2.yaml")) as _f:
    BASE2_TEXT = _f.read()


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(BASE2_TEXT) - 1),
            st.integers(0, 4),
            st.sampled_from(["", " ", ":", "[", "]", "{", "-", "\n", "x", "9", "'"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_random_text_damage_ends_in_messages_not_tracebacks(edits):
    text = BASE2_TEXT
    for at, cut, insert in edits:
        at = min(at, len(text))
        text = text[:at] + insert + text[at + cut :]
    try:
        parse_cluster_text(text, "fuzz.yaml")
    except ClusterValidationError as err:
        assert err.messages and all(m.startswith("fuzz.yaml:") and "\n" not in m for m in err.messages)
