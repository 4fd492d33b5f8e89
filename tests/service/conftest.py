"""Fixtures of the service tests: a real scheduler core over a 4 x 8 H100 test cluster."""

from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures", "service")
CLUSTER = os.path.join(FIXTURES, "small-cluster.yaml")
TOKENS = os.path.join(FIXTURES, "tokens.yaml")
TOKEN = {
    "admin": "admin-token-0123456789",
    "agent": "agent-token-0123456789",
    "alice": "alice-token-0123456789",  # submitter, queue research
    "bob": "bob-token-01234567890",  # submitter, queue prod
}


def job_doc(
    name: str = "train", *, tasks: int = 1, count: int = 8, queue: str = "research", kind: str = "TrainingJob", **spec
):
    return {
        "apiVersion": "xpod/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"tasks": tasks, "devices": {"count": count, "model": "nvidia-h100-sxm"}, "queue": queue, **spec},
    }


def make_api(db_path: str, **kwargs):
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.api import SchedulerApi
    from xpod.scheduler.core_bridge import CorePlacer, cluster_inventory

    cluster = load_cluster(CLUSTER)
    return SchedulerApi(
        db_path, CorePlacer(cluster), nodes=cluster_inventory(cluster), cluster_name=cluster.name, **kwargs
    )


@pytest.fixture
def api(tmp_path):
    a = make_api(str(tmp_path / "xpod.db"))
    yield a
    a.close()
