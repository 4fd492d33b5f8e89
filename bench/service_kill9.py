"""Crash safety under load: ROUNDS x (start `xpod server`, CLIENTS threads submit, kill -9).

After the last round a fresh server on the same SQLite file must hold every acknowledged job
exactly once (same job id as acknowledged), no request id twice, and a retry of every
unacknowledged request (same id, same document) must create each at most once.

    .venv/bin/python bench/service_kill9.py --rounds 20 --clients 16

Prints one JSON object; exit 0 only with zero lost and zero duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from service_submit import REPO, start_server  # noqa: E402


def doc(name: str) -> dict:
    return {
        "apiVersion": "xpod/v1",
        "kind": "BatchJob",
        "metadata": {"name": name},
        "spec": {"tasks": 1, "devices": {"count": 1}, "queue": "research"},
    }


def _front_ends(pid: int) -> list:
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "xpod.scheduler.grpc.frontends" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def list_all(stub, jpb) -> list:
    jobs, token = [], ""
    while True:
        resp = stub.ListJobs(jpb.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
        jobs += list(resp.jobs)
        token = resp.next_page_token
        if not token:
            return jobs


def main() -> int:
    import grpc

    from xpod.proto.xpod.v1 import job_service_pb2 as jpb, job_service_pb2_grpc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default=os.path.join(REPO, "examples", "clusters", "cloudmatrix384.yaml"))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    acked: dict[str, str] = {}
    sent: dict[str, dict] = {}
    lock = threading.Lock()
    t_start = time.time()
    front_ends_seen = front_ends_left = 0
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "kill9.db")
        for rnd in range(args.rounds):
            proc, addr = start_server(args.cluster, db, ["--cycle-interval", "0.2"])
            stop = threading.Event()

            def client(worker: int, rnd: int = rnd, addr: str = addr) -> None:
                # a connection per client (not gRPC's shared one), so calls are in flight on
                # every front end when the kill comes
                with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                    stub = job_service_pb2_grpc.JobServiceStub(ch)
                    i = 0
                    while not stop.is_set():
                        rid = f"r{rnd}-w{worker}-{i}"
                        d = doc(f"k{rnd}-{worker}-{i}")
                        i += 1
                        req = jpb.SubmitJobRequest(request_id=rid)
                        req.job.update(d)
                        with lock:
                            sent[rid] = d
                        try:
                            resp = stub.SubmitJob(req, timeout=10)
                        except grpc.RpcError:
                            return
                        with lock:
                            acked[rid] = resp.job.id

            threads = [threading.Thread(target=client, args=(w,)) for w in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))  # kill at a random moment of the load
            fronts = _front_ends(proc.pid)
            front_ends_seen += len(fronts)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # the front ends go with the main process (PR_SET_PDEATHSIG, the relay closing)
            _, alive = psutil.wait_procs(fronts, timeout=5)
            front_ends_left += len(alive)
            for p in alive:
                p.kill()
            stop.set()
            for t in threads:
                t.join(timeout=60)
        proc, addr = start_server(args.cluster, db, [])
        try:
            with grpc.insecure_channel(addr) as ch:
                stub = job_service_pb2_grpc.JobServiceStub(ch)
                jobs = list_all(stub, jpb)
                by_rid: dict[str, list[str]] = {}
                for j in jobs:
                    by_rid.setdefault(j.request_id, []).append(j.id)
                lost = [rid for rid in acked if rid not in by_rid]
                moved = [rid for rid, jid in acked.items() if rid in by_rid and by_rid[rid] != [jid]]
                duplicates = [rid for rid, ids in by_rid.items() if len(ids) > 1]
                committed_unacked = sum(1 for rid in sent if rid not in acked and rid in by_rid)
                retried_created = 0
                for rid in sorted(set(sent) - set(acked)):
                    req = jpb.SubmitJobRequest(request_id=rid)
                    req.job.update(sent[rid])
                    resp = stub.SubmitJob(req, timeout=30)
                    retried_created += resp.created
                after = list_all(stub, jpb)
                rids_after = [j.request_id for j in after]
                duplicates_after = len(rids_after) - len(set(rids_after))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    result = {
        "rounds": args.rounds,
        "clients": args.clients,
        "sent": len(sent),
        "acknowledged": len(acked),
        "stored_after_crashes": len(jobs),
        "committed_but_unacknowledged": committed_unacked,
        "lost_acknowledged": len(lost),
        "acknowledged_with_other_id": len(moved),
        "duplicates": len(duplicates) + duplicates_after,
        "retries_created": retried_created,
        "retries_total": len(set(sent) - set(acked)),
        "front_ends_killed_with_the_server": front_ends_seen,
        "front_ends_left_running": front_ends_left,
        "wall_s": round(time.time() - t_start, 1),
    }
    print(json.dumps(result, indent=2))
    return 0 if not lost and not moved and not duplicates and not duplicates_after and not front_ends_left else 1


if __name__ == "__main__":
    sys.exit(main())
