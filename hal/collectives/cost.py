"""An alpha-beta cost model for ring-style collectives over a tiered fabric.

A message of ``b`` bytes over a link of latency alpha and bandwidth beta costs
``alpha + b / beta`` (Hockney's model). The formulas below are the usual ring ones (Thakur,
Rabenseifner and Gropp, "Optimization of collective communication operations in MPICH",
IJHPCA 2005; Patarasuk and Yuan, JPDC 2009, for the bandwidth-optimal all_reduce):

- reduce_scatter / all_gather of ``S`` total bytes on ``p`` ranks: ``(p-1) alpha + (p-1)/p * S/beta``
- all_reduce: ``2 (p-1) alpha + 2 (p-1)/p * S/beta`` (reduce_scatter then all_gather)
- all_to_all (pairwise exchange), ``S`` bytes sent per rank: ``(p-1) alpha + (p-1)/p * S/beta``
- broadcast (pipelined chain, large messages): ``ceil(log2 p) alpha + S/beta``

A flat algorithm over ranks that span several tiers runs at the slowest spanned tier (its
bottleneck link). The hierarchical algorithms run the inner steps on the closest tier
(``m`` ranks per group) and the cross step on the outermost tier (``k = p/m`` ranks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .types import Algorithm, Op, TierSpec


@dataclasses.dataclass(frozen=True)
class Link:
    """The alpha-beta parameters of one step."""

    latency_s: float
    bandwidth_bytes_per_s: float


def _ring(p: int, total_bytes: float, link: Link, rounds: int = 1) -> float:
    if p <= 1:
        return 0.0
    return rounds * ((p - 1) * link.latency_s + (p - 1) / p * total_bytes / link.bandwidth_bytes_per_s)


def flat_seconds(op: Op, nbytes: float, p: int, link: Link) -> float:
    """Predicted time of the flat algorithm. ``nbytes`` follows nccl-tests' size convention:
    the buffer for all_reduce and broadcast, the gathered output for all_gather, the input for
    reduce_scatter and the bytes one rank sends for all_to_all."""
    if p <= 1:
        return 0.0
    if op is Op.ALL_REDUCE:
        return _ring(p, nbytes, link, rounds=2)
    if op is Op.BROADCAST:
        return math.ceil(math.log2(p)) * link.latency_s + nbytes / link.bandwidth_bytes_per_s
    return _ring(p, nbytes, link)


def hierarchical_seconds(op: Op, nbytes: float, m: int, k: int, inner: Link, outer: Link) -> float:
    """Predicted time of the two-level algorithm: ``m`` ranks per closest-tier group, ``k``
    groups (``p = m k``)."""
    p = m * k
    if p <= 1:
        return 0.0
    if op is Op.ALL_REDUCE:
        # reduce_scatter inside, all_reduce of one shard across, all_gather inside.
        return 2 * _ring(m, nbytes, inner) + _ring(k, nbytes / m, outer, rounds=2)
    if op is Op.ALL_GATHER:
        # all_gather of this group's share inside, then of whole group blocks across.
        return _ring(m, nbytes / k, inner) + _ring(k, nbytes, outer)
    if op is Op.ALL_TO_ALL:
        # every byte crosses the inner tier once (to the peer at the destination's position),
        # then the outer tier once; fewer, larger messages cross the slow tier.
        return _ring(m, nbytes, inner) + _ring(k, nbytes, outer)
    if op is Op.REDUCE_SCATTER:
        return _ring(m, nbytes, inner) + _ring(k, nbytes / m, outer)
    return flat_seconds(op, nbytes, p, outer)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Predicts flat and hierarchical times for one group of ranks on a tiered fabric and
    picks the cheaper. Built from the communicator's tiers (closest first)."""

    tiers: tuple[TierSpec, ...]
    world_size: int

    @classmethod
    def from_tiers(cls, tiers: Sequence[TierSpec], world_size: int) -> "CostModel":
        return cls(tuple(tiers), world_size)

    def _spanned_link(self) -> Link:
        # The flat ring's bottleneck: the closest tier whose one group holds every rank,
        # or the slowest tier when none does.
        for t in self.tiers:
            if len(t.groups) == 1:
                return Link(t.latency_s, t.bandwidth_bytes_per_s)
        slow = min(self.tiers, key=lambda t: t.bandwidth_bytes_per_s)
        return Link(max(t.latency_s for t in self.tiers), slow.bandwidth_bytes_per_s)

    def hierarchy_shape(self) -> tuple[int, int] | None:
        """``(m, k)`` when the closest tier splits the ranks into ``k > 1`` equal groups of
        ``m > 1`` ranks (what the hierarchical algorithms need), else None."""
        if len(self.tiers) < 2:
            return None
        groups = self.tiers[0].groups
        m = len(groups[0])
        if len(groups) < 2 or m < 2 or any(len(g) != m for g in groups):
            return None
        return m, len(groups)

    def predict_seconds(self, op: Op, nbytes: float, algorithm: Algorithm) -> float | None:
        """Predicted seconds for ``algorithm`` (FLAT or HIERARCHICAL), None when it does not apply."""
        if not self.tiers:
            return None
        if algorithm is Algorithm.FLAT:
            shape = self.hierarchy_shape()
            if op is Op.ALL_TO_ALL and shape is not None:
                # Pairwise exchange: each rank's messages to its own group use the inner tier,
                # the rest the outer one; no ring edge makes one link the bottleneck.
                m, _ = shape
                n = self.world_size
                inner, outer = self.tiers[0], self.tiers[-1]
                return ((m - 1) * inner.latency_s + (m - 1) / n * nbytes / inner.bandwidth_bytes_per_s
                        + (n - m) * outer.latency_s + (n - m) / n * nbytes / outer.bandwidth_bytes_per_s)
            # Ring algorithms: every ring edge carries the same bytes, so the slowest tier the
            # ring crosses sets the pace.
            return flat_seconds(op, nbytes, self.world_size, self._spanned_link())
        if algorithm is Algorithm.HIERARCHICAL:
            shape = self.hierarchy_shape()
            if shape is None:
                return None
            inner, outer = self.tiers[0], self.tiers[-1]
            return hierarchical_seconds(
                op, nbytes, shape[0], shape[1],
                Link(inner.latency_s, inner.bandwidth_bytes_per_s),
                Link(outer.latency_s, outer.bandwidth_bytes_per_s),
            )
        return None

    def choose(self, op: Op, nbytes: float) -> Algorithm:
        """FLAT or HIERARCHICAL, whichever the model predicts faster (FLAT on a tie or when
        the hierarchy does not apply)."""
        hier = self.predict_seconds(op, nbytes, Algorithm.HIERARCHICAL)
        flat = self.predict_seconds(op, nbytes, Algorithm.FLAT)
        if hier is not None and flat is not None and hier < flat:
            return Algorithm.HIERARCHICAL
        return Algorithm.FLAT
