"""Durable submissions per second from concurrent clients, with latency percentiles.

Starts `xpod server` as users get it (fresh SQLite db, WAL + synchronous=FULL, group commit;
scheduling on, the core in its child process) on loopback, then runs CLIENTS concurrent
closed-loop submitters (grpc.aio, one channel each, spread over --client-processes processes)
for SECONDS after a warm-up; every acknowledged submission is on disk when its RPC returns.
Prints one JSON object: submissions_per_s, p50/p90/p99/max latency in ms, errors, shed, and the
CPU each side spent per submission (server process + its core child, clients), so a run says
whether the clients or the server were the bottleneck.

    .venv/bin/python bench/service_submit.py --clients 32 --seconds 10
    .venv/bin/python bench/service_submit.py --clients 32 --seconds 10 --store postgresql

``--store postgresql`` runs the same server on a PostgreSQL store instead (a local server the
bench starts from Debian's package, ``fsync`` and ``synchronous_commit`` on: acknowledged =
flushed to the WAL on disk); the server takes the leader lease as one replica would.

Target (issue 7): >= 1000 submissions/s with p99 < 50 ms from 32 clients on a 2-core machine
(Slurm documents 500 simple batch jobs/s sustained, SchedMD high_throughput.shtml).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def serve_without_scheduling(cluster: str, db: str) -> None:
    """The server of ``xpod server`` minus its scheduling thread: what the API and the durable
    store sustain on their own (``--no-scheduling``)."""
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.contract import cluster_records
    from xpod.scheduler.grpc.auth import Authenticator
    from xpod.scheduler.grpc.server import build_server
    from xpod.scheduler.service.api import OPEN_PRINCIPAL, SchedulerApi
    from xpod.scheduler.service.core_link import InProcessCore
    from xpod.scheduler.service.tuning import GcFreezer, tune_switch_interval

    c = load_cluster(cluster)
    api = SchedulerApi(db, InProcessCore(c), cluster=c, node_timeout_s=1e9)  # no scheduling: nodes never expire
    api.register_nodes(OPEN_PRINCIPAL, cluster_records(c))
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0")
    GcFreezer().start()  # as xpod server does
    tune_switch_interval()
    print(f"xpod server: listening on 127.0.0.1:{running.port} (no scheduling)", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    running.stop(0)
    api.close()


def start_server(cluster: str, db: str, extra: list[str], scheduling: bool = True) -> tuple[subprocess.Popen, str]:
    """``xpod server`` (or the API without scheduling) on a free loopback port; (process, addr)."""
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    if scheduling:
        where = ["--store", db] if "://" in db else ["--db", db]
        cmd = [exe, "server", "--cluster", cluster, *where, "--listen", "127.0.0.1:0", *extra]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--serve-only", "--cluster", cluster, "--db", db]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise SystemExit("server did not start")


def keep_nodes_alive(addr: str, cluster: str, stop: threading.Event) -> threading.Thread:
    """Register the descriptor's nodes and heartbeat them, as their agents would, running no
    task: the jobs are placed (the scheduler's work is measured) and stay SCHEDULED."""
    from xpod.hal.cluster import load_cluster
    from xpod.runtime.client import Client, Target
    from xpod.scheduler.contract import cluster_records

    records = cluster_records(load_cluster(cluster))
    client = Client(Target(addr, None, None, "bench"), timeout_s=30)
    interval_s = client.register_nodes(records) or 2.0

    def beat() -> None:
        while not stop.wait(interval_s):
            client.heartbeat({r.name: {} for r in records})
        client.close()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    return thread


def document(i: int, devices: int, extra: dict | None = None) -> dict:
    """A simple batch job (Slurm's benchmark unit): 1 task, 1 core, or DEVICES accelerators;
    ``extra``: more spec keys (``simulate``, ``devices.model``)."""
    spec = {"tasks": 1, "cpu": 1, "queue": f"q{i % 4}", "expected_duration_seconds": 3600}
    if devices:
        spec["devices"] = {"count": devices}
    spec.update(extra or {})
    return {"apiVersion": "xpod/v1", "kind": "BatchJob", "metadata": {"name": f"bench-{i}"}, "spec": spec}


async def run_clients(
    addr: str,
    clients: int,
    seconds: float,
    devices: int,
    prefix: str,
    first: int = 0,
    rate_per_s: float = 0.0,
    total_clients: int = 0,
    extra: dict | None = None,
) -> tuple[list[float], int, int]:
    """CLIENTS submitters (numbered from ``first``) for SECONDS: (latencies, errors, shed).

    Closed loop when ``rate_per_s`` is 0: each client sends its next request when the last one
    returns, so the run measures latency at saturation. Otherwise open loop at ``rate_per_s``
    in total over ``total_clients`` clients: each client sends on a fixed schedule (staggered
    between clients) and a latency counts from the request's scheduled time, so a late send
    after a slow reply is charged to the latency (no coordinated omission, as in wrk2)."""
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2, job_service_pb2_grpc

    latencies: list[float] = []
    errors = 0
    shed = 0
    stop_at = time.perf_counter() + seconds

    async def one(worker: int) -> None:
        nonlocal errors, shed
        # the request built once and then only its name, queue and request id changed: the
        # clients share the machine with the server, so they should cost it little
        template = job_service_pb2.SubmitJobRequest()
        template.job.update(document(0, devices, extra))
        # a connection of its own, as 32 separate users have (channels in one process otherwise
        # share one TCP connection through gRPC's global subchannel pool)
        async with grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            i = 0
            interval_s = (total_clients or clients) / rate_per_s if rate_per_s > 0 else 0.0
            due = time.perf_counter() + interval_s * worker / (total_clients or clients)
            while time.perf_counter() < stop_at:
                n = worker * 1_000_000 + i
                req = job_service_pb2.SubmitJobRequest()
                req.CopyFrom(template)
                req.request_id = f"{prefix}-{worker}-{i}"
                fields = req.job.fields
                fields["metadata"].struct_value.fields["name"].string_value = f"bench-{n}"
                fields["spec"].struct_value.fields["queue"].string_value = f"q{n % 4}"
                i += 1
                if interval_s:
                    wait_s = due - time.perf_counter()
                    if wait_s > 0:
                        await asyncio.sleep(wait_s)
                    t0 = due
                    due += interval_s
                else:
                    t0 = time.perf_counter()
                try:
                    await stub.SubmitJob(req, timeout=10)
                except grpc.aio.AioRpcError as err:
                    if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        shed += 1
                    else:
                        errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(w) for w in range(first, first + clients)))
    return latencies, errors, shed


def _client_process(
    addr: str,
    clients: int,
    first: int,
    warmup_s: float,
    start_at: float,
    seconds: float,
    devices: int,
    out,
    rate_per_s: float = 0.0,
    total_clients: int = 0,
    extra: dict | None = None,
) -> None:
    """One client process: warm up, wait for the common start, measure; sends (latencies,
    errors, shed, cpu_s) back on ``out``."""
    import resource

    if warmup_s > 0:
        asyncio.run(run_clients(addr, clients, warmup_s, devices, "warm", first, rate_per_s, total_clients, extra))
    time.sleep(max(0.0, start_at - time.time()))
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    lat, errors, shed = asyncio.run(
        run_clients(addr, clients, seconds, devices, "run", first, rate_per_s, total_clients, extra)
    )
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out.send((lat, errors, shed, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))
    out.close()


def run_client_processes(
    addr: str,
    clients: int,
    processes: int,
    warmup_s: float,
    seconds: float,
    devices: int,
    rate_per_s: float = 0.0,
    spec_extra: dict | None = None,
) -> tuple[list[float], int, int, float, float]:
    """CLIENTS submitters spread over PROCESSES processes, measuring the same SECONDS window:
    (latencies, errors, shed, elapsed_s, client_cpu_s)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + warmup_s + 3.0  # spawning and importing take a moment
    procs, pipes = [], []
    share, extra = divmod(clients, processes)
    first = 0
    for i in range(processes):
        n = share + (1 if i < extra else 0)
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=_client_process,
            args=(addr, n, first, warmup_s, start_at, seconds, devices, send, rate_per_s, clients, spec_extra),
        )
        p.start()
        send.close()
        procs.append(p)
        pipes.append(recv)
        first += n
    lat: list[float] = []
    errors = shed = 0
    cpu_s = 0.0
    for recv in pipes:
        lat_part, e, s, c = recv.recv()
        lat += lat_part
        errors += e
        shed += s
        cpu_s += c
    for p in procs:
        p.join()
    return lat, errors, shed, max(seconds, time.time() - start_at), cpu_s


def _cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of the server by role, from /proc: the main process, the core's child
    process, the front ends (``--frontends``)."""
    import psutil

    by_role = {"main": 0.0, "core": 0.0, "frontends": 0.0}
    try:
        proc = psutil.Process(pid)
        by_role["main"] = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                role = "frontends" if "xpod.scheduler.grpc.frontends" in " ".join(child.cmdline()) else "core"
                by_role[role] += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return by_role


def _cpu_delta(before: dict[str, float], after: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    # a front end replaced during the run would make its role's sum go down: never below 0
    return {k: max(0.0, after[k] - before[k]) * scale for k in before}


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default=os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml"))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    ap.add_argument(
        "--devices",
        type=int,
        default=0,
        help="accelerators per job (default 0: CPU-only simple batch jobs, all placed; with N > 0 the "
        "queue grows past the cluster and every scheduling cycle walks it)",
    )
    ap.add_argument("--cycle-interval", default="0.5")
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered submissions/s in total (open loop, latency from each request's scheduled time); "
        "0 = closed loop, every client as fast as replies come",
    )
    ap.add_argument(
        "--no-scheduling", action="store_true", help="measure the API and store alone (no scheduling thread)"
    )
    ap.add_argument(
        "--core-process", action="store_true", help=argparse.SUPPRESS
    )  # the default now; kept for old command lines
    ap.add_argument(
        "--core-in-process",
        action="store_true",
        help="xpod server --core-in-process (the core's cycles in the server process)",
    )
    ap.add_argument(
        "--client-processes",
        type=int,
        default=2,
        metavar="P",
        help="spread the clients over P processes (default 2: one Python process is itself a "
        "bottleneck for 32 clients on a busy machine); still CLIENTS concurrent submitters in all",
    )
    ap.add_argument(
        "--frontends",
        type=int,
        default=None,
        metavar="N",
        help="xpod server --frontends N (default: the server's own default, 2 on 2+ CPUs)",
    )
    ap.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the server's store: a SQLite file (default) or a local PostgreSQL the bench starts",
    )
    ap.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rate < 0:
        ap.error(f"--rate must be >= 0 submissions/s, got {args.rate}")
    if args.clients < 1 or args.client_processes < 1 or args.client_processes > args.clients:
        ap.error("--clients must be >= 1 and --client-processes between 1 and --clients")
    if args.serve_only:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve_without_scheduling(args.cluster, args.db)
        return 0
    postgres = None
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        if args.store == "postgresql":
            from xpod.scheduler.store.pg_local import LocalPostgres

            postgres = LocalPostgres.start()  # fsync on: durable submissions
            db = postgres.url
        extra = ["--cycle-interval", args.cycle_interval] + (["--core-in-process"] if args.core_in_process else [])
        if args.frontends is not None:
            extra += ["--frontends", str(args.frontends)]
        proc, addr = start_server(args.cluster, db, extra, not args.no_scheduling)
        alive = threading.Event()
        if not args.no_scheduling:
            keep_nodes_alive(addr, args.cluster, alive)
        try:
            if args.client_processes == 1:
                import resource

                if args.warmup > 0:
                    asyncio.run(run_clients(addr, args.clients, args.warmup, args.devices, "warm", 0, args.rate))
                server_cpu0 = _cpu_s(proc.pid)
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                lat, errors, shed = asyncio.run(
                    run_clients(addr, args.clients, args.seconds, args.devices, "run", 0, args.rate)
                )
                elapsed = time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                server_cpu = _cpu_delta(server_cpu0, _cpu_s(proc.pid))
                client_cpu_s = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            else:
                # the server's CPU is sampled around the whole run (warm-up included) and scaled
                # to the measured window's share of the submissions
                server_cpu0 = _cpu_s(proc.pid)
                t_all = time.perf_counter()
                lat, errors, shed, elapsed, client_cpu_s = run_client_processes(
                    addr, args.clients, args.client_processes, args.warmup, args.seconds, args.devices, args.rate
                )
                server_cpu = _cpu_delta(server_cpu0, _cpu_s(proc.pid), elapsed / (time.perf_counter() - t_all))
        finally:
            alive.set()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if postgres is not None:
            import psycopg

            with psycopg.connect(db) as conn:
                stored = conn.execute("SELECT COUNT(*) FROM jobs WHERE request_id LIKE 'run-%'").fetchall()[0][0]
            postgres.stop()
        else:
            conn = sqlite3.connect(db)
            stored = conn.execute("SELECT COUNT(*) FROM jobs WHERE request_id LIKE 'run-%'").fetchall()[0][0]
            conn.close()
    result = {
        "store": args.store,
        "scheduling": "none" if args.no_scheduling else ("in process" if args.core_in_process else "child process"),
        "frontends": "server default" if args.frontends is None else args.frontends,
        "clients": args.clients,
        "offered_per_s": args.rate or "closed loop",
        "client_processes": args.client_processes,
        "seconds": round(elapsed, 2),
        "acknowledged": len(lat),
        "stored": stored,
        "submissions_per_s": round(len(lat) / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(lat, 50) * 1e3, 2),
            "p90": round(percentile(lat, 90) * 1e3, 2),
            "p99": round(percentile(lat, 99) * 1e3, 2),
            "max": round(max(lat) * 1e3, 2) if lat else None,
        },
        "errors": errors,
        "shed": shed,
        "server_cpu_us_per_submission": round(sum(server_cpu.values()) / max(1, len(lat)) * 1e6),
        "server_cpu_us_per_submission_by_process": {
            k: round(v / max(1, len(lat)) * 1e6) for k, v in server_cpu.items()
        },
        "client_cpu_us_per_submission": round(client_cpu_s / max(1, len(lat)) * 1e6),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))
    return 0 if stored >= len(lat) else 1


if __name__ == "__main__":
    sys.exit(main())
