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
bottleneck link). The hierarchical algorithms run the inner steps inside one tier (``m`` ranks
per group; the model picks which, see ``CostModel.inner_tier_index``) and the cross step over
the wider tiers, at the slowest of them (``k = p/m`` ranks).
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

    #: the call size at which candidate inner tiers are compared (a gradient bucket's order)
    REFERENCE_BYTES = 64 * 2**20

    def _candidates(self) -> list[int]:
        # Tiers that split the ranks into k > 1 equal groups of m > 1 ranks, with a wider tier
        # above them for the cross step.
        out = []
        for i, t in enumerate(self.tiers[:-1]):
            m = len(t.groups[0])
            if len(t.groups) >= 2 and m >= 2 and all(len(g) == m for g in t.groups):
                out.append(i)
        return out

    def _hier_for(self, i: int, op: Op, nbytes: float) -> float:
        inner = self.tiers[i]
        # The cross step joins ranks of different inner groups: the slowest wider tier paces it.
        above = self.tiers[i + 1 :]
        outer = Link(max(t.latency_s for t in above), min(t.bandwidth_bytes_per_s for t in above))
        m, k = len(inner.groups[0]), len(inner.groups)
        return hierarchical_seconds(op, nbytes, m, k, Link(inner.latency_s, inner.bandwidth_bytes_per_s), outer)

    @property
    def inner_tier_index(self) -> int | None:
        """The tier the hierarchical algorithms run inside: among the tiers that split the
        ranks into equal groups, the one with the cheapest hierarchical all_reduce at
        ``REFERENCE_BYTES`` (the closest on a tie); None when no tier qualifies."""
        cands = self._candidates()
        if not cands:
            return None
        return min(cands, key=lambda i: (self._hier_for(i, Op.ALL_REDUCE, self.REFERENCE_BYTES), i))

    def hierarchy_shape(self) -> tuple[int, int] | None:
        """``(m, k)`` of the inner tier (``inner_tier_index``): ``k > 1`` equal groups of
        ``m > 1`` ranks, what the hierarchical algorithms need; None when no tier qualifies."""
        i = self.inner_tier_index
        if i is None:
            return None
        groups = self.tiers[i].groups
        return len(groups[0]), len(groups)

    def predict_seconds(self, op: Op, nbytes: float, algorithm: Algorithm) -> float | None:
        """Predicted seconds for ``algorithm`` (FLAT or HIERARCHICAL), None when it does not apply."""
        if not self.tiers:
            return None
        if algorithm is Algorithm.FLAT:
            i = self.inner_tier_index
            if op is Op.ALL_TO_ALL and i is not None:
                # Pairwise exchange: each rank's messages to its own group use the inner tier,
                # the rest the wider ones; no ring edge makes one link the bottleneck.
                n = self.world_size
                inner, above = self.tiers[i], self.tiers[i + 1 :]
                m = len(inner.groups[0])
                out_lat = max(t.latency_s for t in above)
                out_bw = min(t.bandwidth_bytes_per_s for t in above)
                return (
                    (m - 1) * inner.latency_s
                    + (m - 1) / n * nbytes / inner.bandwidth_bytes_per_s
                    + (n - m) * out_lat
                    + (n - m) / n * nbytes / out_bw
                )
            # Ring algorithms: every ring edge carries the same bytes, so the slowest tier the
            # ring crosses sets the pace.
            return flat_seconds(op, nbytes, self.world_size, self._spanned_link())
        if algorithm is Algorithm.HIERARCHICAL:
            i = self.inner_tier_index
            return None if i is None else self._hier_for(i, op, nbytes)
        return None

    def choose(self, op: Op, nbytes: float) -> Algorithm:
        """FLAT or HIERARCHICAL, whichever the model predicts faster (FLAT on a tie or when
        the hierarchy does not apply)."""
        hier = self.predict_seconds(op, nbytes, Algorithm.HIERARCHICAL)
        flat = self.predict_seconds(op, nbytes, Algorithm.FLAT)
        if hier is not None and flat is not None and hier < flat:
            return Algorithm.HIERARCHICAL
        return Algorithm.FLAT
