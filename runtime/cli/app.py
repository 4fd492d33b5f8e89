"""The one composition root: what ``xpod server``, ``xpod up`` and ``xpod demo`` run.

``start_service(ServiceOptions)`` wires the scheduler service once (store, core link, API,
gRPC server, metrics endpoint) and returns a ``Service``; ``xpod server`` adds its banner and
waits for a signal. ``start_embedded(...)`` is ``start_service`` on loopback with tokens of its own
(``embedded_tokens``: an admin token in the state directory that the local CLI uses), plus node agents in this process: a simulated pod of the cluster descriptor and an agent for
this host's real devices (``xpod up``; ``xpod demo`` runs ``xpod up``).

Both return once the gRPC server listens (``start_embedded``: and every agent has registered,
or ``wait_s`` passed). ``close()`` is idempotent: agents first (their tasks get SIGTERM, then
SIGKILL after their grace), then the gRPC server, the API and store, the metrics endpoint.
User errors (bad address, busy port, bad cluster file) raise ``XpodError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
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


def url_host(host: str) -> str:
    """A host as it goes into an address or URL: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


@dataclasses.dataclass(frozen=True)
class ServiceOptions:
    """How to run the scheduler service. Flags keep their names in error messages."""

    store: str  # a SQLite file (or sqlite:///PATH), or postgresql://... shared by replicas
    listen: str  # gRPC HOST:PORT, port 0 = any free one
    cluster_file: str | None = None  # cluster descriptor; None: nodes come from agents only
    cluster: Any = None  # an already loaded hal.cluster.Cluster (wins over cluster_file)
    cluster_name: str | None = None  # what GetCluster names; default: the cluster's name, or "xpod"
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    tokens_file: str | None = None  # bearer tokens with roles; None: open (no authentication)
    tls: Any = None  # scheduler TLS files (certificate, key, client CA); None: plaintext
    frontends: int = 0  # extra processes that serve gRPC on the same address and relay here
    core_process: bool = False  # the scheduler core in a child process
    cycle_interval_s: float = 0.5  # scheduling cycle period
    node_timeout_s: float | None = None  # heartbeats missing this long mark a node NotReady
    max_workers: int = 64  # gRPC threads for the blocking calls (agents' streams hold none)
    advertise: str | None = None  # replicas: HOST:PORT others reach this one at (default: the listen address)
    lease_ttl_s: float = 3.0  # replicas: a follower takes over this long after the leader stopped renewing
    tune_gc: bool = False  # freeze long-lived objects out of full GC passes (a long-running server)
    holder: str = "xpod server"  # who holds a SQLite store's lock (named to a second process)
    retention_s: float | None = 7 * 24 * 3600.0  # finished jobs compacted this long after they ended; None: kept
    # undeclared queues created on first use (--auto-queues); None: as configured (a tokens file:
    # none, only its declared queues; an open server: any, capped at Limits.max_queues)
    auto_queues: int | None = None
    any_queue: bool = False  # xpod up (one user): queues on first use, capped, whatever the tokens file says


@dataclasses.dataclass
class Service:
    """A running scheduler service (see the module docstring)."""

    api: Any  # the in-process API (replicas: a handle that follows the leader's)
    server: Any  # the running gRPC server (``.port``)
    host: str  # the host it listens on, as given
    cluster_name: str
    nodes: list  # the cluster file's nodes (``contract.NodeRecord``; empty without one)
    metrics_url: str | None  # http://host:port/metrics, when asked for
    authenticator: Any
    store: str  # as given
    replica: Any = None  # the replica of a postgresql store (its role, the leader's address), else None
    _metrics_server: Any = None
    _freezer: Any = None
    _closed: bool = False

    @property
    def address(self) -> str:
        """HOST:PORT of the gRPC API, as clients take it (``--server``)."""
        return f"{url_host(self.host)}:{self.server.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.replica is not None:
            self.replica.close()  # steps down and releases the lease first: a follower takes over at once
        self.server.stop(2.0)
        if self.replica is None:
            self.api.close()
        if self._freezer is not None:
            self._freezer.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()


def start_service(options: ServiceOptions) -> Service:
    """Wire and start the scheduler service (the only place that does)."""
    host, _ = split_host_port(options.listen, "--listen")
    metrics_addr = split_host_port(options.metrics, "--metrics") if options.metrics else None

    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.grpc.auth import Authenticator
    from xpod.scheduler.grpc.server import build_server
    from xpod.scheduler.service.api import SchedulerApi
    from xpod.scheduler.service.metrics import ServiceMetrics
    from xpod.scheduler.store import open_store

    authenticator = Authenticator.from_file(options.tokens_file) if options.tokens_file else Authenticator.open_server()
    queues = authenticator.queues
    if options.any_queue:
        queues = queues.with_auto_queues(None)
    elif options.auto_queues is not None:
        queues = queues.with_auto_queues(options.auto_queues)
    cluster = options.cluster
    if cluster is None and options.cluster_file:
        from xpod.hal.cluster import load_cluster

        cluster = load_cluster(options.cluster_file)
    cluster_name = options.cluster_name or (cluster.name if cluster is not None else "xpod")
    nodes = cluster_records(cluster) if cluster is not None else []
    metrics = ServiceMetrics()
    replicated = options.store.startswith(("postgresql://", "postgres://"))
    if replicated:
        from xpod.scheduler.service.replica import ApiHandle
        from xpod.scheduler.store.postgres import PostgresStore

        # the URL, the credentials and the schema, checked once before serving: one line, exit 1
        PostgresStore(options.store).close()
        api = ApiHandle()
    else:
        # first: a second server on the same file stops here, having touched nothing
        store = open_store(options.store, holder=options.holder)
        store.set_holder_address(options.listen)
        api = SchedulerApi(
            store,
            _core(options, cluster, leader=True),
            cluster=cluster,
            cycle_interval_s=options.cycle_interval_s,
            node_timeout_s=options.node_timeout_s,
            retention_s=options.retention_s,
            queues=queues,
        )
        api.cluster_name = cluster_name
    metrics.attach(api)
    if not replicated:
        metrics.leader.set(1)  # a SQLite store has one server: it leads
    try:
        server = build_server(
            api,
            authenticator,
            options.listen,
            tls=options.tls,
            frontends=options.frontends,
            max_workers=options.max_workers,
        )
    except (OSError, RuntimeError) as err:
        api.close()
        raise XpodError(f"--listen {options.listen}: cannot listen: {err}") from None
    if not replicated:
        # a database that cannot be written (read-only, full): health NOT_SERVING until a restart
        api.store.on_failure = lambda err: threading.Thread(
            target=server.set_serving, args=(False,), name="xpod-health", daemon=True
        ).start()
    metrics_server, metrics_url = None, None
    if metrics_addr:
        from prometheus_client import start_http_server

        try:
            metrics_server, _ = start_http_server(metrics_addr[1], addr=metrics_addr[0], registry=metrics.registry)
        except OSError as err:
            server.stop(0)
            api.close()
            raise XpodError(f"--metrics {options.metrics}: cannot listen: {err.strerror}") from None
        metrics_url = f"http://{url_host(metrics_addr[0])}:{metrics_server.server_port}/metrics"
    replica = None
    if replicated:
        replica = _start_replica(options, api, server, metrics, cluster, cluster_name, host, queues)
    else:
        api.store.set_holder_address(f"{url_host(host)}:{server.port}")
        api.start()
    freezer = None
    if options.tune_gc:
        from xpod.scheduler.service.tuning import GcFreezer, tune_switch_interval

        # the server keeps every job in memory: without this, full GC passes that walk all of them
        # stall every call in flight, longer as jobs accumulate (scheduler/service/tuning.py)
        freezer = GcFreezer().start()
        # the store writer wins the GIL back from the busy event loop sooner (scheduler/service/tuning.py)
        tune_switch_interval()
    return Service(
        api,
        server,
        host,
        cluster_name,
        nodes,
        metrics_url,
        authenticator,
        options.store,
        replica,
        metrics_server,
        freezer,
    )


def _core(options: ServiceOptions, cluster: Any, leader: bool) -> Any:
    """The one link to the scheduler core: in a child process when asked (and leading), else in
    this one (a follower never schedules)."""
    from xpod.scheduler.service.core_link import ChildProcessCore, InProcessCore

    return ChildProcessCore(cluster) if leader and options.core_process else InProcessCore(cluster)


def _start_replica(
    options: ServiceOptions,
    handle: Any,
    server: Any,
    metrics: Any,
    cluster: Any,
    cluster_name: str,
    host: str,
    queues: Any,
) -> Any:
    """Bind the server's API handle to a ``Replica`` over the postgresql store and start its
    election loop; the health service and the leader metrics follow its role."""
    from xpod.scheduler.service.api import SchedulerApi
    from xpod.scheduler.service.replica import Replica, Role

    def make_api(store: Any, leader: bool, recovered: Any) -> Any:
        api = SchedulerApi(
            store,
            _core(options, cluster, leader),
            cluster=cluster,
            cycle_interval_s=options.cycle_interval_s,
            node_timeout_s=options.node_timeout_s,
            recovered=recovered,  # a follower's book, handed over when it takes the lease
            retention_s=options.retention_s,
            queues=queues,
        )
        api.cluster_name = cluster_name
        api.attach_metrics(metrics)
        return api

    seen = [0]

    def on_role(role: Role) -> None:
        server.set_serving(role is not Role.NO_STORE)
        metrics.leader.set(1 if role is Role.LEADER else 0)
        metrics.leader_changes.inc(replica.leader_changes - seen[0])
        seen[0] = replica.leader_changes

    address = options.advertise or f"{url_host(host)}:{server.port}"
    replica = Replica(options.store, make_api, address, lease_ttl_s=options.lease_ttl_s, on_role=on_role)
    handle.replica = replica
    server.set_serving(False)  # until the first role is known
    replica.start()
    replica.wait_for_role(timeout_s=2 * options.lease_ttl_s)
    return replica


@dataclasses.dataclass
class Embedded:
    """A running embedded system: the service plus node agents (see the module docstring)."""

    service: Service
    state_dir: str  # xpod.db, logs/, tasks/
    agent: Any  # runtime.agent.agent.Agent: the simulated pod's nodes and this host's, one connection
    _thread: threading.Thread
    _stop: threading.Event
    _client: Any
    _lock: Any  # store.lock.StateLock on state_dir
    _token_pointer: str | None = None  # local_token_path of this address, removed at close
    _closed: bool = False

    @property
    def address(self) -> str:
        return self.service.address

    @property
    def api(self) -> Any:
        return self.service.api

    @property
    def cluster_name(self) -> str:
        return self.service.cluster_name

    @property
    def metrics_url(self) -> str | None:
        return self.service.metrics_url

    @property
    def simulated_nodes(self) -> list:
        """The simulated pod's ``NodeRuntime``s."""
        from xpod.runtime.agent.agent import SimExecutor

        return [n for n in self.agent.nodes.values() if isinstance(n.executor, SimExecutor)]

    @property
    def local_node(self) -> Any:
        """This host's ``NodeRuntime`` (real processes), or None."""
        from xpod.runtime.agent.agent import ProcessExecutor

        return next((n for n in self.agent.nodes.values() if isinstance(n.executor, ProcessExecutor)), None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=15)
        self._client.close()
        self.service.close()
        if self._token_pointer is not None:
            try:
                os.unlink(self._token_pointer)
            except OSError:
                pass
        self._lock.release()


#: in ``xpod up``'s state directory: its admin token (the CLI reads it) and its token file
ADMIN_TOKEN_FILE = "admin-token"
TOKENS_FILE = "tokens.yaml"


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def embedded_tokens(state_dir: str) -> tuple[str, str]:
    """``xpod up`` is never open: a fresh admin token at each start in STATE/admin-token (0600)
    that the local CLI uses by itself (``local_token_path``), and a fresh agent token for the
    in-process agents that never leaves this process. Returns (the token file for the service,
    holding only their SHA-256, the agent token)."""
    import secrets

    from xpod.scheduler.grpc.auth import token_sha256

    admin = secrets.token_urlsafe(32)
    _write_private(os.path.join(state_dir, ADMIN_TOKEN_FILE), admin + "\n")
    agent = secrets.token_urlsafe(32)
    tokens_file = os.path.join(state_dir, TOKENS_FILE)
    _write_private(
        tokens_file,
        "# written by xpod up at each start: the admin token is in admin-token beside this file\n"
        f"tokens:\n  - {{name: admin, role: admin, token_sha256: {token_sha256(admin)}}}\n"
        f'  - {{name: xpod-up-agents, role: agent, token_sha256: {token_sha256(agent)}, nodes: "*"}}\n',
    )
    return tokens_file, agent


def local_token_path(address: str) -> str:
    """The file in this user's state directory (``XPOD_STATE_DIR`` or ~/.local/state/xpod) where
    the ``xpod up`` listening on loopback ``address`` leaves its admin token for the local CLI."""
    from xpod.runtime.agent.agent import default_state_dir

    host, port = split_host_port(address, "--server")
    return os.path.join(default_state_dir(), "local-servers", f"{host.strip('[]')}_{port}.token")


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
    sim_devices: str | None = None,
) -> Embedded:
    """``xpod up``: the service on loopback with a simulated pod and/or an agent for this host."""
    if not simulate and not local:
        raise XpodError("--no-simulate and --no-local together leave nothing to run; drop one")
    host, _ = split_host_port(listen, "--listen")
    if not is_loopback(host):
        raise XpodError(f"--listen {listen}: xpod up stays on loopback (no TLS); use 127.0.0.1:PORT")
    if metrics:
        split_host_port(metrics, "--metrics")  # before creating anything
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as err:
        raise XpodError(f"--state-dir {state_dir}: cannot create it: {err.strerror}") from None

    from xpod.hal.cluster import load_cluster, load_default_cluster
    from xpod.runtime.agent import agent as ag
    from xpod.runtime.client import Client, Target
    from xpod.scheduler.store.lock import StateLock

    # first: a second ``xpod up`` (or agent) on this state stops here, having touched nothing
    lock = StateLock.acquire(state_dir, "xpod up", listen)
    try:
        cluster = load_cluster(cluster_file) if cluster_file else load_default_cluster()
        tokens_file, agent_token = embedded_tokens(state_dir)
        service = start_service(
            ServiceOptions(
                store=os.path.join(state_dir, "xpod.db"),
                listen=listen,
                cluster=cluster if simulate else None,
                cluster_name=cluster.name,
                metrics=metrics,
                node_timeout_s=node_timeout_s,
                holder="xpod up",
                tokens_file=tokens_file,
                any_queue=True,  # one user: any queue, created on first use (capped)
            )
        )
    except BaseException:
        lock.release()
        raise
    lock.set_address(service.address)
    # where a CLI given this loopback address and no token finds the admin token, whatever
    # --state-dir was (this user's own state directory, owner-only)
    pointer = local_token_path(service.address)
    try:
        os.makedirs(os.path.dirname(pointer), mode=0o700, exist_ok=True)
        with open(os.path.join(state_dir, ADMIN_TOKEN_FILE), encoding="utf-8") as f:
            _write_private(pointer, f.read())
    except OSError:
        pointer = None  # the CLI then needs --token-file STATE/admin-token, as the banner says
    client = Client(Target(service.address, agent_token, None, "xpod up"), timeout_s=10.0)
    nodes = []
    if simulate:
        nodes += [
            ag.NodeRuntime(n, ag.SimExecutor(n.name, state_dir), "xpod up (simulated)")
            for n in ag.simulated_pod(cluster_file)
        ]
    if local:
        ag.end_leftover_tasks(state_dir)
        devices = ag.discover_devices(sim_devices)
        name = ag.local_node_name(client)
        if any(n.name == name for n in nodes):
            name = f"{name}-local"  # this host is not one of the simulated nodes
        nodes.append(
            ag.NodeRuntime(ag.NodeSpec(name, tuple(devices)), ag.ProcessExecutor(name, devices, state_dir), "xpod up")
        )
    # one agent, one connection, for the simulated pod and this host alike
    agent = ag.Agent(client, nodes, log_prefix="xpod up", poll_s=SIM_POLL_S if simulate else ag.POLL_S)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), name="xpod-agent", daemon=True)
    thread.start()
    agent.connected.wait(timeout=wait_s)
    return Embedded(service, state_dir, agent, thread, stop, client, lock, pointer)
