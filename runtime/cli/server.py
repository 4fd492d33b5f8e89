"""``xpod server``: the scheduler service (gRPC API, durable store, scheduling loop)."""

from __future__ import annotations

import os

from xpod.hal.errors import XpodError
from xpod.runtime.cli.app import is_loopback, split_host_port
from xpod.runtime.cli.common import stop_on_signals


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
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening beyond loopback without --tokens, or with tokens but no TLS",
    )
    s.add_argument("--tls-cert", metavar="PEM", help="server certificate (with --tls-key)")
    s.add_argument("--tls-key", metavar="PEM", help="server private key")
    s.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA (mutual TLS)")
    s.add_argument(
        "--retention",
        metavar="PERIOD",
        default="7d",
        help="compact a finished job this long after it ended: its spec and all but its last event are "
        "dropped, its row stays (e.g. 7d, 12h, 30m, 90s; 0 keeps everything; default 7d; docs/security.md)",
    )
    s.add_argument(
        "--auto-queues",
        type=int,
        metavar="N",
        help="create up to N queues the configuration does not declare on first use (default: with --tokens 0, "
        "only the tokens file's queues, its submitters' and 'default'; open: any, at most 64 in all)",
    )
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
    import threading

    from xpod.runtime.cli.app import ServiceOptions, start_service
    from xpod.scheduler.service.retention import parse_retention

    host, _ = split_host_port(args.listen, "--listen")
    retention_s = parse_retention(args.retention)  # a bad period: one line before anything starts
    if args.auto_queues is not None and not 0 <= args.auto_queues <= 10_000:
        raise XpodError(f"--auto-queues {args.auto_queues}: give a number of queues from 0 to 10000")
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
    if args.tokens and not args.tls_cert and not is_loopback(host) and not args.insecure:
        raise XpodError(
            f"--listen {args.listen} is beyond loopback and bearer tokens would cross the network in clear text: "
            "pass --tls-cert and --tls-key (or --insecure to send them unencrypted anyway)"
        )
    if args.lease_ttl < 0.5:
        raise XpodError(f"--lease-ttl {args.lease_ttl:g}: give at least 0.5 seconds")
    # the database, its WAL, the state directory and logs hold job specs (their env secrets):
    # owner only
    os.umask(0o077)
    tls = None
    if args.tls_cert:
        from xpod.scheduler.grpc.server import TlsFiles

        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    service = start_service(
        ServiceOptions(
            store=args.store or args.db,
            listen=args.listen,
            cluster_file=args.cluster,
            metrics=args.metrics,
            tokens_file=args.tokens,
            tls=tls,
            frontends=frontends,
            core_process=args.core_process,
            cycle_interval_s=args.cycle_interval,
            advertise=args.advertise,
            lease_ttl_s=args.lease_ttl,
            tune_gc=True,
            retention_s=retention_s,
            auto_queues=args.auto_queues,
        )
    )
    # before the banner: whoever waits for "listening on" may stop the server at once
    stop = threading.Event()
    stop_on_signals(stop)
    devices = sum(len(n.devices) for n in service.nodes)
    if service.authenticator.open:
        print(f"xpod server: no --tokens file: running OPEN (no authentication) on {host}", flush=True)
    replica, api = service.replica, service.api
    print(
        f"xpod server: listening on {service.address}{' (TLS)' if tls else ''}; "
        + (
            f"store {replica.display} (replica {replica.address}, {replica.role.value}); "
            if replica is not None
            else f"db {service.store} ({len(api.jobs.in_order())} jobs recovered, revision {api.last_revision}); "
        )
        + f"cluster {service.cluster_name}: {len(service.nodes)} nodes, {devices} devices"
        + (f"; metrics on {service.metrics_url}" if service.metrics_url else "")
        + (f"; {frontends} front-end process{'es' if frontends > 1 else ''}" if frontends else ""),
        flush=True,
    )
    # with a timeout: a signal the kernel hands to another thread never interrupts a wait
    # without one, and Python runs the handler only once the main thread wakes
    while not stop.wait(0.5):
        pass
    print("xpod server: stopping", flush=True)
    service.close()
    return 0
