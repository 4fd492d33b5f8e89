"""MoE expert placement (``placement``, ``robust``, ``incremental``), its scoring (``score``,
``bounds``), the EPLB baseline written from DeepSeek's description (``eplb``), token dispatch
under one named rule (``routing``, ``dispatch``), the token-level simulation (``simulate``),
SGLang's files (``io`` reads its recorder dumps, ``export`` writes ``--init-expert-location``)
and the live rebalancing loop (``rebalance``). Overview and figures: docs/moe.md."""

from .placement import Placement, PodShape, Policy, estimate_loads, place
from .score import PlacementScore, device_loads, score

__all__ = ["Placement", "PlacementScore", "PodShape", "Policy", "device_loads", "estimate_loads", "place", "score"]
