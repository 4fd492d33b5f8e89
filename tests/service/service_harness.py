"""Helpers of the service tests (a real scheduler core over a 4 x 8 H100 test cluster); a module of
its own name, not ``conftest``, so that tests/service collects beside other folders' conftests."""

from __future__ import annotations

import os

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


def make_api(db_path: str, *, agents: bool = True, core=None, **kwargs):
    """The service over the test cluster; ``agents``: every node registered (as its agent would)."""
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.service.api import SchedulerApi
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL
    from xpod.scheduler.service.core_link import InProcessCore

    cluster = load_cluster(CLUSTER)
    api = SchedulerApi(db_path, core or InProcessCore(cluster), cluster=cluster, **kwargs)
    if agents:
        api.register_nodes(OPEN_PRINCIPAL, cluster_records(cluster))
    return api


def register_cluster(addr: str, token: str | None = None) -> None:
    """What the agents of the test cluster do first over gRPC: heartbeat every node and register
    the ones the server does not know (a restarted server keeps the others, and their jobs)."""
    from xpod.hal.cluster import load_cluster
    from xpod.runtime.client import Client, Target
    from xpod.scheduler.contract import cluster_records

    records = {r.name: r for r in cluster_records(load_cluster(CLUSTER))}
    with Client(Target(addr, token, None, "test"), timeout_s=30.0) as client:
        _, unknown = client.heartbeat({name: {} for name in records})
        if unknown:
            client.register_nodes([records[name] for name in unknown])
