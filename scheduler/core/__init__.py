"""The scheduler core: pure values, the snapshot and its Statement, actions and policies.

Nothing here imports gRPC, SQLite, protobuf or the runtime; ``Scheduler`` (``scheduler.py``) is
the one seam the service drives.
"""

from .scheduler import Scheduler

__all__ = ["Scheduler"]
