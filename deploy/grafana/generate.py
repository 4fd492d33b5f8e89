#!/usr/bin/env python3
"""Generate xpod's Grafana dashboards (pod-overview.json, scheduler.json, collectives-moe.json).

    python deploy/grafana/generate.py            # rewrite the JSON files next to this script
    python deploy/grafana/generate.py --check    # exit 1 if a committed file differs (drift)
    python deploy/grafana/generate.py --out DIR  # write elsewhere

The JSON is the dashboard model Grafana imports (schemaVersion 39, Grafana 10.4 / 11), built as
plain dicts so nothing but the standard library is needed. Output is deterministic (fixed uids,
ids, key order), so the committed files can be checked for drift. Every PromQL expression here
is parsed by a real Prometheus in tests/metrics. Metric names: README "Metrics and dashboards".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

# Device selector shared by the device panels: the dashboard's variables.
DEV = 'node=~"$node", vendor=~"$vendor", simulated=~"$simulated"'


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    if fmt:
        t["format"] = fmt
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self._x = 0
        self._y = 0
        self._row_h = 0
        self._id = 0

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "id": self._next_id(),
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
            self._x = 0
            self._row_h = 0

    def add(self, panel: dict, w: int, h: int) -> None:
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        panel["id"] = self._next_id()
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)


def _refs(targets: list[dict]) -> list[dict]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


def stat(
    title: str, targets: list[dict], unit: str = "short", description: str = "", thresholds: list | None = None
) -> dict:
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}, "mappings": []},
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": _refs(targets),
        "title": title,
        "type": "stat",
    }


def timeseries(
    title: str,
    targets: list[dict],
    unit: str = "short",
    description: str = "",
    stack: bool = False,
    legend_calcs: list | None = None,
) -> dict:
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 30 if stack else 10,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table" if legend_calcs else "list",
                "placement": "bottom",
                "showLegend": True,
                "calcs": legend_calcs or [],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _refs(targets),
        "title": title,
        "type": "timeseries",
    }


def state_timeline(
    title: str, targets: list[dict], description: str, mappings: list, steps: list, unit: str = "short"
) -> dict:
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "mappings": mappings,
                "thresholds": {"mode": "absolute", "steps": steps},
                "custom": {"fillOpacity": 80, "lineWidth": 0},
            },
            "overrides": [],
        },
        "options": {
            "alignValue": "center",
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "never",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": _refs(targets),
        "title": title,
        "type": "state-timeline",
    }


def table(
    title: str, targets: list[dict], description: str = "", exclude: tuple[str, ...] = ("Time", "__name__")
) -> dict:
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        },
        "targets": _refs(targets),
        "transformations": [{"id": "organize", "options": {"excludeByName": {k: True for k in exclude}}}],
        "title": title,
        "type": "table",
    }


def bargauge(title: str, targets: list[dict], unit: str, description: str = "", max_value: float | None = None) -> dict:
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "thresholds": {
            "mode": "absolute",
            "steps": [
                {"color": "green", "value": None},
                {"color": "orange", "value": 1.5},
                {"color": "red", "value": 2},
            ],
        },
    }
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "datasource": DS,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
        },
        "targets": _refs(targets),
        "title": title,
        "type": "bargauge",
    }


def datasource_var() -> dict:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_var(name: str, label: str, query: str, multi: bool = True) -> dict:
    """A variable from ``label_values(SELECTOR, LABEL)`` (Grafana's Prometheus helper; the
    SELECTOR inside is PromQL and is parsed by the tests)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,  # on time-range change: nodes come and go
        "includeAll": True,
        "allValue": ".*",
        "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 3,  # numerical-aware ascending: node-2 before node-10
        "hide": 0,
        "regex": "",
    }


def custom_var(name: str, label: str, values: list[str]) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def dashboard(uid: str, title: str, description: str, tags: list[str], variables: list[dict], layout: Layout) -> dict:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {
                "title": "xpod dashboards",
                "type": "dashboards",
                "tags": ["xpod"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": tags,
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
    }


#: Metric names the dashboards and rules use that no xpod component exports yet (ecosystem.md
#: 1.4 names); their panels stay empty until one does. tests/metrics checks that every other name
#: a dashboard or rule uses is exported (exporter, scheduler) or recorded (rules.yml), so a
#: misspelt metric cannot hide as an empty panel.
PLANNED_METRICS = (
    "xpod_collective_duration_seconds",  # histogram {op, backend, group_size}
    "xpod_collective_bytes_total",  # {op, backend}
    "xpod_collective_errors_total",  # {op, backend, code}
    "xpod_link_transmit_bytes_total",  # {node, device, link, fabric}
    "xpod_link_receive_bytes_total",
    "xpod_moe_load_imbalance_ratio",  # {layer}: max / mean tokens per device
    "xpod_moe_device_tokens_total",  # {node, device}
    "xpod_moe_rebalances_total",
    "xpod_moe_rebalance_duration_seconds",  # histogram
)

HEALTH_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "1": {"text": "healthy", "color": "green", "index": 0},
            "0": {"text": "unhealthy", "color": "red", "index": 1},
        },
    },
    {
        "type": "special",
        "options": {"match": "null", "result": {"text": "no data", "color": "transparent", "index": 2}},
    },
]
UTIL_STEPS = [
    {"color": "#1f3d7a", "value": None},
    {"color": "blue", "value": 0.25},
    {"color": "green", "value": 0.5},
    {"color": "yellow", "value": 0.75},
    {"color": "red", "value": 0.95},
]


def pod_overview() -> dict:
    lay = Layout()
    lay.row("Pod")
    lay.add(
        stat(
            "Devices",
            [target(f"sum by (vendor) (xpod_devices{{{DEV}}})", "{{vendor}}")],
            description="Devices the exporters see, by vendor.",
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Unhealthy devices",
            [target(f"count(xpod_device_health{{{DEV}}} == 0) or vector(0)", "unhealthy")],
            description="Devices in alarm or critical state: out of placement.",
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Allocated devices",
            [target('count(xpod_device_allocation_info{node=~"$node"}) or vector(0)', "allocated")],
            description="Devices a job holds now (xpod_device_allocation_info).",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Accelerator memory used",
            [
                target(
                    f'sum(xpod_device_memory_used_bytes{{{DEV}, vendor!="cpu"}}) / sum(xpod_device_memory_total_bytes{{{DEV}, vendor!="cpu"}})',
                    "used",
                )
            ],
            unit="percentunit",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 0.75},
                {"color": "red", "value": 0.9},
            ],
        ),
        5,
        4,
    )
    lay.add(
        stat(
            "Power",
            [target(f"sum(max by (node, package) (xpod_device_power_watts{{{DEV}}}))", "power")],
            unit="watt",
            description="Sum over packages that report power (a 910C package's reading is on both its dies: counted once).",
        ),
        5,
        4,
    )

    lay.row("Node x device grid")
    lay.add(
        state_timeline(
            "Device health (one row per node/device)",
            [target(f"xpod_device_health{{{DEV}}}", "{{node}} / {{device}} {{model}}")],
            "1 = may take new work, 0 = alarm or critical. A CloudMatrix384 is 48 nodes x 16 dies = 768 rows: filter by node.",
            HEALTH_MAPPINGS,
            [{"color": "red", "value": None}, {"color": "green", "value": 1}],
        ),
        24,
        12,
    )
    lay.add(
        state_timeline(
            "Device utilisation (one row per node/device)",
            [target(f"xpod_device_utilization_ratio{{{DEV}}}", "{{node}} / {{device}} {{model}}")],
            "Busy fraction 0..1 per device, coloured by band.",
            [],
            UTIL_STEPS,
            unit="percentunit",
        ),
        24,
        12,
    )
    lay.add(
        state_timeline(
            "Node utilisation (mean over the node's devices)",
            [target(f"avg by (node, vendor) (xpod_device_utilization_ratio{{{DEV}}})", "{{node}} {{vendor}}")],
            "One row per node and vendor: the fleet view that stays readable at 48 nodes.",
            [],
            UTIL_STEPS,
            unit="percentunit",
        ),
        24,
        10,
    )
    lay.add(
        table(
            "Unhealthy devices",
            [
                target(
                    f"(xpod_device_health_state{{{DEV}}} == 1) and on (node, device) (xpod_device_health{{{DEV}}} == 0)",
                    instant=True,
                    fmt="table",
                )
            ],
            description="Devices out of placement now, with their health state.",
            exclude=("Time", "__name__", "Value"),
        ),
        12,
        8,
    )
    lay.add(
        table(
            "Allocations",
            [target('xpod_device_allocation_info{node=~"$node"}', instant=True, fmt="table")],
            description="Which job holds which device (the join series).",
            exclude=("Time", "__name__", "Value"),
        ),
        12,
        8,
    )

    lay.row("Memory, temperature, power")
    lay.add(
        timeseries(
            "Memory used",
            [target(f"xpod_device_memory_used_bytes{{{DEV}}}", "{{node}} / {{device}}")],
            unit="bytes",
            legend_calcs=["lastNotNull", "max"],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Memory used by vendor",
            [
                target(f"sum by (vendor) (xpod_device_memory_used_bytes{{{DEV}}})", "{{vendor}} used"),
                target(f"sum by (vendor) (xpod_device_memory_total_bytes{{{DEV}}})", "{{vendor}} total"),
            ],
            unit="bytes",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Temperature",
            [target(f"xpod_device_temperature_celsius{{{DEV}}}", "{{node}} / {{device}}")],
            unit="celsius",
            legend_calcs=["mean", "lastNotNull", "max"],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Power",
            [target(f"xpod_device_power_watts{{{DEV}}}", "{{node}} / {{device}}")],
            unit="watt",
            legend_calcs=["mean", "lastNotNull", "max"],
        ),
        12,
        8,
    )

    lay.row("Energy, clocks, links")
    lay.add(
        timeseries(
            "Power from the energy counter",
            [
                target(
                    f"max by (node, package) (rate(xpod_device_energy_joules_total{{{DEV}}}[$__rate_interval]))",
                    "{{node}} / package {{package}}",
                )
            ],
            unit="watt",
            description="Joules per second of xpod_device_energy_joules_total, per package; only devices whose tool reports energy.",
            legend_calcs=["mean", "max"],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Core clock (SM / AI core)",
            [
                target(
                    f'max by (node, package) (xpod_device_clock_hertz{{{DEV}, clock="core"}})',
                    "{{node}} / package {{package}}",
                )
            ],
            unit="hertz",
            legend_calcs=["lastNotNull", "min"],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Links up by fabric",
            [
                target(f"sum by (fabric) (xpod_link_up{{{DEV}}})", "{{fabric}} up"),
                target(f"count by (fabric) (xpod_link_up{{{DEV}}} == 0)", "{{fabric}} down"),
            ],
            description="Device links (HCCS, UB, NVLink, ...) the tools report; a 910C package's links show on both dies.",
        ),
        8,
        8,
    )

    lay.row("Jobs on devices")
    lay.add(
        timeseries(
            "Utilisation by job",
            [
                target(
                    f"avg by (job_id) (xpod_device_utilization_ratio{{{DEV}}} * on (node, device) group_left (job_id) xpod_device_allocation_info)",
                    "{{job_id}}",
                )
            ],
            unit="percentunit",
            description="Mean utilisation of the devices each job holds (device series joined with xpod_device_allocation_info).",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Memory by job",
            [
                target(
                    f"sum by (job_id) (xpod_device_memory_used_bytes{{{DEV}}} * on (node, device) group_left (job_id) xpod_device_allocation_info)",
                    "{{job_id}}",
                )
            ],
            unit="bytes",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Exporter reads",
            [
                target("xpod_exporter_collector_duration_seconds", "{{node}} {{backend}}"),
                target(
                    "sum by (node, backend) (rate(xpod_exporter_collector_errors_total[$__rate_interval]))",
                    "{{node}} {{backend}} errors/s",
                ),
            ],
            unit="s",
            description="Time each backend read takes per scrape, and failed reads.",
        ),
        24,
        6,
    )
    variables = [
        datasource_var(),
        query_var("node", "Node", "label_values(xpod_device_info, node)"),
        query_var("vendor", "Vendor", 'label_values(xpod_device_info{node=~"$node"}, vendor)'),
        custom_var("simulated", "Simulated", ["false", "true"]),
    ]
    return dashboard(
        "xpod-pod-overview",
        "xpod / Pod overview",
        "Every device of the pod: health and utilisation as a node x device grid, memory, temperature, power, and which job holds what.",
        ["xpod", "devices"],
        variables,
        lay,
    )


def scheduler() -> dict:
    lay = Layout()
    q = 'queue=~"$queue"'
    ri = "$__rate_interval"
    lay.row("Queue")
    lay.add(stat("Pending jobs", [target(f"sum(xpod_scheduler_pending_jobs{{{q}}})", "pending")]), 4, 4)
    lay.add(stat("Running jobs", [target(f"sum(xpod_scheduler_running_jobs{{{q}}})", "running")]), 4, 4)
    lay.add(
        stat(
            "Free devices",
            [target('sum by (vendor) (xpod_scheduler_devices{state="free"})', "{{vendor}}")],
            description="Healthy devices no job holds.",
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "NotReady nodes",
            [target('sum(xpod_scheduler_nodes{state="not_ready"}) or vector(0)', "not ready")],
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Placement success",
            [
                target(
                    f'sum(rate(xpod_scheduler_schedule_attempts_total{{result="scheduled"}}[{ri}])) / sum(rate(xpod_scheduler_schedule_attempts_total[{ri}]))',
                    "scheduled",
                )
            ],
            unit="percentunit",
        ),
        6,
        4,
    )
    lay.add(
        timeseries(
            "Pending jobs by queue and reason",
            [target(f"sum by (queue, reason) (xpod_scheduler_pending_jobs{{{q}}})", "{{queue}}: {{reason}}")],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Queue wait (submit to placed)",
            [
                target(
                    f"histogram_quantile(0.5, sum by (queue, le) (rate(xpod_scheduler_queue_wait_seconds_bucket{{{q}}}[{ri}])))",
                    "{{queue}} p50",
                ),
                target(
                    f"histogram_quantile(0.95, sum by (queue, le) (rate(xpod_scheduler_queue_wait_seconds_bucket{{{q}}}[{ri}])))",
                    "{{queue}} p95",
                ),
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Jobs submitted and finished",
            [
                target(
                    f"sum by (queue) (rate(xpod_scheduler_submitted_jobs_total{{{q}}}[{ri}]))", "{{queue}} submitted"
                ),
                target(
                    f"sum by (queue, outcome) (rate(xpod_scheduler_finished_jobs_total{{{q}}}[{ri}]))",
                    "{{queue}} {{outcome}}",
                ),
            ],
            unit="reqps",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Running jobs by kind",
            [target(f"sum by (queue, kind) (xpod_scheduler_running_jobs{{{q}}})", "{{queue}} {{kind}}")],
            stack=True,
        ),
        12,
        8,
    )

    lay.row("Placement")
    lay.add(
        timeseries(
            "Placement attempts by result",
            [target(f"sum by (result) (rate(xpod_scheduler_schedule_attempts_total[{ri}]))", "{{result}}")],
            unit="ops",
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Scheduling cycle duration",
            [
                target(
                    f"histogram_quantile(0.5, sum by (le) (rate(xpod_scheduler_scheduling_cycle_duration_seconds_bucket[{ri}])))",
                    "p50",
                ),
                target(
                    f"histogram_quantile(0.99, sum by (le) (rate(xpod_scheduler_scheduling_cycle_duration_seconds_bucket[{ri}])))",
                    "p99",
                ),
                target(
                    f"sum(rate(xpod_scheduler_scheduling_cycle_duration_seconds_sum[{ri}])) / sum(rate(xpod_scheduler_scheduling_cycle_duration_seconds_count[{ri}]))",
                    "mean",
                ),
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Placement attempt duration by result",
            [
                target(
                    f"histogram_quantile(0.99, sum by (le, result) (rate(xpod_scheduler_scheduling_attempt_duration_seconds_bucket[{ri}])))",
                    "p99 {{result}}",
                ),
                target(
                    f"sum by (result) (rate(xpod_scheduler_scheduling_attempt_duration_seconds_sum[{ri}])) / sum by (result) (rate(xpod_scheduler_scheduling_attempt_duration_seconds_count[{ri}]))",
                    "mean {{result}}",
                ),
            ],
            unit="s",
            description="Time the core spent searching a placement for one job in one cycle.",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Preemptions and evictions",
            [
                target(f"sum(rate(xpod_scheduler_preemption_attempts_total[{ri}]))", "preemption attempts"),
                target(
                    f"sum by (reason) (rate(xpod_scheduler_evicted_jobs_total{{{q}}}[{ri}]))", "evicted: {{reason}}"
                ),
            ],
            unit="ops",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Shed requests",
            [target(f"sum(rate(xpod_scheduler_shed_requests_total[{ri}]))", "RESOURCE_EXHAUSTED")],
            unit="reqps",
            description="Requests refused to shed load.",
        ),
        12,
        8,
    )

    lay.row("Devices")
    lay.add(
        timeseries("Devices by state", [target("sum by (state) (xpod_scheduler_devices)", "{{state}}")], stack=True),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Devices by vendor and state",
            [target("sum by (vendor, state) (xpod_scheduler_devices)", "{{vendor}} {{state}}")],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Largest free block",
            [target("max by (pool, level) (xpod_scheduler_largest_free_block_devices)", "{{pool}} per {{level}}")],
            description="The biggest gang that would fit now, per node and per super-node: fragmentation.",
        ),
        8,
        8,
    )
    lay.add(
        timeseries("Nodes by state", [target("sum by (state) (xpod_scheduler_nodes)", "{{state}}")], stack=True), 12, 8
    )
    lay.add(
        timeseries(
            "Degraded serving jobs",
            [target(f"sum by (queue) (xpod_scheduler_degraded_jobs{{{q}}})", "{{queue}}")],
            description="Serving jobs running below their min replicas while lost replicas are replaced alone (the job stays RUNNING).",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Allocated devices per queue",
            [target(f"sum by (queue) (xpod_device_allocation_info{{{q}}})", "{{queue}}")],
            description="From the exporters' allocation join series: what the agents hold.",
            stack=True,
        ),
        12,
        8,
    )

    lay.row("gRPC API")
    lay.add(
        timeseries(
            "Requests by method and code",
            [
                target(
                    f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{job="xpod-scheduler"}}[{ri}]))',
                    "{{grpc_method}} {{grpc_code}}",
                )
            ],
            unit="reqps",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Handling time p99 by method",
            [
                target(
                    f'histogram_quantile(0.99, sum by (grpc_method, le) (rate(grpc_server_handling_seconds_bucket{{job="xpod-scheduler"}}[{ri}])))',
                    "{{grpc_method}}",
                )
            ],
            unit="s",
        ),
        12,
        8,
    )
    variables = [datasource_var(), query_var("queue", "Queue", "label_values(xpod_scheduler_pending_jobs, queue)")]
    return dashboard(
        "xpod-scheduler",
        "xpod / Scheduler",
        "Queues, placement attempts and latency, devices by state, fragmentation, gRPC API.",
        ["xpod", "scheduler"],
        variables,
        lay,
    )


def collectives_moe() -> dict:
    lay = Layout()
    ri = "$__rate_interval"
    sel = 'op=~"$op", backend=~"$backend"'
    lay.row("Collectives")
    lay.add(
        timeseries(
            "Latency p99 by op",
            [
                target(
                    f"histogram_quantile(0.99, sum by (op, backend, le) (rate(xpod_collective_duration_seconds_bucket{{{sel}}}[{ri}])))",
                    "{{op}} {{backend}}",
                )
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Latency p50 by op and group size",
            [
                target(
                    f"histogram_quantile(0.5, sum by (op, group_size, le) (rate(xpod_collective_duration_seconds_bucket{{{sel}}}[{ri}])))",
                    "{{op}} x{{group_size}}",
                )
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Bytes by op",
            [target(f"sum by (op, backend) (rate(xpod_collective_bytes_total{{{sel}}}[{ri}]))", "{{op}} {{backend}}")],
            unit="Bps",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Collective errors",
            [
                target(
                    f"sum by (op, backend, code) (rate(xpod_collective_errors_total{{{sel}}}[{ri}]))", "{{op}} {{code}}"
                )
            ],
            unit="ops",
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Link traffic by fabric",
            [
                target(f"sum by (fabric) (rate(xpod_link_transmit_bytes_total[{ri}]))", "{{fabric}} tx"),
                target(f"sum by (fabric) (rate(xpod_link_receive_bytes_total[{ri}]))", "{{fabric}} rx"),
            ],
            unit="Bps",
        ),
        24,
        8,
    )
    lay.row("MoE")
    lay.add(
        bargauge(
            "Load imbalance by layer (max / mean tokens per device)",
            [target("max by (layer) (xpod_moe_load_imbalance_ratio)", "layer {{layer}}")],
            unit="none",
            description="1.0 is perfect balance; expert placement (EPLB-style) keeps it low.",
        ),
        12,
        10,
    )
    lay.add(
        timeseries(
            "Load imbalance over time",
            [
                target("max(xpod_moe_load_imbalance_ratio)", "worst layer"),
                target("avg(xpod_moe_load_imbalance_ratio)", "mean over layers"),
            ],
        ),
        12,
        10,
    )
    lay.add(
        state_timeline(
            "Tokens per device (one row per node/device)",
            [target(f"sum by (node, device) (rate(xpod_moe_device_tokens_total[{ri}]))", "{{node}} / {{device}}")],
            "Tokens routed to each device's experts per second: hot devices stand out.",
            [],
            [{"color": "blue", "value": None}],
            unit="short",
        ),
        24,
        10,
    )
    lay.add(
        timeseries(
            "Rebalances",
            [
                target("sum(increase(xpod_moe_rebalances_total[1h]))", "rebalances per hour"),
                target(
                    f"histogram_quantile(0.95, sum by (le) (rate(xpod_moe_rebalance_duration_seconds_bucket[{ri}])))",
                    "p95 duration (s)",
                ),
            ],
        ),
        24,
        8,
    )
    variables = [
        datasource_var(),
        query_var("op", "Op", "label_values(xpod_collective_duration_seconds_count, op)"),
        query_var("backend", "Backend", "label_values(xpod_collective_duration_seconds_count, backend)"),
    ]
    return dashboard(
        "xpod-collectives-moe",
        "xpod / Collectives and MoE",
        "Collective latency and bytes by op and backend, link traffic by fabric, MoE load balance by layer and per device.",
        ["xpod", "collectives", "moe"],
        variables,
        lay,
    )


DASHBOARDS = {
    "pod-overview.json": pod_overview,
    "scheduler.json": scheduler,
    "collectives-moe.json": collectives_moe,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="directory to write into (default: next to this script)")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out; exit 1 on any difference")
    args = ap.parse_args(argv)
    drift = []
    for name, build in DASHBOARDS.items():
        path = os.path.join(args.out, name)
        text = render(build)
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                drift.append(path)
        else:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if drift:
        print(
            f"generate.py: {', '.join(drift)} differ from the generator; run python deploy/grafana/generate.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
