"""deploy/prometheus and deploy/grafana against the real tools (Debian's prometheus 2.42):
promtool check config / check rules / test rules; dashboards regenerate without drift; every
PromQL expression of the dashboards and rules is parsed by a real Prometheus; that Prometheus,
run with deploy/prometheus's own config and rules, scrapes a real `xpod exporter` and a real
`xpod server` and answers with the expected series."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

import metrics_harness as mh

PROM_DIR = os.path.join(mh.DEPLOY, "prometheus")
GRAFANA_DIR = os.path.join(mh.DEPLOY, "grafana")
CLUSTER = os.path.join(mh.REPO, "examples", "clusters", "heterogeneous.yaml")
DASHBOARDS = ("pod-overview.json", "scheduler.json", "collectives-moe.json")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([mh.tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=mh.REPO)


def test_promtool_check_config_and_rules():
    r = promtool("check", "config", os.path.join(PROM_DIR, "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = promtool("check", "rules", os.path.join(PROM_DIR, "rules.yml"))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_promtool_test_rules():
    r = promtool("test", "rules", os.path.join(PROM_DIR, "rules_test.yml"))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_rules_cover_the_issue_alerts():
    doc = yaml.safe_load(open(os.path.join(PROM_DIR, "rules.yml")))
    alerts = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert "xpod_device_health" in alerts["XpodDeviceUnhealthy"]
    assert 'xpod_scheduler_nodes{state="not_ready"}' in alerts["XpodNodeNotReady"]
    assert "queue_wait_seconds" in alerts["XpodQueueWaitTooLong"]
    # Every alert is exercised by rules_test.yml.
    tests = yaml.safe_load(open(os.path.join(PROM_DIR, "rules_test.yml")))
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    assert set(alerts) <= tested, set(alerts) - tested


def test_dashboards_have_no_drift(tmp_path):
    gen = os.path.join(GRAFANA_DIR, "generate.py")
    r = subprocess.run([sys.executable, gen, "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in DASHBOARDS:
        fresh = (tmp_path / name).read_text()
        committed = open(os.path.join(GRAFANA_DIR, name)).read()
        assert fresh == committed, (
            f"deploy/grafana/{name} differs from generate.py's output; run python deploy/grafana/generate.py"
        )
    # --check sees drift and names the file.
    (tmp_path / "scheduler.json").write_text("{}\n")
    r = subprocess.run(
        [sys.executable, gen, "--check", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "scheduler.json" in r.stderr


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every label_values() selector."""
    out = []
    for name in DASHBOARDS:
        d = json.load(open(os.path.join(GRAFANA_DIR, name)))
        for p in _panels(d["panels"]):
            for t in p.get("targets", []):
                out.append((f"{name} panel {p['title']!r} {t['refId']}", t["expr"]))
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"{name} variable {v['name']}: unexpected query {q!r}"
            out.append((f"{name} variable {v['name']}", m.group(1)))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(open(os.path.join(PROM_DIR, "rules.yml")))
    return [(f"rules.yml {r.get('alert') or r.get('record')}", r["expr"]) for g in doc["groups"] for r in g["rules"]]


def substitute(expr: str) -> str:
    """Grafana's variables as ecosystem.md 2 describes: time ranges -> 5m, others -> .*"""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{\w+(:\w+)?\}|\$\w+", ".*", expr)
    return expr


def test_dashboards_are_well_formed():
    uids = set()
    for name in DASHBOARDS:
        d = json.load(open(os.path.join(GRAFANA_DIR, name)))
        assert d["uid"] not in uids
        uids.add(d["uid"])
        ids = [p["id"] for p in _panels(d["panels"])]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for p in _panels(d["panels"]):
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, p["title"], g)
            if p["type"] != "row":
                assert p["targets"], (name, p["title"])
    pod = json.load(open(os.path.join(GRAFANA_DIR, "pod-overview.json")))
    grid = [p for p in pod["panels"] if p["type"] == "state-timeline" and "node/device" in p["title"]]
    assert grid and any("xpod_device_health" in t["expr"] for p in grid for t in p["targets"])


def _lost(src, out, path=""):
    """Paths of ``src`` (dashboard JSON) that do not come back from Grafana's model round trip."""
    if isinstance(src, dict):
        if not isinstance(out, dict):
            return [path]
        return [
            p for k, v in src.items() for p in ([f"{path}/{k}"] if k not in out else _lost(v, out[k], f"{path}/{k}"))
        ]
    if isinstance(src, list):
        if not isinstance(out, list) or len(src) != len(out):
            return [path]
        return [p for i, (a, b) in enumerate(zip(src, out)) for p in _lost(a, b, f"{path}[{i}]")]
    return [] if src == out else [f"{path}: {src!r} became {out!r}"]


def test_dashboards_match_grafanas_own_models():
    """grafana-foundation-sdk (Grafana 11.6 models) reads each dashboard and writes it back with
    every field we set: a misspelt or misplaced field would be dropped and reported here."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    for name in DASHBOARDS:
        src = json.load(open(os.path.join(GRAFANA_DIR, name)))
        out = json.loads(JSONEncoder().encode(Dashboard.from_json(src)))
        # `definition` is the text Grafana's UI shows for a query variable; the SDK's model
        # leaves it out, Grafana's own exports keep it.
        lost = [p for p in _lost(src, out) if not re.fullmatch(r"/templating/list\[\d+\]/definition", p)]
        assert lost == [], f"{name}: {lost[:10]}"
    bad = json.load(open(os.path.join(GRAFANA_DIR, "scheduler.json")))
    bad["panels"][1]["gridpos"] = bad["panels"][1].pop("gridPos")
    assert "/panels[1]/gridpos" in _lost(bad, json.loads(JSONEncoder().encode(Dashboard.from_json(bad))))


_SUFFIX = re.compile(r"_(bucket|count|sum|total|created)$")


def _base(name: str) -> str:
    return _SUFFIX.sub("", name)


def test_every_metric_name_used_is_exported_recorded_or_planned():
    """A misspelt metric parses fine and shows an empty panel: names must come from somewhere."""
    import importlib.util

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from xpod.scheduler.service.metrics import ServiceMetrics
    from xpod.runtime.agent import exporter as ex
    from xpod.backends.sim import SimBackend

    col = ex.DeviceCollector(ex.host_sources([mh.FullBackend(), SimBackend([("ascend-910c", 1)])], "n"))
    col.set_allocations({("n", 0): ex.Allocation("j", "q", "training")})
    exported = {f.name for f in text_string_to_metric_families(generate_latest(ex.build_registry(col)).decode())}
    exported |= {f.name for f in ServiceMetrics().registry.collect()}
    recorded = {
        r["record"]
        for g in yaml.safe_load(open(os.path.join(PROM_DIR, "rules.yml")))["groups"]
        for r in g["rules"]
        if "record" in r
    }
    spec = importlib.util.spec_from_file_location("xpod_grafana_generate", os.path.join(GRAFANA_DIR, "generate.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    known = {_base(n) for n in exported | set(gen.PLANNED_METRICS)} | recorded | {"up", "ALERTS"}
    names = re.compile(r"\b((?:xpod_|grpc_server_)[a-z0-9_]+|[a-z_]+:[a-z0-9_:]+|up|ALERTS)\b")
    unknown = set()
    for where, expr in dashboard_exprs() + rule_exprs():
        for n in names.findall(re.sub(r'"[^"]*"', '""', expr)):  # label values are not names
            if _base(n) not in known and n not in known:
                unknown.add((where, n))
    assert not unknown, f"metric names nothing exports, records or plans: {sorted(unknown)}"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Prometheus running deploy/prometheus's config and rules, scraping every second an
    `xpod exporter` process (cpu + 8 simulated 910C), an exporter served in this process (so
    tests can change its devices and allocations) and an `xpod server` (heterogeneous.yaml) with
    an `xpod agent --simulate` of the same file.

    A scheduler that does not start fails only the scheduler test, not the others."""
    from xpod.backends.sim import SimBackend
    from xpod.runtime.agent import exporter as ex

    work = tmp_path_factory.mktemp("prom")
    sched_metrics = mh.free_port()
    server = [
        mh.XPOD,
        "server",
        "--cluster",
        CLUSTER,
        "--db",
        str(work / "xpod.db"),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        f"127.0.0.1:{sched_metrics}",
    ]
    config = yaml.safe_load(open(os.path.join(PROM_DIR, "prometheus.yml")))
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    # Rule groups with their own interval evaluate every 30 s; 1 s here so the rules have run
    # within the tests' bounded waits. Everything else is deploy/prometheus's as committed.
    rules = yaml.safe_load(open(os.path.join(PROM_DIR, "rules.yml")))
    for g in rules["groups"]:
        g.pop("interval", None)
    fast_rules = work / "rules.yml"
    fast_rules.write_text(yaml.safe_dump(rules, sort_keys=False))
    config["rule_files"] = [str(fast_rules)]
    sim = SimBackend([("ascend-910c", 4)])
    collector = ex.DeviceCollector(
        [ex.DeviceSource(sim, "inproc-node"), ex.DeviceSource(mh.FullBackend(n=1), "inproc-gpu")]
    )
    with contextlib.ExitStack() as stack:
        inproc = ex.serve(collector, "127.0.0.1:0")
        stack.callback(inproc.close)
        exporter_url = stack.enter_context(mh.exporter("ascend-910c:8", node="test-node"))
        grpc_addr, sched_error = None, None
        try:
            _, line, _r = stack.enter_context(mh.running(server, "listening on", timeout_s=60, cwd=str(work)))
            grpc_addr = re.search(r"listening on (\S+?);", line).group(1)
            # the descriptor's nodes get work once their agent registers them: a simulated pod
            agent = [mh.XPOD, "agent", "--simulate", CLUSTER, "--server", grpc_addr, "--state-dir", str(work / "agent")]
            stack.enter_context(mh.running(agent, "registered with", timeout_s=60, cwd=str(work)))
        except AssertionError as err:
            sched_error = f"xpod server or its agent did not start: {err}"
        jobs = {j["job_name"]: j for j in config["scrape_configs"]}
        jobs["xpod-agent"]["static_configs"][0]["targets"] = [exporter_url.split("/")[2], f"127.0.0.1:{inproc.port}"]
        jobs["xpod-scheduler"]["static_configs"][0]["targets"] = [f"127.0.0.1:{sched_metrics}"]
        prom = stack.enter_context(mh.prometheus(config, str(work)))
        prom.scheduler_addr, prom.scheduler_error = grpc_addr, sched_error
        prom.sim, prom.collector, prom.workdir = sim, collector, str(work)
        yield prom


@pytest.mark.parametrize("where, expr", [pytest.param(w, e, id=w) for w, e in dashboard_exprs() + rule_exprs()])
def test_every_promql_expression_parses_in_real_prometheus(live, where, expr):
    try:
        live.query(substitute(expr))
    except AssertionError as err:
        raise AssertionError(f"{where}: {err}") from None


def test_a_parse_error_is_caught(live):
    with pytest.raises(AssertionError, match="bad_data"):
        live.query("sum by (node (xpod_device_health)")


def test_prometheus_scrapes_the_exporter(live):
    live.wait_series('up{job="xpod-agent"} == 1', 1)
    # 8 simulated 910C packages = 16 dies, the scheduler's devices, each with its package label
    sim = live.wait_series('xpod_device_memory_total_bytes{job="xpod-agent", node="test-node", simulated="true"}', 16)
    assert {s["metric"]["vendor"] for s in sim} == {"ascend"}
    assert {s["metric"]["model"] for s in sim} == {"ascend-910c"}
    assert {float(s["value"][1]) for s in sim} == {64 * 2**30}
    assert sorted(int(s["metric"]["device"]) for s in sim) == list(range(1, 17))  # after the cpu device 0
    assert sorted({int(s["metric"]["package"]) for s in sim}) == list(range(1, 9))
    cpu = live.wait_series(
        'xpod_device_memory_total_bytes{job="xpod-agent", node="test-node", vendor="cpu", simulated="false"}', 1
    )
    assert all(float(s["value"][1]) > 0 and s["metric"]["node"] == "test-node" for s in cpu)
    healthy = live.wait_series('xpod_device_health{job="xpod-agent", node="test-node"} == 1', 17)
    assert len(healthy) == 17


def test_energy_clock_and_link_series_reach_prometheus(live):
    """The families only some tools report (here the in-process GPU node's backend): the
    dashboards' expressions over them return data in a real Prometheus."""
    live.wait_series('xpod_device_energy_joules_total{node="inproc-gpu"} > 0', 1)
    clock = live.wait_series('max by (node, package) (xpod_device_clock_hertz{node="inproc-gpu", clock="core"})', 1)
    assert float(clock[0]["value"][1]) == 1.98e9
    links = live.wait_series('sum by (fabric) (xpod_link_up{node="inproc-gpu"})', 1)
    assert links[0]["metric"] == {"fabric": "nvlink"} and float(links[0]["value"][1]) == 2
    # the simulated devices report none of them: no invented values
    assert live.query('xpod_device_energy_joules_total{simulated="true"}')["result"] == []


ALL_NPUS_JOB = """\
apiVersion: xpod/v1
kind: TrainingJob
metadata:
  name: all-npus
spec:
  tasks: 4
  devices:
    count: 8
    model: ascend-910b3
  queue: research
"""


def test_prometheus_scrapes_the_scheduler(live):
    assert live.scheduler_error is None, live.scheduler_error
    live.wait_series('up{job="xpod-scheduler"} == 1', 1)
    # The scheduler's endpoint: the issue's required names, and the devices of the descriptor.
    validate = subprocess.run(
        [mh.XPOD, "cluster", "validate", CLUSTER, "--json"], capture_output=True, text=True, timeout=60
    )
    expected_devices = json.loads(validate.stdout)["devices"]
    devices = live.wait_series('sum(xpod_scheduler_devices{job="xpod-scheduler"})', 1)
    assert float(devices[0]["value"][1]) == expected_devices
    # A submitted batch job (8 one-device Ascend tasks) shows up as placement attempts.
    job = os.path.join(mh.REPO, "examples", "jobs", "eval-batch.yaml")
    r = subprocess.run(
        [mh.XPOD, "submit", job, "--server", live.scheduler_addr], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    submitted = live.wait_series('xpod_scheduler_submitted_jobs_total{job="xpod-scheduler", queue="research"} == 1', 1)
    assert len(submitted) == 1
    attempts = live.wait_series(
        'xpod_scheduler_schedule_attempts_total{job="xpod-scheduler", result="scheduled"} >= 1', 1
    )
    assert float(attempts[0]["value"][1]) >= 1
    live.wait_series(
        'xpod_scheduler_scheduling_attempt_duration_seconds_count{job="xpod-scheduler", result="scheduled"} >= 1', 1
    )
    live.wait_series('xpod_scheduler_devices{job="xpod-scheduler", vendor="ascend", state="allocated"} >= 1', 1)
    # A gang of all 32 Ascend NPUs cannot start while the batch job holds some: it waits.
    job = os.path.join(live.workdir, "all-npus.yaml")
    with open(job, "w") as f:
        f.write(ALL_NPUS_JOB)
    r = subprocess.run(
        [mh.XPOD, "submit", job, "--server", live.scheduler_addr], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    pending = live.wait_series('xpod_scheduler_pending_jobs{job="xpod-scheduler", queue="research"} == 1', 1)
    assert pending[0]["metric"]["reason"]


def test_recording_rules_run_on_live_data(live):
    ratio = live.wait_series('vendor:xpod_device_memory_used:ratio{vendor="ascend", simulated="true"}', 1)
    assert float(ratio[0]["value"][1]) == 0.0  # simulated devices start with nothing in use
    cpu = live.wait_series('vendor:xpod_device_memory_used:ratio{vendor="cpu", simulated="false"}', 1)
    assert 0.0 < float(cpu[0]["value"][1]) < 1.0
    # Every rule loaded and evaluated without error.
    deadline = time.monotonic() + 20
    while True:
        _, doc = live.api("rules")
        rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
        if all(
            r.get("lastEvaluation", "").startswith("20") and not r["lastEvaluation"].startswith("0001") for r in rules
        ):
            break
        assert time.monotonic() < deadline, "rules not all evaluated within 20 s"
        time.sleep(0.5)
    assert len(rules) == len(rule_exprs())
    assert [r["name"] for r in rules if r["health"] != "ok"] == []


def test_allocation_join_and_unhealthy_alert_in_real_prometheus(live):
    """The in-process exporter: a job holds two devices, one device turns critical; Prometheus
    joins the allocation series and puts XpodDeviceUnhealthy in pending for that device."""
    from xpod.hal.device import Health
    from xpod.runtime.agent.exporter import Allocation

    live.sim.set_memory_used(0, 32 * 2**30)
    live.sim.set_memory_used(1, 64 * 2**30)
    # dies 0, 1 are package 0 (32 GiB used: 16 per die), dies 2, 3 package 1 (32 per die)
    live.collector.set_allocations(
        {
            ("inproc-node", 0): Allocation("job-42", "prod", "training"),
            ("inproc-node", 2): Allocation("job-42", "prod", "training"),
        }
    )
    live.sim.set_health(3, Health.CRITICAL)
    try:
        joined = live.wait_series(
            'sum by (job_id) (xpod_device_memory_used_bytes{node="inproc-node"}'
            " * on (node, device) group_left (job_id) xpod_device_allocation_info) == 48 * 2^30",
            1,
        )
        assert joined[0]["metric"] == {"job_id": "job-42"}
        pending = live.wait_series('ALERTS{alertname="XpodDeviceUnhealthy", node="inproc-node"}', 1)
        pending = live.wait_series('ALERTS{alertname="XpodDeviceUnhealthy", node="inproc-node"}', 2)
        # package 3 is dies 6 and 7: both are out
        assert sorted((a["metric"]["device"], a["metric"]["alertstate"]) for a in pending) == [
            ("6", "pending"),
            ("7", "pending"),
        ]
    finally:
        live.sim.set_health(3, Health.OK)
        live.sim.set_memory_used(0, 0)
        live.sim.set_memory_used(1, 0)
        live.collector.set_allocations({})
