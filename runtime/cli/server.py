"""``xpod server``: the scheduler service (gRPC API, durable store, scheduling loop)."""

from __future__ import annotations

import os

from xpod.hal.errors import XpodError
from xpod.runtime.cli.app import is_loopback, split_host_port


def register(commands) -> None:
    s = commands.top.add_parser(
        "server",
        help="run the scheduler service (gRPC API, durable store, scheduling loop)",
        description="Run the xpod scheduler: gRPC API on --listen, store in --db (SQLite) or --store URL, "
        "metrics on --metrics. Several servers with the same postgresql:// store are replicas: one leads "
        "(schedules, takes writes), the others answer reads and name the leader (docs/high-availability.md).",
    )
    s.add_argument(
        "--cluster", metavar="FILE", help="cluster descriptor (YAML); without it, nodes come from agents only"
    )
    s.add_argument(
        "--db", metavar="PATH", default="xpod.db", help="SQLite database (created if missing; default xpod.db)"
    )
    s.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///PATH (same as --db PATH) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
        "(replicas sharing it elect one leader)",
    )
    s.add_argument(
        "--advertise",
        metavar="ADDR",
        help="host:port clients and agents reach this replica at (postgresql stores; default: the --listen address)",
    )
    s.add_argument(
        "--lease-ttl",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="leader lease of replicas (postgresql stores): a follower takes over this long after the leader "
        "stopped renewing (default 3)",
    )
    s.add_argument(
        "--listen",
        metavar="ADDR",
        default="127.0.0.1:7070",
        help="host:port for gRPC (default 127.0.0.1:7070; port 0 = any)",
    )
    s.add_argument("--metrics", metavar="ADDR", help="host:port for the Prometheus endpoint (off by default)")
    s.add_argument(
        "--tokens", metavar="FILE", help="bearer-token file with roles (see README); without it the server is open"
    )
    s.add_argument("--insecure", action="store_true", help="allow listening beyond loopback without --tokens")
    s.add_argument("--tls-cert", metavar="PEM", help="server certificate (with --tls-key)")
    s.add_argument("--tls-key", metavar="PEM", help="server private key")
    s.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument(
        "--cycle-interval", type=float, default=0.5, metavar="SECONDS", help="scheduling cycle period (default 0.5)"
    )
    s.add_argument(
        "--frontends",
        type=int,
        default=None,
        metavar="N",
        help="extra processes that serve gRPC on the same address and relay to this one, so the per-call "
        "work of gRPC uses more than one core (default: 2 on a machine with 2 or more CPUs, else 0: this process alone)",
    )
    core = s.add_mutually_exclusive_group()
    core.add_argument(
        "--core-process",
        dest="core_process",
        action="store_true",
        default=True,
        help="run the scheduler core in a child process, so its cycles do not hold the API's GIL (the default)",
    )
    core.add_argument(
        "--core-in-process",
        dest="core_process",
        action="store_false",
        help="run the scheduler core in the server process (one process, slower API under load)",
    )
    s.set_defaults(func=cmd_server)


def cmd_server(args) -> int:
    import signal
    import threading

    host, _ = split_host_port(args.listen, "--listen")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise XpodError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise XpodError("--tls-client-ca needs --tls-cert and --tls-key")
    frontends = args.frontends
    if frontends is None:
        frontends = 2 if (os.cpu_count() or 1) >= 2 else 0
    if not 0 <= frontends <= 64:
        raise XpodError(f"--frontends {args.frontends}: give a number of processes from 0 to 64")
    if not args.tokens and not is_loopback(host) and not args.insecure:
        raise XpodError(
            f"--listen {args.listen} is beyond loopback and no --tokens file is given: "
            "pass --tokens FILE (or --insecure to run open anyway)"
        )
    from xpod.scheduler.auth import Authenticator

    authenticator = Authenticator.from_file(args.tokens) if args.tokens else Authenticator.open_server()
    metrics_addr = split_host_port(args.metrics, "--metrics") if args.metrics else None

    from xpod.scheduler.api import SchedulerApi
    from xpod.scheduler.core_bridge import CorePlacer, cluster_inventory
    from xpod.scheduler.service import TlsFiles, build_server
    from xpod.scheduler.service_metrics import ServiceMetrics
    from xpod.scheduler.store import StoreError

    cluster_name, nodes, cluster = "xpod", [], None
    if args.cluster:
        from xpod.hal.cluster import load_cluster

        cluster = load_cluster(args.cluster)
        cluster_name, nodes = cluster.name, cluster_inventory(cluster)
    location = args.store or args.db
    replicated = location.startswith(("postgresql://", "postgres://"))
    if args.lease_ttl < 0.5:
        raise XpodError(f"--lease-ttl {args.lease_ttl:g}: give at least 0.5 seconds")
    metrics = ServiceMetrics()
    if replicated:
        from xpod.scheduler.replica import ApiHandle
        from xpod.scheduler.store_postgres import PostgresStore

        # the URL, the credentials and the schema, checked once before serving: one line, exit 1
        probe = PostgresStore(location)
        probe.close()
        api = ApiHandle()
        metrics.attach(api)
    else:
        if args.core_process:
            from xpod.scheduler.core_process import ProcessPlacer

            placer = ProcessPlacer(args.cluster, cluster)
        else:
            placer = CorePlacer(cluster)
        try:
            api = SchedulerApi(
                location, placer, nodes=nodes, cluster_name=cluster_name, cycle_interval_s=args.cycle_interval
            )
        except StoreError:
            raise
        metrics.attach(api)
        metrics.leader.set(1)  # a SQLite store has one server: it leads
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    try:
        running = build_server(api, authenticator, args.listen, tls=tls, frontends=frontends)
    except (OSError, RuntimeError) as err:
        api.close()
        raise XpodError(f"--listen {args.listen}: cannot listen: {err}") from None
    metrics_server = None
    if metrics_addr:
        from prometheus_client import start_http_server

        try:
            metrics_server, _ = start_http_server(metrics_addr[1], addr=metrics_addr[0], registry=metrics.registry)
        except OSError as err:
            running.stop(0)
            api.close()
            raise XpodError(f"--metrics {args.metrics}: cannot listen: {err.strerror}") from None
    replica = None
    if replicated:
        replica = _start_replica(args, api, running, metrics, cluster, cluster_name, nodes, host)
    else:
        api.start()
    from xpod.scheduler.gc_tuning import GcFreezer, tune_switch_interval

    # the server keeps every job in memory: without this, full GC passes that walk all of them
    # stall every call in flight, longer as jobs accumulate (scheduler/gc_tuning.py)
    freezer = GcFreezer().start()
    # the store writer wins the GIL back from the busy event loop sooner (scheduler/gc_tuning.py)
    tune_switch_interval()
    # before the banner: whoever waits for "listening on" may stop the server at once
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    devices = sum(len(n.devices) for n in nodes)
    if authenticator.open:
        print(f"xpod server: no --tokens file: running OPEN (no authentication) on {host}", flush=True)
    metrics_where = ""
    if metrics_server is not None:
        metrics_host = f"[{metrics_addr[0]}]" if ":" in metrics_addr[0] else metrics_addr[0]
        metrics_where = f"; metrics on http://{metrics_host}:{metrics_server.server_port}/metrics"
    print(
        # an IPv6 host in brackets: the address as clients (xpod --server) take it
        f"xpod server: listening on {f'[{host}]' if ':' in host else host}:{running.port}{' (TLS)' if tls else ''}; "
        + (
            f"store {replica.display} (replica {replica.address}, {replica.role.value}); "
            if replica is not None
            else f"db {location} ({len(api.store.load_jobs())} jobs recovered, revision {api.last_revision}); "
        )
        + f"cluster {cluster_name}: {len(nodes)} nodes, {devices} devices"
        + metrics_where
        + (f"; {frontends} front-end process{'es' if frontends > 1 else ''}" if frontends else ""),
        flush=True,
    )
    # with a timeout: a signal the kernel hands to another thread never interrupts a wait
    # without one, and Python runs the handler only once the main thread wakes
    while not stop.wait(0.5):
        pass
    print("xpod server: stopping", flush=True)
    if replica is not None:
        replica.close()  # steps down and releases the lease first: a follower takes over at once
    running.stop(2.0)
    if replica is None:
        api.close()
    freezer.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0


def _start_replica(args, handle, running, metrics, cluster, cluster_name, nodes, host):
    """Bind the server's API handle to a ``Replica`` over the postgresql store and start its
    election loop; the health service and the leader metrics follow its role."""
    from xpod.scheduler.api import SchedulerApi
    from xpod.scheduler.core_bridge import CorePlacer
    from xpod.scheduler.replica import Replica, Role

    def make_api(store, leader: bool, recovered):
        if leader and args.core_process:
            from xpod.scheduler.core_process import ProcessPlacer

            placer = ProcessPlacer(args.cluster, cluster)
        else:
            placer = CorePlacer(cluster)  # a follower never schedules: the core only parses
        try:
            api = SchedulerApi(
                store,
                placer,
                nodes=nodes,
                cluster_name=cluster_name,
                cycle_interval_s=args.cycle_interval,
                recovered=recovered,
            )
        except BaseException:
            if hasattr(placer, "close"):
                placer.close()
            raise
        api.metrics = metrics
        return api

    seen = [0]

    def on_role(role: Role) -> None:
        running.set_serving(role is not Role.NO_STORE)
        metrics.leader.set(1 if role is Role.LEADER else 0)
        metrics.leader_changes.inc(replica.leader_changes - seen[0])
        seen[0] = replica.leader_changes

    address = args.advertise or f"{f'[{host}]' if ':' in host else host}:{running.port}"
    replica = Replica(args.store, make_api, address, lease_ttl_s=args.lease_ttl, on_role=on_role)
    handle.replica = replica
    running.set_serving(False)  # until the first role is known
    replica.start()
    replica.wait_for_role(timeout_s=2 * args.lease_ttl)
    return replica
