"""How big ``xpod server``'s SQLite database grows with finished jobs, and what retention frees
(issue 18: a probe's database reached 642 MB after ~5,000 jobs because every event copied the
whole spec).

A real ``xpod server`` (SQLite, the embedded CloudMatrix384 descriptor, no agent: jobs stay
queued) is given ``--jobs`` jobs of ``--spec-kb`` KB each (an ``env`` of 1 KB values), each is
cancelled (so it has a SUBMITTED, a CANCELLED and possibly PENDING events), and the database is
measured: the file and its WAL on disk, and the bytes in use (pages minus free pages). With
``--retention S`` (servers that have the flag) it then waits until retention compacted every
finished job and measures again: SQLite reuses freed pages, the file does not shrink by itself.

    .venv/bin/python bench/store_size.py [--jobs 5000 --spec-kb 20] [--retention 2] [--json]

Prints a table (or JSON) with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sqlite3
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from service_submit import start_server  # noqa: E402


def in_use_bytes(db: str) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        page = conn.execute("PRAGMA page_size").fetchall()[0][0]
        pages = conn.execute("PRAGMA page_count").fetchall()[0][0]
        free = conn.execute("PRAGMA freelist_count").fetchall()[0][0]
        events = conn.execute("SELECT COUNT(*), COALESCE(SUM(length(job)), 0) FROM events").fetchall()[0]
    finally:
        conn.close()
    wal = db + "-wal"
    return {
        "file_mb": os.path.getsize(db) / 1e6,
        "wal_mb": (os.path.getsize(wal) if os.path.exists(wal) else 0) / 1e6,
        "in_use_mb": (pages - free) * page / 1e6,
        "events": events[0],
        "event_bytes_mb": events[1] / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--spec-kb", type=int, default=20)
    ap.add_argument("--retention", type=float, default=None, help="pass --retention Ns to the server and wait")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from xpod.runtime.client import Client, Target

    cluster = os.path.join(os.path.dirname(HERE), "hal", "clusters", "cloudmatrix384.yaml")
    env = {f"V{i}": "x" * 1000 for i in range(args.spec_kb)}
    out: dict = {"jobs": args.jobs, "spec_kb": args.spec_kb, "xpod": sys.executable}
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "size.db")
        extra = ["--frontends", "0"] + (["--retention", f"{args.retention:g}s"] if args.retention else [])
        proc, addr = start_server(cluster, db, extra)
        try:
            with Client(Target(addr, None, None, "bench"), timeout_s=120) as client:
                t0 = time.perf_counter()

                def one(i: int) -> None:
                    doc = {
                        "apiVersion": "xpod/v1",
                        "kind": "TrainingJob",
                        "metadata": {"name": f"j{i}"},
                        "spec": {"tasks": 1, "queue": "research", "devices": {"count": 1}, "env": env},
                    }
                    job = client.submit(doc, request_id=f"size-{i}").job
                    client.cancel(job.id)

                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    list(pool.map(one, range(args.jobs)))
                out["submit_cancel_s"] = time.perf_counter() - t0
                time.sleep(1.0)  # the last commits and a checkpoint pass
                out["finished"] = in_use_bytes(db)
                if args.retention:
                    deadline = time.monotonic() + 600
                    while time.monotonic() < deadline:
                        time.sleep(2.0)
                        now = in_use_bytes(db)
                        if now["events"] <= args.jobs:  # one event left per job
                            break
                    out["after_retention"] = in_use_bytes(db)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    out["load_1m"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"xpod: {out['xpod']}   jobs: {args.jobs} x {args.spec_kb} KB specs, each cancelled   load(1m) {out['load_1m']:.1f}"
    )
    print(f"{'state':<18}{'file MB':>10}{'WAL MB':>10}{'in use MB':>11}{'events':>9}{'event MB':>10}")
    for key in ("finished", "after_retention"):
        if key in out:
            r = out[key]
            print(
                f"{key:<18}{r['file_mb']:>10.1f}{r['wal_mb']:>10.1f}{r['in_use_mb']:>11.1f}{r['events']:>9}{r['event_bytes_mb']:>10.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
