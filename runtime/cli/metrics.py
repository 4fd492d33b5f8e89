"""``xpod exporter``: device metrics of this host's backends on a Prometheus /metrics endpoint."""

from __future__ import annotations

import sys

from xpod.hal.errors import XpodError

DEFAULT_LISTEN = "127.0.0.1:9478"  # same as xpod.runtime.agent.exporter.DEFAULT_LISTEN (kept import-free here)


def register(commands) -> None:
    p = commands.top.add_parser(
        "exporter",
        help="serve this host's device metrics for Prometheus",
        description=(
            "Serve device metrics (xpod_device_*) of every available backend on HOST:PORT/metrics. "
            "Loopback by default; give --listen 0.0.0.0:PORT to expose it."
        ),
    )
    p.add_argument(
        "--listen", metavar="ADDR", default=DEFAULT_LISTEN, help=f"HOST:PORT to serve on (default {DEFAULT_LISTEN})"
    )
    p.add_argument(
        "--simulated",
        action="store_true",
        help="also export the simulated backend's devices (XPOD_SIM_DEVICES=model:count,...)",
    )
    p.add_argument(
        "--sim-devices",
        metavar="SPEC",
        help="simulated devices to export, e.g. ascend-910c:8 (implies --simulated; overrides XPOD_SIM_DEVICES)",
    )
    p.add_argument("--node", metavar="NAME", help="node label of the device series (default: this hostname)")
    p.add_argument("--once", action="store_true", help="print one exposition to stdout and exit (no server)")
    p.set_defaults(func=cmd_exporter)


def _backends(args):
    from xpod.hal.registry import available_backends

    if args.sim_devices is not None:
        from xpod.backends.sim import SimBackend

        sim = SimBackend.from_spec(args.sim_devices)  # before probing: a bad spec fails fast
        return [*available_backends(include_simulated=False), sim]
    if args.simulated:
        from xpod.hal.registry import probe_all

        # The sim probe only reads XPOD_SIM_DEVICES: ask it first, before the slow vendor probes.
        (status,) = probe_all(["sim"])
        if status.backend is None:
            raise XpodError(f"exporter --simulated: the sim backend is unavailable: {status.reason}")
    return available_backends(include_simulated=args.simulated)


def cmd_exporter(args) -> int:
    from xpod.runtime.agent import exporter

    # Check the flags and the address before probing backends (which takes seconds), so a
    # mistake fails fast.
    exporter.parse_listen(args.listen)
    if args.node is not None and not args.node.strip():
        raise XpodError("exporter --node: empty name; give the node's name or leave --node out")
    if not args.once:
        exporter.check_bindable(args.listen)
    collector = exporter.DeviceCollector(exporter.host_sources(_backends(args), args.node))
    if args.once:
        from prometheus_client import generate_latest

        sys.stdout.write(generate_latest(exporter.build_registry(collector)).decode())
        return 0
    server = exporter.serve(collector, args.listen)
    devices = sum(len(s.backend.devices()) for s in collector.sources)
    names = ", ".join(s.backend.name for s in collector.sources) or "none"
    # The agent and tests read this line for the bound port (port 0 picks one).
    print(f"xpod exporter: {devices} devices ({names}) on {server.url}", flush=True)
    import signal
    import threading

    # SIGTERM (systemd, the agent, tests) is a normal stop: close the socket and exit 0.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # a signal may land on another thread: wake to see it
            pass
    finally:
        server.close()
    return 0
