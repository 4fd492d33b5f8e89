"""Agents at pod scale: one ``xpod server`` and one ``xpod agent --simulate`` of N CloudMatrix384
super-pods (48 nodes x 16 dies each), as users run them, on this machine.

    .venv/bin/python bench/agent_pod_scale.py [--pods 1,10,20] [--minutes 5] [--json]

For each size: a descriptor of N super-pods (the shape of examples/clusters/cloudmatrix384x2.yaml,
written to a temporary directory), ``xpod server`` with its defaults (front ends, the core in a
child process) and ``xpod agent --simulate`` of the same file. Then:

1. **registration**: seconds from the agent's start until ListNodes shows every node ready;
2. **submissions**: CLIENTS closed-loop gRPC submitters (bench/service_submit.py's) for SECONDS
   of one-node jobs (16 dies, ``simulate.duration_s: 3600``): durable submissions/s and p50/p99
   latency while the pod fills up; then topped up until ``5,000`` wait beyond the full pod;
3. **bound -> RUNNING**: for every bound job, the seconds from its SCHEDULED event to its RUNNING
   event (the agent started it and reported it), max and p99, and how many took over 10 s;
4. **liveness under load**: for ``--minutes`` with the pod full and 5,000 queued, ListNodes every
   second: the most nodes seen NotReady at once, and the jobs evicted for a node NotReady.

Issue 19's targets, for 20 super-pods (960 nodes, 15,360 dies): registration <= 10 s, 0 nodes
NotReady, every bound task RUNNING within 10 s, >= 500 submissions/s with p99 <= 100 ms. The 1-min
load average is printed at the start and the end of each size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import service_submit  # noqa: E402  (the submitters)

DIES_PER_NODE = 16
JOB = {"devices": {"count": DIES_PER_NODE, "model": "ascend-910c"}, "simulate": {"duration_s": 3600}}


def descriptor(pods: int) -> str:
    """N CloudMatrix384 super-pods: one super-node domain, 12 racks and one node group each."""
    lines = [
        "apiVersion: xpod/v1",
        "kind: Cluster",
        f"metadata: {{name: cm384x{pods}}}",
        "spec:",
        "  fabrics:",
        "    - {name: sio, plane: scale-up, link: SIO, tiers: [{tier: 1, name: die-pair, scope: package}]}",
        "    - name: ub",
        "      plane: scale-up",
        "      link: UB",
        "      tiers:",
        "        - {tier: 2, name: ub-l1, scope: node, bandwidth: 196GB/s}",
        "        - {tier: 3, name: ub-l2, scope: supernode, bandwidth: 196GB/s, latency: 1us}",
        "    - {name: rdma, plane: scale-out, link: RoCE, tiers: [{tier: 4, name: roce, scope: cluster, bandwidth: 200Gb/s}]}",
        "  topology:",
        "    levels: [supernode, rack, node]",
        "    domains:",
    ]
    for p in range(pods):
        lines.append(f'      - {{name: sp{p:02d}, level: supernode, hosts: "sp{p:02d}-n[00-47]"}}')
        for r in range(12):
            hosts = f"sp{p:02d}-n[{4 * r:02d}-{4 * r + 3:02d}]"
            lines.append(f'      - {{name: sp{p:02d}-r{r:02d}, level: rack, hosts: "{hosts}"}}')
    lines.append("  nodeGroups:")
    for p in range(pods):
        lines += [
            f"    - name: sp{p:02d}",
            f'      hosts: "sp{p:02d}-n[00-47]"',
            "      devices: {model: ascend-910c, packagesPerNode: 8}",
        ]
    groups = ", ".join(f"sp{p:02d}" for p in range(pods))
    lines += ["  pools:", f"    - {{name: default, nodeGroups: [{groups}], jobKinds: [training, serving, batch]}}"]
    return "\n".join(lines) + "\n"


def _start(cmd: list[str], log_path: str, ready: str, timeout_s: float = 120.0) -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while ready not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{' '.join(cmd[:3])} did not start: {open(log_path).read()[-2000:]}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its children (front ends, the core's child)."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _percentile(values: list[float], p: float) -> float:
    return service_submit.percentile(values, p) if values else float("nan")


def run_size(pods: int, args: argparse.Namespace, tmp: str) -> dict:
    from xpod.runtime.client import Client, Target, job_state

    nodes = 48 * pods
    path = os.path.join(tmp, f"cm384x{pods}.yaml")
    with open(path, "w") as f:
        f.write(descriptor(pods))
    load0 = os.getloadavg()[0]
    xpod = os.path.join(os.path.dirname(sys.executable), "xpod")
    server = _start(
        [xpod, "server", "--cluster", path, "--db", os.path.join(tmp, f"x{pods}.db"), "--listen", "127.0.0.1:0"],
        os.path.join(tmp, f"server{pods}.log"),
        "listening on",
    )
    addr = re.search(r"listening on (\S+?);", open(os.path.join(tmp, f"server{pods}.log")).read()).group(1)
    client = Client(Target(addr, None, None, "bench"), timeout_s=60)
    agent = None
    try:
        t0 = time.monotonic()
        agent = _start(
            [xpod, "agent", "--simulate", path, "--server", addr, "--state-dir", os.path.join(tmp, f"agent{pods}")],
            os.path.join(tmp, f"agent{pods}.log"),
            "xpod agent: simulating",
        )
        while sum(1 for n in client.list_nodes() if n.ready) < nodes:
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"{pods} super-pods: nodes not ready after 300 s")
            time.sleep(0.1)
        registration_s = time.monotonic() - t0

        cpu0 = (_cpu_s(server.pid), _cpu_s(agent.pid))
        lat, errors, shed, elapsed_s, _ = service_submit.run_client_processes(
            addr, args.clients, 2, 1.0, args.seconds, DIES_PER_NODE, spec_extra=JOB
        )
        submitted = len(client.list())
        want = nodes + args.queued
        doc = service_submit.document(0, DIES_PER_NODE, JOB)
        for i in range(submitted, want):  # top up: the pod full and QUEUED beyond it
            doc["metadata"]["name"] = f"top-{i}"
            client.submit(doc, f"top-{i}")
        # every bound job RUNNING (the agent started and reported it)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(client.list(states=("RUNNING",))) < nodes:
            time.sleep(0.5)
        to_running = []
        for job in client.list(states=("SCHEDULED", "RUNNING")):
            events = {e.type: e.time.ToNanoseconds() / 1e9 for e in client.get(job.id).events}
            names = {job_state_event(t): v for t, v in events.items()}
            if "RUNNING" in names and "SCHEDULED" in names:
                to_running.append(names["RUNNING"] - names["SCHEDULED"])
            else:
                to_running.append(float("inf"))
        # liveness with the pod full: NotReady nodes over the window
        not_ready_max, t_end = 0, time.monotonic() + 60 * args.minutes
        while time.monotonic() < t_end:
            not_ready_max = max(not_ready_max, sum(1 for n in client.list_nodes() if not n.ready))
            time.sleep(1.0)
        evicted = sum(
            1
            for job in client.list()
            for e in client.get(job.id).events
            if "NotReady" in e.message and job_state_event(e.type) == "EVICTED"
        )
        cpu1 = (_cpu_s(server.pid), _cpu_s(agent.pid))
        queued = len(client.list(states=("QUEUED",)))
        states = {}
        for job in client.list():
            states[job_state(job)] = states.get(job_state(job), 0) + 1
        return {
            "super_pods": pods,
            "nodes": nodes,
            "dies": nodes * DIES_PER_NODE,
            "load_average_1m_start": round(load0, 2),
            "registration_s": round(registration_s, 2),
            "submissions_per_s": round(len(lat) / elapsed_s, 1),
            "submit_latency_ms": {
                "p50": round(_percentile(lat, 50) * 1e3, 1),
                "p99": round(_percentile(lat, 99) * 1e3, 1),
            },
            "submit_errors": errors,
            "submit_shed": shed,
            "bound_to_running_s": {
                "p99": round(_percentile(to_running, 99), 2),
                "max": round(max(to_running, default=0.0), 2),
                "over_10s": sum(1 for x in to_running if x > 10),
                "jobs": len(to_running),
            },
            "queued_while_full": queued,
            "jobs_by_state": states,
            "watched_minutes": args.minutes,
            "not_ready_nodes_max": not_ready_max,
            "jobs_evicted_for_not_ready": evicted,
            "server_cpu_s": round(cpu1[0] - cpu0[0], 1),
            "agent_cpu_s": round(cpu1[1] - cpu0[1], 1),
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        }
    finally:
        client.close()
        if agent is not None:
            _stop(agent)
        _stop(server)


def job_state_event(value: int) -> str:
    from xpod.proto.xpod.v1 import types_pb2

    return types_pb2.JobEventType.Name(value).removeprefix("JOB_EVENT_TYPE_")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="1,10,20", help="super-pod counts, comma-separated (default 1,10,20)")
    ap.add_argument("--minutes", type=float, default=5.0, help="watch for NotReady nodes this long (default 5)")
    ap.add_argument("--clients", type=int, default=32, help="closed-loop submitters (default 32)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured submission window (default 10)")
    ap.add_argument("--queued", type=int, default=5000, help="jobs kept waiting beyond the full pod (default 5000)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()
    sizes = [int(x) for x in args.pods.split(",") if x]
    results = []
    with tempfile.TemporaryDirectory(prefix="xpod-podscale-") as tmp:
        for pods in sizes:
            results.append(run_size(pods, args, tmp))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [
        ("super-pods / nodes / dies", lambda r: f"{r['super_pods']} / {r['nodes']} / {r['dies']}"),
        ("load average 1m start / end", lambda r: f"{r['load_average_1m_start']} / {r['load_average_1m_end']}"),
        ("registration s (target <= 10)", lambda r: r["registration_s"]),
        ("durable submissions/s (target >= 500)", lambda r: r["submissions_per_s"]),
        ("submit p50 / p99 ms (target p99 <= 100)", lambda r: f"{r['submit_latency_ms']['p50']} / {r['submit_latency_ms']['p99']}"),
        ("bound -> RUNNING p99 / max s (target <= 10)", lambda r: f"{r['bound_to_running_s']['p99']} / {r['bound_to_running_s']['max']}"),
        ("bound jobs over 10 s to RUNNING", lambda r: f"{r['bound_to_running_s']['over_10s']} of {r['bound_to_running_s']['jobs']}"),
        ("queued while full", lambda r: r["queued_while_full"]),
        ("NotReady nodes max over the watch (target 0)", lambda r: r["not_ready_nodes_max"]),
        ("jobs evicted for NotReady", lambda r: r["jobs_evicted_for_not_ready"]),
        ("server / agent CPU s", lambda r: f"{r['server_cpu_s']} / {r['agent_cpu_s']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, cell in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{str(cell(r)):>16}" for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
