"""``xpod demo``: the whole system end to end on this machine (the stages are in ``run.py``, the training script in ``train.py``, the data in ``data/``)."""

from __future__ import annotations


def register(commands) -> None:
    p = commands.top.add_parser("demo", help="the whole system end to end on this machine (what `make demo` runs)")
    p.add_argument(
        "--state-dir", metavar="DIR", help="keep the database and logs here (default: a new temporary directory)"
    )
    p.add_argument("--steps", type=int, default=60, help="training steps of the DDP job (default 60)")
    p.add_argument(
        "--replay-seconds", type=float, default=20.0, help="wall time the trace slice is compressed into (default 20)"
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from xpod.hal.errors import XpodError

    if args.steps < 1 or args.replay_seconds <= 0:
        raise XpodError("demo: --steps must be >= 1 and --replay-seconds > 0")
    from xpod.runtime.cli.demo.run import run_demo

    return run_demo(args.state_dir, steps=args.steps, replay_seconds=args.replay_seconds)
