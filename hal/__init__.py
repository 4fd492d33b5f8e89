"""The hardware abstraction layer: devices, the backend contract and registry, the device
catalog, cluster topology, collectives and launch environments. ``hal`` knows no vendor."""

from .backend import Backend, Capability, IntraNodeTopology, Link, VisibleDevicesVars, parse_visible_devices
from .device import DeviceInfo, Health, MetricsSample
from .errors import BackendUnavailable, CapabilityUnsupported, ToolOutputError, XpodError

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Capability",
    "CapabilityUnsupported",
    "DeviceInfo",
    "Health",
    "IntraNodeTopology",
    "Link",
    "MetricsSample",
    "ToolOutputError",
    "VisibleDevicesVars",
    "XpodError",
    "parse_visible_devices",
]
