"""Real processes for the metrics tests: promtool, a Prometheus server, an `xpod exporter`.

Every wait is bounded and every process started here is killed on exit (context managers).
promtool and prometheus come from Debian's `prometheus` package, which `make test` installs
(Makefile target `prometheus-tools`); a missing tool fails the test with that instruction
instead of skipping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from xpod.hal.backend import Backend
from xpod.hal.device import DeviceInfo, Health, LinkState, MetricsSample

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEPLOY = os.path.join(REPO, "deploy")
XPOD = os.path.join(os.path.dirname(sys.executable), "xpod")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(
            f"{name} is not on PATH; run `make prometheus-tools` (installs Debian's prometheus package)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class _LineReader:
    """Collects a process's merged output in a thread, so waits never block on a pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        for line in self._proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self._proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the last lines
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no line containing {needle!r} within {timeout_s} s; output:\n" + "\n".join(self.lines[-30:])
        )

    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def running(argv: list[str], ready: str, timeout_s: float = 60.0, env: dict | None = None, cwd: str | None = None):
    """Start ``argv``, wait for a line containing ``ready``; yield (proc, that line, reader)."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env, cwd=cwd)
    try:
        reader = _LineReader(proc)
        line = reader.wait_for(ready, timeout_s)
        yield proc, line, reader
    finally:
        _stop(proc)


@contextlib.contextmanager
def exporter(sim_devices: str | None = "ascend-910c:8", node: str = "test-node", extra: list[str] | None = None):
    """An `xpod exporter` process on a free loopback port; yields its /metrics URL."""
    argv = [XPOD, "exporter", "--listen", "127.0.0.1:0", "--node", node, *(extra or [])]
    if sim_devices:
        argv += ["--sim-devices", sim_devices]
    with running(argv, "xpod exporter:") as (proc, line, reader):
        url = line.rsplit(" on ", 1)[1].strip()
        yield url


class Prometheus:
    """A Prometheus server on a loopback port with a given config (dict, written as YAML)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def api(self, path: str, **params) -> tuple[int, dict]:
        url = f"{self.base_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        code, body = http_get(url, timeout_s=10)
        return code, json.loads(body)

    def query(self, expr: str) -> dict:
        """The query API's answer; raises with Prometheus's error text on a parse error."""
        code, doc = self.api("query", query=expr)
        if doc.get("status") != "success":
            raise AssertionError(f"{expr!r}: HTTP {code} {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def wait_series(self, expr: str, count: int, timeout_s: float = 30.0) -> list[dict]:
        """Poll until ``expr`` returns at least ``count`` series (bounded)."""
        deadline = time.monotonic() + timeout_s
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)["result"]
            if len(result) >= count:
                return result
            time.sleep(0.5)
        raise AssertionError(
            f"{expr!r} returned {len(result)} series within {timeout_s} s, wanted >= {count}: {result}"
        )


@contextlib.contextmanager
def prometheus(config: dict, workdir: str, timeout_s: float = 60.0):
    import yaml

    port = free_port()
    cfg = os.path.join(workdir, "prometheus.yml")
    with open(cfg, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    argv = [
        tool("prometheus"),
        f"--config.file={cfg}",
        f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reader = _LineReader(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{reader.text()}")
            try:
                if http_get(base + "/-/ready", timeout_s=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready within {timeout_s} s:\n{reader.text()}")
            time.sleep(0.2)
        yield Prometheus(base)
    finally:
        _stop(proc)


class FullBackend(Backend):
    """A backend that reports every gauge, so each family's shape and lint can be checked."""

    name = "cuda"

    def __init__(self, n: int = 2, fail: bool = False) -> None:
        self.n = n
        self.fail = fail

    def devices(self) -> list[DeviceInfo]:
        if self.fail:
            raise RuntimeError("nvidia-smi hung")
        return [
            DeviceInfo(
                vendor="cuda",
                model="nvidia-h100-sxm",
                index=i,
                physical_index=i,
                uuid=f"GPU-{i}",
                memory_total_bytes=80 * 2**30,
                memory_used_bytes=i * 2**30,
                health=Health.OK,
                pci_bus_id=f"0000:{i + 1:02x}:00.0",
                name="NVIDIA H100 80GB HBM3",
            )
            for i in range(self.n)
        ]

    def metrics(self) -> list[MetricsSample]:
        return [
            MetricsSample(
                index=i,
                memory_used_bytes=i * 2**30,
                memory_total_bytes=80 * 2**30,
                utilization_ratio=0.25 * (i + 1),
                temperature_celsius=40.0 + i,
                power_watts=300.0 + i,
                health=Health.CRITICAL if i == 1 else Health.OK,
                ecc_errors_total=7 * i,
                energy_joules_total=1.5e6 + i,
                core_clock_hertz=1.98e9,
                memory_clock_hertz=2.619e9,
                links=(LinkState("nvlink", "0", True), LinkState("nvlink", "1", i == 0)),
            )
            for i in range(self.n)
        ]
