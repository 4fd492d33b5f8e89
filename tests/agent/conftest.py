"""The ``cluster`` fixture of the node-agent tests (helpers in agent_harness.py)."""

import pytest

# pytest's default (prepend) import mode puts this folder on sys.path for its conftest and tests
from agent_harness import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()
