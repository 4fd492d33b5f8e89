"""Simulated CloudMatrix384 pod throughput: ``python bench/agent_simpod.py [--jobs N] [--duration S]``.

Starts ``xpod up --no-local`` (scheduler + 48 simulated nodes, 768 dies) on a free loopback
port in a temporary state directory, then measures:

* ``ready_s``: from process start until every simulated node registered (``Ctrl-C to stop``),
* ``submit_s``: submitting N one-task jobs of 8 dies each (``simulate: {duration_s: S}``),
* ``complete_s`` and ``jobs_per_s``: from the first submission until every job SUCCEEDED
  (scheduling, assignment streams, simulated runs, status reports, over gRPC and SQLite).

Prints one JSON object. Not run by ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--duration", type=float, default=0.5, help="simulated seconds per task")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    state = tempfile.mkdtemp(prefix="xpod-simpod-")
    log = open(os.path.join(state, "up.log"), "w+")
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "xpod.runtime.cli", "up", "--no-local", "--listen", address, "--state-dir", state],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while "Ctrl-C to stop" not in open(log.name).read():
            if p.poll() is not None or time.monotonic() - t0 > 120:
                print(open(log.name).read(), file=sys.stderr)
                return 1
            time.sleep(0.05)
        ready_s = time.monotonic() - t0
        from xpod.runtime.client import Client, Target

        with open(os.path.join(state, "admin-token")) as f:  # xpod up's own admin token
            client = Client(Target(address, f.read().strip(), None, "bench"), timeout_s=30)
        t1 = time.monotonic()
        ids = []
        for i in range(args.jobs):
            doc = {
                "apiVersion": "xpod/v1",
                "kind": "BatchJob",
                "metadata": {"name": f"sim-{i}"},
                "spec": {
                    "tasks": 1,
                    "devices": {"count": 8, "model": "ascend-910c"},
                    "simulate": {"duration_s": args.duration},
                },
            }
            ids.append(client.submit(doc).job.id)
        submit_s = time.monotonic() - t1
        done = set()
        while len(done) < len(ids):
            for j in client.list(states=("SUCCEEDED", "FAILED")):
                done.add(j.id)
            if time.monotonic() - t1 > 600:
                break
            time.sleep(0.2)
        complete_s = time.monotonic() - t1
        failed = len(client.list(states=("FAILED",)))
        client.close()
        print(
            json.dumps(
                {
                    "nodes": 48,
                    "devices": 768,
                    "jobs": args.jobs,
                    "devices_per_job": 8,
                    "task_duration_s": args.duration,
                    "ready_s": round(ready_s, 2),
                    "submit_s": round(submit_s, 2),
                    "complete_s": round(complete_s, 2),
                    "jobs_per_s": round(len(done) / complete_s, 1),
                    "finished": len(done),
                    "failed": failed,
                    "lower_bound_s": round(args.jobs * 8 / 768 * args.duration, 2),
                }
            )
        )
        return 0
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
