"""``xpod devices`` and ``xpod doctor``."""

from __future__ import annotations

import sys

from xpod.hal.errors import XpodError
from xpod.runtime.cli.output import Column, add_output_flags, output_format, print_json, print_rows

TOOLS = ("npu-smi", "cnmon", "mthreads-gmi", "hy-smi", "rocm-smi", "nvidia-smi")


def register(commands) -> None:
    p = commands.top.add_parser(
        "devices",
        help="devices found on this host by every available backend",
        description="List devices on this host, or (with --parse) read a captured management-tool output.",
    )
    add_output_flags(p)
    p.add_argument("--parse", metavar="FILE", help="read a captured tool output instead of this host")
    p.add_argument("--tool", choices=TOOLS, help="the tool that produced FILE (with --parse)")
    p.add_argument("--simulated", action="store_true", help="include the simulated backend's devices")
    p.set_defaults(func=cmd_devices)

    d = commands.top.add_parser("doctor", help="each backend: available or not, and why")
    add_output_flags(d)
    d.set_defaults(func=cmd_doctor)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def cmd_devices(args) -> int:
    if args.parse or args.tool:
        if not (args.parse and args.tool):
            raise XpodError("devices: --parse FILE and --tool T go together")
        from xpod.backends import parse_tool_output

        try:
            with open(args.parse, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as err:
            raise XpodError(f"{args.parse}: cannot read: {err.strerror}") from None
        devices = parse_tool_output(args.tool, text, source=args.parse)
    else:
        from xpod.hal.registry import available_backends

        devices = [d for b in available_backends(include_simulated=args.simulated) for d in b.devices()]
    fmt = output_format(args)
    if fmt == "json":
        print_json([d.to_json() for d in devices])
        return 0
    rows = []
    for d in devices:
        notes = []
        if d.simulated:
            notes.append("SIMULATED")
        if d.dies > 1:
            notes.append(f"{d.dies} dies")
        if d.vendor == "cpu":
            notes.append(f"{d.extra.get('cores')} cpus ({d.extra.get('cpus')}), {d.extra.get('sockets')} socket(s)")
        rows.append(
            (
                d.vendor,
                d.index if d.index == d.physical_index else f"{d.index} (phys {d.physical_index})",
                d.model,
                d.name or "-",
                f"{_gib(d.memory_used_bytes)} / {_gib(d.memory_total_bytes)}",
                d.health.value,
                "-" if d.numa_node is None else d.numa_node,
                d.pci_bus_id or "-",
                "; ".join(notes),
            )
        )
    columns = [
        Column(c) for c in ("vendor", "index", "model", "name", "memory used / total", "health", "numa", "pci", "notes")
    ]
    print_rows(fmt, "devices" + (f" in {args.parse}" if args.parse else " on this host"), columns, rows)
    if not devices:
        print("no devices found (see 'xpod doctor')", file=sys.stderr)
    return 0


def cmd_doctor(args) -> int:
    from xpod.hal.registry import probe_all

    statuses = probe_all()
    fmt = output_format(args)
    if fmt == "json":
        print_json(
            [
                {
                    "backend": s.name,
                    "available": s.available,
                    "reason": s.reason,
                    "devices": len(s.backend.devices()) if s.backend else 0,
                    "simulated": bool(s.backend and s.backend.simulated),
                }
                for s in statuses
            ]
        )
        return 0
    rows = []
    for s in statuses:
        b = s.backend
        if b is None:
            rows.append((s.name, "unavailable", 0, "-", s.reason))
        else:
            status = "simulated" if b.simulated else "available"
            rows.append(
                (s.name, status, len(b.devices()), f"{b.torch_module}:{b.device_type} / {b.dist_backend}", s.reason)
            )
    columns = [
        Column("backend"),
        Column("status"),
        Column("devices", justify="right"),
        Column("torch / dist"),
        Column("detail"),
    ]
    print_rows(fmt, "xpod backends", columns, rows)
    return 0
