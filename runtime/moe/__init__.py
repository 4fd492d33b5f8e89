"""MoE expert placement (``placement``), its scoring (``score``), token dispatch over
all-to-all (``dispatch``) and the calibrated token-level traffic simulation (``simulate``)."""

from .placement import Placement, PodShape, Policy, estimate_loads, place
from .score import PlacementScore, device_loads, score

__all__ = ["Placement", "PlacementScore", "PodShape", "Policy", "device_loads", "estimate_loads", "place", "score"]
