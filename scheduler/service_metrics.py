"""Prometheus metrics of the scheduler service (names per research/ecosystem.md 1.4, prefix xpod_).

Counters are updated by ``SchedulerApi`` hooks; gauges are computed at scrape time from the
API's state (a custom collector), so they are never stale and cost nothing between scrapes.
Each server gets its own ``CollectorRegistry`` (tests run several in one process).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._api: Any = None
        self.schedule_attempts = Counter(
            "xpod_scheduler_schedule_attempts",
            "Jobs a scheduling cycle tried to place, by result (scheduled, unschedulable).",
            ["result"],
            registry=self.registry,
        )
        self.cycle_seconds = Histogram(
            "xpod_scheduler_scheduling_cycle_duration_seconds",
            "Wall time of one scheduling cycle of the core.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.submitted_jobs = Counter(
            "xpod_scheduler_submitted_jobs", "Jobs accepted (durably) by SubmitJob.", ["queue"], registry=self.registry
        )
        self.finished_jobs = Counter(
            "xpod_scheduler_finished_jobs", "Jobs that ended, by outcome.", ["queue", "kind", "outcome"], registry=self.registry
        )
        self.shed_requests = Counter(
            "xpod_scheduler_shed_requests", "Requests refused with RESOURCE_EXHAUSTED to shed load.", registry=self.registry
        )
        self.registry.register(_StateCollector(self))

    def attach(self, api: Any) -> None:
        self._api = api
        api.metrics = self

    # hooks called by SchedulerApi

    def submitted(self, queue: str) -> None:
        self.submitted_jobs.labels(queue=queue).inc()

    def shed(self) -> None:
        self.shed_requests.inc()

    def finished(self, queue: str, kind: str, outcome: str) -> None:
        self.finished_jobs.labels(queue=queue, kind=kind, outcome=outcome.lower()).inc()

    def cycle(self, outcome: Any, elapsed_s: float, api: Any) -> None:
        self.cycle_seconds.observe(elapsed_s)
        if outcome.bindings:
            self.schedule_attempts.labels(result="scheduled").inc(len(outcome.bindings))
        if outcome.pending:
            self.schedule_attempts.labels(result="unschedulable").inc(len(outcome.pending))


class _StateCollector:
    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        api = self._metrics._api
        pending = GaugeMetricFamily(
            "xpod_scheduler_pending_jobs", "Queued jobs by queue and pending reason.", labels=["queue", "reason"]
        )
        devices = GaugeMetricFamily(
            "xpod_scheduler_devices", "Schedulable devices by vendor and state (free, allocated, unhealthy).", labels=["vendor", "state"]
        )
        if api is not None:
            for (queue, reason), n in sorted(api.pending_counts().items()):
                pending.add_metric([queue, reason], n)
            for (vendor, state), n in sorted(api.device_counts().items()):
                devices.add_metric([vendor, state], n)
        yield pending
        yield devices
