"""Durable submissions per second from concurrent clients, with latency percentiles.

Starts `xpod server` (fresh SQLite db, WAL + synchronous=FULL, group commit) on loopback,
then runs CLIENTS concurrent submitters (grpc.aio, one channel each) for SECONDS; every
acknowledged submission is on disk when its RPC returns. Prints one JSON object:
submissions_per_s, p50/p90/p99/max latency in ms, errors, the store's batches.

    .venv/bin/python bench/service_submit.py --clients 32 --seconds 10

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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def serve_without_scheduling(cluster: str, db: str) -> None:
    """The server of ``xpod server`` minus its scheduling thread: what the API and the durable
    store sustain on their own (``--no-scheduling``)."""
    from xpod.hal.cluster import load_cluster
    from xpod.scheduler.api import SchedulerApi
    from xpod.scheduler.auth import Authenticator
    from xpod.scheduler.core_bridge import CorePlacer, cluster_inventory
    from xpod.scheduler.service import build_server

    c = load_cluster(cluster)
    api = SchedulerApi(db, CorePlacer(c), nodes=cluster_inventory(c), cluster_name=c.name)
    running = build_server(api, Authenticator.open_server(), "127.0.0.1:0")
    print(f"xpod server: listening on 127.0.0.1:{running.port} (no scheduling)", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    running.stop(0)
    api.close()


def start_server(cluster: str, db: str, extra: list[str], scheduling: bool = True) -> tuple[subprocess.Popen, str]:
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    if scheduling:
        cmd = [exe, "server", "--cluster", cluster, "--db", db, "--listen", "127.0.0.1:0", *extra]
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


def document(i: int, devices: int) -> dict:
    """A simple batch job (Slurm's benchmark unit): 1 task, 1 core, or DEVICES accelerators."""
    spec = {"tasks": 1, "cpu": 1, "queue": f"q{i % 4}", "expected_duration_seconds": 3600}
    if devices:
        spec["devices"] = {"count": devices}
    return {"apiVersion": "xpod/v1", "kind": "BatchJob", "metadata": {"name": f"bench-{i}"}, "spec": spec}


async def run_clients(addr: str, clients: int, seconds: float, devices: int, prefix: str) -> tuple[list[float], int, int]:
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2, job_service_pb2_grpc

    latencies: list[float] = []
    errors = 0
    shed = 0
    stop_at = time.perf_counter() + seconds

    async def one(worker: int) -> None:
        nonlocal errors, shed
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = job_service_pb2_grpc.JobServiceStub(ch)
            i = 0
            while time.perf_counter() < stop_at:
                req = job_service_pb2.SubmitJobRequest(request_id=f"{prefix}-{worker}-{i}")
                req.job.update(document(worker * 1_000_000 + i, devices))
                i += 1
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

    await asyncio.gather(*(one(w) for w in range(clients)))
    return latencies, errors, shed


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
        "--devices", type=int, default=0,
        help="accelerators per job (default 0: CPU-only simple batch jobs, all placed; with N > 0 the "
        "queue grows past the cluster and every scheduling cycle walks it)",
    )
    ap.add_argument("--cycle-interval", default="0.5")
    ap.add_argument("--no-scheduling", action="store_true", help="measure the API and store alone (no scheduling thread)")
    ap.add_argument("--core-process", action="store_true", help="xpod server --core-process (the core in a child process)")
    ap.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_only:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve_without_scheduling(args.cluster, args.db)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        extra = ["--cycle-interval", args.cycle_interval] + (["--core-process"] if args.core_process else [])
        proc, addr = start_server(args.cluster, db, extra, not args.no_scheduling)
        try:
            if args.warmup > 0:
                asyncio.run(run_clients(addr, args.clients, args.warmup, args.devices, "warm"))
            t0 = time.perf_counter()
            lat, errors, shed = asyncio.run(run_clients(addr, args.clients, args.seconds, args.devices, "run"))
            elapsed = time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        conn = sqlite3.connect(db)
        stored = conn.execute("SELECT COUNT(*) FROM jobs WHERE request_id LIKE 'run-%'").fetchall()[0][0]
        conn.close()
    result = {
        "scheduling": "none" if args.no_scheduling else ("child process" if args.core_process else "in process"),
        "clients": args.clients,
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
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0 if stored >= len(lat) else 1


if __name__ == "__main__":
    sys.exit(main())
