"""Failover under load: REPLICAS x `xpod server` on one PostgreSQL, kill -9 of the leader every
INTERVAL seconds for ROUNDS rounds, CLIENTS submitting through the comma list meanwhile.

    .venv/bin/python bench/service_failover.py --rounds 20 --interval 8 --clients 32

What runs: a local PostgreSQL (Debian's package, fsync on), REPLICAS servers (each `xpod
server --store URL --listen` on a fixed loopback port, so a killed one comes back at the same
address, ``--lease-ttl`` as given), one `xpod agent` with simulated devices whose RUNNING
training tasks (real processes) must outlive every change of leader, and CLIENTS threads each
submitting jobs with its own request ids through ``--server a,b,c`` (the xpod client: on
UNAVAILABLE it retries the same request on the next replica). Each round kills the leader with
SIGKILL (its process group: front ends and core child too) and restarts it a second later, as a
supervisor would.

Prints a table and (``--json``) one JSON object: acknowledged, lost (acknowledged but not
stored, or stored under another job id: must be 0, checked in the database itself), duplicates (a request id stored or listed twice:
must be 0), acknowledged jobs missing from a replica's listing (its mirror of the event log:
must be 0), the time from each kill to the next acknowledged submission (p50, max), and
running tasks restarted (a task whose first process died or that started a second attempt:
must be 0). Exit 0 only when lost, duplicates and restarted are 0.

Targets (issue 13): 20 kills under 32-client load: 0 lost, 0 duplicates, 0 restarted, next ack
<= 10 s after each kill, p50 <= 5 s.
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
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TASK = os.path.join(REPO, "tests", "fixtures", "agent", "task.py")
BIN = os.path.dirname(sys.executable)
XPOD = os.path.join(BIN, "xpod")
RUNNING = 3  # xpod.v1.JobState JOB_STATE_RUNNING
sys.path.insert(0, HERE)

from agent_kill9 import _alive  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc(name: str) -> dict:
    return {
        "apiVersion": "xpod/v1",
        "kind": "BatchJob",
        "metadata": {"name": name},
        "spec": {"tasks": 1, "devices": {"count": 1}, "queue": "research"},
    }


def long_task(name: str, out: str) -> dict:
    """A training task that runs until the bench ends, on the agent's simulated device."""
    return {
        "apiVersion": "xpod/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "tasks": 1,
            "devices": {"count": 1, "model": "mthreads-s4000"},
            "queue": "research",
            "command": [sys.executable, TASK, out, "sleep", "3600"],
        },
    }


class Replica:
    def __init__(self, index: int, url: str, cluster: str, work: str, args: argparse.Namespace) -> None:
        self.index = index
        self.addr = f"127.0.0.1:{free_port()}"
        self.cmd = [
            XPOD,
            "server",
            "--cluster",
            cluster,
            "--store",
            url,
            "--listen",
            self.addr,
            "--lease-ttl",
            str(args.lease_ttl),
            "--cycle-interval",
            "0.2",
        ] + (["--frontends", str(args.frontends)] if args.frontends is not None else [])
        self.log = os.path.join(work, f"replica{index}.log")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ)
            )

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def leader_address(url: str) -> str | None:
    """The leader as the lease row says (only when the lease is live)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT address FROM leases WHERE name = 'scheduler' AND expires_at_s > extract(epoch from clock_timestamp())"
        ).fetchall()
    return rows[0][0] if rows else None


def wait_for(what: str, check, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default=os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml"))
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--interval", type=float, default=8.0, help="seconds between two kills of the leader")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tasks", type=int, default=4, help="long-running training tasks on the agent")
    ap.add_argument("--lease-ttl", type=float, default=3.0)
    ap.add_argument("--frontends", type=int, default=None, help="xpod server --frontends (default: its own)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if args.replicas < 2:
        ap.error("--replicas must be at least 2")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from xpod.runtime.client import Client, RpcFailure, Target
    from xpod.scheduler.store.pg_local import LocalPostgres

    console = Console(stderr=True)
    work = tempfile.mkdtemp(prefix="xpod-failover-")
    out = os.path.join(work, "tasks")
    os.makedirs(out)
    postgres = LocalPostgres.start()  # fsync on
    url = postgres.url
    replicas = [Replica(i, url, args.cluster, work, args) for i in range(args.replicas)]
    addrs = ",".join(r.addr for r in replicas)
    agent = None
    acked: dict[str, tuple[str, float]] = {}  # request id -> (job id, ack time, monotonic)
    sent: dict[str, dict] = {}
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    kills: list[float] = []
    try:
        for r in replicas:
            r.start()
            wait_for(f"replica {r.index}", lambda r=r: "listening on" in open(r.log).read(), 120)
        agent = subprocess.Popen(
            [
                XPOD,
                "agent",
                "--server",
                addrs,
                "--node",
                "bench-agent",
                "--state-dir",
                os.path.join(work, "agent-state"),
                "--sim-devices",
                f"mthreads-s4000:{args.tasks}",
                "--heartbeat-interval",
                "1",
            ],
            stdout=open(os.path.join(work, "agent.log"), "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for("the agent", lambda: "registered with" in open(os.path.join(work, "agent.log")).read(), 60)
        with Client(Target(addrs, None, None, "bench"), timeout_s=10, failover_s=120) as c:
            task_jobs = [c.submit(long_task(f"long-{i}", out), f"long-{i}").job.id for i in range(args.tasks)]
            wait_for(
                "the long tasks to run",
                lambda: (
                    all(os.path.exists(os.path.join(out, f"{j}.0.0.pids")) for j in task_jobs)
                    and all(c.get(j).job.state == RUNNING for j in task_jobs)
                ),
                120,
            )
        first_pids = {j: json.load(open(os.path.join(out, f"{j}.0.0.pids")))["self"] for j in task_jobs}

        def client(worker: int) -> None:
            with Client(Target(addrs, None, None, "bench"), timeout_s=10, failover_s=120) as c:
                i = 0
                while not stop.is_set():
                    rid = f"w{worker}-{i}"
                    d = doc(rid)
                    i += 1
                    with lock:
                        sent[rid] = d
                    try:
                        resp = c.submit(d, rid)
                    except RpcFailure as err:
                        failures.append(f"{rid}: {err}")
                        time.sleep(0.5)
                        continue
                    with lock:
                        acked[rid] = (resp.job.id, time.monotonic())

        threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(args.clients)]
        for t in threads:
            t.start()
        by_addr = {r.addr: r for r in replicas}
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("kills of the leader", total=args.rounds)
            for _ in range(args.rounds):
                time.sleep(args.interval)
                leader = wait_for("a leader", lambda: leader_address(url), 60)
                victim = by_addr[leader]
                victim.kill9()  # returns once the process group is gone: no reply can leave it after
                kills.append(time.monotonic())
                time.sleep(1.0)
                victim.start()  # a supervisor brings it back (as a follower)
                progress.advance(bar)
            time.sleep(args.interval)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        # the check, through any replica
        with Client(Target(addrs, None, None, "bench"), timeout_s=60, failover_s=120) as c:
            jobs = c.list()  # every page, through the client (a replica still starting is skipped)
            by_rid: dict[str, list[str]] = {}
            for j in jobs:
                by_rid.setdefault(j.request_id, []).append(j.id)
            # through the API (whichever replica answers: its mirror must hold every job) ...
            unlisted = [rid for rid, (jid, _) in acked.items() if by_rid.get(rid) != [jid]]
            listed_twice = [rid for rid, ids in by_rid.items() if len(ids) > 1]
        # ... and in the database itself, the source of truth
        import psycopg

        with psycopg.connect(url) as conn:
            stored: dict[str, list[str]] = {}
            for rid, jid in conn.execute("SELECT request_id, id FROM jobs").fetchall():
                stored.setdefault(rid, []).append(jid)
        lost = [rid for rid, (jid, _) in acked.items() if stored.get(rid) != [jid]]
        # (request_id is UNIQUE in the table, so a retry can never store a job twice there; a
        # replica's listing could still show one twice)
        duplicates = sorted({rid for rid, ids in stored.items() if len(ids) > 1} | set(listed_twice))
        with Client(Target(addrs, None, None, "bench"), timeout_s=60, failover_s=120) as c:
            states = {j: c.get(j).job.state for j in task_jobs}
        restarted = 0
        for j in task_jobs:
            second = os.path.exists(os.path.join(out, f"{j}.0.1.pids"))
            restarted += int(second or not _alive(first_pids[j]) or states[j] != RUNNING)
        ack_times = sorted(t for _, t in acked.values())
        gaps = []
        import bisect

        for k in kills:
            i = bisect.bisect_right(ack_times, k)
            gaps.append(ack_times[i] - k if i < len(ack_times) else float("inf"))
    finally:
        stop.set()
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
        for r in replicas:
            r.stop()
        postgres.stop()
    result = {
        "replicas": args.replicas,
        "clients": args.clients,
        "kills": len(kills),
        "interval_s": args.interval,
        "lease_ttl_s": args.lease_ttl,
        "sent": len(sent),
        "acknowledged": len(acked),
        "lost": len(lost),
        "duplicates": len(duplicates),
        "acknowledged_missing_from_a_replica_listing": len(unlisted),
        "client_errors_after_failover_budget": len(failures),
        "next_ack_after_kill_s": {
            "p50": round(percentile(gaps, 50), 2),
            "max": round(max(gaps), 2) if gaps else None,
            "each": [round(g, 2) for g in gaps],
        },
        "running_tasks": len(task_jobs),
        "running_tasks_restarted": restarted,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "logs": work,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        table = Table(
            title=f"kill -9 of the leader: {len(kills)} times, {args.replicas} replicas, {args.clients} clients"
        )
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in (
            "sent",
            "acknowledged",
            "lost",
            "duplicates",
            "acknowledged_missing_from_a_replica_listing",
            "client_errors_after_failover_budget",
        ):
            table.add_row(key.replace("_", " "), str(result[key]))
        table.add_row("next ack after a kill, p50 (s)", f"{result['next_ack_after_kill_s']['p50']:.2f}")
        table.add_row("next ack after a kill, max (s)", f"{result['next_ack_after_kill_s']['max']:.2f}")
        table.add_row("running tasks restarted", f"{restarted} of {len(task_jobs)}")
        table.add_row("load average (1 min)", f"{result['load_average_1m']:.2f}")
        Console().print(table)
        for line in failures[:5]:
            console.print(f"client error: {line}")
    ok = not lost and not duplicates and not unlisted and restarted == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
