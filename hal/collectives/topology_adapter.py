"""From the cluster topology (``xpod.hal.topology``) to the communicator's ``TierSpec`` list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xpod.hal.errors import XpodError

from .types import TierSpec, validate_tiers


def tiers_from_topology(
    topology: Any,
    devices_of_ranks: Sequence[Any],
    *,
    default_bandwidth_bytes_per_s: float | None = None,
    default_latency_s: float | None = None,
) -> list[TierSpec]:
    """The tiers a job's ranks see, closest first: rank i runs on ``devices_of_ranks[i]`` (a
    ``topology.Device`` or its id, e.g. ``"cm-n00/3"``). Uses ``Topology.rank_tiers``, which
    keeps only the tiers that join more ranks than the closer ones; a tier's bandwidth and
    latency are those of its slowest fabric.

    A tier whose bandwidth or latency the cluster file leaves unknown takes the given default;
    with no default that is an ``XpodError`` naming the tier, since the cost model needs both.
    """
    out: list[TierSpec] = []
    for rt in topology.rank_tiers(list(devices_of_ranks)):
        name = f"{rt.scope} (tier {rt.number}: {'+'.join(rt.fabrics) or '-'})"
        bw = rt.bandwidth_bytes_per_s if rt.bandwidth_bytes_per_s is not None else default_bandwidth_bytes_per_s
        lat = rt.latency_seconds if rt.latency_seconds is not None else default_latency_s
        if bw is None or lat is None:
            field = "bandwidth" if bw is None else "latency"
            raise XpodError(
                f"topology tier {rt.number} ({rt.scope}, fabrics {', '.join(rt.fabrics)}) has no {field} in the "
                f"cluster descriptor; add it there or pass default_{'bandwidth_bytes_per_s' if bw is None else 'latency_s'}"
            )
        out.append(TierSpec(name=name, groups=rt.groups, bandwidth_bytes_per_s=float(bw), latency_s=float(lat)))
    return list(validate_tiers(out, len(devices_of_ranks)))
