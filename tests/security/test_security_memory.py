"""Issue 18, bounded memory: 25 WatchJobs streams that stop reading, over 100 jobs of 200 KB
(20 MB of specs), against a real ``xpod server`` process. Before, each stream held 500 events
with their specs (25 such streams over 500 x 200 KB jobs took the server from 672 MiB to
3.6 GB). Stated bound: the server's RSS stays below 640 MiB here (bench/security.py measures
the issue's full 100 MB case)."""

from __future__ import annotations

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOUND_MIB = 640


def test_stalled_watches_hold_a_bounded_amount_of_server_memory():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    try:
        import security as bench
        from service_submit import start_server
    finally:
        sys.path.pop(0)
    from xpod.runtime.client import Client, Target

    cluster = os.path.join(REPO, "hal", "clusters", "cloudmatrix384.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr = start_server(cluster, os.path.join(tmp, "m.db"), ["--frontends", "0"])
        try:
            with Client(Target(addr, None, None, "test"), timeout_s=60) as client:
                got = bench.stalled_watches(client, addr, proc.pid, jobs=100, spec_kb=200, watches=25)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert got["watches"] == 25 and got["spec_mb"] == 20
    assert got["rss_peak_mib"] < BOUND_MIB, got
