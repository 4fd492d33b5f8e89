"""``xpod agent`` and ``xpod logs`` (the node agent and the task output it captured).

Exit codes: 0 on a clean stop (Ctrl-C / SIGTERM), 1 for a user error (one line), 2 for bad flags.
"""

from __future__ import annotations

import os
import re
import sys
import time

from xpod.hal.errors import XpodError
from xpod.runtime.cli.app import SIM_POLL_S  # cheap: no torch, grpc or numpy at import
from xpod.runtime.cli.common import positive_seconds, stop_on_signals
from xpod.runtime.cli.jobs import target_of, tls_flags


def register(commands) -> None:
    a = commands.top.add_parser(
        "agent",
        help="run a node agent (this host's devices) or a simulated pod (--simulate FILE)",
        description="Register this node with the scheduler, heartbeat, and run the tasks it assigns. "
        "With --simulate FILE every node of the cluster descriptor is simulated in this process.",
    )
    a.add_argument(
        "--server", metavar="ADDR", help="scheduler address (default: XPOD_SERVER, the config file, 127.0.0.1:7070)"
    )
    a.add_argument(
        "--token",
        metavar="T",
        help="refused: a token on the command line is readable by every local user; use --token-file",
    )
    tls_flags(a)
    a.add_argument(
        "--simulate",
        metavar="FILE",
        help="simulate every node of this cluster descriptor ('default' = embedded CloudMatrix384)",
    )
    a.add_argument(
        "--state-dir", metavar="DIR", help="task logs and pids (default: XPOD_STATE_DIR or ~/.local/state/xpod)"
    )
    a.add_argument(
        "--node", metavar="NAME", help="node name (default: the host name, matched against the cluster's nodes)"
    )
    a.add_argument(
        "--sim-devices",
        metavar="SPEC",
        help="add simulated devices to this node (model:count,..., e.g. ascend-910c:2); tasks still run as real processes",
    )
    a.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between heartbeats (default 2)",
    )
    a.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="SIGTERM-to-SIGKILL grace when a task is stopped (default 5)",
    )
    a.add_argument(
        "--metrics",
        metavar="ADDR",
        help="serve this node's device metrics (xpod exporter's series, with the allocation join) on HOST:PORT",
    )
    a.set_defaults(func=cmd_agent)

    g = commands.top.add_parser("logs", help="a job's task output, as captured by the node agent on this host")
    g.add_argument("job_id", metavar="JOB", help="the job's id (xpod jobs lists them)")
    g.add_argument("--task", type=int, metavar="N", help="only task N (default: every task, each with a header)")
    g.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new output until the task exits (Ctrl-C to stop)"
    )
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's state directory (default: XPOD_STATE_DIR or ~/.local/state/xpod)",
    )
    g.set_defaults(func=cmd_logs)


def _state_dir(value: str | None) -> str:
    from xpod.runtime.agent.agent import default_state_dir

    path = value or default_state_dir()
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise XpodError(f"--state-dir {path}: cannot create it: {err.strerror}") from None
    return path


def _sim_file(value: str) -> str | None:
    if value == "default":
        return None
    if not os.path.isfile(value):
        raise XpodError(
            f"--simulate {value}: no such cluster descriptor (give a YAML file, or 'default' for CloudMatrix384)"
        )
    return value


def cmd_agent(args) -> int:
    import threading

    from xpod.runtime.agent import agent as ag
    from xpod.runtime.client import Client
    from xpod.scheduler.store.lock import StateLock

    positive_seconds(args.heartbeat_interval, "--heartbeat-interval")
    if args.grace < 0:
        raise XpodError(f"--grace {args.grace:g}: must be >= 0 seconds")
    if args.simulate and (args.node or args.sim_devices or args.metrics):
        raise XpodError(
            "--simulate runs every node of the descriptor and reads no hardware: drop --node, --sim-devices and --metrics"
        )
    if args.token:
        raise XpodError(
            "xpod agent takes no --token: a token on the command line is readable by every local user "
            "(/proc/PID/cmdline); put it in a file only the agent's user can read and pass --token-file FILE"
        )
    os.umask(0o077)  # task logs and pid files: owner only (tasks get 022 back, runtime/agent/supervisor.py)
    state = _state_dir(args.state_dir)
    target = target_of(args)
    # first: a second agent (or ``xpod up``) on this state directory stops here, before it ends
    # any task the first one runs
    lock = StateLock.acquire(state, "xpod agent", target.server)
    client = Client(target, timeout_s=10.0)
    stop = threading.Event()
    stop_on_signals(stop)
    exporter = None
    if args.simulate:
        nodes = [
            ag.NodeRuntime(n, ag.SimExecutor(n.name, state), "xpod agent (simulated)")
            for n in ag.simulated_pod(_sim_file(args.simulate))
        ]
        devices = sum(len(n.spec.devices) for n in nodes)
        print(
            f"xpod agent: simulating {len(nodes)} nodes, {devices} devices against {target.server}; state {state}",
            flush=True,
        )
    else:
        found = ag.discover_devices(args.sim_devices)
        ended = ag.end_leftover_tasks(state, args.grace)
        if ended:
            print(
                f"xpod agent: ended {len(ended)} task(s) a previous agent left running: {', '.join(ended)}", flush=True
            )
        name = ag.local_node_name(client, args.node)
        # its tasks run as real processes, on simulated devices (--sim-devices) or not
        nodes = [ag.NodeRuntime(ag.NodeSpec(name, tuple(found)), ag.ProcessExecutor(name, found, state, args.grace))]
        exporter = _device_exporter(args.metrics, name, found) if args.metrics else None
        if exporter:
            print(f"xpod agent: device metrics on {exporter[0].url}", flush=True)
        models = ", ".join(sorted({f"{d.vendor}/{d.model}" for d in found})) or "none"
        print(
            f"xpod agent: node {name} with {len(found)} device(s) ({models}) against {target.server}; state {state}",
            flush=True,
        )
    agent = ag.Agent(
        client,
        nodes,
        heartbeat_interval_s=args.heartbeat_interval,
        grace_s=args.grace,
        log_prefix="xpod agent (simulated)" if args.simulate else "xpod agent",
        poll_s=SIM_POLL_S if args.simulate else ag.POLL_S,
        on_allocations=exporter[1] if exporter else None,
    )
    thread = threading.Thread(target=agent.run, args=(stop,), name="xpod-agent", daemon=True)
    thread.start()
    _report_first_connection(agent, stop, target.server)
    while not stop.wait(0.5):  # a signal may land on another thread: wake to see it
        pass
    print("xpod agent: stopping (ending running tasks)", flush=True)
    thread.join(timeout=args.grace + 5)
    client.close()
    lock.release()
    return 0


def _device_exporter(listen: str, node: str, devices):
    """Serve the node's device metrics (runtime.exporter) and return (server, allocation hook)."""
    from xpod.runtime.agent.exporter import Allocation, DeviceCollector, host_sources, serve

    backends = []
    for d in devices:
        if d.backend is not None and all(b is not d.backend for b in backends):
            backends.append(d.backend)
    collector = DeviceCollector(host_sources(backends, node))
    server = serve(collector, listen, flag="--metrics")

    def on_allocations(held) -> None:
        collector.set_allocations({key: Allocation(job, queue, kind) for key, (job, queue, kind) in held.items()})

    return server, on_allocations


def _report_first_connection(agent, stop, server: str) -> None:
    """Print once when the agent's nodes are registered, and say so while the server cannot be
    reached yet (every 10 s)."""
    import threading

    def wait() -> None:
        waited_s = 0.0
        while not stop.is_set():
            if agent.connected.wait(timeout=10.0):
                print(f"xpod agent: {len(agent.nodes)} node(s) registered with {server}", flush=True)
                return
            waited_s += 10.0
            if not stop.is_set():
                print(
                    f"xpod agent: cannot reach the scheduler at {server} after {waited_s:.0f} s; retrying with backoff",
                    file=sys.stderr,
                    flush=True,
                )

    threading.Thread(target=wait, daemon=True).start()


_JOB_ID = re.compile(r"^job-[0-9]{1,19}$")


def cmd_logs(args) -> int:
    from xpod.runtime.agent.agent import default_state_dir

    if not _JOB_ID.match(args.job_id):
        raise XpodError(f"{args.job_id[:80]!r} is not a job id (job-N, as 'xpod jobs' lists them)")
    state = args.state_dir or default_state_dir()
    folder = os.path.join(state, "logs", args.job_id)
    if not os.path.isdir(folder):
        raise XpodError(
            f"no logs for job {args.job_id!r} under {state}/logs (run 'xpod logs' on the node that ran it, or pass --state-dir)"
        )
    if args.task is not None:
        path = os.path.join(folder, f"task-{args.task}.log")
        if not os.path.isfile(path):
            have = sorted(f[5:-4] for f in os.listdir(folder) if f.startswith("task-") and f.endswith(".log"))
            raise XpodError(
                f"job {args.job_id} has no task {args.task} on this host (tasks here: {', '.join(have) or 'none'})"
            )
        paths = [path]
    else:
        paths = sorted(
            (os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("task-") and f.endswith(".log")),
            key=lambda p: int(os.path.basename(p)[5:-4]),
        )
    for path in paths:
        if len(paths) > 1:
            print(f"==> {os.path.basename(path)} <==", flush=True)
        _print_log(path, args.follow)
    return 0


def _print_log(path: str, follow: bool) -> None:
    """Print the file; with ``follow`` keep printing until its last attempt's exit line appears."""
    with open(path, encoding="utf-8", errors="replace") as f:
        last_line = ""
        while True:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                last_line = line
                continue
            sys.stdout.flush()
            if not follow or last_line.startswith("=== xpod: task ") and " exited with code " in last_line:
                return
            time.sleep(0.2)
