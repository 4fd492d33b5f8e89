"""TLS and mutual TLS on the gRPC server (certificates made with the openssl CLI per test)."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest

from service_harness import job_doc, make_api
from xpod.runtime.client import Client, RpcFailure, Target
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.grpc.server import TlsFiles, build_server

OPENSSL = shutil.which("openssl")


def make_certs(d) -> dict[str, str]:
    assert OPENSSL, "openssl is needed to make test certificates"

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)

    p = {k: str(d / f"{k}.pem") for k in ("ca", "ca_key", "srv", "srv_key", "cli", "cli_key")}
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=xpod-test-ca",
        "-keyout",
        p["ca_key"],
        "-out",
        p["ca"],
    )
    ext = d / "san.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, cn in (("srv", "localhost"), ("cli", "xpod-client")):
        csr = str(d / f"{who}.csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", p[f"{who}_key"], "-out", csr)
        run(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            p["ca"],
            "-CAkey",
            p["ca_key"],
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            p[who],
            "-extfile",
            str(ext),
        )
    return p


@pytest.mark.parametrize("frontends", [0, 1], ids=["direct", "via-front-end"])
def test_tls_and_mutual_tls(tmp_path, frontends):
    certs = make_certs(tmp_path)
    api = make_api(str(tmp_path / "x.db"))
    running = build_server(
        api,
        Authenticator.open_server(),
        "127.0.0.1:0",
        tls=TlsFiles(certs["srv"], certs["srv_key"]),
        frontends=frontends,
    )
    try:
        with Client(Target(f"127.0.0.1:{running.port}", None, certs["ca"], "test"), timeout_s=10) as client:
            assert client.submit(job_doc(), "t1").created
        # a plaintext client cannot talk to the TLS port
        with Client(Target(f"127.0.0.1:{running.port}", None, None, "test"), timeout_s=3) as client:
            with pytest.raises(RpcFailure):
                client.list()
    finally:
        running.stop(0)
        api.close()

    api = make_api(str(tmp_path / "y.db"))
    tls = TlsFiles(certs["srv"], certs["srv_key"], client_ca=certs["ca"])
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0", tls=tls, frontends=frontends)
    try:

        def read(k):
            with open(certs[k], "rb") as f:
                return f.read()

        with_cert = grpc.ssl_channel_credentials(read("ca"), read("cli_key"), read("cli"))
        from xpod.proto.xpod.v1 import cluster_service_pb2, cluster_service_pb2_grpc

        with grpc.secure_channel(f"127.0.0.1:{running.port}", with_cert) as ch:
            got = cluster_service_pb2_grpc.ClusterServiceStub(ch).GetCluster(
                cluster_service_pb2.GetClusterRequest(), timeout=10
            )
            assert got.devices == 32
        without_cert = grpc.ssl_channel_credentials(read("ca"))
        with grpc.secure_channel(f"127.0.0.1:{running.port}", without_cert) as ch:
            with pytest.raises(grpc.RpcError) as err:
                cluster_service_pb2_grpc.ClusterServiceStub(ch).GetCluster(
                    cluster_service_pb2.GetClusterRequest(), timeout=5
                )
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)
        api.close()
