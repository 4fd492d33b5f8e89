"""Issue 18, item 1 under mutual TLS: an agent's client certificate names its nodes in its
subjectAltName; with it, even an agent token for every node speaks only for those. Also: the
CLI and the agent's client present a certificate (``--tls-cert/--tls-key``)."""

from __future__ import annotations

import pytest
from security_harness import make_api, make_certs

from xpod.runtime.client import Client, RpcFailure, Target
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.grpc.server import TlsFiles, build_server


@pytest.mark.parametrize("frontends", [0, 1], ids=["direct", "via-front-end"])
def test_a_client_certificate_narrows_an_agent_to_its_nodes(tmp_path, frontends):
    """Also through a front end (``xpod server``'s default): it passes the certificate's names on
    to the main server, which believes them only from its own Unix socket."""
    certs = make_certs(tmp_path, ("g1", "g2"))
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        'tokens:\n  - {name: pod-agent, role: agent, token: agent-token-0123456789, nodes: "*"}\n'
        "  - {name: root, role: admin, token: admin-token-0123456789}\n"
    )
    api = make_api(str(tmp_path / "t.db"))
    tls = TlsFiles(certs["srv"], certs["srv_key"], client_ca=certs["ca"])
    running = build_server(api, Authenticator.from_file(str(tokens)), "127.0.0.1:0", tls=tls, frontends=frontends)
    try:
        target = Target(
            f"127.0.0.1:{running.port}", "agent-token-0123456789", certs["ca"], "test", certs["cli"], certs["cli_key"]
        )
        with Client(target, timeout_s=10, failover_s=0) as agent:
            _, unknown = agent.heartbeat({"g1": {}, "g2": {}})
            assert unknown == []
            with pytest.raises(RpcFailure) as err:
                agent.heartbeat({"g3": {}})
            assert err.value.code == "PERMISSION_DENIED" and err.value.reason == "NODE_NOT_ALLOWED"
        # the admin's certificate names nodes too, but an admin is not narrowed
        admin = Target(target.server, "admin-token-0123456789", certs["ca"], "test", certs["cli"], certs["cli_key"])
        with Client(admin, timeout_s=10, failover_s=0) as client:
            assert client.heartbeat({"g3": {}})[1] == []
    finally:
        running.stop(0)
        api.close()
