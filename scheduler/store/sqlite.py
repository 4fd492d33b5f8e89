"""The SQLite store (``store.Store`` over one file in WAL mode): the default of ``xpod server``
and ``xpod up``.

Beyond the interface's promises (``scheduler.store``): durability is ``synchronous=FULL`` (the
WAL is fsync'd at every commit); one writer thread owns the write connection; readers use their
own connections (WAL readers never block the writer). The file is locked for one process
(``store.lock``): a second server on it exits at once, before reading or writing anything.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import Any, Callable

from . import StoreError, StoreUnavailable
from .base import GroupCommitStore
from .lock import StateLock
from .schema import MIGRATIONS, SCHEMA_VERSION, newer_schema_error

_log = logging.getLogger("xpod.store")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def migrate(conn: sqlite3.Connection, path: str, target: int = SCHEMA_VERSION) -> int:
    """Bring the file to ``target``; returns the version found. Each step is one transaction."""
    try:
        found = conn.execute("PRAGMA user_version").fetchall()[0][0]
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path}: not an xpod database ({err}); pass another --db path") from None
    if found > SCHEMA_VERSION:
        raise newer_schema_error(path, found)
    for version in range(found + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].sqlite:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class SqliteStore(GroupCommitStore):
    """SQLite (WAL, ``synchronous=FULL``): the embedded default, one server per file, the file
    locked for it (``store.lock``)."""

    dialect = "sqlite"
    _QUEUE_OF_DOC = "json_extract(j.doc, '$.queue')"

    def __init__(
        self,
        path: str,
        *,
        on_commit: Callable[[list[Any]], None] | None = None,
        max_queued_writes: int = 20_000,
        max_batch: int = 2_000,
        max_background_per_batch: int = 64,
        max_background_beside_front: int = 8,
        checkpoint_interval_s: float = 0.5,
        wal_restart_frames: int = 2000,
        holder: str = "xpod",
    ) -> None:
        # before anything reads or writes the file: a second process must touch nothing
        self._lock = StateLock.acquire(path, holder)
        try:
            self._open(path)
        except BaseException:
            self._lock.release()
            raise
        self._read_local = threading.local()
        # Checkpoints (copying the WAL back into the database file, with its own fsync) run on
        # a thread of their own, not inside a commit: SQLite's automatic checkpoint would run in
        # whichever commit crosses 1000 WAL pages, which then takes several times longer (a
        # latency spike for every submission in that batch). PASSIVE never blocks the writer.
        # But the WAL only starts over from its beginning when a write finds it completely
        # checkpointed, which a checkpointer racing a busy writer never achieves: once the
        # background pass has copied most of a WAL over ``wal_restart_frames``, the writer runs a
        # short PASSIVE pass of its own between two batches (only the last few frames are left to
        # copy), and its next transaction restarts the WAL. Without that the WAL grows for as
        # long as submissions keep coming.
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn.execute(f"PRAGMA journal_size_limit = {64 * 1024 * 1024}")  # a WAL that grew is cut back
        self._checkpoint_interval_s = checkpoint_interval_s
        self._wal_restart_frames = wal_restart_frames
        self._wal_frames = 0  # the WAL's length in frames at the last background pass
        self._checkpoint_stop = threading.Event()
        self.checkpoints = 0
        self.writer_checkpoints = 0
        self._init_writer(
            path,
            on_commit,
            lambda sql: self._conn.execute(sql).fetchall(),
            max_queued_writes=max_queued_writes,
            max_batch=max_batch,
            max_background_per_batch=max_background_per_batch,
            max_background_beside_front=max_background_beside_front,
        )
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="xpod-store-checkpoint", daemon=True)
        self._checkpointer.start()

    def _open(self, path: str) -> None:
        try:
            self._conn = _connect(path)
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
        except sqlite3.Error as err:
            raise StoreError(f"{path}: cannot open the database: {err}; pass a writable --db path") from None
        try:
            if mode.lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL mode (got {mode}); put --db on a local filesystem")
            # FULL: the WAL is fsync'd at every commit, so an acknowledged write survives a crash
            # of the machine, not only of the process.
            self._conn.execute("PRAGMA synchronous = FULL")
            self.schema_version_found = migrate(self._conn, path)
        except BaseException:
            self._conn.close()
            raise

    def _checkpoint_loop(self) -> None:
        conn = _connect(self.path)
        try:
            while not self._checkpoint_stop.wait(self._checkpoint_interval_s):
                self.checkpoint_pass(conn)
        finally:
            conn.close()

    def checkpoint_pass(self, conn: sqlite3.Connection | None = None) -> None:
        """One background checkpoint pass (``PASSIVE``: never blocks the writer); the thread
        makes one every ``checkpoint_interval_s``."""
        own = conn is None
        conn = conn or _connect(self.path)
        try:
            _, self._wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            self.checkpoints += 1
        except sqlite3.Error:  # busy or I/O trouble: the next round tries again
            pass
        finally:
            if own:
                conn.close()

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _cursor(self) -> sqlite3.Connection:
        return self._conn

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self, err: BaseException) -> BaseException:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            # a read-only file, a full disk, an I/O error: the callers get UNAVAILABLE (nothing
            # acknowledged) and the server's health turns NOT_SERVING (store_failed), not UNKNOWN
            _log.error("xpod store %s: a write failed, nothing acknowledged: %s", self.path, err)
            failed = StoreUnavailable(f"the database cannot be written: {err}")
            if self.on_failure is not None:
                self.on_failure(failed)
            return failed
        return err

    def _after_batch(self) -> None:
        if self._wal_frames > self._wal_restart_frames:
            self._wal_frames = 0
            with contextlib.suppress(sqlite3.Error):  # busy: the background pass goes on, and this comes back
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.writer_checkpoints += 1

    # reads (any thread; WAL readers never block the writer)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._read_local.conn = conn
        return conn

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._reader().execute(sql, params).fetchall()

    def set_holder_address(self, address: str) -> None:
        self._lock.set_address(address)

    def _close_connections(self) -> None:
        self._checkpoint_stop.set()
        self._checkpointer.join()
        self._conn.close()
        conn = getattr(self._read_local, "conn", None)
        if conn is not None:
            conn.close()
        self._lock.release()
