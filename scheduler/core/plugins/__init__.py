"""The built-in plugins, one module each (``ascend/`` for Huawei MindCluster's rules).

Importing this package registers them (``framework.register``); a profile names them in
``policies``. ``DEFAULT`` is the order ``xpod server`` runs with no profile.
"""

from . import (
    ascend,
    autoscale,
    bestfit,
    binpack,
    drf,
    fgd,
    first_fit,
    fragmentation,
    gang,
    las,
    lifetime,
    node_selector,
    priority,
    random_fit,
    shortest_remaining,
    spread,
    topology,
)

#: the default profile's plugins, in order
DEFAULT = (
    "gang",
    "topology",
    "node-selector",
    "ascend",
    "binpack",
    "fragmentation",
    "drf",
    "shortest-remaining",
    "autoscale",
)

__all__ = [
    "DEFAULT",
    "ascend",
    "autoscale",
    "bestfit",
    "fgd",
    "random_fit",
    "binpack",
    "drf",
    "first_fit",
    "fragmentation",
    "gang",
    "las",
    "lifetime",
    "node_selector",
    "priority",
    "shortest_remaining",
    "spread",
    "topology",
]
