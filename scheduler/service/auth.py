"""Who may call what: roles, calls and principals (the authorisation matrix).

Who a caller *is* (its bearer token, the token file) is the gRPC layer's business
(``scheduler.grpc.auth``); the in-process API takes the ``Principal`` it found.

Roles (the authorisation matrix, ``ALLOWED``; tests/service check every role x every call):

* ``admin``: every call, every queue.
* ``submitter``: the job calls, only on its queues (a job of another queue is PERMISSION_DENIED,
  never shown in lists or watches), and the read-only cluster calls.
* ``agent``: the node calls and the read-only cluster calls; no job calls (agents cannot submit).
  An agent speaks only for its ``nodes`` (the token file's ``nodes:`` hostlist, narrowed to the
  client certificate's SAN names under mTLS): a node call naming another node is
  PERMISSION_DENIED (``NODE_NOT_ALLOWED``). ``nodes=None`` (an agent token without ``nodes:``,
  or the open server's admin) speaks for every node.

An open server (no token file) treats every caller as ``OPEN_PRINCIPAL`` (admin).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable

from .errors import ApiError, Code


class Role(str, enum.Enum):
    ADMIN = "admin"
    AGENT = "agent"
    SUBMITTER = "submitter"


class Call(str, enum.Enum):
    """Every RPC of the xpod API (the gRPC method name is the value)."""

    SUBMIT_JOB = "SubmitJob"
    GET_JOB = "GetJob"
    LIST_JOBS = "ListJobs"
    CANCEL_JOB = "CancelJob"
    WATCH_JOBS = "WatchJobs"
    EXPLAIN_JOB = "ExplainJob"
    GET_MOE_HISTORY = "GetMoeHistory"
    REGISTER_NODES = "RegisterNodes"
    HEARTBEAT = "Heartbeat"
    WATCH_ASSIGNMENTS = "WatchAssignments"
    REPORT_TASK_STATUS = "ReportTaskStatus"
    REPORT_EXPERT_LOADS = "ReportExpertLoads"
    REPORT_LOAD = "ReportLoad"
    GET_CLUSTER = "GetCluster"
    LIST_NODES = "ListNodes"
    LIST_DEVICES = "ListDevices"


JOB_CALLS = frozenset(map(Call, "SubmitJob GetJob ListJobs CancelJob WatchJobs ExplainJob GetMoeHistory".split()))
NODE_CALLS = frozenset(
    map(Call, "RegisterNodes Heartbeat WatchAssignments ReportTaskStatus ReportExpertLoads ReportLoad".split())
)
CLUSTER_CALLS = frozenset({Call.GET_CLUSTER, Call.LIST_NODES, Call.LIST_DEVICES})

ALLOWED: dict[Role, frozenset[Call]] = {
    Role.ADMIN: frozenset(Call),
    Role.SUBMITTER: JOB_CALLS | CLUSTER_CALLS,
    Role.AGENT: NODE_CALLS | CLUSTER_CALLS,
}


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    queues: frozenset[str] = frozenset()  # submitters: the queues it owns; ignored for other roles
    nodes: frozenset[str] | None = None  # agents: the nodes it speaks for; None = every node

    def may_speak_for(self, node: str) -> bool:
        """Whether this caller may make node calls (register, heartbeat, assignments, task
        reports) for ``node``: admins always, agents for their nodes, submitters never."""
        if self.role is Role.ADMIN:
            return True
        return self.role is Role.AGENT and (self.nodes is None or node in self.nodes)

    def may_call(self, call: Call) -> bool:
        return call in ALLOWED[self.role]

    def may_use_queue(self, queue: str) -> bool:
        return self.role is Role.ADMIN or (self.role is Role.SUBMITTER and queue in self.queues)

    @property
    def all_queues(self) -> bool:
        return self.role is Role.ADMIN


OPEN_PRINCIPAL = Principal("anonymous", Role.ADMIN)


def authorize(principal: Principal, call: Call, queue: str | None = None) -> None:
    """PERMISSION_DENIED unless ``principal`` may make ``call`` (on ``queue``)."""
    if not principal.may_call(call):
        raise ApiError(
            Code.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
            f"{principal.name} ({principal.role.value}) may not call {call.value}",
            metadata={"principal": principal.name, "role": principal.role.value, "call": call.value},
        )
    if queue is not None and not principal.may_use_queue(queue):
        raise ApiError(
            Code.PERMISSION_DENIED,
            "QUEUE_NOT_ALLOWED",
            f"{principal.name} may not use queue {queue!r}",
            metadata={"principal": principal.name, "queue": queue},
        )


def authorize_nodes(principal: Principal, call: Call, nodes: Iterable[str], field: str) -> None:
    """A node call may name only the caller's nodes (``Principal.may_speak_for``)."""
    for name in nodes:
        if not principal.may_speak_for(name):
            raise ApiError(
                Code.PERMISSION_DENIED,
                "NODE_NOT_ALLOWED",
                f"{principal.name} ({principal.role.value}) may not call {call.value} for node {name[:253]!r}",
                metadata={"principal": principal.name, "node": name[:253], "call": call.value},
                field=field,
            )
