"""The store's schema: one list of versioned steps, written for both databases side by side
(SQLite in ``store.sqlite``, PostgreSQL in ``store.postgres``), so no step can exist for one and
not the other. An older database is brought up to date on open, one transaction per step; a
newer one is refused.
"""

from __future__ import annotations

import dataclasses

from . import StoreError


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step of the schema, written once per dialect side by side, so no step can exist for
    one database and not the other (both carry the same version numbers)."""

    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


# the types the databases spell differently (a step written once with them: ``_both``)
_TYPES = {
    "sqlite": {"int": "INTEGER", "real": "REAL", "autoincrement": " AUTOINCREMENT"},
    "postgresql": {"int": "BIGINT", "real": "DOUBLE PRECISION", "autoincrement": ""},
}


def _both(*statements: str) -> Migration:
    """A step whose statements differ between the databases only in ``_TYPES``."""
    return Migration(*(tuple(x.format(**_TYPES[db]) for x in statements) for db in ("sqlite", "postgresql")))


SCHEMA_VERSION = 6

MIGRATIONS: dict[int, Migration] = {
    # version 1: jobs and their event log.
    1: _both(
        """CREATE TABLE jobs (
               seq {int} PRIMARY KEY,
               id TEXT NOT NULL UNIQUE,
               request_id TEXT NOT NULL UNIQUE,
               doc TEXT NOT NULL
           )""",
        """CREATE TABLE events (
               revision {int} PRIMARY KEY{autoincrement},
               job_id TEXT NOT NULL,
               type TEXT NOT NULL,
               time_s {real} NOT NULL,
               message TEXT NOT NULL,
               job TEXT NOT NULL
           )""",
    ),
    # version 2: registered nodes survive a restart; events found per job without a scan.
    2: _both(
        """CREATE TABLE nodes (
               name TEXT PRIMARY KEY,
               doc TEXT NOT NULL,
               update_time_s {real} NOT NULL
           )""",
        "CREATE INDEX events_by_job ON events (job_id, revision)",
    ),
    # version 3: the leader lease of replicas sharing one database (store.postgres).
    # A SQLite file has one server (the file is locked); the table is there so both schemas
    # stay one.
    3: _both(
        """CREATE TABLE leases (
               name TEXT PRIMARY KEY,
               holder TEXT NOT NULL,
               address TEXT NOT NULL,
               token {int} NOT NULL,
               expires_at_s {real} NOT NULL
           )""",
    ),
    # version 4: a job's restart count is stored on it (servers before counted its EVICTED events
    # whose message starts with "restart "; counted once here).
    4: Migration(
        sqlite=(
            """UPDATE jobs SET doc = json_set(doc, '$.restarts', (
                   SELECT COUNT(*) FROM events e
                   WHERE e.job_id = jobs.id AND e.type = 'EVICTED' AND e.message LIKE 'restart %'))""",
        ),
        postgresql=(
            """UPDATE jobs SET doc = (doc::jsonb || jsonb_build_object('restarts', (
                   SELECT COUNT(*) FROM events e
                   WHERE e.job_id = jobs.id AND e.type = 'EVICTED' AND e.message LIKE 'restart %')))::text""",
        ),
    ),
    # version 5: the live MoE loop's closed windows per job (``service.moe``), with the plans it
    # published, so the plan in force survives a restart and a failover.
    5: _both(
        """CREATE TABLE moe_windows (
               job_id TEXT NOT NULL,
               window_index {int} NOT NULL,
               time_s {real} NOT NULL,
               doc TEXT NOT NULL,
               PRIMARY KEY (job_id, window_index)
           )""",
    ),
    # version 6: a job's spec is stored once, in ``specs``, not in its row and every one of its
    # events (an event copied the whole spec: ~5,000 jobs made a 642 MB file). Job rows and
    # events keep the rest of the job; reads join the spec back. Retention (``CompactJobs``)
    # deletes a finished job's spec row and its older events.
    6: Migration(
        sqlite=(
            "CREATE TABLE specs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL)",
            "INSERT INTO specs (job_id, spec) SELECT id, json_extract(doc, '$.spec') FROM jobs",
            "UPDATE jobs SET doc = json_remove(doc, '$.spec')",
            "UPDATE events SET job = json_remove(job, '$.spec')",
        ),
        postgresql=(
            "CREATE TABLE specs (job_id TEXT PRIMARY KEY, spec TEXT NOT NULL)",
            "INSERT INTO specs (job_id, spec) SELECT id, (doc::json -> 'spec')::text FROM jobs",
            "UPDATE jobs SET doc = (doc::jsonb - 'spec')::text",
            "UPDATE events SET job = (job::jsonb - 'spec')::text",
        ),
    ),
}


def newer_schema_error(where: str, found: int) -> StoreError:
    return StoreError(
        f"{where}: schema version {found} is newer than this xpod supports ({SCHEMA_VERSION}); upgrade xpod"
    )
