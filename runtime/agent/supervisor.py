"""A task's supervisor: the one process between the node agent and a task, so tasks never
outlive their agent.

Run by ``runtime.agent.agent.ProcessExecutor`` as ``python -I -S supervisor.py AGENT_PID GRACE_S
-- ARGV...`` in a new session (the supervisor's pid is the task's process-group id), with an empty
environment: the task's environment arrives as one JSON object on stdin (read to its end before
anything else) and is given to the task's exec only, so nothing of the job (PYTHONPATH,
LD_PRELOAD, ...) runs inside the supervisor. The task's stdin is /dev/null. Stdlib only, no
``site``: it starts in a few tens of milliseconds and never imports xpod. Contracts (Linux):

* **The agent dies -> the task's whole process group ends.** The supervisor asks the kernel for
  ``SIGHUP`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that its parent is
  still ``AGENT_PID`` (the agent may have died before the request took effect). On that signal,
  or if the parent is already gone, it sends SIGTERM to its process group, waits up to
  ``GRACE_S`` for every member to exit, then SIGKILLs the group, and exits. The kernel's notion
  of "parent" is the *thread* that started the supervisor: an agent starts tasks from its
  long-lived run thread, which lives exactly as long as the agent.
* **Descendants are reaped here.** The supervisor is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``): a grandchild whose parent exits is re-parented to it, not to
  init, so it still belongs to the task and is waited for.
* **The task exits -> its leftovers end too.** When the task (the supervisor's direct child)
  exits and members of its group remain (children it left behind), they get SIGTERM, then
  SIGKILL after ``GRACE_S``; then the supervisor exits with the task's code (a signal N reads
  as 128 + N, as a shell reports it).
* **A stop from the agent** (SIGTERM to the group, SIGKILL after the agent's grace) reaches the
  task directly; the supervisor ignores SIGTERM (through a handler, so the task does not inherit
  an ignored signal) and exits once the task has.
* **The supervisor is killed outright** (``kill -9``, the OOM killer) -> the task gets SIGKILL
  from the kernel (its own ``PR_SET_PDEATHSIG``), so it is never left running with no one to stop it.
* Exit code 127 with a message on stderr when the command cannot be started.

Members are found in ``/proc`` (same process group, or re-parented here) and signalled by pid,
so a descendant that called ``setsid()`` still ends as long as its parent chain reaches the
supervisor; one that double-forked out of a new session is beyond reach (as for any
process-group based stop).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
DEATH_SIGNAL = signal.SIGHUP  # the kernel sends it when the agent dies
POLL_S = 0.05


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: the agent's restart still reaps leftovers
        return False


def _members() -> set[int]:
    """Other live processes of this task: members of this process group, and children re-parented
    here that left it (from /proc; zombies excluded, they are reaped instead)."""
    me, group = os.getpid(), os.getpgrp()
    out = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if state != "Z" and (pgrp == group or ppid == me):
            out.add(int(name))
    return out


def _reap_all() -> None:
    """Wait for every exited child without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _end_members(grace_s: float) -> None:
    """SIGTERM every other member of the task, wait up to ``grace_s`` for them, SIGKILL the rest.
    Signalled by pid, not ``killpg``: the supervisor must outlive them to report the task's code."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait_s
        signalled: set[int] = set()
        while True:
            _reap_all()
            live = _members()
            if not live:
                return
            for pid in live - signalled:  # new members (forked meanwhile) get the signal too
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            signalled |= live
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)


def _read_env() -> dict[str, str]:
    """The task's environment from stdin (a JSON object of strings; empty stdin: none), then
    /dev/null as stdin for the task."""
    import json

    raw = sys.stdin.buffer.read()
    env = json.loads(raw) if raw.strip() else {}
    if not isinstance(env, dict):
        env = {}
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return {str(k): str(v) for k, v in env.items()}


class _ParentDied(Exception):
    """Raised by the death-signal handler to break out of the wait."""


class _OnDeath:
    """The death signal's handler: raises ``_ParentDied`` the first time only. The kernel sends the
    signal once per re-parenting, and a dying multi-threaded agent re-parents the supervisor from
    thread to thread as its threads exit, so a second or third signal may come microseconds later,
    while the supervisor is already ending the task; raising again there would kill the supervisor
    mid-cleanup and leave the task's SIGTERM-deaf children running."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if not self.fired:
            self.fired = True
            raise _ParentDied


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: supervisor.py AGENT_PID GRACE_S -- ARGV...", file=sys.stderr)
        return 2
    agent_pid, grace_s, command = int(argv[0]), float(argv[1]), argv[3:]
    env = _read_env()

    try:
        on_death = _OnDeath()
        signal.signal(DEATH_SIGNAL, on_death)
        # a handler, not SIG_IGN: the task must get the default SIGTERM after exec
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_PDEATHSIG, DEATH_SIGNAL)
        if os.getppid() != agent_pid:  # the agent died before the kernel could tell us
            on_death(DEATH_SIGNAL, None)
        # SIGTERM and the death signal wait (blocked) across the fork: one that arrives before the
        # child has reset its handlers would otherwise run the supervisor's handler in the child
        # (SIGTERM swallowed) and the task would start deaf to the stop that was meant for it
        stops = {signal.SIGTERM, DEATH_SIGNAL}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        me = os.getpid()
        task = os.fork()
        if task == 0:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(DEATH_SIGNAL, signal.SIG_DFL)
                # the task ends if its supervisor is killed outright (kill -9, the OOM killer),
                # which leaves no one to stop it; on every other path the supervisor outlives it
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != me:
                    os._exit(128 + signal.SIGKILL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                os.umask(0o022)  # the agent's own files are owner-only; the task's get the usual mode
                os.execvpe(command[0], command, env)
            except OSError as err:
                print(f"=== xpod: cannot start {command[0]!r}: {err.strerror}", file=sys.stderr, flush=True)
            os._exit(127)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
        while True:
            pid, status = os.waitpid(task, 0)  # a handled SIGTERM retries the wait (PEP 475)
            if pid == task:
                break
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        _reap_all()
        if _members():  # the task left processes behind: they end with it
            _end_members(grace_s)
        return code
    except _ParentDied:
        signal.signal(DEATH_SIGNAL, signal.SIG_IGN)
        _end_members(grace_s)
        return 128 + DEATH_SIGNAL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
