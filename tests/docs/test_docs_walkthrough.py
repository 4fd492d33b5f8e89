"""The README's five-minute walkthrough, run as written against a real `xpod up`.

The commands come from README.md between the `<!-- walkthrough:... -->` markers, so the README
and this test cannot drift; docs/getting-started.md must carry the same blocks. What differs
from a person at a terminal, and why:

* `xpod up` gets `--listen 127.0.0.1:0` and its `--metrics` port becomes 0 (the README's fixed
  ports would collide between test runs on one machine); the steps' metrics address is the one
  `xpod up` prints, and `XPOD_SERVER` points the clients at the gRPC address it prints (what
  they would reach by default at 127.0.0.1:7070).
* The job's `train.py` first waits until the test says go, which it does once job-2 is
  cancelled: the README promises job-2 waits behind job-1 until `xpod cancel job-2`, and on a
  CPU-starved machine the CLI steps before it took longer than job-1's 15 s.
* The steps run in a fresh folder, with HOME in the temp dir (no ~/.config/xpod/config.yaml of
  the machine's user), `.venv/bin` first on PATH (what `source .venv/bin/activate` does), and
  `bash -e`: the first command that fails stops the walkthrough.

Every wait is bounded and fails with what the processes printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from docs_paths import REPO

BIN = os.path.dirname(sys.executable)
START_TIMEOUT_S = 120  # xpod up on a loaded 2-core machine: seconds, not minutes
STEPS_TIMEOUT_S = 240  # the walkthrough's script sleeps 15 s; the rest is CLI start-up


def walkthrough(path: str) -> tuple[str, str]:
    """(the server command, the steps script) between the markers of ``path``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def block(marker: str) -> str:
        m = re.search(re.escape(f"<!-- walkthrough:{marker} -->") + r"\s*```sh\n(.*?)```", text, re.S)
        assert m, f"{path}: no ```sh block right after <!-- walkthrough:{marker} -->"
        return m.group(1)

    server = block("server").strip()
    steps = block("steps")
    assert re.search(r"```\s*<!-- walkthrough:end -->", text), (
        f"{path}: the steps block must end at <!-- walkthrough:end -->"
    )
    assert "\n" not in server, f"{path}: the server block must be one command, got {server!r}"
    return server, steps


class _Output:
    """A process's merged output, collected by a thread so a wait never blocks on the pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


def test_readme_and_getting_started_carry_the_same_walkthrough():
    readme = walkthrough(os.path.join(REPO, "README.md"))
    guide = walkthrough(os.path.join(REPO, "docs", "getting-started.md"))
    assert readme == guide, "docs/getting-started.md's walkthrough differs from README.md's: copy the README's blocks"
    readme_lines = open(os.path.join(REPO, "README.md"), encoding="utf-8").read().count("\n")
    assert readme_lines <= 200, f"README.md has {readme_lines} lines; keep it <= 200 and move the rest to docs/"


def test_readme_walkthrough_runs_as_written(tmp_path):
    server_cmd, steps = walkthrough(os.path.join(REPO, "README.md"))
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    # a reader's environment, but xpod up still ends with this test process (tests/conftest.py)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPOD_") or k == "XPOD_EXIT_WITH_PID"}
    env.update(HOME=str(home), PATH=BIN + os.pathsep + env.get("PATH", os.defpath), PYTHONUNBUFFERED="1")

    readme_metrics = re.search(r"--metrics (\S+)", server_cmd)
    assert readme_metrics, f"the walkthrough's xpod up has no --metrics: {server_cmd!r}"
    argv = server_cmd.replace(readme_metrics.group(1), "127.0.0.1:0").split() + ["--listen", "127.0.0.1:0"]
    assert argv[0] == "xpod", argv
    up = subprocess.Popen(
        [os.path.join(BIN, "xpod"), *argv[1:]],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = _Output(up)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ctrl-C to stop" not in out.text():
            assert up.poll() is None, f"xpod up exited with {up.returncode}:\n{out.text()}"
            assert time.monotonic() < deadline, f"xpod up not ready within {START_TIMEOUT_S} s:\n{out.text()}"
            time.sleep(0.2)
        grpc_addr = re.search(r"scheduler on (\S+) ", out.text()).group(1)
        metrics_addr = re.search(r"metrics on http://([^/\s]+)/metrics", out.text()).group(1)
        env["XPOD_SERVER"] = grpc_addr

        script = steps.replace(readme_metrics.group(1), metrics_addr)
        go = tmp_path / "go"
        assert "import os, time\n" in script, "train.py changed: update the test's hold on job-1"
        script = script.replace(
            "import os, time\n", f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.2)\n", 1
        )
        steps_run = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-x", "-c", script],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        from xpod.runtime.client import Client, RpcFailure, Target, job_state

        # xpod up is never open: the test reads its admin token as the CLI does
        token = (work / "xpod-state" / "admin-token").read_text().strip()
        client = Client(Target(grpc_addr, token, None, "walkthrough test"), timeout_s=60)
        try:
            deadline = time.monotonic() + STEPS_TIMEOUT_S
            while not go.exists() and steps_run.poll() is None and time.monotonic() < deadline:
                try:
                    jobs = {j.id: job_state(j) for j in client.list()}
                except RpcFailure:  # a starved server: the steps' own commands say if it stays so
                    jobs = {}
                if jobs.get("job-2") == "CANCELLED":
                    go.touch()  # job-1 may run its 15 steps now
                time.sleep(0.5)
        finally:
            client.close()
        try:
            stdout, stderr = steps_run.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            steps_run.kill()
            stdout, stderr = steps_run.communicate()
            raise AssertionError(
                f"the walkthrough did not finish within {STEPS_TIMEOUT_S} s:\n{stdout}\n{stderr}\nxpod up:\n{out.text()}"
            ) from None
        run = subprocess.CompletedProcess(steps_run.args, steps_run.returncode, stdout, stderr)
        shown = f"stdout:\n{run.stdout}\nstderr (each command after '+'):\n{run.stderr}\nxpod up:\n{out.text()}"
        assert run.returncode == 0, f"a walkthrough command failed (exit {run.returncode}):\n{shown}"

        # What the walkthrough promises the reader, in its own output
        assert "job-1 submitted" in run.stdout and "job-2 submitted" in run.stdout, shown
        describe = run.stdout[run.stdout.index("Job:       job-2") :]
        assert re.search(r"State:\s+QUEUED", describe), f"job-2 was not waiting when described:\n{shown}"
        assert re.search(r"Pending:\s+\S", describe), f"no pending reason for job-2:\n{shown}"
        assert "step 14" in run.stdout and "task 0 exited with code 0" in run.stdout, shown
        assert "xpod_scheduler_submitted_jobs_total" in run.stdout, shown

        # ... and the scheduler's own account of it: job-1 succeeded, job-2 was cancelled
        deadline = time.monotonic() + 60
        while True:
            listed = subprocess.run(
                [os.path.join(BIN, "xpod"), "jobs", "-o", "json"], env=env, capture_output=True, text=True, timeout=60
            )
            assert listed.returncode == 0, listed.stderr
            states = {j["id"]: j["state"] for j in json.loads(listed.stdout)}
            if states.get("job-1") == "SUCCEEDED" and states.get("job-2") == "CANCELLED":
                break
            assert time.monotonic() < deadline, f"jobs did not end as the walkthrough says: {states}\n{shown}"
            time.sleep(0.5)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(timeout=10)
    assert up.returncode == 0, f"xpod up did not stop cleanly on SIGTERM (exit {up.returncode}):\n{out.text()}"
