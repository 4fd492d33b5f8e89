"""What gRPC alone costs here: a ``grpc.aio`` server whose SubmitJob returns a constant reply
(no auth, no parsing, no store), driven by the same 32 clients as ``bench/service_submit.py``.

    .venv/bin/python bench/grpc_floor.py --clients 32 --seconds 8

Prints calls/s, latency percentiles and the CPU per call of the server and of the clients: the
floor under ``xpod server``'s figures on this machine, and why its front ends
(``scheduler/grpc/frontends.py``) take gRPC's per-call work off the main process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


async def _serve() -> None:
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2

    reply = job_service_pb2.SubmitJobResponse(created=True).SerializeToString()

    async def submit(request: bytes, context) -> bytes:
        return reply

    server = grpc.aio.server()
    handlers = {"SubmitJob": grpc.unary_unary_rpc_method_handler(submit)}  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("xpod.v1.JobService", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--client-processes", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return 0
    import psutil

    from service_submit import percentile, run_client_processes

    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        addr = f"127.0.0.1:{proc.stdout.readline().strip()}"
        server = psutil.Process(proc.pid)
        cpu0, t0 = sum(server.cpu_times()[:2]), time.perf_counter()
        lat, errors, _, elapsed, client_cpu_s = run_client_processes(
            addr, args.clients, args.client_processes, args.warmup, args.seconds, 0
        )
        server_cpu_s = (sum(server.cpu_times()[:2]) - cpu0) * elapsed / (time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()
    n = max(1, len(lat))
    print(
        json.dumps(
            {
                "clients": args.clients,
                "calls_per_s": round(len(lat) / elapsed, 1),
                "latency_ms": {p: round(percentile(lat, q) * 1e3, 2) for p, q in (("p50", 50), ("p99", 99))},
                "errors": errors,
                "server_cpu_us_per_call": round(server_cpu_s / n * 1e6),
                "client_cpu_us_per_call": round(client_cpu_s / n * 1e6),
                "load_average_1m": round(os.getloadavg()[0], 2),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
