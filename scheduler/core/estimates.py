"""Estimated start times that walk a queue in order (the jobs ahead take devices first).

``pending_reasons`` (``scheduler.actions``) gives every waiting job an estimated start. A job's
start depends on the running jobs' expected ends and on the jobs queued ahead of it: allocate
walks a queue in order and stops at its first job that does not fit, so (backfill aside) job k
does not start before the jobs ahead of it that want the same devices. A ``Timeline`` plays
that forward for one queue and one device pool (the device models a request matches):

* it starts from the devices free now, per node, and the releases the running jobs' expected
  ends bring (per node, in whole devices, as ``actions.reservation`` counts them: a device
  fractional tasks share comes back whole when the last of them ends);
* jobs are offered in queue order; each starts at the earliest time, not before the start of
  the job offered before it (first come, first served inside the pool), when one domain of its
  tier (one node, one super-node, the cluster) holds its need counted in whole tasks per node
  (plus an Ascend super-pod's reserve nodes); it then takes those devices, and gives them back
  at its start plus its ``expected_duration_seconds``;
* a job without an expected duration keeps its devices for ever: a later job that needs them
  gets no number (``Estimate.start`` None and ``why`` says which job ahead), never an invented
  one. Once one job's start is unknown, every later job of the pool is unknown too.

Fractional jobs share devices as the placer's best fit does: a fractional job ahead first
takes the partly free device with the least milli that still holds it (devices partly used by
running jobs now, or opened by a fractional job ahead in the walk), else one whole device it
opens for later fractional jobs; a shared device comes back whole when its last sharer ends.

The timeline only moves forward (starts never decrease), so a walk over K jobs pops each
release once: O((K + releases) log releases) plus, per job, a fit check over the free-count
histogram (at most the devices per node buckets, per super-node). Counts are coarser than the
placer's device rules (910C die pairs, HCCS groups, CPU and memory) and the walk's choice of
node may differ from the placer's: on one node the estimates are exact for whole devices. The
blocked head's start is not a count: it is its reservation (``actions.reservation``), the first
expected end at which the placer's own rules place it, which backfill keeps.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections import defaultdict
from typing import Iterable

from .fabric import CLUSTER, NODE, NODE_LOCAL_LEVELS
from .model import MILLI
from .snapshot import Snapshot

NEVER = float("inf")  # the end of a device a job holds without an expected end


@dataclasses.dataclass(frozen=True)
class Demand:
    """What one waiting job asks of the timeline."""

    job_id: str
    tier: str  # the level of the domain its devices must share: node, a super-node, the cluster
    unit: int  # devices one task takes whole on one node (counts per node are in these units)
    need: int  # devices it must get at once in one domain (gang, one replica, one logical super-pod)
    reserve: int  # devices that domain must keep free beside it (Ascend super-pod reserve nodes)
    take: int  # devices it holds once started (>= need: a batch job's further tasks)
    duration_seconds: float | None  # how long it holds them; None = for ever (unknown)
    fails_now: bool  # tried this cycle and did not fit: it starts at a release, not now
    milli: int = MILLI  # < MILLI: a fractional job, each of its ``take`` tasks on a shared device


@dataclasses.dataclass(frozen=True)
class Estimate:
    start: float | None  # clock time; None = unknown, see ``why``
    why: str = ""  # why the start is unknown ("" when it is known)


def releases_by_model(snap: Snapshot) -> dict[str, list[tuple[float, str, int, int]]]:
    """model -> sorted (expected end, node, whole devices it frees there, -1) of the running
    jobs that have an expected end (the -1: no shared device; see ``Timeline``). Devices
    shared by fractional tasks are ``shared_by_model``'s. Computed once per cycle and shared
    by every timeline."""
    out: dict[str, list] = defaultdict(list)
    for rj in snap.running.values():
        end = rj.expected_end
        if end is None:
            continue
        for b in rj.bindings:
            st = snap.nodes.get(b.node)
            idx = b.device_indices
            if st is None or b.milli != MILLI or not idx:
                continue
            devs = st.node.devices
            m0 = devs[idx[0]].model
            if all(devs[i].model == m0 for i in idx):  # the usual case: one model per task
                out[m0].append((end, b.node, len(idx), -1))
                continue
            per_model: dict[str, int] = defaultdict(int)
            for i in idx:
                per_model[devs[i].model] += 1
            for m, c in per_model.items():
                out[m].append((end, b.node, c, -1))
    for v in out.values():
        v.sort()
    return out


def shared_by_model(snap: Snapshot) -> dict[str, list[tuple[str, int, float]]]:
    """model -> (node, free milli, end) of the healthy devices fractional tasks use now: the
    milli left on them (0 when full), and when they come back whole (the latest expected end of their
    tasks; ``NEVER`` when one has none)."""
    out: dict[str, list] = defaultdict(list)
    for (name, i), end in sorted(shared_ends(snap).items()):
        st = snap.nodes.get(name)
        if st is not None and st.usable[i] and st.free_milli[i] < MILLI:
            out[st.node.devices[i].model].append((name, st.free_milli[i], end))
    return out


def shared_ends(snap: Snapshot) -> dict[tuple[str, int], float]:
    """(node, device index) -> when the device fractional tasks share now comes back whole:
    the latest expected end of its tasks (``NEVER`` when one has none)."""
    ends: dict[tuple[str, int], float] = {}
    for rj in snap.running.values():
        end = NEVER if rj.expected_end is None else rj.expected_end
        for b in rj.bindings:
            if b.milli != MILLI:
                for i in b.device_indices:
                    k = (b.node, i)
                    ends[k] = max(ends.get(k, end), end)
    return ends


def holds_without_end(snap: Snapshot, models: Iterable[str]) -> bool:
    """Whether a running job holds devices of these models without an expected end."""
    models = set(models)
    for rj in snap.running.values():
        if rj.expected_end is not None:
            continue
        for b in rj.bindings:
            st = snap.nodes.get(b.node)
            if st is not None and any(st.node.devices[i].model in models for i in b.device_indices):
                return True
    return False


class Timeline:
    """Free devices of one pool over time, for one queue's walk (see the module docstring).

    ``offer(demand)`` returns the job's estimated start and takes its devices from then on;
    call it in queue order. Not thread-safe; built per queue per cycle."""

    def __init__(
        self,
        snap: Snapshot,
        models: Iterable[str],
        releases: dict[str, list],
        now: float,
        open_ended: bool,
        shared: dict[str, list] | None = None,
    ) -> None:
        models = tuple(sorted(models))
        self.now = now
        self.time = now  # the walk's clock: the latest start given so far (never decreases)
        self.free: dict[str, int] = {}  # node -> whole free devices of the pool at ``time``
        self.snap = snap
        # count -> nodes with that many free devices, in insertion order (deterministic walks
        # without sorting thousands of names); per topology level (built when a job first asks
        # for one): the nodes outside any domain of it by count, and per domain a histogram
        # count -> nodes
        self.by_count: dict[int, dict[str, None]] = defaultdict(dict)
        self.domain_of: dict[str, dict[str, str | None]] = {}  # level -> node -> its domain
        self.lone_by_count: dict[str, dict[int, dict[str, None]]] = {}
        self.hist: dict[str, dict[str, dict[int, int]]] = {}
        self.members: dict[str, dict[str, list[str]]] = {}
        # the nodes with devices of the pool (``free_whole`` lists every node per model it
        # has, in the order nodes were added), with their whole free devices
        counts: dict[str, int] = {}
        for m in models:
            for name, c in snap.free_whole.get(m, {}).items():
                counts[name] = counts.get(name, 0) + c
        for name, c in counts.items():
            self.free[name] = c
            self.by_count[c][name] = None
        # a sorted list is a heap: the running jobs' releases, then the walked jobs' own;
        # (time, node, whole devices, shared device key or -1)
        self.events: list[tuple[float, str, int, int]] = [
            e for e in heapq.merge(*(releases.get(m, ()) for m in models)) if e[0] < NEVER and e[1] in self.free
        ]
        # shared devices: key -> [node, free milli, end], and by free milli // 100 (best fit)
        self.shared: dict[int, list] = {}
        self.shared_buckets: dict[int, dict[int, None]] = defaultdict(dict)
        self._keys = itertools.count()
        for m in models:
            for name, free, end in (shared or {}).get(m, ()):
                if name in self.free:
                    self._open(name, free, end)
        self.open_ended = open_ended  # a running job holds pool devices without an expected end
        self.forever: str | None = None  # the first walked job that holds devices for ever
        self.stuck: str | None = None  # why every later start is unknown

    # ------------------------------------------------------------------------ state
    def _set(self, name: str, new: int) -> None:
        old = self.free[name]
        if old == new:
            return
        self.free[name] = new
        del self.by_count[old][name]
        self.by_count[new][name] = None
        for level, doms in self.domain_of.items():
            dom = doms[name]
            if dom is None:
                lone = self.lone_by_count[level]
                del lone[old][name]
                lone[new][name] = None
            else:
                h = self.hist[level][dom]
                h[old] -= 1
                h[new] += 1

    def _level(self, level: str) -> None:
        """Build the per-domain histograms of a topology level (once)."""
        if level in self.domain_of:
            return
        doms: dict[str, str | None] = {}
        lone: dict[int, dict[str, None]] = defaultdict(dict)
        hist: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        members: dict[str, list[str]] = defaultdict(list)
        for name, c in self.free.items():
            dom = self.snap.nodes[name].node.domains.get(level)
            doms[name] = dom
            if dom is None:
                lone[c][name] = None
            else:
                hist[dom][c] += 1
                members[dom].append(name)
        self.domain_of[level] = doms
        self.lone_by_count[level] = lone
        self.hist[level] = hist
        self.members[level] = members

    def _advance_to(self, t: float) -> None:
        ev = self.events
        while ev and ev[0][0] <= t:
            when, name, c, key = heapq.heappop(ev)
            if key >= 0:
                dev = self.shared[key]
                if dev[2] > when:  # a later sharer joined: whole again when it ends
                    if dev[2] < NEVER:
                        heapq.heappush(ev, (dev[2], name, 1, key))
                    continue
                self._close(key)
            self._set(name, self.free[name] + c)
        self.time = max(self.time, t)

    def _open(self, name: str, free_milli: int, end: float) -> int:
        """A device shared by fractional jobs, whole again at ``end``."""
        key = next(self._keys)
        self.shared[key] = [name, free_milli, end]
        self.shared_buckets[free_milli // 100][key] = None
        if end < NEVER:
            heapq.heappush(self.events, (end, name, 1, key))
        return key

    def _close(self, key: int) -> None:
        _, free, _ = self.shared.pop(key)
        del self.shared_buckets[free // 100][key]

    def _share(self, d: Demand) -> bool:
        """Put a fractional job on the partly free device with the least milli that holds it
        (best fit); False when none does."""
        m = d.milli
        for b in sorted(b for b, keys in self.shared_buckets.items() if keys and b >= m // 100):
            for key in self.shared_buckets[b]:
                dev = self.shared[key]
                if dev[1] >= m:
                    del self.shared_buckets[b][key]
                    dev[1] -= m
                    self.shared_buckets[dev[1] // 100][key] = None
                    self._hold(d, dev)
                    return True
        return False

    def _hold(self, d: Demand, dev: list) -> None:
        end = NEVER if d.duration_seconds is None else self.time + d.duration_seconds
        dev[2] = max(dev[2], end)
        if end == NEVER and self.forever is None:
            self.forever = d.job_id

    def _fraction(self, d: Demand) -> bool:
        """Place a fractional job now: a partly free device (best fit), else a whole one it
        opens; a batch job's further tasks the same way, as far as they go."""
        node = _smallest_at_least(self.by_count, 1)  # best fit: the node with the fewest free
        if not (self._share(d) or (node is not None and self._take_fraction(d, (node,)))):
            return False
        for _ in range(d.take - 1):
            if not self._share(d) and (node := _smallest_at_least(self.by_count, 1)) is not None:
                self._take_fraction(d, (node,))
        return True

    def _take_fraction(self, d: Demand, nodes: Iterable[str]) -> bool:
        """Open a whole device on the first of these nodes with one free for a fractional job."""
        for name in nodes:
            if self.free.get(name, 0) >= 1:
                self._set(name, self.free[name] - 1)
                end = NEVER if d.duration_seconds is None else self.time + d.duration_seconds
                self._open(name, MILLI - d.milli, end)
                if end == NEVER and self.forever is None:
                    self.forever = d.job_id
                return True
        return False

    def _next_release(self) -> bool:
        """Apply every release at the next release time; False when none is left."""
        if not self.events:
            return False
        self._advance_to(self.events[0][0])
        return True

    # ---------------------------------------------------------------------- fitting
    def _fit(self, d: Demand) -> tuple[str, str] | None:
        """The best-fitting domain of the job's tier that holds ``need + reserve`` now:
        ("node", name), (level, domain) or ("any", ""); None if none does."""
        total = d.need + d.reserve
        u = d.unit
        if d.tier == NODE or d.tier in NODE_LOCAL_LEVELS:
            name = _smallest_at_least(self.by_count, total)
            return None if name is None else ("node", name)
        if d.tier != CLUSTER:
            level = d.tier
            self._level(level)
            best = None
            for sn, h in self.hist[level].items():
                s = sum(n * (c // u * u) for c, n in h.items() if n)
                if s >= total and (best is None or (s, sn) < best[0]):
                    best = ((s, sn), (level, sn))
            lone = _smallest_at_least(self.lone_by_count[level], total)
            if lone is not None and (best is None or (self.free[lone], lone) < best[0]):
                best = ((self.free[lone], lone), ("node", lone))
            return None if best is None else best[1]
        s = sum(len(names) * (c // u * u) for c, names in self.by_count.items())
        return ("any", "") if s >= total else None

    def _domain_nodes(self, dom: tuple[str, str]) -> Iterable[str]:
        kind, name = dom
        if kind == "node":
            return (name,)
        if kind != "any":
            return sorted(self.members[kind][name], key=lambda n: (-self.free[n], n))
        # the cluster: fullest nodes first, lazily (a gang takes a few of thousands)
        return itertools.chain.from_iterable(
            list(self.by_count[c]) for c in sorted(self.by_count, reverse=True) if c > 0 and self.by_count[c]
        )

    def _take(self, d: Demand, nodes: Iterable[str]) -> int:
        """Take up to ``d.take`` devices, whole tasks per node, from these nodes in order;
        schedule their release. Returns the devices taken."""
        left = d.take
        u = max(d.unit, 1)
        taken = []
        for name in nodes:
            if left <= 0:
                break
            n = min(self.free[name] // u * u, left // u * u)
            if n > 0:
                taken.append((name, n))
                left -= n
        for name, n in taken:  # after the walk: ``_domain_nodes`` may iterate the buckets
            self._set(name, self.free[name] - n)
            if d.duration_seconds is not None:
                heapq.heappush(self.events, (self.time + d.duration_seconds, name, n, -1))
        if d.duration_seconds is None and taken and self.forever is None:
            self.forever = d.job_id
        return d.take - left

    # ------------------------------------------------------------------------ offer
    def offer(self, d: Demand, at: float | None = None, nodes: frozenset[str] | None = None) -> Estimate:
        """The job's estimated start; its devices are taken from then on. ``at``/``nodes``:
        a start and domain already decided (the blocked head's reservation, so the walk and
        backfill agree on it); the walk still never moves back in time."""
        if self.stuck is not None:
            return Estimate(None, self.stuck)
        if at is not None and nodes is not None:
            self._advance_to(max(at, self.time))
            if d.milli < MILLI and (self._share(d) or self._take_fraction(d, sorted(nodes))):
                return Estimate(self.time)
            taken = self._take(d, [n for n in sorted(nodes, key=lambda n: (-self.free.get(n, 0), n)) if n in self.free])
            if taken < d.need:  # the reservation found room by counts its nodes lack: take it anywhere
                rest = dataclasses.replace(d, take=d.take - taken)
                self._take(rest, self._domain_nodes(("any", "")))
            return Estimate(self.time)
        self._advance_to(self.time)
        # a job that just failed to place does not fit now whatever the counts say (device
        # rules are finer than counts): its earliest start is the next release
        if d.fails_now and self.time <= self.now and not self._next_release():
            return self.unknown(d)
        while True:
            if d.milli < MILLI:
                if self._fraction(d):
                    return Estimate(self.time)
            elif (dom := self._fit(d)) is not None:
                taken = self._take(d, self._domain_nodes(dom))
                if taken < d.take and d.take > d.need:  # a batch job's further tasks: anywhere
                    self._take(dataclasses.replace(d, take=d.take - taken), self._domain_nodes(("any", "")))
                return Estimate(self.time)
            if not self._next_release():
                return self.unknown(d)

    def unknown(self, d: Demand, why: str | None = None) -> Estimate:
        """Give up on this job's start (no release lets it fit, or its reservation is
        unknown, for the reason ``why`` when the caller knows it): it and every later job of
        the pool get no number, and say why."""
        if why:
            pass  # the caller's reason (a reservation that gave up)
        elif self.forever is not None:
            why = f"job {self.forever} ahead of it has no expected_duration_seconds, so the devices it takes never free up in the estimate"
        elif self.open_ended:
            why = "a running job it waits for has no expected duration"
        else:
            why = "it does not fit even after every running job and every job ahead of it has ended"
        self.stuck = f"job {d.job_id} ahead of it has no estimated start ({why})"
        return Estimate(None, why)


def _smallest_at_least(by_count: dict[int, dict[str, None]], total: int) -> str | None:
    """The first node of the smallest free count >= total (best fit), or None."""
    best = None
    for c, names in by_count.items():
        if c >= total and names and (best is None or c < best):
            best = c
    return None if best is None else next(iter(by_count[best]))
