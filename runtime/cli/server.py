"""``xpod server``: the scheduler service (gRPC API, durable store, scheduling loop)."""

from __future__ import annotations

import os

from xpod.hal.errors import XpodError
from xpod.runtime.cli.app import is_loopback, split_host_port


def register(commands) -> None:
    s = commands.top.add_parser(
        "server",
        help="run the scheduler service (gRPC API, durable store, scheduling loop)",
        description="Run the xpod scheduler: gRPC API on --listen, SQLite store in --db, metrics on --metrics.",
    )
    s.add_argument(
        "--cluster", metavar="FILE", help="cluster descriptor (YAML); without it, nodes come from agents only"
    )
    s.add_argument(
        "--db", metavar="PATH", default="xpod.db", help="SQLite database (created if missing; default xpod.db)"
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
    if args.core_process:
        from xpod.scheduler.core_process import ProcessPlacer

        placer = ProcessPlacer(args.cluster, cluster)
    else:
        placer = CorePlacer(cluster)
    try:
        api = SchedulerApi(
            args.db, placer, nodes=nodes, cluster_name=cluster_name, cycle_interval_s=args.cycle_interval
        )
    except StoreError:
        raise
    metrics = ServiceMetrics()
    metrics.attach(api)
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
    jobs = len(api.store.load_jobs())
    devices = sum(len(n.devices) for n in nodes)
    if authenticator.open:
        print(f"xpod server: no --tokens file: running OPEN (no authentication) on {host}", flush=True)
    metrics_where = ""
    if metrics_server is not None:
        metrics_host = f"[{metrics_addr[0]}]" if ":" in metrics_addr[0] else metrics_addr[0]
        metrics_where = f"; metrics on http://{metrics_host}:{metrics_server.server_port}/metrics"
    print(
        # an IPv6 host in brackets: the address as clients (xpod --server) take it
        f"xpod server: listening on {f'[{host}]' if ':' in host else host}:{running.port}{' (TLS)' if tls else ''}; db {args.db} "
        f"({jobs} jobs recovered, revision {api.last_revision}); cluster {cluster_name}: {len(nodes)} nodes, {devices} devices"
        + metrics_where
        + (f"; {frontends} front-end process{'es' if frontends > 1 else ''}" if frontends else ""),
        flush=True,
    )
    # with a timeout: a signal the kernel hands to another thread never interrupts a wait
    # without one, and Python runs the handler only once the main thread wakes
    while not stop.wait(0.5):
        pass
    print("xpod server: stopping", flush=True)
    running.stop(2.0)
    api.close()
    freezer.stop()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0
