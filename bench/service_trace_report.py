"""Summarise a submit-path timeline written by a debug run of the server (scheduler/trace.py).

    rm -f /tmp/xpod-trace.tsv*
    XPOD_TRACE=/tmp/xpod-trace.tsv .venv/bin/python bench/service_submit.py --clients 32 --seconds 10
    .venv/bin/python bench/service_trace_report.py /tmp/xpod-trace.tsv

Prints, over the measured window only (the clients' ``run`` requests), percentiles of: the
clients' latency; the server's SubmitJob handler (entered -> write queued -> commit awaited ->
response built); each group commit's phases (BEGIN, applying rows, COMMIT = the fsync, the
API's mirror, resolving futures), split by whether the batch carried scheduling-lane writes;
the writer's idle gaps; event-loop lag; cyclic-GC passes per process and generation. The gap
between the clients' latency and the handler's is time spent in gRPC's own machinery, the
network stack and waiting for a core, none of which the handler sees.
"""

from __future__ import annotations

import argparse
import glob
import sys


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:34s} n=0"
    return (
        f"{name:34s} n={len(values):6d}  p50 {pct(values, 50) * 1e3:7.2f}  p90 {pct(values, 90) * 1e3:7.2f}  "
        f"p99 {pct(values, 99) * 1e3:7.2f}  max {max(values) * 1e3:7.2f} ms"
    )


def report(path: str) -> list[str]:
    """The report's lines for the server timeline at ``path`` and its ``.client*`` files."""
    rows = [ln.rstrip("\n").split("\t") for ln in open(path, encoding="utf-8") if ln.strip()]
    client: list[tuple[float, float]] = []
    for f in sorted(glob.glob(path + ".client*")):
        client += [
            (float(a), float(b)) for _, a, b in (ln.rstrip("\n").split("\t") for ln in open(f, encoding="utf-8"))
        ]
    if not client:
        raise SystemExit(f"{path}.client*: no client rows; run bench/service_submit.py with XPOD_TRACE={path}")
    t0 = min(c[0] for c in client)
    t1 = max(c[0] + c[1] for c in client)

    def rows_of(kind: str) -> list[list[float]]:
        return [[float(v) for v in r[1:]] for r in rows if r[0] == kind and t0 <= float(r[1]) <= t1]

    batches, submits, lags = rows_of("batch"), rows_of("submit"), rows_of("lag")
    gcs = [g if len(g) > 3 else g + [-1.0] for g in rows_of("gc")]  # older traces had no pid
    out = [
        f"window {t1 - t0:.1f} s: {len(client)} client requests, {len(submits)} handled, {len(batches)} group commits",
        line("client latency", [c[1] for c in client]),
        line("server handler (entered->built)", [s[3] - s[0] for s in submits]),
        line("  checks + queue the write", [s[1] - s[0] for s in submits]),
        line("  wait for the commit", [s[2] - s[1] for s in submits]),
        line("  build the response", [s[3] - s[2] for s in submits]),
    ]
    for label, sel in (
        ("all", batches),
        ("with scheduling lane", [b for b in batches if b[7] > 0]),
        ("front lane only", [b for b in batches if b[7] == 0]),
    ):
        out.append(f"group commits, {label}: {len(sel)}")
        if sel:
            out += [
                line("  BEGIN", [b[1] - b[0] for b in sel]),
                line("  apply rows", [b[2] - b[1] for b in sel]),
                line("  COMMIT (fsync)", [b[3] - b[2] for b in sel]),
                line("  mirror + acks", [b[5] - b[3] for b in sel]),
                line("  total", [b[5] - b[0] for b in sel]),
            ]
    if batches:
        front = [b[6] for b in batches]
        out.append(
            f"batch size (front lane): p50 {pct(front, 50):.0f}  p99 {pct(front, 99):.0f}  max {max(front):.0f}; "
            f"scheduling-lane writes max {max(b[7] for b in batches):.0f} per batch"
        )
        out.append(
            line("writer idle between commits", [batches[i + 1][0] - batches[i][5] for i in range(len(batches) - 1)])
        )
    out.append(line("commit acked -> loop runs the wake-up", [d[1] - d[0] for d in rows_of("drain")]))
    out.append(
        line("event-loop lag over 2 ms", [lag[1] for lag in lags]) + f"  (sum {sum(lag[1] for lag in lags):.2f} s)"
    )
    for pid in sorted({int(g[3]) for g in gcs}):
        for gen in (0, 1, 2):
            v = [g[1] - g[0] for g in gcs if int(g[3]) == pid and int(g[2]) == gen]
            if v:
                out.append(line(f"gc pid {pid} gen {gen}", v) + f"  (sum {sum(v) * 1e3:.0f} ms)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="the XPOD_TRACE file of a bench/service_submit.py run")
    args = ap.parse_args()
    print("\n".join(report(args.trace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
