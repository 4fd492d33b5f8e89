"""The JSON Schema (draft 2020-12) of a cluster descriptor: the one source of its structure.

The cluster loader validates every file against this schema first (types, required keys,
unknown keys, enums, quantity syntax, counts >= 1), then checks what a schema cannot say
(hostlists, tier nesting, references between sections). ``hal/cluster_schema.json`` is this
schema written out (``xpod cluster schema``) for editors; a test keeps the two identical.
"""

from __future__ import annotations

from typing import Any

from .units import BANDWIDTH_PATTERN, BYTES_PATTERN, LATENCY_PATTERN

API_VERSION = "xpod/v1"
KIND = "Cluster"
PLANES = ("scale-up", "scale-out", "frontend")
#: link technologies a fabric may name
LINKS = ("SIO", "HCCS", "UB", "NVLink", "MLU-Link", "MTLink", "xGMI", "PCIe", "RoCE", "InfiniBand", "Ethernet")
VENDORS = ("ascend", "cambricon", "mthreads", "hygon", "cuda", "cpu")
JOB_KINDS = ("training", "serving", "batch", "interactive")
#: scopes every cluster has; topology levels (rack, supernode, ...) add to them
BUILTIN_SCOPES = ("package", "group", "node", "cluster")

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$", "maxLength": 63}
_LABELS = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "boolean"]},
    "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"},
}
_BYTES = {"type": ["integer", "string"], "minimum": 1, "pattern": BYTES_PATTERN}
_BANDWIDTH = {"type": ["integer", "string"], "minimum": 1, "pattern": BANDWIDTH_PATTERN}
_LATENCY = {"type": ["number", "string"], "minimum": 0, "pattern": LATENCY_PATTERN}
_COUNT = {"type": "integer", "minimum": 1}
_HOSTS = {"type": "string", "minLength": 1, "description": "Slurm hostlist, e.g. cm-n[00-47]"}


def schema_object(properties: dict[str, Any], required: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    """A JSON Schema object with exactly these properties (unknown keys are errors)."""
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def schema() -> dict[str, Any]:
    """The schema as a plain dict (a fresh copy each call)."""
    tier = schema_object(
        {
            "tier": {**_COUNT, "description": "1 = closest; higher tiers are wider and slower"},
            "name": _NAME,
            "scope": {
                "type": "string",
                "pattern": r"^[a-z][a-z0-9-]*$",
                "description": "package | group | node | a topology level (rack, supernode, ...) | cluster",
            },
            "groupSize": {**_COUNT, "description": "devices per group, for scope: group"},
            "bandwidth": {
                **_BANDWIDTH,
                "description": "per device, one direction: bytes/s or e.g. 392GB/s; omit when unknown",
            },
            "latency": {**_LATENCY, "description": "seconds or e.g. 1us"},
        },
        required=("tier", "scope"),
    )
    fabric = schema_object(
        {
            "name": _NAME,
            "plane": {"enum": list(PLANES)},
            "link": {"enum": list(LINKS)},
            "tiers": {"type": "array", "items": tier},
            "description": {"type": "string"},
        },
        required=("name", "plane"),
    )
    device_model = schema_object(
        {
            "vendor": {"enum": list(VENDORS)},
            "displayName": {"type": "string"},
            "memory": {**_BYTES, "description": "per package"},
            "bf16Tflops": {"type": "number", "exclusiveMinimum": 0, "description": "per package, dense"},
            "diesPerPackage": _COUNT,
            "schedulableUnit": {"enum": ["package", "die"]},
            "intraNodeLink": {"enum": list(LINKS)},
        },
        required=("vendor",),
        description="a device model not in the catalog",
    )
    domain = schema_object(
        {"name": _NAME, "level": {"type": "string"}, "hosts": _HOSTS, "labels": _LABELS},
        required=("name", "level", "hosts"),
    )
    node_group = schema_object(
        {
            "name": _NAME,
            "hosts": _HOSTS,
            "devices": schema_object(
                {"model": {"type": "string", "minLength": 1}, "packagesPerNode": _COUNT},
                required=("model", "packagesPerNode"),
            ),
            "cpu": schema_object({"model": {"type": "string"}, "sockets": _COUNT, "cores": _COUNT}),
            "memory": {**_BYTES, "description": "host memory per node"},
            "fabrics": {"type": "array", "items": _NAME, "description": "fabrics the nodes attach to; default all"},
            "labels": _LABELS,
        },
        required=("name", "hosts"),
    )
    pool = schema_object(
        {
            "name": _NAME,
            "nodeGroups": {"type": "array", "items": _NAME, "minItems": 1},
            "jobKinds": {"type": "array", "items": {"enum": list(JOB_KINDS)}},
            "labels": _LABELS,
        },
        required=("name", "nodeGroups"),
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:xpod:schema:cluster:v1",
        "title": "xpod cluster descriptor",
        "description": "Nodes, devices and fabrics of an accelerator cluster (apiVersion xpod/v1, kind Cluster).",
        **schema_object(
            {
                "apiVersion": {"const": API_VERSION},
                "kind": {"const": KIND},
                "metadata": schema_object(
                    {"name": _NAME, "labels": _LABELS, "annotations": _LABELS}, required=("name",)
                ),
                "spec": schema_object(
                    {
                        "deviceModels": {
                            "type": "object",
                            "additionalProperties": device_model,
                            "propertyNames": _NAME,
                        },
                        "fabrics": {"type": "array", "items": fabric},
                        "topology": schema_object(
                            {
                                "levels": {
                                    "type": "array",
                                    "items": {"type": "string", "pattern": r"^[a-z][a-z0-9-]*$"},
                                    "description": "outermost first, e.g. [supernode, rack, node]",
                                },
                                "domains": {"type": "array", "items": domain},
                            }
                        ),
                        "nodeGroups": {"type": "array", "items": node_group, "minItems": 1},
                        "pools": {"type": "array", "items": pool},
                    },
                    required=("nodeGroups",),
                ),
            },
            required=("apiVersion", "kind", "metadata", "spec"),
        ),
    }
