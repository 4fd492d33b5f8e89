"""Shared by tests/security: a real service (real core, real SQLite) over a 4-node test cluster,
a token file with node-bound agents, and the principals each token maps to."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
# the service tests' cluster: g1..g4, 8 H100 each
CLUSTER = os.path.join(os.path.dirname(HERE), "fixtures", "service", "small-cluster.yaml")
TOKENS_TEXT = """
tokens:
  - {name: root, role: admin, token: admin-token-0123456789}
  - {name: rack-a, role: agent, token: agent-a-token-0123456789, nodes: "g[1-2]"}
  - {name: rack-b, role: agent, token: agent-b-token-0123456789, nodes: "g[3-4]"}
  - {name: alice, role: submitter, token: alice-token-0123456789, queues: [research]}
  - {name: bob, role: submitter, token: bob-token-01234567890, queues: [prod]}
"""
TOKEN = {
    "admin": "admin-token-0123456789",
    "rack-a": "agent-a-token-0123456789",
    "rack-b": "agent-b-token-0123456789",
    "alice": "alice-token-0123456789",
    "bob": "bob-token-01234567890",
}


def job_doc(name: str = "train", *, tasks: int = 1, count: int | None = 8, queue: str = "research", **spec) -> dict:
    kind = spec.pop("kind", "TrainingJob")
    body: dict = {"tasks": tasks, "queue": queue, **spec}
    if count is not None:
        body["devices"] = {"count": count, "model": "nvidia-h100-sxm"}
    return {"apiVersion": "xpod/v1", "kind": kind, "metadata": {"name": name}, "spec": body}


def principals(tmp_path) -> dict:
    """name -> Principal, read from the token file as the server reads it."""
    from xpod.scheduler.grpc.auth import load_tokens

    path = tmp_path / "tokens.yaml"
    path.write_text(TOKENS_TEXT)
    by_name = {p.name: p for p in load_tokens(str(path)).values()}
    return {"admin": by_name["root"], **{k: by_name[k] for k in ("rack-a", "rack-b", "alice", "bob")}}


def make_api(db_path: str, **kwargs):
    """The service over the test cluster, every node registered (by the admin)."""
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.service.api import SchedulerApi
    from xpod.scheduler.service.auth import OPEN_PRINCIPAL
    from xpod.scheduler.service.core_link import InProcessCore

    cluster = load_cluster(CLUSTER)
    api = SchedulerApi(db_path, InProcessCore(cluster), cluster=cluster, **kwargs)
    api.register_nodes(OPEN_PRINCIPAL, cluster_records(cluster))
    return api


def make_certs(d, client_names: tuple[str, ...]) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate whose subjectAltName
    lists ``client_names`` (an agent's nodes), made with the openssl CLI."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make test certificates"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    p = {k: str(d / f"{k}.pem") for k in ("ca", "ca_key", "srv", "srv_key", "cli", "cli_key")}
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sec-ca",
        "-keyout", p["ca_key"], "-out", p["ca"])  # fmt: skip
    sans = {"srv": "IP:127.0.0.1,DNS:localhost", "cli": ",".join(f"DNS:{n}" for n in client_names)}
    for who in ("srv", "cli"):
        ext = d / f"{who}.cnf"
        ext.write_text(f"subjectAltName={sans[who]}\n")
        csr = str(d / f"{who}.csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", p[f"{who}_key"], "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial", "-days", "1",
            "-out", p[who], "-extfile", str(ext))  # fmt: skip
    return p


def refused(call):
    """The ``ApiError`` ``call()`` raises (the test fails if it returns)."""
    import pytest

    from xpod.scheduler.service.api import ApiError

    with pytest.raises(ApiError) as err:
        call()
    return err.value
