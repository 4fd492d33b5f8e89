"""Values shared by the communicator, the cost model and the benchmark.

``TierSpec`` is how a communicator learns the fabric: the topology API (``hal.topology``) or a
test builds a list of tiers, closest first, and hands it to ``Communicator``. Each tier says which
ranks share it (``groups``) and what one rank's link in that tier costs (alpha-beta model).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from xpod.hal.errors import XpodError


class ReduceOp(str, enum.Enum):
    """Reductions offered by ``all_reduce`` and ``reduce_scatter``."""

    SUM = "sum"
    AVG = "avg"  # sum divided by the group size; floating dtypes only
    MAX = "max"
    MIN = "min"


class Algorithm(str, enum.Enum):
    """How a collective is carried out.

    ``FLAT`` is the distributed library's own algorithm over the whole group; ``HIERARCHICAL``
    runs inside the closest tier first and across tiers second; ``SHM`` is the intra-host
    shared-memory all_reduce (CPU ranks of one host); ``AUTO`` lets the communicator choose
    (shared memory when every rank shares a host, else the cost model's cheaper of flat and
    hierarchical).
    """

    AUTO = "auto"
    FLAT = "flat"
    HIERARCHICAL = "hierarchical"
    SHM = "shm"


class Op(str, enum.Enum):
    """Collective operations the benchmark and cost model know."""

    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    ALL_TO_ALL = "all_to_all"
    BROADCAST = "broadcast"

    @property
    def bus_factor_fn(self):
        """nccl-tests' bus-bandwidth factor as a function of the group size n
        (NVIDIA/nccl-tests doc/PERFORMANCE.md): all_reduce 2(n-1)/n, all_gather,
        reduce_scatter and all_to_all (n-1)/n, broadcast 1."""
        if self is Op.ALL_REDUCE:
            return lambda n: 2.0 * (n - 1) / n
        if self is Op.BROADCAST:
            return lambda n: 1.0
        return lambda n: (n - 1) / n


class CollectiveError(XpodError):
    """A collective failed: a peer died, timed out, or the arguments do not agree."""


class CollectiveTimeout(CollectiveError):
    """A collective did not finish within the communicator's timeout (a peer hung or died)."""


@dataclasses.dataclass(frozen=True)
class TierSpec:
    """One tier of the fabric as the communicator sees it, closest tier first.

    ``groups`` partitions the ranks that share this tier's links (every rank appears in exactly
    one group of every tier; the last tier usually has one group with every rank).
    ``bandwidth_bytes_per_s`` is one rank's unidirectional bandwidth into this tier and
    ``latency_s`` the per-message latency (alpha); the cost model uses both.
    """

    name: str  # "node", "supernode", "pod", ...
    groups: tuple[tuple[int, ...], ...]  # ranks per group, each group in rank order of its members
    bandwidth_bytes_per_s: float
    latency_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(tuple(int(r) for r in g) for g in self.groups))
        if not self.groups or any(not g for g in self.groups):
            raise XpodError(f"tier {self.name!r}: groups must be non-empty lists of ranks")
        if self.bandwidth_bytes_per_s <= 0:
            raise XpodError(f"tier {self.name!r}: bandwidth_bytes_per_s must be > 0, got {self.bandwidth_bytes_per_s}")
        if self.latency_s < 0:
            raise XpodError(f"tier {self.name!r}: latency_s must be >= 0, got {self.latency_s}")

    def group_of(self, rank: int) -> tuple[int, ...]:
        for g in self.groups:
            if rank in g:
                return g
        raise XpodError(f"tier {self.name!r}: rank {rank} is in none of its groups")


def validate_tiers(tiers: Sequence[TierSpec], world_size: int) -> tuple[TierSpec, ...]:
    """Check that every tier partitions ``range(world_size)`` and that tiers nest (each group
    of tier i lies inside one group of tier i+1). Returns the tiers as a tuple."""
    tiers = tuple(tiers)
    everyone = set(range(world_size))
    for t in tiers:
        seen: list[int] = [r for g in t.groups for r in g]
        if sorted(seen) != sorted(everyone):
            raise XpodError(
                f"tier {t.name!r}: groups must cover ranks 0..{world_size - 1} exactly once, got {sorted(seen)}"
            )
    for inner, outer in zip(tiers, tiers[1:]):
        for g in inner.groups:
            if len({outer.group_of(r) for r in g}) != 1:
                raise XpodError(f"tier {inner.name!r} group {list(g)} spans several groups of tier {outer.name!r}")
    return tiers
