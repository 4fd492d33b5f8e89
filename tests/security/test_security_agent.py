"""Issue 18: no control-plane secrets in workloads. A task printed ``XPOD_TOKEN=agent-token-...``
from the agent's environment, a job's PYTHONPATH ran inside the per-task supervisor, and an
agent's ``--token`` was readable in /proc/PID/cmdline. Real processes, started by the agent's
own executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from xpod.hal.errors import XpodError
from xpod.runtime.agent.agent import ProcessExecutor
from xpod.scheduler.contract import TaskAllocation, TaskWorld

XPOD = [sys.executable, "-m", "xpod"]


def _run_task(tmp_path, spec: dict) -> int:
    executor = ProcessExecutor("n1", [], str(tmp_path / "state"), grace_s=1.0)
    world = TaskWorld(0, 0, 1, 0, 1, "n1", 29500, None)
    handle = executor.start({"kind": "BatchJob", "spec": spec}, "job-1", TaskAllocation(0, ()), world, "127.0.0.1")
    deadline = time.monotonic() + 60
    while (code := handle.poll()) is None:
        assert time.monotonic() < deadline, "the task did not exit within 60 s"
        time.sleep(0.05)
    handle.close(code)
    return code


def test_a_task_sees_its_job_env_and_xpods_variables_never_the_agents(tmp_path, monkeypatch):
    monkeypatch.setenv("XPOD_TOKEN", "agent-token-that-must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-credential")
    out = tmp_path / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    code = _run_task(tmp_path, {"command": [sys.executable, "-c", dump], "env": {"HF_HOME": "/data/hf"}})
    assert code == 0
    env = json.loads(out.read_text())
    assert "XPOD_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not any("agent-token" in v or "agent-credential" in v for v in env.values())
    assert env["HF_HOME"] == "/data/hf" and env["XPOD_JOB_ID"] == "job-1" and env["RANK"] == "0"
    assert "PATH" in env


def test_the_supervisor_never_runs_the_jobs_python_environment(tmp_path):
    """A job's PYTHONPATH with a sitecustomize: the task (a shell here) gets the variable, the
    supervisor (python -I, empty environment) imports nothing from it."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "supervisor-was-hijacked"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    out = tmp_path / "pp.txt"
    spec = {"command": ["/bin/sh", "-c", f'printf %s "$PYTHONPATH" > {out}'], "env": {"PYTHONPATH": str(evil)}}
    assert _run_task(tmp_path, spec) == 0
    assert out.read_text() == str(evil)
    assert not marker.exists()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {**os.environ, "XPOD_CONFIG": "/nonexistent/xpod.yaml", "XPOD_TOKEN": "", "XPOD_SERVER": ""}
    return subprocess.run([*XPOD, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})})


def test_the_agent_takes_no_token_on_its_command_line(tmp_path):
    r = _cli("agent", "--token", "agent-token-0123456789", "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "--token-file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_token_file_others_can_read_is_refused(tmp_path, mode):
    from xpod.runtime.client import read_token_file

    path = tmp_path / "token"
    path.write_text("agent-token-0123456789\n")
    os.chmod(path, mode)
    with pytest.raises(XpodError, match="chmod 600"):
        read_token_file(str(path))
    os.chmod(path, 0o600)
    assert read_token_file(str(path)) == "agent-token-0123456789"
    os.chmod(path, mode)
    r = _cli("agent", "--token-file", str(path), "--server", "127.0.0.1:1", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1 and "chmod 600" in r.stderr and "Traceback" not in r.stderr
    r = _cli("jobs", "--token-file", str(path), "--server", "127.0.0.1:1")
    assert r.returncode == 1 and "chmod 600" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("job_id", ["../../etc", "/etc", "job-1/../../x", "..", "job-x"])
def test_logs_accepts_job_ids_only(tmp_path, job_id):
    """``xpod logs`` followed relative and absolute ids out of the state directory."""
    r = _cli("logs", job_id, "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "is not a job id" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
        + "server: *i\n",
        "server: &s [*s]\n",
    ],
    ids=["billion-laughs", "recursive-alias"],
)
def test_the_clients_config_loader_has_the_cluster_loaders_guards(tmp_path, text):
    """A billion-laughs file pinned the client at 100 % CPU; a recursive alias gave a traceback."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    r = _cli("jobs", "--timeout", "1", env={"XPOD_CONFIG": str(path)})
    assert r.returncode == 1 and str(path) in r.stderr and "Traceback" not in r.stderr
    assert "YAML alias" in r.stderr


def test_xpod_up_is_never_open_and_its_files_are_owner_only(tmp_path):
    """The open loopback default let any local user submit a job that ran as the agent's user;
    the database, WAL and task logs were 0644 though they hold env secrets."""
    import re
    import signal
    import stat

    from xpod.runtime.client import Client, RpcFailure, Target

    state = tmp_path / "up-state"
    env = {**os.environ, "HOME": str(tmp_path), "XPOD_CONFIG": "/nonexistent/xpod.yaml", "XPOD_TOKEN": ""}
    env.pop("XPOD_STATE_DIR", None)
    log = open(tmp_path / "up.log", "w")
    p = subprocess.Popen(
        [*XPOD, "up", "--no-local", "--listen", "127.0.0.1:0", "--state-dir", str(state)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (m := re.search(r"scheduler on (127\.0\.0\.1:\d+)", (tmp_path / "up.log").read_text())):
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        addr = m.group(1)
        with Client(Target(addr, None, None, "test"), timeout_s=10, failover_s=0) as anonymous:
            with pytest.raises(RpcFailure) as err:
                anonymous.list()
            assert err.value.code == "UNAUTHENTICATED"
        r = subprocess.run([*XPOD, "jobs", "--server", addr], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr  # the local CLI found the admin token by itself
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("xpod.db", "admin-token", "tokens.yaml"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert "admin-token" not in (state / "tokens.yaml").read_text().split("\n", 1)[1]
        assert (state / "admin-token").read_text().strip() not in (state / "tokens.yaml").read_text()
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
        log.close()
