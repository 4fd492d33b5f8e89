"""The carve-out beside a blocked head: the devices (and CPU, memory) the head's own placement
rules take at its reserved start, found by placing it in a look-ahead statement; backfill
jobs that outlast the start may use every other device."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..model import MILLI, Job
from ..snapshot import Snapshot, Statement
from .cycle import CycleState, place_ahead, reserve_devices, try_place
from .reservation import Reservation


@dataclasses.dataclass(frozen=True)
class Carve:
    """The devices (and CPU, memory) a blocked head takes at its reserved start, by its own
    placement rules: backfill jobs that outlast the start must leave them alone."""

    devices_by_node: dict[str, frozenset[int]]  # node -> device indices the head would take
    cpu_milli: dict[str, int]  # node -> CPU the head takes there
    memory_bytes: dict[str, int]  # node -> memory the head takes there
    released_cpu_milli: dict[str, int]  # node -> CPU the running jobs ending by then give back
    released_memory_bytes: dict[str, int]  # node -> memory they give back
    devices: int  # devices carved in all (for messages)


def head_carve(cs: CycleState, head: Job, held: Reservation) -> Carve | None:
    """Place ``head`` on the state expected at its reserved start, in a look-ahead statement
    that is always discarded: the running jobs whose expected end is by then assumed ended,
    nodes off its reserved domain closed. The devices free now are masked on the first try, so
    the carve-out takes the devices that free up and leaves the free ones to backfill; if the
    head needs them, a second try allows them. None when the head wants no whole devices,
    keeps Ascend reserve nodes, or does not place (device rules finer than the reservation's
    counts): then nothing goes on its domain."""
    req = head.devices
    if req is None or req.fractional:
        return None
    if reserve_devices(cs, head):
        # a block that keeps reserve nodes free beside its own (an Ascend logical super-pod):
        # they are no binding of it, so a carve-out of its devices would let backfill eat them
        return None
    snap = cs.ctx.snap
    # the running jobs expected to end by the head's start (the sorted ends: no walk over every
    # running job; the order they are assumed ended in changes nothing)
    gone = []
    for end, jid in snap.running.ends():
        if end > held.start:
            break
        if jid != head.id:
            gone.append(snap.running[jid])
    rel_cpu: dict[str, int] = defaultdict(int)
    rel_mem: dict[str, int] = defaultdict(int)
    free_now = [
        (n, i)
        for n in held.nodes
        if (st := snap.nodes.get(n)) is not None
        for i in range(len(st.node.devices))
        if st.usable[i] and st.free_milli[i] == MILLI
    ]
    found: list = []
    ahead = Statement(snap, cs.ctx.now)
    try:
        for rj in gone:
            ahead.assume_ended(rj.job.id)
            for b in rj.bindings:
                if b.node in snap.nodes:
                    rel_cpu[b.node] += b.cpu_milli
                    rel_mem[b.node] += b.memory_bytes
        ahead.close(n for n in snap.nodes if n not in held.nodes)
        for leave_free in (True, False):
            trial = Statement(snap, cs.ctx.now)
            try:
                if leave_free:
                    trial.mask(free_now)
                found = place_ahead(cs, head)
            finally:
                trial.discard()
            if found or not free_now:
                break
    finally:
        ahead.discard()
    if not found:
        return None
    devs: dict[str, set] = defaultdict(set)
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    for b in found:
        devs[b.node].update(b.device_indices)
        cpu[b.node] += b.cpu_milli
        mem[b.node] += b.memory_bytes
    return Carve(
        {n: frozenset(v) for n, v in devs.items()},
        dict(cpu),
        dict(mem),
        dict(rel_cpu),
        dict(rel_mem),
        sum(map(len, devs.values())),
    )


#: jobs one queue's backfill tries beside its head's carve-out per cycle (each try may walk
#: every node: keeps a cycle bounded on big clusters; the others wait as WaitingBehind)
MAX_CARVE_TRIES = 128


class CarveMask:
    """The head's carved devices made unselectable (a look-ahead statement masking them) while
    backfill tries jobs beside them, and selectable again for jobs that end before the head
    starts; always off after the queue."""

    def __init__(self, snap: Snapshot, now: float) -> None:
        self.snap = snap
        self.now = now
        self.ahead: Statement | None = None

    def on(self, carve: Carve) -> None:
        if self.ahead is None:
            self.ahead = Statement(self.snap, self.now)
            self.ahead.mask((n, i) for n, idx in carve.devices_by_node.items() for i in idx)

    def off(self) -> None:
        if self.ahead is not None:
            self.ahead.discard()
            self.ahead = None


def try_carved(cs: CycleState, job: Job, carve: Carve, mask: CarveMask) -> bool:
    """``try_place`` with the head's carved devices unselectable (``mask`` on), accepted only when
    the head's CPU and memory on the carved nodes still fit at its start (what is left now
    plus what the running jobs ending by then give back)."""
    snap = cs.ctx.snap

    def leaves_head_room(_bindings) -> bool:
        for n in carve.devices_by_node:
            st = snap.nodes[n]
            if st.cpu_left + carve.released_cpu_milli.get(n, 0) < carve.cpu_milli.get(n, 0):
                return False
            if st.memory_left + carve.released_memory_bytes.get(n, 0) < carve.memory_bytes.get(n, 0):
                return False
        return True

    mask.on(carve)
    return try_place(cs, job, leaves_head_room)
