"""autoscale: serving replicas follow the load their replicas report (``core.autoscale``)."""

from __future__ import annotations

from ..autoscale import ScaleRule
from ..framework import SKIP, SUCCESS, Plugin, Status, register, unresolvable
from ..model import Job, JobKind


@register
class AutoscalePlugin(Plugin):
    """Gives meaning to a serving job's ``autoscale`` (without this plugin such a job is
    refused). ``utilisation``: the share of its target a replica is meant to run at (Knative's
    default target utilisation, 70 %: the rest is spare capacity for a rise not seen yet);
    ``lag_s``: how late the rule sees the load; ``mode``: ``follow`` the load, or ``peak``
    (always max replicas: serving reserved at its peak, the static-partition baseline)."""

    name = "autoscale"
    ARGS = {"utilisation": 0.7, "lag_s": 0.0, "mode": "follow"}
    CHOICES = {"mode": ("follow", "peak")}
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
        return ScaleRule(utilisation=self.utilisation, lag_s=self.lag_s, peak=self.mode == "peak")
