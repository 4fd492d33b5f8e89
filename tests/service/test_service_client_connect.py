"""A server that is slow to answer a new connection (a busy host: its HTTP/2 SETTINGS frame
arrives a second after the TCP connection) is still reached: the client's channels give a
connection attempt gRPC's own 20 s, within the call's deadline. They gave it 200 ms: gRPC reads
``grpc.min_reconnect_backoff_ms`` as the shortest time a connection attempt gets, and the
client set it to 200 to retry a lost replica sooner, so under load a CLI command failed with
"cannot reach the xpod server ... timed out before receiving SETTINGS frame" (tests/service run
beside two CPU hogs, load 17)."""

from __future__ import annotations

import socket
import threading

import pytest

from service_harness import make_api
from xpod.runtime.client import Client, Target
from xpod.scheduler.grpc.auth import Authenticator
from xpod.scheduler.grpc.server import build_server

#: how long the relay holds a new connection before it passes it on: five times the old budget
HOLD_S = 1.0


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _slow_relay(upstream_port: int, stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A loopback listener that relays each connection to ``upstream_port`` once it has held
    it ``HOLD_S`` (the kernel completes the TCP handshake at once; the server's first bytes come
    late)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            stop.wait(HOLD_S)
            up = socket.create_connection(("127.0.0.1", upstream_port))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.fixture
def slow_server(tmp_path):
    running = build_server(make_api(str(tmp_path / "x.db")), Authenticator.open_server(), "127.0.0.1:0")
    stop = threading.Event()
    listener, thread = _slow_relay(running.port, stop)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=10)
    listener.close()
    running.stop()


def test_a_server_slow_to_answer_a_new_connection_is_still_reached(slow_server):
    # a deadline far beyond the hold: only the connection attempt's own budget can fail the call
    with Client(Target(slow_server, None, None, "test"), timeout_s=60.0) as client:
        assert [j.name for j in client.list()] == []


def test_a_frozen_first_replica_is_left_within_the_failover_window(tmp_path):
    """Over two replicas, the first frozen (it listens, its kernel completes the handshake, it
    never answers), a call lands on the second within ``failover_s``: the connection attempt to
    the frozen one gives up after the failover bound (3 s), not gRPC's 20 s (review finding on
    the change above: failover from a hung leader took 20 s per attempt)."""
    frozen = socket.create_server(("127.0.0.1", 0), backlog=16)  # listens, never accepts
    running = build_server(make_api(str(tmp_path / "x.db")), Authenticator.open_server(), "127.0.0.1:0")
    try:
        addresses = f"127.0.0.1:{frozen.getsockname()[1]},127.0.0.1:{running.port}"
        # failover_s below the 20 s a single-address connection attempt gets: with that bound the
        # first try outlasts the window and the call fails; the call's deadline is far beyond both
        with Client(Target(addresses, None, None, "test"), timeout_s=60.0, failover_s=15.0) as client:
            assert [j.name for j in client.list()] == []
            assert client.address.endswith(f":{running.port}")
    finally:
        running.stop()
        frozen.close()
