"""The clients of ``xpod server``: ``submit``, ``jobs``, ``job describe``, ``cancel``, ``nodes``, ``watch``.

Exit codes: 0 on success, 1 for any refusal or unreachable server (one line on stderr naming the
address, or ``FILE:LINE: message`` for a job file), 2 for bad flags.
"""

from __future__ import annotations

import dataclasses

import json
import sys

from xpod.hal.errors import XpodError
from xpod.runtime.cli.output import Column, add_output_flags, output_format, print_json, print_rows

STATES = ("QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def client_flags(p, table: bool = False):
    """The flags every client command has; ``table``: ``-o/--output`` and ``--json``, else ``--json``.
    Marks the command a gRPC client's (``grpc_client``): its process ends without the interpreter's
    teardown (``main``'s module docstring)."""
    p.set_defaults(grpc_client=True)
    p.add_argument(
        "--server", metavar="ADDR", help="server address (default: XPOD_SERVER, the config file, 127.0.0.1:7070)"
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token (default: --token-file, XPOD_TOKEN, the config file, xpod up's admin token)",
    )
    tls_flags(p)
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)")
    if table:
        add_output_flags(p)
    else:
        p.add_argument("--json", action="store_true", help="JSON instead of text")


def tls_flags(p) -> None:
    """--token-file and the TLS flags, shared by the client commands and the agent."""
    p.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE (mode 0600)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server certificate (TLS)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")


def target_of(args):
    """The server and credentials the flags name (``resolve_target``). With no token from any
    source and a loopback server, the token ``xpod up`` wrote to its state directory."""
    from xpod.runtime.client import resolve_target
    from xpod.runtime.cli.common import local_admin_token

    target = resolve_target(
        args.server,
        getattr(args, "token", None),
        args.tls_ca,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    if target.token is None:
        token = local_admin_token(target.addresses)
        if token is not None:
            target = dataclasses.replace(target, token=token)
    return target


def register(commands) -> None:
    p = commands.top.add_parser("submit", help="submit a job file (YAML: TrainingJob, ServingJob, BatchJob)")
    p.add_argument("file", metavar="FILE", help="the job file (YAML); xpod job validate checks it offline")
    p.add_argument(
        "--request-id", metavar="ID", help="idempotency key (default: a new UUID); resubmitting with it is safe"
    )
    client_flags(p)
    p.set_defaults(func=cmd_submit)

    p = commands.top.add_parser("jobs", help="list jobs (all states unless --state)")
    p.add_argument("--state", action="append", choices=STATES, type=str.upper, help="only this state (repeatable)")
    p.add_argument("--queue", metavar="Q", default="", help="only this queue")
    client_flags(p, table=True)
    p.set_defaults(func=cmd_jobs)

    job = commands.top.add_parser("job", help="one job: describe it; check a job file offline; print the schema")
    sub = job.add_subparsers(dest="job_command", metavar="WHAT", parser_class=type(job))
    d = sub.add_parser("describe", help="spec, state, placement, pending reason, queue position, events")
    d.add_argument("job_id", metavar="ID", help="the job's id (xpod jobs lists them)")
    client_flags(d)
    d.set_defaults(func=cmd_describe)
    v = sub.add_parser(
        "validate",
        help="check a job file offline: every problem as FILE:LINE:COL, or a summary",
        description="Check a job file as xpod submit and the server do, without a server: exit 0 and a "
        "summary, or exit 1 with one FILE:LINE:COL: message line per problem.",
    )
    v.add_argument("file", metavar="FILE", help="the job file (YAML)")
    v.add_argument(
        "--cluster", metavar="FILE", help="also check that the job fits this cluster descriptor when it is empty"
    )
    v.add_argument("--json", action="store_true", help="the summary as JSON")
    v.set_defaults(func=cmd_validate)
    sc = sub.add_parser("schema", help="print the JSON Schema of job files (for editors)")
    sc.add_argument(
        "kind",
        metavar="KIND",
        nargs="?",
        choices=("TrainingJob", "ServingJob", "BatchJob"),
        help="TrainingJob, ServingJob or BatchJob (default: one schema for all three)",
    )
    sc.set_defaults(func=cmd_schema)
    job.set_defaults(func=lambda args: _usage(job))

    p = commands.top.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id", metavar="ID", help="the job's id (xpod jobs lists them)")
    client_flags(p)
    p.set_defaults(func=cmd_cancel)

    p = commands.top.add_parser("nodes", help="nodes and device usage")
    client_flags(p, table=True)
    p.set_defaults(func=cmd_nodes)

    p = commands.top.add_parser("watch", help="stream job events (Ctrl-C to stop)")
    p.add_argument(
        "--from-revision", type=int, default=0, metavar="REV", help="resume after this revision (default 0: all)"
    )
    p.add_argument("--queue", default="", metavar="Q", help="only this queue's jobs")
    p.add_argument("--job", default="", metavar="ID", help="only this job")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events (default: never)")
    client_flags(p)
    p.set_defaults(func=cmd_watch)


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _client(args):
    from xpod.runtime.client import Client

    return Client(target_of(args), timeout_s=args.timeout)


def cmd_submit(args) -> int:
    from xpod.runtime.client import RpcFailure, job_json
    from xpod.scheduler import jobspec

    # the checks of `xpod job validate` first; device names the catalog lacks are the server's
    # to judge (its nodes may have models a cluster file declared), so they wait for its answer
    job_file = jobspec.load_job_file(args.file, check_models=False)
    with _client(args) as client:
        if job_file.outside_catalog():
            problems = job_file.device_name_problems(dict(client.get_cluster().devices_by_model))
            if problems:
                raise jobspec.DocumentError(problems)
        try:
            resp = client.submit(job_file.document, args.request_id)
        except RpcFailure as err:
            if err.field and err.field not in ("job", "request_id"):
                line, col = job_file.position(err.field)
                raise XpodError(f"{args.file}:{line}:{col}: {err}") from None
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


def cmd_validate(args) -> int:
    from xpod.scheduler import jobspec

    cluster = None
    if args.cluster:
        from xpod.hal.cluster import load_cluster

        cluster = load_cluster(args.cluster)
    summary = jobspec.load_job_file(args.file, cluster=cluster).summary()
    if cluster is not None:
        summary["fits_cluster"] = cluster.name
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    fits = f"; fits cluster {cluster.name!r}" if cluster is not None else ""
    if "roles" in summary:

        def role(r: dict) -> str:
            what = r["devices_per_task"]["what"] if r["devices_per_task"] else "no devices"
            if "replicas" not in r:
                return f"{r['name']}: {r['tasks']} task(s) x {what}"
            lo, hi = r["replicas"]["min"], r["replicas"]["max"]
            per = r["tasks"] // hi
            return f"{r['name']}: {lo if lo == hi else f'{lo}-{hi}'} replica(s) of {per} task(s) x {what}"

        roles = "; ".join(role(r) for r in summary["roles"])
        print(
            f"{args.file}: ok: {summary['kind']} {summary['name']!r} with roles ({roles}), placed together, "
            f"queue {summary['queue']}, priority {summary['priority_class']}{fits}"
        )
        return 0
    devices = summary["devices_per_task"]
    tasks = summary["tasks"] if summary["min_tasks"] is None else f"{summary['min_tasks']}..{summary['tasks']}"
    print(
        f"{args.file}: ok: {summary['kind']} {summary['name']!r}, {tasks} task(s) x "
        f"{devices['what'] if devices else 'no devices'}, within {summary['within']}, queue {summary['queue']}, "
        f"priority {summary['priority_class']}" + (f"; fits cluster {cluster.name!r}" if cluster is not None else "")
    )
    return 0


def cmd_schema(args) -> int:
    from xpod.scheduler.jobspec.schema import all_kinds_schema, schema

    json.dump(schema(args.kind) if args.kind else all_kinds_schema(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _placement(job: dict) -> str:
    allocs = job.get("allocations") or []
    if allocs:
        return " ".join(f"{a['node']}[{len(a.get('devices', []))}]" for a in allocs)
    reason = job.get("pending_reason")
    if reason and job["state"] == "QUEUED":
        return f"({reason['reason']})"
    return "-"


JOB_COLUMNS = (
    Column("JOBID"),
    Column("QUEUE"),
    Column("KIND"),
    Column("NAME"),
    Column("STATE"),
    Column("POS", justify="right"),
    Column("PLACEMENT(REASON)"),
    Column("PRIORITY", wide=True),
    Column("CREATED", wide=True),
    Column("REQUEST", wide=True),
    Column("MESSAGE", wide=True),
)


def cmd_jobs(args) -> int:
    from xpod.runtime.client import job_json

    with _client(args) as client:
        jobs = [job_json(j) for j in client.list(args.queue, args.state or ())]
    fmt = output_format(args)
    if fmt == "json":
        print_json(jobs)
        return 0
    rows = [
        (
            j["id"],
            j["queue"],
            j["kind"],
            j["name"],
            j["state"],
            j.get("queue_position") or "-",
            _placement(j),
            (j.get("spec") or {}).get("priority_class", "normal"),
            j.get("create_time") or "-",
            j["request_id"],
            j.get("message") or "-",
        )
        for j in jobs
    ]
    print_rows(fmt, f"{len(jobs)} job(s)", JOB_COLUMNS, rows)
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
    if job.get("restarts"):
        print(f"Restarts:  {job['restarts']}")
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


NODE_COLUMNS = (
    Column("NODE"),
    Column("READY"),
    Column("AGENT"),
    Column("DEVICES", justify="right"),
    Column("MODEL"),
    Column("ALLOCATED", justify="right"),
    Column("UNHEALTHY", justify="right"),
    Column("JOBS"),
    Column("SIMULATED", wide=True, justify="right"),
    Column("LAST HEARTBEAT", wide=True),
    Column("LABELS", wide=True),
)


def cmd_nodes(args) -> int:
    from xpod.hal.device import Health
    from xpod.runtime.client import message_json

    with _client(args) as client:
        nodes = [message_json(n) for n in client.list_nodes()]
        devices = [message_json(d) for d in client.list_devices()]
    used: dict[str, list] = {}
    for d in devices:
        used.setdefault(d["node"], []).append(d)
    for n in nodes:
        n["devices"] = used.get(n["name"], [])  # with their allocations and jobs (ListDevices)
    fmt = output_format(args)
    if fmt == "json":
        print_json(nodes)
        return 0
    rows = []
    for n in nodes:
        devs = n["devices"]
        rows.append(
            (
                n["name"],
                "yes" if n["ready"] else "no",
                _agent(n),
                len(devs),
                ",".join(sorted({d["model"] for d in devs})) or "-",
                f"{sum(d['allocated_milli'] for d in devs) / 1000:g}",
                sum(1 for d in devs if not _health(Health, d["health"]).schedulable),
                ",".join(sorted({j for d in devs for j in d["job_ids"]})) or "-",
                sum(1 for d in devs if d["simulated"]),
                n["last_heartbeat_time"] or "-",
                ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())) or "-",
            )
        )
    print_rows(fmt, f"{len(nodes)} node(s)", NODE_COLUMNS, rows)
    return 0


def _agent(node: dict) -> str:
    """Who speaks for a node: ``simulated, heartbeat 1 s ago``, ``unknown: no agent has
    registered it yet``, ``not ready: no heartbeat for 12 s`` (the server's ``status_reason``)."""
    status = str(node.get("status") or "").removeprefix("NODE_STATUS_").lower()
    if status and status != "ready":
        return f"{status.replace('_', ' ')}: {node.get('status_reason') or '-'}"
    beat = node.get("last_heartbeat_time")
    ago = ""
    if beat:
        import datetime

        then = datetime.datetime.fromisoformat(beat[:19] + "+00:00")  # RFC 3339, to the second
        seconds = (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()
        ago = f"heartbeat {max(0.0, seconds):.0f} s ago"
    return ", ".join(x for x in ("simulated" if node.get("simulated") else "", ago) if x) or "-"


def _health(health_type, word: str):
    try:
        return health_type(word)
    except ValueError:  # a word a newer agent sends: not known to be schedulable
        return health_type.ALARM


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
