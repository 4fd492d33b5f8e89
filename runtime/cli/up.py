"""``xpod up``: the embedded default (scheduler, an agent for this host and a simulated pod in one
process; the wiring lives in ``runtime/cli/app.py``).

Exit codes: 0 on a clean stop (Ctrl-C / SIGTERM), 1 for a user error (one line), 2 for bad flags.
"""

from __future__ import annotations

import os

from xpod.runtime.cli.common import positive_seconds, stop_on_signals


def register(commands) -> None:
    u = commands.top.add_parser(
        "up",
        help="scheduler + an agent for this host + a simulated pod, in one process",
        description="The embedded default: the scheduler (SQLite under --state-dir), an agent for this "
        "host's real devices and a simulated pod of the cluster descriptor, all on loopback.",
    )
    u.add_argument(
        "--cluster", metavar="FILE", help="cluster descriptor to simulate (default: the embedded CloudMatrix384)"
    )
    u.add_argument(
        "--listen", metavar="ADDR", default="127.0.0.1:7070", help="gRPC address (default 127.0.0.1:7070; port 0 = any)"
    )
    u.add_argument(
        "--metrics", metavar="ADDR", help="host:port for the scheduler's Prometheus endpoint (off by default)"
    )
    u.add_argument(
        "--state-dir", metavar="DIR", help="database, logs, pids (default: XPOD_STATE_DIR or ~/.local/state/xpod)"
    )
    u.add_argument(
        "--node-timeout",
        type=float,
        metavar="SECONDS",
        help="heartbeats missing this long mark a node NotReady (default 10)",
    )
    u.add_argument("--no-simulate", action="store_true", help="no simulated pod: only this host")
    u.add_argument("--no-local", action="store_true", help="no agent for this host: only the simulated pod")
    u.add_argument(
        "--sim-devices",
        metavar="SPEC",
        help="also give this host's node simulated devices, e.g. nvidia-h100-sxm:2 (its tasks are real processes)",
    )
    u.set_defaults(func=cmd_up)


def cmd_up(args) -> int:
    import threading

    from xpod.runtime.cli.app import start_embedded

    positive_seconds(args.node_timeout, "--node-timeout")
    os.umask(0o077)  # the database, its WAL, logs and the state directory: owner only
    from xpod.runtime.agent.agent import default_state_dir

    system = start_embedded(
        cluster_file=args.cluster,
        listen=args.listen,
        metrics=args.metrics,
        state_dir=args.state_dir or default_state_dir(),
        node_timeout_s=args.node_timeout,
        simulate=not args.no_simulate,
        local=not args.no_local,
        sim_devices=args.sim_devices,
    )
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        sim = system.simulated_nodes
        local = system.local_node
        where = f"; metrics on {system.metrics_url}" if system.metrics_url else ""
        print(
            f"xpod up: scheduler on {system.address} (db {os.path.join(system.state_dir, 'xpod.db')}); "
            f"simulated pod {system.cluster_name if sim else '-'}: {len(sim)} nodes, {sum(len(n.spec.devices) for n in sim)} devices; "
            f"local node: {local.name + f' ({len(local.spec.devices)} devices)' if local else '-'}{where}",
            flush=True,
        )
        token = os.path.join(system.state_dir, "admin-token")
        print(
            f"xpod up: admin token in {token} (0600; the CLI uses it by itself with the default state directory, "
            f"else pass --token-file {token})",
            flush=True,
        )
        print(f"xpod up: submit with 'xpod submit FILE --server {system.address}'; Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):  # a signal may land on another thread: wake to see it
            pass
        print("xpod up: stopping", flush=True)
    finally:
        system.close()
    print("xpod up: stopped", flush=True)
    return 0
