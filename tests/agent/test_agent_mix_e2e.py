"""Training and serving share one pod, for real (issue 14, item 6): under ``xpod up`` on this
host (the real service and agent, real processes on 3 simulated H100 devices), a stdlib-HTTP
serving replica (``fixtures/agent/mix_serve.py``, autoscaled on its tokens per second, which
the agent scrapes from its SGLang-named counters and reports with ReportLoad) and an elastic
2-task torch.distributed (gloo) training gang (``fixtures/agent/mix_train.py``) fill the node.
Load on the server makes the scheduler shrink the gang to 1 task for a second replica: the
training sees its notice file, checkpoints and stops, and starts again with WORLD_SIZE 1 from
the checkpoint; when the load goes the serving job scales down and the gang regrows to 2 tasks
from its checkpoint. No step is lost or repeated. Every wait is bounded and names what it
waited for; nothing here asserts a duration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request

from agent_harness import XPOD, cluster, wait_until  # noqa: F401 (cluster is a fixture)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "agent")
DEVICE = {"count": 1, "model": "nvidia-h100-sxm"}


def _attempts(out):
    path = out / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _starts(out, world):
    return [a for a in _attempts(out) if a["event"] == "start" and a["world"] == world]


class Load:
    """Requests to the replica's /generate, back to back, until ``stop()``."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/generate?tokens=100"
        self.done = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self.done.wait(0.02):
            try:
                opener.open(self.url, timeout=5).read()
                self.sent += 1
            except OSError:
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def test_serving_load_shrinks_training_which_checkpoints_and_regrows(cluster):
    state = cluster.tmp / "up"
    cluster.start(
        "up",
        [
            "up",
            "--listen",
            cluster.address,
            "--state-dir",
            str(state),
            "--no-simulate",
            "--sim-devices",
            "nvidia-h100-sxm:3",
        ],
    )
    wait_until(lambda: "Ctrl-C to stop" in cluster.log("up"), 60, "xpod up to be ready")
    ckpt = cluster.tmp / "ckpt"
    ckpt.mkdir()
    train = cluster.submit(
        "train",
        {
            "tasks": 2,
            "min_tasks": 1,
            "devices": DEVICE,
            "priority_class": "low",
            "grace_period_s": 60,
            "restart": {"max_restarts": 10},
            "command": [sys.executable, f"{FIXTURES}/mix_train.py", str(ckpt), str(cluster.out)],
        },
    )
    wait_until(lambda: _starts(cluster.out, 2), 120, "the 2-task training gang to start (rank 0's start line)")
    chat = cluster.submit(
        "chat",
        {
            "replicas": {"min": 1, "max": 2},
            "devices": DEVICE,
            "priority_class": "high",
            "grace_period_s": 10,
            "autoscale": {
                "metric": "tokens_per_s",
                "target_per_replica": 100,
                "scale_up_after_s": 0,
                "scale_down_after_s": 3,
                # the forecast rule's basis is the highest load of basis_s: a trough lasts
                # basis_s + scale_down_after_s before replicas go (the default 600 s is an hour's)
                "basis_s": 3,
            },
            "command": [sys.executable, f"{FIXTURES}/mix_serve.py", str(cluster.out)],
        },
        kind="ServingJob",
    )
    ready = cluster.out / f"{chat}.serve.0.json"
    wait_until(ready.exists, 120, "serving replica 0 to listen")
    load = Load(json.loads(ready.read_text())["port"])
    try:
        # the load needs 2 replicas; the node is full: the low-priority gang shrinks to 1 task
        wait_until(lambda: _starts(cluster.out, 1), 180, "the training to start again with WORLD_SIZE 1")
        wait_until(lambda: len(cluster.job(chat).allocations) == 2, 60, "the serving job to hold 2 replicas")
        wait_until(lambda: (cluster.out / f"{chat}.serve.1.json").exists(), 120, "serving replica 1 to listen")
        describe = subprocess.run(
            XPOD + ["job", "describe", chat, "--server", cluster.address],
            capture_output=True, text=True, timeout=60, env=cluster.env, cwd=str(cluster.tmp),
        )  # fmt: skip
        assert describe.returncode == 0, describe.stderr
        assert (
            "autoscale: demand " in describe.stdout and "tokens_per_s at a target of 100 per replica" in describe.stdout
        )
        assert "2 replica(s) wanted, 2 placed (min 1, max 2)" in describe.stdout, describe.stdout
    finally:
        load.stop()
    assert load.sent > 0
    # the trough lasts scale_down_after_s: replica 1 goes, the gang regrows to 2 tasks
    wait_until(lambda: len(_starts(cluster.out, 2)) >= 2, 180, "the training to regrow to WORLD_SIZE 2")
    wait_until(lambda: len(cluster.job(chat).allocations) == 1, 60, "the serving job to scale down to 1 replica")
    (cluster.out / "finish").write_text("")
    wait_until(lambda: cluster.state(train) == "SUCCEEDED", 120, "the training to finish")

    events = _attempts(cluster.out)
    kinds = [(e["event"], e["world"]) for e in events]
    assert kinds == [
        ("start", 2), ("checkpoint", 2), ("start", 1), ("checkpoint", 1), ("start", 2), ("done", 2),
    ], kinds  # fmt: skip
    for stopped in (e for e in events if e["event"] == "checkpoint"):
        assert stopped["notice"], stopped  # the notice file was there before SIGTERM was handled
    # nothing lost or repeated: each attempt resumes at the step its predecessor saved, and the
    # samples are exactly each step's world size summed
    for saved, resumed in zip(events[1::2], events[2::2]):
        assert (resumed["step"], resumed["samples"]) == (saved["step"], saved["samples"]), (saved, resumed)
    steps = [events[i + 1]["step"] - events[i]["step"] for i in (0, 2, 4)]
    assert all(s > 0 for s in steps), steps
    assert events[-1]["samples"] == 2 * steps[0] + 1 * steps[1] + 2 * steps[2], events
    job = cluster.job(train)
    assert job.restarts >= 2  # the shrink and the regrow, each a gang restart (stored)
    texts = [m for _, m in cluster.events(train)]
    assert any("shrunk" in t and t.startswith("restart ") for t in texts), texts
    assert any("regrown" in t and t.startswith("restart ") for t in texts), texts
    cluster.client.cancel(chat)
    wait_until(lambda: cluster.allocated_milli() == 0, 60, "the devices to be free after the cancel")
