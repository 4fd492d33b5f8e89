"""`make demo` runs `xpod demo`: run it as a user would, shortened, and check every stage."""

import re

from tests.conftest import REPO, xpod_cli


def test_demo_runs_end_to_end(tmp_path):
    import os

    # its own temporary state directory, under tmp_path: it must be gone afterwards
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160", TMPDIR=str(tmp_path))
    proc = xpod_cli("demo", "--steps", "20", "--replay-seconds", "6", timeout=400, env=env, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit code {proc.returncode}; output ends:\n{out[-3000:]}"
    assert "Traceback" not in out
    # 3: the real training job ran on this host and its loss fell
    losses = [float(x) for x in re.findall(r"step\s+\d+\s+loss ([0-9.]+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0] / 2, losses
    assert "replicas identical on 3 ranks" in out
    # 4: placement scored beside EPLB (xpod.runtime.moe.eplb), no duplicates for xpod
    row = re.search(r"│ xpod\s+│ ([0-9.]+)\s+│ [0-9.]+\s+│ (\d+)", out)
    assert row and float(row.group(1)) > 0.9 and row.group(2) == "0", (
        f"xpod placement row {row and row.groups()}:\n{out[-3000:]}"
    )
    assert "EPLB global" in out
    assert re.search(r"ServingJob 'deepseek-v3-ep64' .* on 4 simulated node", out.replace("\n", " "))
    # 5: the trace slice was submitted and the pod was used
    peak = re.search(r"peak utilisation (\d+)%; (\d+) jobs submitted", out)
    assert peak and int(peak.group(1)) > 0 and int(peak.group(2)) == 400, (
        f"replay summary {peak and peak.groups()}:\n{out[-2000:]}"
    )
    # 6: the mix replay's table: the default profile and both baselines, static serving at its peak
    rows = dict(re.findall(r"│ (default|static-partition|reactive-hpa)\s+│\s+([0-9.]+)\s+│", out))
    assert set(rows) == {"default", "static-partition", "reactive-hpa"}, out[-3000:]
    assert float(rows["static-partition"]) == 1.0
    # 7: metrics scraped from the live scheduler, then a clean shutdown
    assert 'xpod_scheduler_devices{state="allocated",vendor="ascend"}' in out
    assert "xpod up stopped (exit code 0)" in out
    # no address of a server that is gone by the time the output is read, no directory left behind
    assert "http://" not in out and "127.0.0.1:" not in out
    assert "its temporary state directory is removed" in out
    assert not list(tmp_path.glob("xpod-demo-*")), list(tmp_path.iterdir())
