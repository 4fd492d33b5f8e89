"""From the cluster topology (``xpod.hal.topology``) to the communicator's ``TierSpec`` list:
``tiers_from_topology`` for a topology and the devices of the ranks, ``tiers_from_env`` for the
job's placement file the agent names in ``XPOD_TOPOLOGY`` (the scheduler renders it from the
placement it made: ``xpod.scheduler.core.fabric.placement_document``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from xpod.hal.errors import XpodError

from .types import TierSpec, validate_tiers


def tiers_from_topology(
    topology: Any,
    devices_of_ranks: Sequence[Any],
    *,
    default_bandwidth_bytes_per_s: float | None = None,
    default_latency_s: float | None = None,
    bounded_by_wider: bool = False,
) -> list[TierSpec]:
    """The tiers a job's ranks see, closest first: rank i runs on ``devices_of_ranks[i]`` (a
    ``topology.Device`` or its id, e.g. ``"cm-n00/3"``). Uses ``Topology.rank_tiers``, which
    keeps only the tiers that join more ranks than the closer ones; a tier's bandwidth and
    latency are those of its slowest fabric.

    A tier whose bandwidth or latency the cluster file leaves unknown takes, with
    ``bounded_by_wider``, the next wider tier's known value (a closer tier is no slower: the
    wider tier's bandwidth bounds it from below and its latency from above), else the given
    default; still unknown is an ``XpodError`` naming the tier, since the cost model needs both.
    """
    out: list[TierSpec] = []
    rank_tiers = topology.rank_tiers(list(devices_of_ranks))
    for k, rt in enumerate(rank_tiers):
        name = f"{rt.scope} (tier {rt.number}: {'+'.join(rt.fabrics) or '-'})"
        bw, lat = rt.bandwidth_bytes_per_s, rt.latency_seconds
        if bounded_by_wider:
            wider = rank_tiers[k + 1 :]
            if bw is None:
                bw = next((w.bandwidth_bytes_per_s for w in wider if w.bandwidth_bytes_per_s is not None), None)
            if lat is None:
                lat = next((w.latency_seconds for w in wider if w.latency_seconds is not None), None)
        bw = bw if bw is not None else default_bandwidth_bytes_per_s
        lat = lat if lat is not None else default_latency_s
        if bw is None or lat is None:
            field = "bandwidth" if bw is None else "latency"
            raise XpodError(
                f"topology tier {rt.number} ({rt.scope}, fabrics {', '.join(rt.fabrics)}) has no {field} in the "
                f"cluster descriptor; add it there or pass default_{'bandwidth_bytes_per_s' if bw is None else 'latency_s'}"
            )
        out.append(TierSpec(name=name, groups=rt.groups, bandwidth_bytes_per_s=float(bw), latency_s=float(lat)))
    return list(validate_tiers(out, len(devices_of_ranks)))


def tiers_from_env(world_size: int, environ: Mapping[str, str] | None = None) -> list[TierSpec] | None:
    """The tiers of this job's ranks from the placement file ``XPOD_TOPOLOGY`` names, or None
    when it names none. A file that cannot be read, or lists another number of ranks than the
    world has, is an ``XpodError`` naming the file. When the file leaves a tier's bandwidth or
    latency unknown even after bounding it by the wider tiers, the ranks run flat (one tier)
    and one line on stderr says why, rather than failing the job."""
    from xpod.hal.topology import TOPOLOGY_ENV, load_job_topology

    env = os.environ if environ is None else environ
    path = env.get(TOPOLOGY_ENV)
    if not path:
        return None
    job = load_job_topology(path)
    if len(job.ranks) != world_size:
        raise XpodError(
            f"{TOPOLOGY_ENV}={path}: the file lists {len(job.ranks)} ranks, this job's world has {world_size}"
        )
    try:
        return tiers_from_topology(job.topology, job.ranks, bounded_by_wider=True)
    except XpodError as err:
        print(f"xpod: {TOPOLOGY_ENV}={path}: {err}; collectives run flat", file=sys.stderr)
        return None
