"""``xpod run`` and ``xpod bench collectives`` as a user runs them."""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(__file__)
PROBE = os.path.join(HERE, "..", "fixtures", "collectives", "launch_probe.py")
XPOD = os.path.join(os.path.dirname(sys.executable), "xpod")


def xpod(*args, timeout=120):
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    return subprocess.run([XPOD, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_run_sets_rendezvous_variables_and_prefixes_output():
    res = xpod("run", "--nproc", "3", PROBE, "a", "--b")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    ports = set()
    for r in range(3):
        (env_line,) = [ln for ln in lines if ln.startswith(f"[rank {r}] env ")]
        fields = dict(kv.split("=", 1) for kv in env_line.split(" ", 3)[3].split())
        assert fields["RANK"] == str(r) and fields["LOCAL_RANK"] == str(r)
        assert fields["WORLD_SIZE"] == "3" and fields["LOCAL_WORLD_SIZE"] == "3"
        assert fields["XPOD_BACKEND"] == "cpu" and fields["MASTER_ADDR"] == "127.0.0.1"
        ports.add(fields["MASTER_PORT"])
        assert f"[rank {r}] args a --b" in lines
        assert f"[rank {r}] sum [6.0, 6.0, 6.0]" in lines
    assert len(ports) == 1 and int(ports.pop()) > 0


def test_one_failing_rank_ends_the_others_and_its_code_is_returned():
    t0 = time.monotonic()
    res = xpod("run", "--nproc", "3", PROBE, "--fail-rank", "1", timeout=60)
    elapsed = time.monotonic() - t0
    assert res.returncode == 7, res.stdout + res.stderr
    assert "[rank 1] failing on purpose" in res.stdout
    assert "rank 1 exited with code 7" in res.stderr
    assert elapsed < 30  # the sleepers (60 s) were ended, not waited for
    pids = [int(ln.split()[3]) for ln in res.stdout.splitlines() if ln.endswith("sleeping")]
    assert len(pids) == 2
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"


def test_launch_function_gives_visible_devices_per_rank():
    # The node agent reuses launch(): an accelerator backend gets its visible-devices variable,
    # one device per rank, in its own session.
    from xpod.backends.cpu import CpuBackend
    from xpod.hal import VisibleDevicesVars
    from xpod.runtime.agent.launch import launch

    class FakeAccel(CpuBackend):
        name = "fakeaccel"
        device_type = "npu"
        visible_vars = VisibleDevicesVars("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES")

    code = "import os; print(os.environ['ASCEND_RT_VISIBLE_DEVICES'], os.environ['XPOD_BACKEND'], os.getsid(0) == os.getpid())"
    group = launch([sys.executable, "-c", code], 2, FakeAccel(), devices=[5, 3])
    lines = []

    class Sink:
        def write(self, s):
            lines.append(s)

        def flush(self):
            pass

    assert group.wait(out=Sink()) == 0
    assert sorted(lines) == ["[rank 0] 5 fakeaccel True\n", "[rank 1] 3 fakeaccel True\n"]


def test_run_module_with_its_own_flags():
    res = xpod("run", "--nproc", "2", "-m", "platform", "--terse")
    assert res.returncode == 0, res.stderr
    assert sorted(ln.split("]")[0] for ln in res.stdout.splitlines()) == ["[rank 0", "[rank 1"]
    res = xpod("run", "--nproc", "2", "-m")
    assert res.returncode == 1 and "needs a module name" in res.stderr


def test_run_user_errors_are_one_line():
    res = xpod("run", "--nproc", "2", "no_such_script.py")
    assert res.returncode == 1 and res.stderr.strip() == "xpod: no_such_script.py: no such script"
    res = xpod("run", "--nproc", "0", PROBE)
    assert res.returncode == 1 and "--nproc must be >= 1" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = xpod("run", "--nproc", "2", "--backend", "nope", PROBE)
    assert res.returncode == 1 and "nope" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_bench_collectives_json_rows_and_baseline():
    res = xpod(
        "bench",
        "collectives",
        "--op",
        "all_gather",
        "--nproc",
        "2",
        "--min-bytes",
        "4K",
        "--max-bytes",
        "8K",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--baseline",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    rows = data["rows"]
    assert [r["bytes"] for r in rows] == [4096, 8192]
    for r in rows:
        for key in (
            "op",
            "bytes",
            "time_us",
            "algbw_gbps",
            "busbw_gbps",
            "baseline_time_us",
            "baseline_busbw_gbps",
            "busbw_ratio",
            "wrong",
            "predicted_us",
        ):
            assert key in r
        assert r["op"] == "all_gather" and r["wrong"] == 0 and r["time_us"] > 0
        assert r["busbw_gbps"] == r["algbw_gbps"] * 0.5  # (n-1)/n with n = 2
    assert data["copy_bandwidth_bytes_per_s"]["one_thread"] > 0


def test_bench_table_and_flag_errors():
    res = xpod(
        "bench",
        "collectives",
        "--op",
        "all_reduce",
        "--nproc",
        "2",
        "--min-bytes",
        "1024",
        "--max-bytes",
        "1024",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--rounds",
        "1",
        "--dtype",
        "bf16",
    )
    assert res.returncode == 0, res.stderr
    assert "busbw" in res.stdout and "bfloat16" in res.stdout and "#wrong total: 0" in res.stdout
    res = xpod("bench", "collectives", "--op", "all_reduce", "--nproc", "2", "--min-bytes", "2M", "--max-bytes", "1M")
    assert res.returncode == 1 and "--min-bytes" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = xpod("bench", "collectives", "--op", "gather", "--nproc", "2", "--min-bytes", "1", "--max-bytes", "2")
    assert res.returncode == 2 and "--op" in res.stderr
    res = xpod("bench", "collectives", "--op", "all_reduce", "--nproc", "2", "--min-bytes", "abc", "--max-bytes", "2")
    assert res.returncode == 2 and "abc" in res.stderr


def test_sigterm_to_xpod_run_ends_every_rank():
    # A cancel (the node agent, or a user's kill) reaches ranks that lead their own sessions.
    import signal

    code = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(60)"
    script = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"xpod_sleeper_{os.getpid()}.py")
    with open(script, "w") as f:
        f.write(code)
    try:
        proc = subprocess.Popen([XPOD, "run", "--nproc", "2", script], stdout=subprocess.PIPE, text=True)
        pids = [int(proc.stdout.readline().split()[-1]) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    finally:
        os.unlink(script)
