"""Issue 18's targets, measured against a real ``xpod server`` (SQLite, the embedded
CloudMatrix384 descriptor, every node registered and heartbeating as its agent would):

1. ``xpod jobs`` while a hostile job is queued: the largest zero-resource job the server accepts
   (tasks = the cluster's maximum) is queued, ``2^63`` tasks is refused; the time of a ListJobs
   call and of the whole ``xpod jobs`` command (target: the scheduler answers within 1 s).
2. Server RSS under 25 stalled WatchJobs streams (opened, never read) over ``--jobs`` jobs of
   ``--spec-kb`` KB each (default 500 x 200 KB = 100 MB of specs; target: below 1 GiB).
3. ``/metrics`` size after 3,000 submissions with hostile queue names (100 KB names, invalid
   labels, and valid names past the queue cap), every one refused (target: below 1 MB).

    .venv/bin/python bench/security.py [--jobs 500 --spec-kb 200 --watches 25] [--json]

Prints a table (or one JSON object); the 1-minute load average is part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from service_submit import keep_nodes_alive, start_server  # noqa: E402


def doc(name: str, spec: dict) -> dict:
    return {"apiVersion": "xpod/v1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def hostile_job(client, addr: str) -> dict:
    from xpod.runtime.client import RpcFailure

    out: dict = {}
    try:
        client.submit(doc("h63", {"tasks": 2**63, "queue": "research"}))
        out["tasks_2_63"] = "accepted"
    except RpcFailure as err:
        out["tasks_2_63"] = f"{err.code} {err.reason}"
    try:
        client.submit(doc("h15", {"tasks": 10**15, "queue": "research"}))
    except RpcFailure as err:
        out["tasks_1e15"] = f"{err.code} {err.reason}"
        most = int(err.metadata.get("clusterMaxTasks", "0"))
    view = client.submit(doc("hostile", {"tasks": most, "queue": "research"}))
    out["largest_accepted_tasks"] = most
    out["hostile_job"] = view.job.id
    time.sleep(2.0)  # a few scheduling cycles with it queued
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        client.list()
        times.append(time.perf_counter() - t0)
    out["list_jobs_s_max"] = max(times)
    exe = os.path.join(os.path.dirname(sys.executable), "xpod")
    env = {**os.environ, "XPOD_TOKEN": "", "XPOD_CONFIG": "/nonexistent"}
    t0 = time.perf_counter()
    r = subprocess.run([exe, "jobs", "--server", addr], capture_output=True, text=True, timeout=60, env=env)
    out["xpod_jobs_cli_s"] = time.perf_counter() - t0
    out["xpod_jobs_rc"] = r.returncode
    client.cancel(view.job.id)
    return out


def stalled_watches(client, addr: str, pid: int, jobs: int, spec_kb: int, watches: int) -> dict:
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2, job_service_pb2_grpc

    value = "x" * 1000
    env = {f"V{i}": value for i in range(spec_kb)}
    for i in range(jobs):
        client.submit(doc(f"big-{i}", {"tasks": 1, "queue": "research", "devices": {"count": 1}, "env": env}))
    before = rss_bytes(pid)
    channels, calls = [], []
    for _ in range(watches):
        ch = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
        stub = job_service_pb2_grpc.JobServiceStub(ch)
        # never iterated: the client reads nothing beyond gRPC's flow-control window
        calls.append(stub.WatchJobs(job_service_pb2.WatchJobsRequest()))
        channels.append(ch)
    peak = before
    for _ in range(20):
        time.sleep(0.5)
        peak = max(peak, rss_bytes(pid))
    t0 = time.perf_counter()
    client.list()
    answer_s = time.perf_counter() - t0
    for c in calls:
        c.cancel()
    for ch in channels:
        ch.close()
    return {
        "spec_mb": jobs * spec_kb / 1000,
        "watches": watches,
        "rss_before_mib": before / 2**20,
        "rss_peak_mib": peak / 2**20,
        "list_jobs_during_s": answer_s,
    }


def hostile_queues(client, metrics_url: str, n: int) -> dict:
    from xpod.runtime.client import RpcFailure

    refused = accepted = 0
    for i in range(n):
        queue = ("q" * 100_000) if i % 3 == 0 else (f"Bad_{i}" if i % 3 == 1 else f"q{i}")
        try:
            client.submit(doc("q", {"tasks": 1, "queue": queue, "devices": {"count": 1}}))
            accepted += 1
        except RpcFailure:
            refused += 1
    with urllib.request.urlopen(metrics_url, timeout=30) as r:
        body = r.read()
    return {"queue_names_tried": n, "refused": refused, "accepted": accepted, "metrics_bytes": len(body)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--spec-kb", type=int, default=200)
    ap.add_argument("--watches", type=int, default=25)
    ap.add_argument("--queues", type=int, default=3000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from xpod.runtime.agent.launch import free_port
    from xpod.runtime.client import Client, Target

    results: dict = {"load_1min": float(open("/proc/loadavg").read().split()[0])}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = os.path.join(os.path.dirname(HERE), "hal", "clusters", "cloudmatrix384.yaml")
        mport = free_port()
        proc, addr = start_server(
            cluster,
            os.path.join(tmp, "x.db"),
            ["--frontends", "0", "--metrics", f"127.0.0.1:{mport}"],
        )
        stop = threading.Event()
        try:
            keep_nodes_alive(addr, cluster, stop)
            # loopback, open: every call is the admin's (the limits measured hold for every role)
            client = Client(Target(addr, None, None, "bench"), timeout_s=60)
            results["hostile_job"] = hostile_job(client, addr)
            results["stalled_watches"] = stalled_watches(client, addr, proc.pid, args.jobs, args.spec_kb, args.watches)
            results["hostile_queues"] = hostile_queues(client, f"http://127.0.0.1:{mport}/metrics", args.queues)
            client.close()
        finally:
            stop.set()
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    h, w, q = results["hostile_job"], results["stalled_watches"], results["hostile_queues"]
    print(f"load average (1 min) at start: {results['load_1min']:.2f}")
    print(
        f"tasks: 2^63 -> {h['tasks_2_63']}; 1e15 -> {h['tasks_1e15']}; largest accepted {h['largest_accepted_tasks']}"
    )
    print(f"ListJobs with the hostile job queued: max {h['list_jobs_s_max'] * 1000:.0f} ms of 5 (target < 1 s)")
    print(
        f"'xpod jobs' (whole command, interpreter start included): {h['xpod_jobs_cli_s']:.2f} s, rc {h['xpod_jobs_rc']}"
    )
    print(
        f"server RSS: {w['rss_before_mib']:.0f} MiB with {w['spec_mb']:.0f} MB of specs, peak {w['rss_peak_mib']:.0f} MiB "
        f"under {w['watches']} stalled watches (target < 1024 MiB); ListJobs then {w['list_jobs_during_s'] * 1000:.0f} ms"
    )
    print(
        f"hostile queue names: {q['refused']}/{q['queue_names_tried']} refused, {q['accepted']} accepted; "
        f"/metrics {q['metrics_bytes'] / 1000:.0f} KB (target < 1 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
