"""``xpod run`` (start N local ranks) and ``xpod bench collectives`` (nccl-tests-style table)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from xpod.hal.errors import XpodError

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
DTYPES = ("float32", "bfloat16", "int64", "fp32", "bf16")
ALGORITHMS = ("auto", "flat", "hierarchical", "shm")


def register(commands) -> None:
    r = commands.top.add_parser(
        "run",
        help="start N local processes of a script with the rendezvous and visible-devices variables",
        description="Start --nproc local processes of SCRIPT (a .py file, '-m MODULE', or an executable) with "
        "RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT, XPOD_BACKEND and the backend's "
        "visible-devices variable. Output is prefixed by rank; when one rank fails, the others are ended "
        "and its exit code is returned.",
    )
    r.add_argument("--nproc", type=int, required=True, help="number of processes (ranks) on this host")
    r.add_argument(
        "--backend", default="cpu", help="xpod backend id (cpu, ascend, cambricon, mthreads, hygon, cuda); default cpu"
    )
    r.add_argument("--devices", default=None, help="comma-separated device indices, one per rank (default 0..N-1)")
    r.add_argument("--master-port", type=int, default=None, help="rendezvous port (default: a free port)")
    r.add_argument("--no-prefix", action="store_true", help="do not prefix output lines with [rank N]")
    r.add_argument(
        "-m",
        dest="module",
        nargs=argparse.REMAINDER,
        metavar="MODULE ARGS",
        help="run a Python module (like python -m) with the arguments that follow, instead of a script",
    )
    r.add_argument("script", nargs="?", help="the .py script or an executable")
    r.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    r.set_defaults(func=cmd_run)

    b = commands.bench.add_parser(
        "collectives",
        help="nccl-tests-style collective benchmark over N local ranks",
        description="Time one collective over --nproc local ranks for sizes from --min-bytes to --max-bytes "
        "(doubling), print size, count, type, time, algbw, busbw (nccl-tests bus factors), #wrong, the cost "
        "model's prediction and, with --baseline, bare torch.distributed on the same sizes in the same run.",
    )
    b.add_argument("--op", required=True, choices=OPS, help="the collective: " + ", ".join(OPS))
    b.add_argument("--nproc", type=int, required=True, help="number of local ranks (processes)")
    b.add_argument("--min-bytes", type=_size, required=True, help="smallest size in bytes (suffixes K, M, G allowed)")
    b.add_argument("--max-bytes", type=_size, required=True, help="largest size in bytes (suffixes K, M, G allowed)")
    b.add_argument("--dtype", default="float32", choices=DTYPES, help="element type (default float32)")
    b.add_argument("--iters", type=int, default=20, help="timed calls per round (default 20)")
    b.add_argument("--warmup", type=int, default=5, help="untimed iterations per size (default 5)")
    b.add_argument(
        "--rounds", type=int, default=3, help="rounds of --iters calls; time = median of all calls (default 3)"
    )
    b.add_argument("--baseline", action="store_true", help="also time bare torch.distributed and print the ratio")
    b.add_argument(
        "--algorithm",
        default="auto",
        choices=ALGORITHMS,
        help="auto (the cost model picks), flat, hierarchical or shm (default auto)",
    )
    b.add_argument(
        "--backend", default="cpu", help="xpod backend id (cpu, ascend, cambricon, mthreads, hygon, cuda); default cpu"
    )
    b.add_argument(
        "--tiers",
        default=None,
        metavar="FILE",
        help="JSON list of tiers {name, groups, bandwidth_bytes_per_s, latency_s}, closest first "
        "(default: one host tier calibrated by a ping-pong)",
    )
    b.add_argument("--timeout-s", type=float, default=120.0, help="bound on any one collective (default 120)")
    b.add_argument(
        "--shm-buffers",
        action="store_true",
        help="all_reduce only: xpod's tensor lives in the shared-memory symmetric region (Communicator.shm_tensor), "
        "so the shm path skips its copies; the baseline keeps an ordinary tensor",
    )
    b.add_argument("--json", action="store_true", help="print {rows: [...], ...} as JSON instead of the table")
    b.set_defaults(func=cmd_bench)


def _size(text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 4194304 or 4M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be >= 1 byte")
    return value


def _backend(name: str):
    from xpod.hal.registry import get_backend

    return get_backend(name)


def cmd_run(args) -> int:
    from xpod.runtime.agent.launch import launch, script_command

    if args.nproc < 1:
        raise XpodError(f"--nproc must be >= 1, got {args.nproc}")
    backend = _backend(args.backend)
    devices = None
    if args.devices:
        try:
            devices = [int(x) for x in args.devices.split(",")]
        except ValueError:
            raise XpodError(f"--devices {args.devices!r}: expected comma-separated integers") from None
    if args.module is not None:
        if args.script:
            raise XpodError(f"run: give either a script ({args.script}) or -m MODULE, not both")
        command = script_command("-m", args.module)
    elif args.script:
        command = script_command(args.script, args.args)
    else:
        raise XpodError("run: give a script (a .py file or an executable) or -m MODULE")
    group = launch(command, args.nproc, backend, devices, master_port=args.master_port)

    # The ranks lead their own sessions, so a SIGTERM to `xpod run` (a cancel) does not reach
    # them by itself: pass it on to every rank's process group, then exit as terminated.
    def on_term(signum, frame):
        group.terminate()
        raise SystemExit(128 + signum)

    import signal

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return group.wait(prefix=not args.no_prefix)
    except KeyboardInterrupt:
        group.terminate()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_bench(args) -> int:
    from xpod.runtime.cli.collectives_bench import copy_bandwidth_bytes_per_s
    from xpod.runtime.agent.launch import launch

    if args.nproc < 1:
        raise XpodError(f"--nproc must be >= 1, got {args.nproc}")
    if args.min_bytes > args.max_bytes:
        raise XpodError(f"--min-bytes {args.min_bytes} is larger than --max-bytes {args.max_bytes}")
    if args.iters < 1 or args.warmup < 0 or args.rounds < 1:
        raise XpodError("--iters and --rounds must be >= 1 and --warmup >= 0")
    tiers_json = None
    if args.tiers:
        tiers_json = _read_tiers(args.tiers, args.nproc)
    backend = _backend(args.backend)
    # The physical limit: memory copy bandwidth of this host, measured before the ranks start.
    copy_1 = copy_bandwidth_bytes_per_s(threads=1)
    cores = len(os.sched_getaffinity(0))
    copy_all = copy_bandwidth_bytes_per_s(threads=cores)
    with tempfile.TemporaryDirectory(prefix="xpod-bench-") as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [
            sys.executable,
            "-m",
            "xpod.runtime.cli.collectives_bench",
            "--op",
            args.op,
            "--min-bytes",
            str(args.min_bytes),
            "--max-bytes",
            str(args.max_bytes),
            "--dtype",
            args.dtype,
            "--iters",
            str(args.iters),
            "--warmup",
            str(args.warmup),
            "--rounds",
            str(args.rounds),
            "--algorithm",
            args.algorithm,
            "--timeout-s",
            str(args.timeout_s),
            "--out",
            out,
        ]
        if args.baseline:
            cmd.append("--baseline")
        if args.shm_buffers:
            if args.op != "all_reduce" or args.algorithm not in ("auto", "shm"):
                raise XpodError("--shm-buffers needs --op all_reduce and --algorithm auto or shm")
            cmd.append("--shm-buffers")
        if tiers_json:
            cmd += ["--tiers", tiers_json]
        lines: list[str] = []
        group = launch(cmd, args.nproc, backend)
        code = group.wait(out=_Sink(lines), prefix=True)
        if code != 0 or not os.path.exists(out):
            tail = "".join(lines[-20:])
            sys.stderr.write(tail)
            raise XpodError(f"bench collectives: a rank exited with code {code}; its output is above")
        with open(out) as f:
            result = json.load(f)
    result["copy_bandwidth_bytes_per_s"] = {"one_thread": copy_1, "all_threads": copy_all, "threads": cores}
    rows = result["rows"]
    result["best_busbw_gbps"] = max(r["busbw_gbps"] for r in rows)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(args, result)
    return 1 if any(r["wrong"] for r in rows) else 0


class _Sink:
    """Collects rank output (shown only when a rank fails)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def write(self, s: str) -> None:
        self.lines.append(s)

    def flush(self) -> None:
        pass


def _read_tiers(path: str, nproc: int) -> str:
    from xpod.hal.collectives import TierSpec, validate_tiers

    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as err:
        raise XpodError(f"{path}: cannot read: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise XpodError(f"{path}:{err.lineno}:{err.colno}: not JSON: {err.msg}") from None
    if not isinstance(data, list):
        raise XpodError(f"{path}: expected a JSON list of tiers, closest first")
    keys = {"name", "groups", "bandwidth_bytes_per_s", "latency_s"}
    for i, t in enumerate(data):
        if not isinstance(t, dict) or set(t) != keys:
            raise XpodError(f"{path}: tier {i} must have exactly the keys {sorted(keys)}")
    validate_tiers([TierSpec(**t) for t in data], nproc)
    return json.dumps(data)


def _print_table(args, result: dict) -> None:
    rows = result["rows"]
    n = result["ranks"]
    print(
        f"# xpod collectives: op {args.op}, {n} ranks, backend {args.backend}, dtype {args.dtype}, "
        f"median of {args.iters} x {args.rounds} calls (interleaved with the baseline), warmup {args.warmup}"
    )
    print(f"# shared-memory all_reduce: {result['shm']}")
    cal = result.get("calibration")
    if cal:
        print(
            f"# cost model tier 'host' from a 2-rank ping-pong: latency {cal['latency_s'] * 1e6:.1f} us, "
            f"bandwidth {cal['bandwidth_bytes_per_s'] / 1e9:.2f} GB/s"
        )
    hdr = f"#{'size':>11} {'count':>11} {'type':>9} {'algo':>16} {'time':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6} {'pred':>10}"
    sub = f"#{'(B)':>11} {'(elements)':>11} {'':>9} {'':>16} {'(us)':>10} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6} {'(us)':>10}"
    if args.baseline:
        hdr += f" {'bare time':>10} {'bare busbw':>10} {'ratio':>6}"
        sub += f" {'(us)':>10} {'(GB/s)':>10} {'':>6}"
    print(hdr)
    print(sub)
    for r in rows:
        pred = "-" if r["predicted_us"] is None else f"{r['predicted_us']:.1f}"
        line = (
            f" {r['bytes']:>11} {r['count']:>11} {r['dtype']:>9} {r['algorithm']:>16} {r['time_us']:>10.1f} "
            f"{r['algbw_gbps']:>7.2f} {r['busbw_gbps']:>7.2f} {r['wrong']:>6} {pred:>10}"
        )
        if args.baseline:
            line += f" {r['baseline_time_us']:>10.1f} {r['baseline_busbw_gbps']:>10.2f} {r['busbw_ratio']:>6.2f}"
        print(line)
    cb = result["copy_bandwidth_bytes_per_s"]
    print(
        f"# best busbw {result['best_busbw_gbps']:.2f} GB/s; memory copy bandwidth of this host "
        f"{cb['one_thread'] / 1e9:.2f} GB/s (1 thread), {cb['all_threads'] / 1e9:.2f} GB/s ({cb['threads']} threads)"
    )
    if args.baseline:
        ratios = [r["busbw_ratio"] for r in rows]
        print(f"# xpod / bare torch.distributed busbw: min {min(ratios):.2f}, max {max(ratios):.2f}")
    wrong = sum(r["wrong"] for r in rows)
    print(f"# #wrong total: {wrong}")
