#!/usr/bin/env python3
"""Time one scrape of the device exporter for a simulated pod (not run by make test).

    .venv/bin/python bench/exporter_scrape.py --nodes 48 --spec ascend-910c:8 --repeat 20

Builds one SimBackend per node (as `xpod agent --simulate` will), a DeviceCollector over all of
them, and times ``generate_latest`` (collect + text exposition) over --repeat scrapes. Prints
series count, exposition size and the median / max scrape time, and with --promtool the
`promtool check metrics` verdict on the output.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

from prometheus_client import generate_latest

from xpod.backends.sim import SimBackend
from xpod.runtime.agent.exporter import Allocation, DeviceCollector, DeviceSource, build_registry, units_of


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=48)
    ap.add_argument("--spec", default="ascend-910c:8", help="simulated devices per node (XPOD_SIM_DEVICES syntax)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--allocated", type=float, default=0.5, help="fraction of devices given an allocation series")
    ap.add_argument("--promtool", action="store_true")
    args = ap.parse_args()
    sources = [DeviceSource(SimBackend.from_spec(args.spec), f"cm-node-{i:02d}") for i in range(args.nodes)]
    col = DeviceCollector(sources)
    # scheduler devices per node: a 910C package is two (one series per die, as the scheduler counts)
    per_node = sum(units_of(d) for d in sources[0].backend.devices())
    n_alloc = int(args.nodes * per_node * args.allocated)
    col.set_allocations(
        {
            (f"cm-node-{k // per_node:02d}", k % per_node): Allocation(f"job-{k // 16}", "prod", "training")
            for k in range(n_alloc)
        }
    )
    registry = build_registry(col)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        text = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    print(f"nodes={args.nodes} devices={args.nodes * per_node} allocated={n_alloc} series={series} bytes={len(text)}")
    print(f"scrape seconds: median={statistics.median(times):.4f} max={max(times):.4f} (n={args.repeat})")
    if args.promtool:
        promtool = shutil.which("promtool")
        if promtool is None:
            print("promtool: not on PATH (make prometheus-tools)")
            return 1
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        print(f"promtool check metrics: rc={r.returncode} findings={(r.stdout + r.stderr).decode().strip() or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
