"""The embedded default behind ``xpod up`` (and ``xpod demo``): the scheduler, a simulated pod
and an agent for this host's real devices, in this process, on loopback.

``start_embedded(...)`` returns an ``Embedded`` once the gRPC server listens and every agent has
registered (or ``wait_s`` passed); ``Embedded.close()`` stops the agents (ending their tasks,
SIGTERM then SIGKILL after their grace), the gRPC server, the metrics endpoint and the store.
Idempotent. The server runs open (no tokens), so the address must be loopback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
import time
from typing import Any

from xpod.hal.errors import XpodError

SIM_POLL_S = 0.25  # a simulated node looks at its tasks 4 times a second (48 of them share the cores)


def split_host_port(addr: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) -> (host, port); a bad value is an ``XpodError`` naming FLAG."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise XpodError(f"{flag} {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:7070)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether HOST (a name or an IPv4/IPv6 literal) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class Embedded:
    """A running embedded system (see the module docstring)."""

    address: str  # host:port of the gRPC API
    state_dir: str  # xpod.db, logs/, tasks/
    cluster_name: str
    api: Any  # scheduler.api.SchedulerApi
    server: Any  # scheduler.service.RunningServer
    agents: list  # runtime.agent.NodeAgent
    metrics_url: str | None  # http://host:port/metrics of the scheduler, when asked for
    _threads: list
    _stop: threading.Event
    _client: Any
    _metrics_server: Any = None
    _closed: bool = False

    @property
    def simulated_agents(self) -> list:
        from xpod.runtime.agent.agent import SimExecutor

        return [a for a in self.agents if isinstance(a.executor, SimExecutor)]

    @property
    def local_agent(self) -> Any:
        from xpod.runtime.agent.agent import ProcessExecutor

        return next((a for a in self.agents if isinstance(a.executor, ProcessExecutor)), None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        self._client.close()
        self.server.stop(2.0)
        self.api.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()


def start_embedded(
    *,
    cluster_file: str | None = None,
    listen: str = "127.0.0.1:7070",
    metrics: str | None = None,
    state_dir: str,
    node_timeout_s: float | None = None,
    simulate: bool = True,
    local: bool = True,
    wait_s: float = 30.0,
) -> Embedded:
    """Start everything; user errors (bad address, busy port, bad cluster file) raise ``XpodError``."""
    if not simulate and not local:
        raise XpodError("--no-simulate and --no-local together leave nothing to run; drop one")
    host, _ = split_host_port(listen, "--listen")
    if not is_loopback(host):
        raise XpodError(f"--listen {listen}: xpod up runs open (no tokens) and stays on loopback; use 127.0.0.1:PORT")
    metrics_addr = split_host_port(metrics, "--metrics") if metrics else None
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as err:
        raise XpodError(f"--state-dir {state_dir}: cannot create it: {err.strerror}") from None

    from xpod.hal.cluster import load_cluster, load_default_cluster
    from xpod.runtime.agent import agent as ag
    from xpod.runtime.client import Client, Target
    from xpod.scheduler.api import SchedulerApi
    from xpod.scheduler.auth import Authenticator
    from xpod.scheduler.core_bridge import CorePlacer, cluster_inventory
    from xpod.scheduler.service import build_server
    from xpod.scheduler.service_metrics import ServiceMetrics

    cluster = load_cluster(cluster_file) if cluster_file else load_default_cluster()
    nodes = cluster_inventory(cluster) if simulate else []
    api = SchedulerApi(
        os.path.join(state_dir, "xpod.db"),
        CorePlacer(cluster if simulate else None),
        nodes=nodes,
        cluster_name=cluster.name,
        node_timeout_s=node_timeout_s,
    )
    service_metrics = ServiceMetrics()
    service_metrics.attach(api)
    try:
        # every node's agent holds one WatchAssignments stream, i.e. one server thread
        server = build_server(api, Authenticator.open_server(), listen, max_workers=len(nodes) + 64)
    except (OSError, RuntimeError) as err:
        api.close()
        raise XpodError(f"--listen {listen}: cannot listen: {err}") from None
    metrics_server, metrics_url = None, None
    if metrics_addr:
        from prometheus_client import start_http_server

        try:
            metrics_server, _ = start_http_server(
                metrics_addr[1], addr=metrics_addr[0], registry=service_metrics.registry
            )
        except OSError as err:
            server.stop(0)
            api.close()
            raise XpodError(f"--metrics {metrics}: cannot listen: {err.strerror}") from None
        metrics_url = f"http://{metrics_addr[0]}:{metrics_server.server_port}/metrics"
    api.start()
    address = f"{host}:{server.port}"
    client = Client(Target(address, None, None, "xpod up"), timeout_s=10.0)
    agents = []
    if simulate:
        for n in ag.simulated_pod(cluster_file):
            agents.append(
                ag.NodeAgent(
                    client, n, ag.SimExecutor(n.name, state_dir), log_prefix="xpod up (simulated)", poll_s=SIM_POLL_S
                )
            )
    if local:
        ag.end_leftover_tasks(state_dir)
        devices = ag.discover_devices()
        name = ag.local_node_name(client)
        if any(a.node.name == name for a in agents):
            name = f"{name}-local"  # this host is not one of the simulated nodes
        agents.append(
            ag.NodeAgent(
                client,
                ag.NodeSpec(name, tuple(devices)),
                ag.ProcessExecutor(name, devices, state_dir),
                log_prefix="xpod up",
            )
        )
    stop = threading.Event()
    threads = ag.run_agents(agents, stop)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(a.connected.is_set() for a in agents):
        time.sleep(0.05)
    return Embedded(
        address, state_dir, cluster.name, api, server, agents, metrics_url, threads, stop, client, metrics_server
    )
