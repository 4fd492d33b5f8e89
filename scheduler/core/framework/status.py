"""What an extension point answers: a ``Status`` whose code tells "fits / not my business"
from "does not fit now" from "can never fit" from "broken" (Kubernetes' framework status).

* ``SUCCESS``: the plugin agrees (the node fits, the permit is given, the job is valid).
* ``SKIP``: the plugin has nothing to say about this job; from ``pre_filter`` it means none
  of the plugin's per-job points run for the job (Kubernetes' PreFilter Skip).
* ``UNSCHEDULABLE``: does not fit now; it may once resources free up (another node, a later
  cycle). The job waits with the message.
* ``UNRESOLVABLE``: can never fit (on this node, or anywhere): waiting cannot help. From
  ``pre_filter`` the job is refused at submit with the message.
* ``ERROR``: the plugin is broken or met a state it cannot handle; the job waits with the
  message and the plugin's name, so the fault is visible rather than mistaken for a full
  cluster.
"""

from __future__ import annotations

import dataclasses
import enum


class Code(str, enum.Enum):
    SUCCESS = "success"
    SKIP = "skip"
    UNSCHEDULABLE = "unschedulable"
    UNRESOLVABLE = "unresolvable"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Status:
    code: Code
    message: str = ""  # one line a user reads (empty for SUCCESS and SKIP)

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS

    @property
    def skip(self) -> bool:
        return self.code is Code.SKIP


#: shared answers without a message (hot paths return these instead of allocating)
SUCCESS = Status(Code.SUCCESS)
SKIP = Status(Code.SKIP)
NOT_HERE = Status(Code.UNSCHEDULABLE)  # does not fit on this node now


def unschedulable(message: str) -> Status:
    return Status(Code.UNSCHEDULABLE, message)


def unresolvable(message: str) -> Status:
    return Status(Code.UNRESOLVABLE, message)


def error(message: str) -> Status:
    return Status(Code.ERROR, message)
