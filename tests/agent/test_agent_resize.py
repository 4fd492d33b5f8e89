"""The node agent's side of a resize and of a stop with notice, on real processes (no server: a
``NodeRuntime`` is handed the assignments the scheduler would send).

* An elastic training gang shrunk from 2 tasks to 1 and regrown: the task that goes and the task
  whose world changed both get their ``XPOD_PREEMPT_NOTICE`` file touched and SIGTERM; the
  remaining task starts again with WORLD_SIZE 1 only after the old world has ended, and both
  start again with WORLD_SIZE 2 at the regrow.
* A preempted task that ignores SIGTERM keeps its job's long ``grace_period_s``, but a cancel
  arriving meanwhile ends it within the agent's own grace.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from agent_harness import pid_alive, task_command, wait_until

from xpod.runtime.agent.agent import Agent, LocalDevice, NodeRuntime, NodeSpec, ProcessExecutor
from xpod.scheduler.contract import Assignment, TaskAllocation

NODE = "n0"


@pytest.fixture
def node(tmp_path):
    devices = tuple(LocalDevice(i, "cpu", "cpu", 0, True) for i in range(2))
    runtime = NodeRuntime(NodeSpec(NODE, devices), ProcessExecutor(NODE, devices, str(tmp_path / "state")))
    agent = Agent(None, [runtime], grace_s=1.0)
    out = tmp_path / "out"
    out.mkdir()
    yield runtime, agent, out
    for run in list(runtime.runs.values()):  # whatever a failed test left running
        agent._stop_run(run)
    for f in out.glob("*.pids"):
        for pid in json.loads(f.read_text()).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def assignment(tasks, command, state="RUNNING", run=True, grace_s=5):
    doc = {"kind": "TrainingJob", "spec": {"command": command, "grace_period_s": grace_s}}
    allocs = tuple(TaskAllocation(t, (f"{NODE}/{t}",)) for t in tasks)
    placed = tuple((t, NODE) for t in tasks)
    return Assignment(NODE, "job-1", run, allocs, doc, "default", "TrainingJob", placed, state=state)


def drive(runtime, agent, done, what):
    """The agent's loop (reap, resume) until ``done()``."""

    def step():
        runtime.reap()
        runtime.resume(agent._stopper)
        return done()

    return wait_until(step, 60, what)


def world(out, task, attempt):
    return json.loads((out / f"job-1.{task}.{attempt}.world").read_text())


def test_shrink_restarts_the_gang_with_the_new_world_size_after_a_notice(node):
    runtime, agent, out = node
    command = task_command(out, "sleep", "600", "on-term-note")
    runtime.assign(assignment([0, 1], command), agent._stopper)
    drive(runtime, agent, lambda: all((out / f"job-1.{t}.0.world").exists() for t in (0, 1)), "both tasks to start")
    assert world(out, 0, 0)["WORLD_SIZE"] == world(out, 1, 0)["WORLD_SIZE"] == "2"

    runtime.assign(assignment([0], command), agent._stopper)  # shrunk to task 0
    drive(runtime, agent, lambda: (out / "job-1.0.1.world").exists(), "task 0 to start again")
    for t in (0, 1):  # both old tasks saw their notice file before SIGTERM reached them
        assert json.loads((out / f"job-1.{t}.0.term").read_text()) == {"notice": True}
    assert world(out, 0, 1) == {**world(out, 0, 0), "WORLD_SIZE": "1"}
    assert not (out / "job-1.1.1.world").exists()
    # the new attempt's notice file is gone until its own stop
    assert not os.path.exists(runtime.runs["job-1"].tasks[0].notice)

    runtime.assign(assignment([0, 1], command), agent._stopper)  # regrown
    drive(runtime, agent, lambda: (out / "job-1.0.2.world").exists() and (out / "job-1.1.1.world").exists(), "regrow")
    assert world(out, 0, 2)["WORLD_SIZE"] == world(out, 1, 1)["WORLD_SIZE"] == "2"
    assert json.loads((out / "job-1.0.1.term").read_text()) == {"notice": True}


def test_a_cancel_cuts_a_preemption_grace_short(node):
    runtime, agent, out = node
    command = task_command(out, "sleep", "600", "ignore-term")
    runtime.assign(assignment([0], command, grace_s=600), agent._stopper)
    drive(runtime, agent, lambda: (out / "job-1.0.0.pids").exists(), "the task to start")
    pid = json.loads((out / "job-1.0.0.pids").read_text())["self"]
    notice = runtime.runs["job-1"].tasks[0].notice
    runtime.assign(assignment([], command, state="QUEUED", run=False, grace_s=600), agent._stopper)  # preempted
    wait_until(lambda: os.path.exists(notice), 30, "the notice file")
    assert json.loads(open(notice).read())["grace_period_s"] == 600
    [(_, stopping)] = runtime.stopping["job-1"]
    stopping.join(2.0)
    assert pid_alive(pid) and stopping.is_alive(), "the task ignoring SIGTERM keeps its 600 s grace"
    runtime.assign(assignment([], command, state="CANCELLED", run=False, grace_s=600), agent._stopper)
    wait_until(lambda: not pid_alive(pid), 30, "the cancelled task to be killed within the agent's grace")
    stopping.join(30)
    assert not stopping.is_alive()
