"""The clients of ``xpod server``: ``submit``, ``jobs``, ``job describe``, ``cancel``, ``nodes``, ``watch``.

Exit codes: 0 on success, 1 for any refusal or unreachable server (one line on stderr naming the
address, or ``FILE:LINE: message`` for a job file), 2 for bad flags.
"""

from __future__ import annotations

import json
import sys

from xpod.hal.errors import XpodError

STATES = ("QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def client_flags(p, json_flag: bool = True):
    p.add_argument(
        "--server", metavar="ADDR", help="server address (default: XPOD_SERVER, the config file, 127.0.0.1:7070)"
    )
    p.add_argument("--token", metavar="TOKEN", help="bearer token (default: XPOD_TOKEN, the config file)")
    p.add_argument("--tls-ca", metavar="PEM", help="CA that signed the server certificate (TLS)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="JSON instead of a table")


def register(commands) -> None:
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
    from xpod.runtime.client import job_json

    with _client(args) as client:
        jobs = [job_json(j) for j in client.list(args.queue, args.state or ())]
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
    from xpod.runtime.client import message_json

    with _client(args) as client:
        nodes = client.list_nodes()
        devices = client.list_devices()
    used: dict[str, list] = {}
    for d in devices:
        used.setdefault(d.node, []).append(d)
    if args.json:
        out = []
        for n in nodes:
            nd = message_json(n)
            nd["devices"] = [message_json(d) for d in used.get(n.name, [])]
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
