"""The timing-dependent tests, again and again, beside a CPU-heavy process (issue 19, item 9).

    .venv/bin/python bench/tests_under_load.py [--runs 20] [--hogs 2] [TEST ...]

Starts HOGS processes that spin on a core each (what a `stress --cpu N` does), then runs each
TEST (a pytest node id; default: the service's and the agents' tests that wait on real
processes, heartbeats or time) RUNS times in a row, each run its own pytest process, and
prints how many passed, with the 1-min load average. A test that depends on timing fails here
long before it fails in CI.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

DEFAULT_TESTS = (
    "tests/agent/test_agent_processes.py::test_scheduler_restart_loses_and_kills_nothing",
    "tests/agent/test_agent_processes.py",
    "tests/agent/test_agent_dies.py",
    "tests/agent/test_agent_up_cli.py",
    "tests/agent/test_agent_liveness.py",
    "tests/service/test_service_aio.py",
    "tests/service/test_service_frontends.py",
    "tests/service/test_service_integration.py",
)


def _spin() -> None:
    while True:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tests", nargs="*", default=list(DEFAULT_TESTS), help="pytest node ids (default: see above)")
    ap.add_argument("--runs", type=int, default=20, help="runs of each test in a row (default 20)")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="spinning processes (default: one per core)")
    args = ap.parse_args()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    failed = 0
    try:
        for test in args.tests:
            passed, t0 = 0, time.monotonic()
            for i in range(args.runs):
                r = subprocess.run(
                    [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                    capture_output=True,
                    text=True,
                )
                if r.returncode == 0:
                    passed += 1
                else:
                    print(f"{test}: run {i + 1} FAILED\n{r.stdout[-3000:]}", flush=True)
            failed += args.runs - passed
            print(
                f"{test}: {passed}/{args.runs} passed in {time.monotonic() - t0:.0f} s "
                f"beside {args.hogs} spinning processes (load average 1m {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    finally:
        for h in hogs:
            h.terminate()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
