"""The store on PostgreSQL (psycopg 3): several ``xpod server`` replicas share one database.

The contract is the store's (``scheduler.store``: group commit, request-id idempotency,
revisions, events, one migration scheme); what differs:

* Transactions run on the server: one writer connection, one transaction per batch, committed
  with PostgreSQL's ``synchronous_commit`` (``on`` by default: the WAL is flushed before the
  commit returns, so an acknowledged write survives a crash of the database machine; with a
  synchronous standby it is also on the replica). Reads go through a connection pool.
* **Leader lease and fencing.** Replicas compete for one row of ``leases`` (``LeaderLease``):
  a replica takes it only when it has lapsed by the *database's* clock (so replicas' clocks
  never matter), and each take increments the row's ``token``. The leader renews it every
  ``ttl/3``. A store opened with ``fencing_token`` checks, inside every write transaction, that
  the lease row still carries that token (``SELECT ... FOR SHARE``: a takeover's UPDATE waits
  for an in-flight batch to end, and a batch that starts after a takeover sees the new token).
  A mismatch fails the batch with ``NotLeader``; nothing of it is written. A leader paused
  mid-transaction (SIGSTOP, a long GC) cannot hold the row forever: the writer session has
  ``idle_in_transaction_session_timeout``, so the server ends it and the row is free.
* **Losing the database.** A batch whose connection fails is not acknowledged (its callers get
  ``StoreUnavailable``). The commit itself may or may not have happened (the connection died
  during COMMIT), so the writer's view of sequence numbers and request ids can no longer be
  trusted: the store stops accepting writes (``failure`` says why) and its owner opens a new
  one, which reads the truth back. A retried submission with the same request id finds the
  job if the ambiguous commit did happen, so nothing is created twice.
* Schema versions live in ``xpod_schema``; replicas migrating at the same moment serialise on
  an advisory lock, and each step is one transaction (PostgreSQL's DDL is transactional).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import urllib.parse
from typing import Any, Callable

from . import NotLeader, StoreError, StoreUnavailable
from .base import GroupCommitStore
from .schema import MIGRATIONS, SCHEMA_VERSION, newer_schema_error

LEASE_NAME = "scheduler"  # the row of ``leases`` the scheduling replicas compete for
_MIGRATION_LOCK = 0x78706F64  # pg_advisory_xact_lock key ("xpod") serialising migrations
# the database's clock, in unix seconds: every lease comparison uses it, never a replica's
_DB_NOW = "extract(epoch from clock_timestamp())"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for every message and log line)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable store URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _connect_error(display: str, err: Exception) -> StoreError:
    reason = " ".join(str(err).split()) or type(err).__name__
    low = reason.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "check the user and password in the URL"
    elif "does not exist" in low and "database" in low:
        hint = "create the database (createdb) or fix its name in the URL"
    else:
        hint = "check that PostgreSQL runs there and the host and port in the URL"
    if len(reason) > 300:
        reason = reason[:300] + "..."
    return StoreError(f"{display}: cannot connect to PostgreSQL ({reason}); {hint}")


def connect(url: str, *, autocommit: bool, timeout_s: float = 5.0) -> Any:
    """A psycopg connection or ``StoreError`` naming the URL (password masked) and what to do."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout_s)))
    except (psycopg.Error, ValueError) as err:
        raise _connect_error(mask_url(url), err) from None


def migrate_postgres(conn: Any, display: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target``; returns the version found. Replicas starting together
    serialise on an advisory lock; each step is one transaction."""
    found = 0
    for version in range(1, target + 2):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS xpod_schema (version INTEGER NOT NULL)")
            rows = conn.execute("SELECT version FROM xpod_schema").fetchall()
            current = int(rows[0][0]) if rows else 0
            if version == 1:
                found = current
                if current > SCHEMA_VERSION:
                    raise newer_schema_error(display, current)
            if current >= target:
                return found
            step = current + 1
            for statement in MIGRATIONS[step].postgresql:
                conn.execute(statement)
            if rows:
                conn.execute("UPDATE xpod_schema SET version = %s", (step,))
            else:
                conn.execute("INSERT INTO xpod_schema (version) VALUES (%s)", (step,))
    return found


class PostgresStore(GroupCommitStore):
    """The store on PostgreSQL; see the module docstring. ``fencing_token``: the lease token
    this replica holds (every batch checks it); None for a store used without leases."""

    dialect = "postgresql"
    _QUEUE_OF_DOC = "j.doc::json ->> 'queue'"

    def __init__(
        self,
        url: str,
        *,
        on_commit: Callable[[list[Any]], None] | None = None,
        fencing_token: int | None = None,
        max_queued_writes: int = 20_000,
        max_batch: int = 2_000,
        max_background_per_batch: int = 64,
        max_background_beside_front: int = 8,
        max_readers: int = 8,
        idle_in_transaction_timeout_s: float = 5.0,
    ) -> None:
        import psycopg
        import psycopg_pool

        self.url = url
        display = mask_url(url)
        self._psycopg = psycopg
        self._token = fencing_token
        self.failure: BaseException | None = None  # why the store stopped accepting writes
        conn = connect(url, autocommit=True)
        try:
            self.schema_version_found = migrate_postgres(conn, display)
            conn.execute(f"SET idle_in_transaction_session_timeout = {int(idle_in_transaction_timeout_s * 1000)}")
            conn.autocommit = False
            with conn.transaction():  # the writer's state from one snapshot
                self._conn = conn
                self._init_writer(
                    display,
                    on_commit,
                    lambda sql: conn.execute(sql).fetchall(),
                    max_queued_writes=max_queued_writes,
                    max_batch=max_batch,
                    max_background_per_batch=max_background_per_batch,
                    max_background_beside_front=max_background_beside_front,
                )
        except psycopg.Error as err:
            conn.close()
            raise _connect_error(display, err) from None
        except BaseException:
            conn.close()
            raise
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_readers,
            kwargs={"autocommit": True},
            open=True,
            name="xpod-store-readers",
            timeout=10.0,
        )

    # the writer's transaction

    def _begin(self) -> None:
        if self.failure is not None:
            raise StoreUnavailable(f"{self.path}: the store stopped after {self.failure}")
        if self._token is not None:
            rows = self._conn.execute("SELECT token FROM leases WHERE name = %s FOR SHARE", (LEASE_NAME,)).fetchall()
            if not rows or int(rows[0][0]) != self._token:
                now = int(rows[0][0]) if rows else None
                raise NotLeader(f"the leader lease moved on (token {now}, this replica held {self._token})")

    @staticmethod
    def _sql(statement: str) -> str:
        return statement.replace("?", "%s")

    _UPSERT_NODE = (
        "INSERT INTO nodes (name, doc, update_time_s) VALUES (?, ?, ?) ON CONFLICT (name) "
        "DO UPDATE SET doc = EXCLUDED.doc, update_time_s = EXCLUDED.update_time_s"
    )

    def _cursor(self) -> Any:
        return self._conn.cursor()

    def _commit(self) -> None:
        self._conn.commit()

    def _rollback(self, err: BaseException) -> BaseException:
        with contextlib.suppress(self._psycopg.Error):
            self._conn.rollback()
        if isinstance(err, (NotLeader, StoreUnavailable)):
            if isinstance(err, NotLeader) and self.failure is None:
                self.failure = err  # fenced off for good: the owner steps down
            return err
        if isinstance(err, self._psycopg.Error):
            # Connection lost, server gone, or a constraint the writer's view did not expect:
            # the view may be wrong from here on (see the module docstring).
            self.failure = err
            return StoreUnavailable(
                f"{self.path}: {' '.join(str(err).split())[:300]}; nothing of this batch is acknowledged"
            )
        return err

    def _close_connections(self) -> None:
        try:
            self._conn.close()
        finally:
            self._pool.close()

    # reads

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(self._sql(sql), params).fetchall()
        except (self._psycopg.Error, OSError) as err:
            raise StoreUnavailable(f"{self.path}: {' '.join(str(err).split())[:300]}") from None

    def ping(self) -> bool:
        """True when a pooled connection answers ``SELECT 1`` (the health service asks)."""
        try:
            self._query("SELECT 1")
            return True
        except StoreUnavailable:
            return False


# --- the leader lease -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeaseHolder:
    """Who holds the lease, as the database says."""

    holder: str  # the replica's id (unique per process start)
    address: str  # where clients reach it (host:port)
    token: int  # the fencing token (increments at every change of holder)
    expires_in_s: float  # by the database's clock; <= 0: lapsed, anyone may take it


class LeaderLease:
    """One replica's handle on the ``leases`` row (its own autocommit connection).

    ``try_acquire()`` takes the row if it is free or lapsed and returns the new token, else None;
    ``renew(token)`` extends it and returns False once another replica took it; ``release``
    lets it lapse at once (a clean shutdown hands over without waiting for the TTL);
    ``current()`` says who holds it. Each call raises ``StoreUnavailable`` when the database
    cannot be reached. Not thread-safe: one thread (the replica's election loop) uses it.
    """

    def __init__(self, url: str, holder: str, address: str, ttl_s: float, *, name: str = LEASE_NAME) -> None:
        self._url = url
        self.display = mask_url(url)
        self.holder = holder
        self.address = address
        self.ttl_s = ttl_s
        self.name = name
        self._conn: Any = None
        self._lock = threading.Lock()

    def _execute(self, sql: str, params: tuple) -> list[tuple]:
        import psycopg

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self._url, autocommit=True, timeout_s=max(1.0, self.ttl_s / 3))
                    # never wait long behind a paused leader's batch: the loop retries
                    self._conn.execute("SET lock_timeout = 2000")
                    self._conn.execute("SET statement_timeout = 5000")
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except (psycopg.Error, StoreError, OSError) as err:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise StoreUnavailable(f"{self.display}: {' '.join(str(err).split())[:300]}") from None

    def try_acquire(self) -> int | None:
        rows = self._execute(
            f"""INSERT INTO leases (name, holder, address, token, expires_at_s)
                VALUES (%s, %s, %s, 1, {_DB_NOW} + %s)
                ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, address = EXCLUDED.address,
                    token = leases.token + 1, expires_at_s = EXCLUDED.expires_at_s
                WHERE leases.expires_at_s < {_DB_NOW}
                RETURNING token""",
            (self.name, self.holder, self.address, self.ttl_s),
        )
        return int(rows[0][0]) if rows else None

    def renew(self, token: int) -> bool:
        rows = self._execute(
            f"""UPDATE leases SET expires_at_s = {_DB_NOW} + %s
                WHERE name = %s AND token = %s AND holder = %s RETURNING token""",
            (self.ttl_s, self.name, token, self.holder),
        )
        return bool(rows)

    def release(self, token: int) -> None:
        self._execute(
            "UPDATE leases SET expires_at_s = 0 WHERE name = %s AND token = %s AND holder = %s",
            (self.name, token, self.holder),
        )

    def current(self) -> LeaseHolder | None:
        rows = self._execute(
            f"SELECT holder, address, token, expires_at_s - {_DB_NOW} FROM leases WHERE name = %s", (self.name,)
        )
        if not rows:
            return None
        holder, address, token, left = rows[0]
        return LeaseHolder(holder, address, int(token), float(left))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
