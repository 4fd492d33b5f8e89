"""autoscale: serving replicas follow the load their replicas report (``core.autoscale``)."""

from __future__ import annotations

from ..autoscale import ScaleRule
from ..framework import SKIP, SUCCESS, Plugin, Status, register, unresolvable
from ..model import Job, JobKind


@register
class AutoscalePlugin(Plugin):
    """Gives meaning to a serving job's ``autoscale`` (without this plugin such a job is
    refused). ``mode``: ``forecast`` (the default: spare capacity sized by the rises of the load
    seen within the job's ``autoscale.lead_s``), ``follow`` the load at a fixed margin
    (Kubernetes HPA's rule), or ``peak`` (always max replicas: serving reserved at its peak, the
    static-partition baseline). ``utilisation``: the share of its target a replica is meant to
    run at under ``follow`` (Knative's default target utilisation, 70 %: the rest is spare
    capacity for a rise not seen yet), and the margin ``forecast`` keeps while it has seen too
    little; ``lag_s``: how late the rule sees the load."""

    name = "autoscale"
    ARGS = {"utilisation": 0.7, "lag_s": 0.0, "mode": "forecast"}
    CHOICES = {"mode": ("forecast", "follow", "peak")}
    JOB_FIELDS = ("autoscale",)
    utilisation: float
    lag_s: float
    mode: str

    def pre_filter(self, job: Job) -> Status:
        if job.autoscale is None:
            return SKIP
        if job.kind is not JobKind.SERVING:
            return unresolvable(f"autoscale: only a serving job follows its load (this one is {job.kind.value})")
        return SUCCESS

    def scale_rule(self, job: Job) -> ScaleRule | None:
        if job.autoscale is None:
            return None
        return ScaleRule(
            utilisation=self.utilisation, lag_s=self.lag_s, peak=self.mode == "peak", forecast=self.mode == "forecast"
        )
