"""Collectives on every backend: ``Communicator`` (flat, hierarchical and shared-memory
algorithms), ``TierSpec`` for the fabric tiers, an alpha-beta ``CostModel``, and the launch
environment (``LaunchEnv``). Importing this package does not import torch."""

from .cost import CostModel
from .env import LaunchEnv
from .topology_adapter import tiers_from_topology
from .types import Algorithm, CollectiveError, CollectiveTimeout, Op, ReduceOp, TierSpec, validate_tiers

__all__ = [
    "Algorithm",
    "CollectiveError",
    "CollectiveTimeout",
    "Communicator",
    "CostModel",
    "LaunchEnv",
    "Op",
    "ReduceOp",
    "TierSpec",
    "Work",
    "tiers_from_topology",
    "validate_tiers",
]


def __getattr__(name: str):
    # Communicator and Work pull in torch; load them on first use only.
    if name in ("Communicator", "Work"):
        from . import communicator

        return getattr(communicator, name)
    raise AttributeError(name)
