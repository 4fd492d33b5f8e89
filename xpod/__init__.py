"""xpod: one control plane for heterogeneous AI accelerator pods.

The import package is assembled from the repository's top-level folders (see
``pyproject.toml``): ``xpod.hal`` (devices, topology, collectives API), ``xpod.backends``
(one folder per vendor), ``xpod.scheduler``, ``xpod.runtime`` and ``xpod.proto``.
"""

__version__ = "0.1.0"
