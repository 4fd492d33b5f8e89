"""``xpod server`` and its clients: ``submit``, ``jobs``, ``job describe``, ``cancel``, ``nodes``, ``watch``.

Exit codes of the clients: 0 on success, 1 for any refusal or unreachable server (one line on
stderr naming the address, or ``FILE:LINE: message`` for a job file), 2 for bad flags.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

from xpod.hal.errors import XpodError

STATES = ("QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


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

    def client_flags(p, json_flag: bool = True):
        p.add_argument(
            "--server", metavar="ADDR", help="server address (default: XPOD_SERVER, the config file, 127.0.0.1:7070)"
        )
        p.add_argument("--token", metavar="TOKEN", help="bearer token (default: XPOD_TOKEN, the config file)")
        p.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server certificate (TLS)")
        p.add_argument(
            "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)"
        )
        if json_flag:
            p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = commands.top.add_parser("submit", help="submit a job file (YAML: TrainingJob, ServingJob, BatchJob)")
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--request-id", metavar="ID", help="idempotency key (default: a new UUID); resubmitting with it is safe"
    )
    client_flags(p)
    p.set_defaults(func=cmd_submit)

    p = commands.top.add_parser("jobs", help="list jobs (all states unless --state)")
    p.add_argument("--state", action="append", choices=STATES, type=str.upper, help="only this state (repeatable)")
    p.add_argument("--queue", metavar="Q", default="", help="only this queue")
    client_flags(p)
    p.set_defaults(func=cmd_jobs)

    job = commands.top.add_parser("job", help="one job: describe")
    sub = job.add_subparsers(dest="job_command", metavar="WHAT", parser_class=type(job))
    d = sub.add_parser("describe", help="spec, state, placement, pending reason, queue position, events")
    d.add_argument("job_id", metavar="ID")
    client_flags(d)
    d.set_defaults(func=cmd_describe)
    job.set_defaults(func=lambda args: _usage(job))

    p = commands.top.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id", metavar="ID")
    client_flags(p)
    p.set_defaults(func=cmd_cancel)

    p = commands.top.add_parser("nodes", help="nodes and device usage")
    client_flags(p)
    p.set_defaults(func=cmd_nodes)

    p = commands.top.add_parser("watch", help="stream job events (Ctrl-C to stop)")
    p.add_argument(
        "--from-revision", type=int, default=0, metavar="REV", help="resume after this revision (default 0: all)"
    )
    p.add_argument("--queue", default="", metavar="Q")
    p.add_argument("--job", default="", metavar="ID", help="only this job")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events (default: never)")
    client_flags(p)
    p.set_defaults(func=cmd_watch)


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _client(args):
    from xpod.runtime.client import Client, resolve_target

    return Client(resolve_target(args.server, args.token, args.tls_ca), timeout_s=args.timeout)


# --- server -----------------------------------------------------------------------------------


def _split_host_port(addr: str, flag: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise XpodError(f"{flag} {addr!r}: expected HOST:PORT (e.g. 127.0.0.1:7070)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_server(args) -> int:
    import signal
    import threading

    host, _ = _split_host_port(args.listen, "--listen")
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
    metrics_addr = _split_host_port(args.metrics, "--metrics") if args.metrics else None

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


# --- clients ----------------------------------------------------------------------------------


def cmd_submit(args) -> int:
    from xpod.runtime.client import RpcFailure, job_json, load_job_file

    job_file = load_job_file(args.file)
    with _client(args) as client:
        try:
            resp = client.submit(job_file.document, args.request_id)
        except RpcFailure as err:
            if err.field and err.field not in ("job", "request_id"):
                raise XpodError(f"{args.file}:{job_file.line_of(err.field)}: {err}") from None
            raise
    job = job_json(resp.job)
    if args.json:
        json.dump({**job, "created": resp.created}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    what = "submitted" if resp.created else "already submitted (same request id)"
    line = f"{job['id']} {what}: {job['kind']} {job['name']!r} in queue {job['queue']}, {job['state']}"
    reason = job.get("pending_reason")
    if reason:
        line += f" ({reason['reason']}: {reason['message']})"
    print(line)
    return 0


def _placement(job: dict) -> str:
    allocs = job.get("allocations") or []
    if allocs:
        return " ".join(f"{a['node']}[{len(a.get('devices', []))}]" for a in allocs)
    reason = job.get("pending_reason")
    if reason and job["state"] == "QUEUED":
        return f"({reason['reason']})"
    return "-"


def cmd_jobs(args) -> int:
    from xpod.proto.xpod.v1 import types_pb2
    from xpod.runtime.client import job_json

    states = tuple(types_pb2.JobState.Value(f"JOB_STATE_{s}") for s in (args.state or ()))
    with _client(args) as client:
        jobs = [job_json(j) for j in client.list(args.queue, states)]
    if args.json:
        json.dump(jobs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(jobs)} job(s)")
    for col in ("JOBID", "QUEUE", "KIND", "NAME", "STATE", "POS", "PLACEMENT(REASON)"):
        table.add_column(col)
    for j in jobs:
        table.add_row(
            j["id"], j["queue"], j["kind"], j["name"], j["state"], str(j.get("queue_position") or "-"), _placement(j)
        )
    Console().print(table)
    return 0


def cmd_describe(args) -> int:
    from xpod.runtime.client import event_json, job_json

    with _client(args) as client:
        resp = client.get(args.job_id)
        explain = client.explain(args.job_id)
    job = job_json(resp.job)
    events = [event_json(e) for e in resp.events]
    for e in events:
        e.pop("job", None)
    if args.json:
        json.dump(
            {"job": job, "events": events, "explanation": list(explain.lines), "numbers": dict(explain.numbers)},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    print(f"Job:       {job['id']}  ({job['kind']} {job['name']!r})")
    print(f"Queue:     {job['queue']}")
    print(f"State:     {job['state']}" + (f"  ({job['message']})" if job.get("message") else ""))
    print(f"Request:   {job['request_id']}")
    if job.get("queue_position"):
        print(f"Position:  {job['queue_position']} in queue {job['queue']}")
    reason = job.get("pending_reason")
    if reason:
        print(f"Pending:   {reason['reason']}: {reason['message']}")
    for a in job.get("allocations") or []:
        print(f"Placement: {a['node']}: {', '.join(a.get('devices', []))}")
    print("Why:")
    for line in explain.lines:
        print(f"  {line}")
    print("Spec:")
    import yaml

    print("  " + yaml.safe_dump(job.get("spec", {}), sort_keys=False).rstrip().replace("\n", "\n  "))
    print("Events:")
    for e in events:
        print(f"  {e['revision']:>8}  {e.get('time', '')}  {e['type']:<10} {e.get('message', '')}")
    return 0


def cmd_cancel(args) -> int:
    from xpod.runtime.client import job_json

    with _client(args) as client:
        job = job_json(client.cancel(args.job_id).job)
    if args.json:
        json.dump(job, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{job['id']} {job['state']}")
    return 0


def cmd_nodes(args) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        nodes = client.list_nodes()
        devices = client.list_devices()
    used: dict[str, list] = {}
    for d in devices:
        used.setdefault(d.node, []).append(d)
    if args.json:
        out = []
        for n in nodes:
            nd = json_format.MessageToDict(n, preserving_proto_field_name=True)
            nd["devices"] = [
                json_format.MessageToDict(d, preserving_proto_field_name=True) for d in used.get(n.name, [])
            ]
            out.append(nd)
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(nodes)} node(s)")
    for col in ("NODE", "READY", "DEVICES", "MODEL", "ALLOCATED", "UNHEALTHY", "JOBS"):
        table.add_column(col)
    for n in nodes:
        devs = used.get(n.name, [])
        models = sorted({d.model for d in devs})
        allocated = sum(d.allocated_milli for d in devs) / 1000
        unhealthy = sum(1 for d in devs if d.health in ("alarm", "critical"))
        jobs = sorted({j for d in devs for j in d.job_ids})
        table.add_row(
            n.name,
            "yes" if n.ready else "no",
            str(len(devs)),
            ",".join(models) or "-",
            f"{allocated:g}",
            str(unhealthy),
            ",".join(jobs) or "-",
        )
    Console().print(table)
    return 0


def cmd_watch(args) -> int:
    from xpod.runtime.client import event_json

    seen = 0
    with _client(args) as client:
        for ev in client.watch(args.from_revision, args.queue, args.job):
            e = event_json(ev)
            if args.json:
                print(json.dumps(e), flush=True)
            else:
                job = e.get("job", {})
                print(
                    f"{e['revision']:>8}  {e['job_id']:<12} {e['type']:<10} {job.get('state', ''):<10} {e.get('message', '')}",
                    flush=True,
                )
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0
