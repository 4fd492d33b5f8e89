"""One ``xpod server`` replica of several sharing one PostgreSQL store: who leads, and what the
others do meanwhile.

Roles (``Role``):

* **LEADER**: holds the lease (``store.postgres.LeaderLease``) and renews it every ``ttl/4``;
  runs the whole service (``SchedulerApi`` over a ``PostgresStore`` fenced with the lease's
  token, the scheduling loop, the agents' streams). It steps down when a renewal says another
  replica holds the lease, when its store fails (``NotLeader``, lost database), or when no
  renewal succeeded for ``0.75 * ttl`` (a follower may take the lease at ``ttl``: the leader
  stops first, by its own clock, and the fencing token stops any write that still slips out).
* **FOLLOWER**: the lease is held by another replica. It answers reads (jobs, nodes, events,
  watches) from a mirror kept current by tailing the event log every ``follow_interval_s``;
  every write and every agent call is refused with UNAVAILABLE, reason ``NOT_LEADER``, and the
  leader's address in the error's metadata (``leader``). Clients and agents with several
  addresses (``--server a,b,c``) retry there with the same request id (``runtime.client``).
  Forwarding writes would hide the leader from agents, whose streams must reach it anyway.
* **NO_STORE**: the database cannot be reached. Every call is UNAVAILABLE
  (``STORE_UNAVAILABLE``), the health service says NOT_SERVING for ``xpod.v1.JobService``, and
  the replica keeps trying; when the database returns it becomes leader or follower again.

A change of leader is, for the new leader, a restart from the store (``SchedulerApi`` rebuilds
its state from it, as after ``kill -9`` of a single server); agents keep their tasks running,
reconnect, and report them (``runtime.agent``), so nothing restarts because the leader changed.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
import uuid
from typing import Any, Callable

from xpod.scheduler.store import StoreError, StoreUnavailable
from xpod.scheduler.store.postgres import LeaderLease, PostgresStore, mask_url

from .api import ApiError, Code, SchedulerApi
from .jobs import Recovered


class Role(str, enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    NO_STORE = "no_store"


#: a factory for the service over a store: ``(store, leader, recovered)``; a follower's never
#: schedules; ``recovered`` (or None: read the store) is the follower's mirror a new leader starts from
ApiFactory = Callable[[PostgresStore, bool, Recovered | None], SchedulerApi]


class Replica:
    """The election loop and the current ``SchedulerApi`` of this replica (``api``).

    ``on_role(role)`` is called on the election thread after every change of role (the CLI sets
    the health service and the leader metrics there). ``start()`` returns at once; the first
    role is taken within one lease poll. ``close()`` steps down (releasing the lease, so a
    follower takes over without waiting for the TTL) and stops.
    """

    def __init__(
        self,
        url: str,
        make_api: ApiFactory,
        address: str,
        *,
        lease_ttl_s: float = 3.0,
        follow_interval_s: float = 0.2,
        on_role: Callable[[Role], None] | None = None,
        log: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.url = url
        self.display = mask_url(url)
        self.address = address
        self.id = f"{address}/{uuid.uuid4().hex[:8]}"  # unique per process start
        self._make_api = make_api
        self._lease = LeaderLease(url, self.id, address, lease_ttl_s)
        self._ttl_s = lease_ttl_s
        self._follow_s = follow_interval_s
        self._on_role = on_role
        self._log = log
        self._lock = threading.Lock()
        self._api: SchedulerApi | None = None
        self.role = Role.NO_STORE
        self.leader_address = ""  # the leader as the lease says ("" when unknown)
        self.leader_changes = 0  # times this replica became leader or stopped being it
        self._token: int | None = None
        self._renewed_at = 0.0  # monotonic time the last successful renewal was sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xpod-election", daemon=True)
        self.failure = ""  # the last reason the store could not be used (for NO_STORE errors)

    # what the gRPC servicers see

    @property
    def api(self) -> Any:
        with self._lock:
            api = self._api
        return api if api is not None else _NoStore(self)

    def start(self) -> "Replica":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._step_down("shutting down", release=True)
        self._lease.close()

    def wait_for_role(self, timeout_s: float) -> Role:
        deadline = time.monotonic() + timeout_s
        while self.role is Role.NO_STORE and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.05)
        return self.role

    # the election loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception as err:  # a bug or an unforeseen error: never leave the replica wedged
                self._log(f"xpod server: election loop error: {type(err).__name__}: {str(err)[:300]}")
                self._step_down("election loop error")
                self._stop.wait(1.0)

    def _round(self) -> None:
        """One turn of the loop: a leader renews (or steps down), others try to take a lapsed
        lease and otherwise follow."""
        if self.role is Role.LEADER:
            sent = time.monotonic()
            try:
                held = self._lease.renew(self._token)
            except StoreUnavailable as err:
                held = None
                self.failure = str(err)
            if held:
                self._renewed_at = sent
            api = self._api
            store_failure = getattr(api.store, "failure", None) if api is not None else None
            if held is False:
                self._step_down("another replica holds the lease")
            elif store_failure is not None:
                self._step_down(f"the store failed: {str(store_failure)[:200]}")
            elif time.monotonic() - self._renewed_at > 0.75 * self._ttl_s:
                self._step_down("the lease could not be renewed in time")
            else:
                self._stop.wait(self._ttl_s / 4)
            return
        try:
            # look before taking: a take locks the lease row, which the leader's batches share
            holder = self._lease.current()
            token = self._lease.try_acquire() if holder is None or holder.expires_in_s <= 0 else None
        except StoreUnavailable as err:
            self._no_store(err)
            return
        if token is not None:
            self._lead(token)
            return
        self.leader_address = holder.address if holder is not None and holder.expires_in_s > 0 else ""
        if self.role is not Role.FOLLOWER:
            try:
                follower = self._make_api(PostgresStore(self.url), False, None)
            except (StoreError, StoreUnavailable) as err:
                self._no_store(err)
                return
            follower.read_only_error = self._not_leader_error
            self._become(Role.FOLLOWER, follower)
        try:
            self._api.catch_up()
        except StoreUnavailable as err:
            self._no_store(err, 0.0)
        self._stop.wait(self._follow_s)

    def _no_store(self, err: Exception, pause_s: float = 0.5) -> None:
        self.failure = str(err)
        self._become(Role.NO_STORE, None)
        self._stop.wait(pause_s)

    def _lead(self, token: int) -> None:
        """Build the leader's service from the store (the follower's mirror keeps answering
        reads meanwhile) while a helper keeps the lease renewed, then switch to it."""
        t0 = time.monotonic()
        self._renewed_at = t0
        building = threading.Event()
        lost = threading.Event()

        def keep() -> None:
            while not building.wait(self._ttl_s / 4):
                sent = time.monotonic()
                with contextlib.suppress(StoreUnavailable):
                    if self._lease.renew(token):
                        self._renewed_at = sent
                    else:
                        lost.set()
                        return

        keeper = threading.Thread(target=keep, name="xpod-lease-keeper", daemon=True)
        keeper.start()
        recovered = None
        follower = self._api if self.role is Role.FOLLOWER else None
        if follower is not None:
            # Warm start: the lease is ours, so every write of the old leader either committed
            # before we took it or is fenced off; one last tail makes the mirror complete.
            try:
                follower.catch_up()
                recovered = follower.jobs.recovered()
            except StoreUnavailable:
                recovered = None
        try:
            api = self._make_api(PostgresStore(self.url, fencing_token=token), True, recovered)
        except (StoreError, StoreUnavailable) as err:
            self.failure = str(err)
            api = None
        finally:
            building.set()
            keeper.join()
        if api is None or lost.is_set():
            if api is not None:
                api.close()
            with contextlib.suppress(StoreUnavailable):
                self._lease.release(token)
            return
        self._token = token
        self.leader_address = self.address
        api.start()
        self._become(Role.LEADER, api)
        self._log(
            f"xpod server: leader (lease token {token}) after {time.monotonic() - t0:.2f} s of recovery; "
            f"revision {api.last_revision}" + (f", {len(recovered.jobs)} jobs handed over" if recovered else "")
        )

    def _step_down(self, why: str, *, release: bool = False) -> None:
        was_leader = self.role is Role.LEADER
        token = self._token
        self._become(Role.NO_STORE, None, quiet=True)
        self._token = None
        if was_leader:
            self._log(f"xpod server: no longer leader: {why}")
        if release and token is not None:
            with contextlib.suppress(StoreUnavailable):
                self._lease.release(token)

    def _become(self, role: Role, api: SchedulerApi | None, *, quiet: bool = False) -> None:
        with self._lock:
            old_api, self._api = self._api, api
            old_role, self.role = self.role, role
        if role is not Role.NO_STORE:
            self.failure = ""
        if old_api is not None and old_api is not api:
            old_api.close()
        if (old_role is Role.LEADER) != (role is Role.LEADER):
            self.leader_changes += 1
        if role is not old_role:
            if not quiet and role is Role.FOLLOWER:
                self._log(f"xpod server: follower; the leader is {self.leader_address or 'unknown'}")
            if not quiet and role is Role.NO_STORE:
                self._log(f"xpod server: cannot use the store {self.display}: {self.failure[:300]}; retrying")
            if self._on_role is not None:
                self._on_role(role)

    def _not_leader_error(self) -> ApiError:
        leader = self.leader_address
        where = f"the leader is {leader}" if leader else "no leader is known yet"
        return ApiError(
            Code.UNAVAILABLE,
            "NOT_LEADER",
            f"this replica ({self.address}) follows; {where}: retry there with the same request id",
            metadata={"leader": leader, "replica": self.address},
            retry_after_s=0.2,
        )


class ApiHandle:
    """What the gRPC server holds instead of one ``SchedulerApi``: every attribute is the
    current API's (the leader's, the follower's, or one that refuses every call), so a change
    of role needs no new server. ``metrics`` is the handle's own (``ServiceMetrics.attach``)."""

    def __init__(self) -> None:
        self.metrics: Any = None
        self.replica: Replica | None = None

    def close(self) -> None:
        if self.replica is not None:
            self.replica.close()

    def __getattr__(self, name: str) -> Any:
        replica = self.__dict__.get("replica")
        api = replica.api if replica is not None else _NoStore(None)
        return getattr(api, name)


class _NoStore:
    """The API of a replica without a usable store: every call is UNAVAILABLE; the metrics'
    state readers see nothing."""

    metrics = None
    liveness = None
    jobs = None
    nodes = None
    last_revision = 0

    def __init__(self, replica: Replica | None) -> None:
        self._replica = replica

    def __getattr__(self, name: str) -> Any:
        replica = self._replica
        address = replica.address if replica is not None else "starting"
        leader = replica.leader_address if replica is not None else ""
        if replica is None or not replica.failure:
            why = f"this replica ({address}) is joining its peers (no role yet)"
        else:
            why = f"this replica ({address}) cannot use its store {replica.display} now"

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise ApiError(
                Code.UNAVAILABLE,
                "STORE_UNAVAILABLE",
                f"{why}; retry another replica or later",
                metadata={"replica": address, "leader": leader},
                retry_after_s=0.5,
            )

        return refuse
