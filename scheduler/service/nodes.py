"""``NodeRegistry``: the sole owner of the nodes, their heartbeats and their readiness.

A node's life, as in Slurm and Kubernetes (``NodeStatus``): ``unknown`` (declared by the
cluster file, no agent yet: nothing is placed there, and a job only such nodes could hold waits
"waiting for agents: R of N nodes have registered"), ``ready`` (its agent registered it and
heartbeats; after a server restart, with a full node timeout to heartbeat again), ``not_ready``
(heartbeats stopped longer than the node timeout, ``service.liveness``).

Every node reaches the core with its catalog facts, once, at registration: a declared node with
the devices its agent found keeps the descriptor's facts; any other gets them from the catalog
(``core_node``). Heartbeats only stamp the time and compare health under the lock (no store
write, no core call): cheap enough for the event loop, for a thousand nodes at once.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import re
import threading
from typing import Callable, Iterable, Sequence

from xpod.hal.device import Health
from xpod.scheduler.contract import SIMULATED_LABEL, NodeRecord, record_of
from xpod.scheduler.core.from_cluster import UNBOUNDED_CPU_MILLI, node_from_devices
from xpod.scheduler.core.model import Node
from xpod.scheduler.store import NodeWrite, Store

from .admission import DEFAULT_TASK_CPU_MILLI, TASKS_PER_NODE
from .core_link import CoreLink
from .errors import ApiError, invalid

#: what the core's pending reasons say about nodes that are not ready
WAITING_FOR_AGENTS = "waiting for agents"
HEARTBEATS_STOPPED = "heartbeats stopped"


#: node names: what a host name may hold (no control characters reach terminals or metrics)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
_MAX_LABELS = 64
_MAX_LABEL_VALUE = 253


def check_records(records: Sequence[NodeRecord]) -> None:
    """INVALID_ARGUMENT (reason INVALID_NODE, naming the field) for the first record an agent
    may not register: a name that is no host name, bad labels, devices out of order, without
    vendor or model, or negative sizes; or a name given twice."""
    for i, node in enumerate(records):
        where = f"nodes[{i}]"

        def bad(message: str, field: str = "") -> ApiError:
            return invalid("INVALID_NODE", f"{where}{message}", f"{where}{field}")

        if not _NODE_NAME.match(node.name):
            raise bad(
                f".name {node.name[:64]!r} must be 1..253 of A-Z a-z 0-9 . _ - (starting with a letter or digit)",
                ".name",
            )
        if len(node.labels) > _MAX_LABELS:
            raise bad(f".labels: at most {_MAX_LABELS} labels", ".labels")
        for key, value in node.labels:
            if not _LABEL_KEY.match(key) or len(value) > _MAX_LABEL_VALUE or not value.isprintable():
                raise bad(
                    f".labels: {key[:64]!r}={value[:64]!r}: keys are 1..253 of A-Z a-z 0-9 . _ / -, "
                    f"values at most {_MAX_LABEL_VALUE} printable characters",
                    ".labels",
                )
        if [d.index for d in node.devices] != list(range(len(node.devices))):
            raise bad(".devices: indices must be 0..N-1 in order", ".devices")
        for d in node.devices:
            if not d.model or not d.vendor:
                raise bad(f".devices[{d.index}]: vendor and model are required", ".devices.model")
            if any(len(text) > 253 or not text.isprintable() for text in (d.vendor, d.model)):
                raise bad(
                    f".devices[{d.index}]: vendor and model are at most 253 printable characters", ".devices.model"
                )
        if node.cpu_milli < 0 or node.memory_bytes < 0 or any(d.memory_total_bytes < 0 for d in node.devices):
            raise bad(": cpu_milli and memory sizes must be >= 0")
    if len({n.name for n in records}) != len(records):
        raise invalid("INVALID_NODE", "nodes: a name appears twice", "nodes")


class NodeStatus(str, enum.Enum):
    UNKNOWN = "unknown"  # declared by the cluster file; no agent has registered it
    READY = "ready"
    NOT_READY = "not_ready"  # its heartbeats stopped


@dataclasses.dataclass(frozen=True)
class NodeState:
    """A node as the API shows it."""

    record: NodeRecord  # with the devices' latest health
    status: NodeStatus
    last_heartbeat_s: float  # clock seconds; 0 = never
    reason: str  # why it is not ready ("" when it is)

    @property
    def ready(self) -> bool:
        return self.status is NodeStatus.READY


def _task_bound(cpu_milli: int) -> int:
    """A node's CPUs for the core: as declared, or ``TASKS_PER_NODE`` CPUs when nobody declared
    them (0, or the core's unbounded marker): the per-node limit on default-sized tasks."""
    if cpu_milli <= 0 or cpu_milli >= UNBOUNDED_CPU_MILLI:
        return TASKS_PER_NODE * DEFAULT_TASK_CPU_MILLI
    return cpu_milli


def core_node(record: NodeRecord, declared: Node | None = None) -> Node:
    """The core's node for a registered ``record``: the cluster file's own (``declared``) when
    it lists the same devices, else built from the record with the catalog's facts (the core's
    ``from_cluster.node_from_devices``, as for a descriptor's nodes). Its labels always say
    whether an agent simulates it (``SIMULATED_LABEL``: jobs with a command select "false")."""
    labels = {**dict(record.labels), SIMULATED_LABEL: "true" if record.simulated else "false"}
    if declared is not None and [(d.vendor, d.model) for d in declared.devices] == [
        (d.vendor, d.model) for d in record.devices
    ]:
        return dataclasses.replace(
            declared, labels={**dict(declared.labels), **labels}, cpu_milli=_task_bound(declared.cpu_milli)
        )
    supernode = labels.get("supernode")
    return node_from_devices(
        record.name,
        ((d.index, d.model, d.vendor, d.memory_total_bytes or None) for d in record.devices),
        cpu_milli=_task_bound(record.cpu_milli),
        memory_bytes=record.memory_bytes,
        labels=labels,
        domains={"supernode": supernode} if supernode else {},
        failure_domain=labels.get("failure_domain") or supernode,
    )


@dataclasses.dataclass
class _Node:
    """The registry's own, mutable, entry (under its lock)."""

    record: NodeRecord
    status: NodeStatus
    last_heartbeat_s: float = 0.0


class NodeRegistry:
    """Nodes, heartbeats, readiness (see the module docstring). Keeps the core's inventory in
    step: a node is in placement exactly while it is ready."""

    def __init__(
        self,
        store: Store,
        core: CoreLink,
        clock: Callable[[], float],
        declared: Sequence[Node] = (),
        on_inventory: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._core = core
        self._clock = clock
        self._on_inventory = on_inventory  # the inventory changed (admission forgets its answers)
        self._lock = threading.Lock()
        self._declared = {n.name: n for n in declared}
        self._nodes: dict[str, _Node] = {}
        for n in declared:
            self._nodes[n.name] = _Node(record_of(n), NodeStatus.UNKNOWN)
            # presumed real until an agent says otherwise: jobs with a command may wait for it
            core.set_node(
                dataclasses.replace(n, labels={**dict(n.labels), SIMULATED_LABEL: "false"}), False, WAITING_FOR_AGENTS
            )
        now = clock()
        for doc in store.load_nodes():
            record = NodeRecord.from_json(doc)
            # registered before a restart: ready, with a full timeout from now to heartbeat
            self._nodes[record.name] = _Node(record, NodeStatus.READY, now)
            self._to_core(record)

    def refresh(self) -> None:
        """Take the stored nodes in (a follower, after the leader wrote them): the nodes as
        registered; a follower judges no readiness (its answers say ready)."""
        now = self._clock()
        records = [NodeRecord.from_json(doc) for doc in self._store.load_nodes()]
        with self._lock:
            for r in records:
                n = self._nodes.get(r.name)
                if n is None or n.record != r:
                    self._nodes[r.name] = _Node(r, NodeStatus.READY, now)

    # --- reads ---

    def get(self, name: str) -> NodeState | None:
        with self._lock:
            n = self._nodes.get(name)
            return None if n is None else self._state(n, self._clock())

    def list(self) -> list[NodeState]:
        now = self._clock()
        with self._lock:
            return [self._state(n, now) for _, n in sorted(self._nodes.items())]

    def models(self) -> set[str]:
        """The device models of every node (beside the catalog's, what job specs may name)."""
        with self._lock:
            return {d.model for n in self._nodes.values() for d in n.record.devices}

    def size(self) -> int:
        """Nodes this registry knows (declared or registered)."""
        return len(self._nodes)

    def counts(self) -> collections.Counter[NodeStatus]:
        with self._lock:
            return collections.Counter(n.status for n in self._nodes.values())

    def waiting_for_agents(self) -> str | None:
        """The pending reason of a job that waits only for agents: when no node is ready
        ("waiting for agents: 0 of 48 nodes have registered"; "no nodes registered yet" without
        a cluster file), else None."""
        counts = self.counts()
        total = sum(counts.values())
        if total == 0:
            return "no nodes registered yet: start 'xpod agent' on the nodes (or give the server --cluster)"
        if counts[NodeStatus.READY]:
            return None
        registered = total - counts[NodeStatus.UNKNOWN]
        return f"{WAITING_FOR_AGENTS}: {registered} of {total} nodes have registered"

    @staticmethod
    def _state(n: _Node, now: float) -> NodeState:
        if n.status is NodeStatus.UNKNOWN:
            reason = "no agent has registered it yet"
        elif n.status is NodeStatus.NOT_READY:
            reason = f"no heartbeat for {now - n.last_heartbeat_s:.0f} s"
        else:
            reason = ""
        return NodeState(n.record, n.status, n.last_heartbeat_s, reason)

    # --- changes ---

    def register(self, records: Iterable[NodeRecord], timeout_s: float | None = None) -> list[NodeState]:
        """Add or replace nodes (durable before it returns); they are ready at once. A replaced
        node's jobs are evicted by the core (what ran there is gone with the old agent)."""
        now = self._clock()
        records = list(records)
        self._store.write_many([NodeWrite(r.name, r.to_json(), now) for r in records], timeout_s)
        with self._core.atomic():
            for r in records:
                self._to_core(r)
            with self._lock:
                for r in records:
                    self._nodes[r.name] = _Node(r, NodeStatus.READY, now)
        self._on_inventory()
        return [self._state(self._nodes[r.name], now) for r in records]

    def _to_core(self, record: NodeRecord) -> None:
        self._core.set_node(core_node(record, self._declared.get(record.name)), True)
        for d in record.devices:
            if not d.health.schedulable:
                self._core.set_device_health(record.name, d.index, d.health)

    def beat(self, health: dict[str, dict[int, Health]]) -> tuple[list[str], list[tuple[str, int, Health]]]:
        """Heartbeats of several nodes, each with the health of the devices it reports. Returns
        (names this registry does not know, (node, index, health) of every change of health).
        Stamps time only: a NotReady node becomes ready at the next ``recover``."""
        now = self._clock()
        unknown, changed = [], []
        with self._lock:
            for name, devices in health.items():
                n = self._nodes.get(name)
                if n is None or n.status is NodeStatus.UNKNOWN:
                    unknown.append(name)
                    continue
                n.last_heartbeat_s = now
                current = n.record.devices
                if any(i < len(current) and current[i].health is not h for i, h in devices.items()):
                    changed.extend(
                        (name, i, h) for i, h in devices.items() if i < len(current) and current[i].health is not h
                    )
                    updated = tuple(dataclasses.replace(d, health=devices.get(d.index, d.health)) for d in current)
                    n.record = dataclasses.replace(n.record, devices=updated)
        return unknown, changed

    def silent(self, timeout_s: float, grace_from_s: float) -> list[tuple[str, float]]:
        """Ready nodes whose heartbeats stopped for more than ``timeout_s`` (counted from no
        earlier than ``grace_from_s``), with how long they have been silent."""
        now = self._clock()
        with self._lock:
            return [
                (name, now - max(n.last_heartbeat_s, grace_from_s))
                for name, n in sorted(self._nodes.items())
                if n.status is NodeStatus.READY and now - max(n.last_heartbeat_s, grace_from_s) > timeout_s
            ]

    def set_not_ready(self, name: str) -> bool:
        """Out of placement (caller holds ``core.atomic()`` and has dealt with its jobs)."""
        with self._lock:
            n = self._nodes.get(name)
            if n is None or n.status is not NodeStatus.READY:
                return False
            n.status = NodeStatus.NOT_READY
        self._core.set_ready(name, False, HEARTBEATS_STOPPED)
        return True

    def recover(self, timeout_s: float) -> list[str]:
        """NotReady nodes heard from again within ``timeout_s``: ready and in placement again."""
        now = self._clock()
        with self._core.atomic():
            with self._lock:
                back = [
                    name
                    for name, n in sorted(self._nodes.items())
                    if n.status is NodeStatus.NOT_READY and now - n.last_heartbeat_s <= timeout_s
                ]
                for name in back:
                    self._nodes[name].status = NodeStatus.READY
            for name in back:
                self._core.set_ready(name, True)
        return back

    def apply_health(self, changes: Sequence[tuple[str, int, Health]]) -> None:
        """Pass health changes (``beat``'s) to the core: an unhealthy device leaves placement."""
        with self._core.atomic():
            for name, index, health in changes:
                self._core.set_device_health(name, index, health)
        self._on_inventory()
