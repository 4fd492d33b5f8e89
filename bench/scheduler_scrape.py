#!/usr/bin/env python3
"""Time one scrape of the scheduler's /metrics for a CloudMatrix384-sized pod (not run by make test).

    .venv/bin/python bench/scheduler_scrape.py --nodes 48 --dies 16 --supernodes 1 --jobs 2000 --repeat 20

Registers --nodes agent nodes of --dies ascend-910c dies each (spread over --supernodes
super-nodes) in an in-process SchedulerApi with ServiceMetrics attached, submits --jobs one-node
training jobs (the pod holds --nodes of them; the rest stay queued), runs one scheduling cycle,
then times ``generate_latest`` over the registry (every scrape-time gauge recomputed from the
API's state: pending, running, nodes, devices, largest free block). Prints series count,
exposition size and the median / max scrape time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from prometheus_client import generate_latest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=48)
    ap.add_argument("--dies", type=int, default=16)
    ap.add_argument("--supernodes", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    from xpod.scheduler.contract import DeviceRecord, NodeRecord
    from xpod.scheduler.service.api import OPEN_PRINCIPAL, SchedulerApi
    from xpod.scheduler.service.core_link import InProcessCore
    from xpod.scheduler.service.metrics import ServiceMetrics

    with tempfile.TemporaryDirectory() as tmp:
        metrics = ServiceMetrics()
        api = SchedulerApi(f"{tmp}/xpod.db", InProcessCore(), node_timeout_s=3600, metrics=metrics)
        try:
            for i in range(args.nodes):
                name = f"cm-node-{i:02d}"
                devices = tuple(DeviceRecord(d, "ascend", "ascend-910c", 64 << 30) for d in range(args.dies))
                labels = (("supernode", f"sp-{i % args.supernodes}"),)
                api.register_node(OPEN_PRINCIPAL, NodeRecord(name, devices, labels=labels))
            t0 = time.perf_counter()
            for k in range(args.jobs):
                doc = {
                    "kind": "TrainingJob",
                    "metadata": {"name": f"j{k}"},
                    "spec": {"tasks": 1, "devices": {"count": args.dies, "model": "ascend-910c"}, "queue": f"q{k % 4}"},
                }
                api.submit_job(OPEN_PRINCIPAL, f"r{k}", doc)
            submit_s = time.perf_counter() - t0
            out = api.schedule_once()
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                text = generate_latest(metrics.registry)
                times.append(time.perf_counter() - t)
            series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
            print(
                f"nodes {args.nodes} x {args.dies} dies ({args.nodes * args.dies} devices), jobs {args.jobs} "
                f"(bound {len(out.bindings)}, submit {submit_s:.1f} s, cycle {out.seconds * 1e3:.1f} ms)"
            )
            print(
                f"scrape: {series} series, {len(text)} bytes, median {statistics.median(times) * 1e3:.2f} ms, "
                f"max {max(times) * 1e3:.2f} ms over {args.repeat}"
            )
        finally:
            api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
