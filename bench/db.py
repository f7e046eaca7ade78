"""Throw-away databases for a benchmark run, the ``--preload`` fast path and a store census.

SQLite: a file in the run's temporary directory (the gateway's own PRAGMAs: WAL and the
configured ``synchronous``). PostgreSQL: a database created from the admin DSN and dropped
afterwards (``WITH (FORCE)``). Durability settings are never relaxed: no ``fsync=off``, no
unlogged tables.

Preloaded operations are written straight into ``sg_operations`` / ``sg_events`` /
``sg_callbacks`` / ``sg_idempotency`` (the columns of ``gateway/store/schema.py``), shaped like
the rows the gateway writes for a finished operation with a delivered callback.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from gateway.store.sqlstore import SqlStore
from gateway.testing import pg_database_url


@dataclass(frozen=True)
class Target:
    """One database configuration to measure."""

    name: str
    db: str  # "sqlite" | "postgresql"
    sqlite_synchronous: str | None = None


@dataclass
class Database:
    target: Target
    url: str
    pg_admin: str | None = None
    pg_name: str | None = None

    async def drop(self) -> None:
        if self.pg_admin and self.pg_name:
            conn = await asyncpg.connect(self.pg_admin, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            finally:
                await conn.close()


async def create_database(target: Target, workdir: Path, pg_admin: str) -> Database:
    if target.db == "sqlite":
        path = workdir / f"{target.name}.db"
        db = Database(target=target, url=f"sqlite:///{path}")
    else:
        name = f"sg_bench_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_admin, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        db = Database(
            target=target, url=pg_database_url(pg_admin, name), pg_admin=pg_admin, pg_name=name
        )
    store = SqlStore(db.url, sqlite_synchronous=target.sqlite_synchronous or "FULL")
    try:
        await store.migrate()
    finally:
        await store.close()
    return db


# -- preload ---------------------------------------------------------------------------------
#
# Set-based: one INSERT ... SELECT per table over a generated series (PostgreSQL
# ``generate_series``, SQLite a recursive CTE), in one transaction, so a million operations load
# in well under a minute instead of being built row by row in Python. The rows match what a
# real start -> dispatch -> result -> callback leaves behind (compared column by column against
# a lifecycle run): four events with the gateway's payloads, a delivered callback with the
# Nexus headers, an idempotency record of the request id (status/body unset, as a 201 start
# leaves it). Operations are spread over the last ~17 hours so that none of their request ids
# or callbacks expire (and get purged) during a run.

EVENTS_PER_OP = 4  # operation.started, attempt.started, operation.succeeded, callback.delivered
PRELOAD_SPAN_S = 17 * 3600.0  # created_at of the oldest preloaded operation: this long ago
PRELOAD_AGE_S = 3600.0  # ... and of the newest
_PAYLOAD = b'{"seq": 0, "pad": "preloaded-operation-input"}'

_PG_PRELOAD = (
    """
    INSERT INTO sg_operations (id, service, operation, state, caller, request_id, input,
        input_content_type, callback_url, callback_headers, links, attempts, deadline_at,
        result, result_content_type, created_at, closed_at, handler_headers)
    SELECT gen_random_uuid()::text, 'bench', 'echo', 'succeeded', 'anonymous', 'preload-' || i,
        $1::bytea, 'application/json', 'http://127.0.0.1:9/cb/preload-' || i, '{}', '[]', 1,
        t + interval '1 hour', $1::bytea, 'application/json', t, t + interval '5 ms', '{}'
    FROM (SELECT i, $2::timestamptz + i * ($3::float8 * interval '1 second') AS t
          FROM generate_series(0, $4::int - 1) AS i) AS s
    """,
    """
    INSERT INTO sg_events (operation_id, at, kind, data)
    SELECT o.id, CASE WHEN k.n < 3 THEN o.created_at ELSE o.closed_at END, k.kind,
        CASE k.n
            WHEN 1 THEN jsonb_build_object('service', 'bench', 'operation', 'echo',
                'caller', 'anonymous', 'request_id', o.request_id, 'timeout_s', 3600.0,
                'callback', true)
            WHEN 2 THEN '{"attempt": 1, "owner": "gw-preload"}'::jsonb
            WHEN 3 THEN '{"attempt": 1, "elapsed_ms": 2.1}'::jsonb
            ELSE jsonb_build_object('delivery_id', 'msg_' || md5(o.id), 'attempt', 1,
                'status', 200)
        END
    FROM sg_operations AS o
    CROSS JOIN (VALUES (1, 'operation.started'), (2, 'attempt.started'),
        (3, 'operation.succeeded'), (4, 'callback.delivered')) AS k(n, kind)
    WHERE o.request_id LIKE 'preload-%'
    """,
    """
    INSERT INTO sg_callbacks (id, operation_id, caller, url, headers, body, state, attempts,
        next_attempt_at, expires_at, created_at, delivered_at)
    SELECT 'msg_' || md5(o.id), o.id, o.caller, o.callback_url,
        jsonb_build_object('Content-Type', 'application/json', 'Nexus-Operation-Id', o.id,
            'Nexus-Operation-State', 'succeeded', 'Nexus-Operation-Token', o.id,
            'Nexus-Operation-Close-Time',
            to_char(o.closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'Nexus-Operation-Start-Time',
            to_char(o.created_at AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"')),
        o.result, 'delivered', 1, o.closed_at + interval '8 ms',
        o.closed_at + interval '1 day', o.closed_at, o.closed_at + interval '8 ms'
    FROM sg_operations AS o WHERE o.request_id LIKE 'preload-%'
    """,
    """
    INSERT INTO sg_idempotency (scope, key, fingerprint, operation_id, response_headers,
        created_at, expires_at)
    SELECT o.caller, 'rid:' || o.request_id, encode(sha256(convert_to(o.id, 'UTF8')), 'hex'),
        o.id, '{}', o.created_at, o.created_at + interval '1 day'
    FROM sg_operations AS o WHERE o.request_id LIKE 'preload-%'
    """,
)

_PG_CONSTRAINTS = """
    SELECT c.conname AS name, c.conrelid::regclass::text AS tbl, pg_get_constraintdef(c.oid) AS def
    FROM pg_constraint AS c
    WHERE c.conrelid::regclass::text = ANY($1::text[]) AND c.contype IN ('p', 'u')
"""
_PG_INDEXES = """
    SELECT i.indexname AS name, i.indexdef AS def FROM pg_indexes AS i
    WHERE i.schemaname = current_schema() AND i.tablename = ANY($1::text[])
      AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
"""

# SQLite keeps naive UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text; ``_ts(x)`` formats a
# microsecond epoch expression that way.


def _ts(us: str) -> str:
    return (
        f"(strftime('%Y-%m-%d %H:%M:%S', ({us}) / 1000000, 'unixepoch')"
        f" || printf('.%06d', ({us}) % 1000000))"
    )


def _sqlite_preload() -> tuple[str, ...]:
    uid = (
        "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a'"
        " || substr(h, 18, 3) || '-' || substr(h, 21, 12)"
    )
    t, closed = "(:base + i * :step)", "(:base + i * :step + 5000)"
    ops = f"""
    WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n),
    r AS MATERIALIZED (SELECT i, lower(hex(randomblob(16))) AS h FROM s)
    INSERT INTO sg_operations (id, service, operation, state, caller, request_id, input,
        input_content_type, callback_url, callback_headers, links, attempts, deadline_at,
        result, result_content_type, failure, created_at, closed_at, handler_headers,
        heartbeat_details)
    SELECT {uid}, 'bench', 'echo', 'succeeded', 'anonymous', 'preload-' || i, :payload,
        'application/json', 'http://127.0.0.1:9/cb/preload-' || i, '{{}}', '[]', 1,
        {_ts(t + " + 3600000000")}, :payload, 'application/json', 'null', {_ts(t)},
        {_ts(closed)}, '{{}}', 'null'
    FROM r
    """
    events = """
    INSERT INTO sg_events (operation_id, at, kind, data)
    SELECT o.id, CASE WHEN k.n < 3 THEN o.created_at ELSE o.closed_at END, k.kind,
        CASE k.n
            WHEN 1 THEN json_object('service', 'bench', 'operation', 'echo',
                'caller', 'anonymous', 'request_id', o.request_id, 'timeout_s', 3600.0,
                'callback', json('true'))
            WHEN 2 THEN '{"attempt": 1, "owner": "gw-preload"}'
            WHEN 3 THEN '{"attempt": 1, "elapsed_ms": 2.1}'
            ELSE json_object('delivery_id', 'msg_' || replace(o.id, '-', ''), 'attempt', 1,
                'status', 200)
        END
    FROM sg_operations AS o
    CROSS JOIN (SELECT 1 AS n, 'operation.started' AS kind UNION ALL
        SELECT 2, 'attempt.started' UNION ALL SELECT 3, 'operation.succeeded' UNION ALL
        SELECT 4, 'callback.delivered') AS k
    WHERE o.request_id LIKE 'preload-%'
    """
    callbacks = """
    INSERT INTO sg_callbacks (id, operation_id, caller, url, headers, body, state, attempts,
        next_attempt_at, expires_at, created_at, delivered_at)
    SELECT 'msg_' || replace(o.id, '-', ''), o.id, o.caller, o.callback_url,
        json_object('Nexus-Operation-Token', o.id, 'Nexus-Operation-Id', o.id,
            'Nexus-Operation-State', 'succeeded',
            'Nexus-Operation-Start-Time',
            substr('SunMonTueWedThuFriSat', 1 + 3 * strftime('%w', o.created_at), 3) || ', '
            || strftime('%d ', o.created_at)
            || substr('JanFebMarAprMayJunJulAugSepOctNovDec',
                3 * strftime('%m', o.created_at) - 2, 3)
            || strftime(' %Y %H:%M:%S GMT', o.created_at),
            'Nexus-Operation-Close-Time',
            strftime('%Y-%m-%dT%H:%M:%fZ', o.closed_at), 'Content-Type', 'application/json'),
        o.result, 'delivered', 1, o.closed_at,
        strftime('%Y-%m-%d %H:%M:%S', o.closed_at, '+1 day') || substr(o.closed_at, 20),
        o.closed_at, o.closed_at
    FROM sg_operations AS o WHERE o.request_id LIKE 'preload-%'
    """
    idem = """
    INSERT INTO sg_idempotency (scope, key, fingerprint, operation_id, response_headers,
        created_at, expires_at)
    SELECT o.caller, 'rid:' || o.request_id, lower(hex(randomblob(32))), o.id, '{}',
        o.created_at,
        strftime('%Y-%m-%d %H:%M:%S', o.created_at, '+1 day') || substr(o.created_at, 20)
    FROM sg_operations AS o WHERE o.request_id LIKE 'preload-%'
    """
    return ops, events, callbacks, idem


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def _preload_sqlite(url: str, n: int) -> None:
    now_us = int(time.time() * 1_000_000)
    span_us = int(PRELOAD_SPAN_S * 1_000_000)
    params = {
        "n": n,
        "base": now_us - span_us,
        "step": max(1, (span_us - int(PRELOAD_AGE_S * 1_000_000)) // max(1, n)),
        "payload": _PAYLOAD,
    }
    conn = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB for this loading connection only
        conn.execute("BEGIN IMMEDIATE")
        # as on PostgreSQL: build the secondary indexes once after the load (their own DDL)
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('sg_operations', 'sg_events', 'sg_callbacks', 'sg_idempotency')"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        ops, *rest = _sqlite_preload()
        conn.execute(ops, params)
        for sql in rest:
            conn.execute(sql)
        for _, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _preload_pg(url: str, n: int) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    base = datetime.now(UTC) - timedelta(seconds=PRELOAD_SPAN_S)
    step = (PRELOAD_SPAN_S - PRELOAD_AGE_S) / max(1, n)
    try:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        async with conn.transaction():
            # Building an index once over the loaded rows is much cheaper than maintaining it
            # row by row (random uuid keys): drop the tables' indexes and constraints, load,
            # and recreate them from their own definitions (the migrations' DDL, unchanged).
            tables = ["sg_operations", "sg_events", "sg_callbacks", "sg_idempotency"]
            cons = await conn.fetch(_PG_CONSTRAINTS, tables)
            idx = await conn.fetch(_PG_INDEXES, tables)
            for r in idx:
                await conn.execute(f'DROP INDEX "{r["name"]}"')
            for r in cons:
                await conn.execute(f'ALTER TABLE {r["tbl"]} DROP CONSTRAINT "{r["name"]}"')
            ops, *rest = _PG_PRELOAD
            await conn.execute(ops, _PAYLOAD, base, step, n)
            for sql in rest:
                await conn.execute(sql)
            for r in cons:
                await conn.execute(
                    f'ALTER TABLE {r["tbl"]} ADD CONSTRAINT "{r["name"]}" {r["def"]}'
                )
            for r in idx:
                await conn.execute(r["def"])
        # a long-running store has been vacuumed: keep autovacuum of the bulk load out of the
        # measurement
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def preload(db: Database, n: int) -> dict[str, float]:
    """Insert ``n`` finished operations (with events, callbacks, request ids); returns timing."""
    t0 = time.perf_counter()
    if n > 0:
        if db.target.db == "sqlite":
            await asyncio.to_thread(_preload_sqlite, db.url, n)
        else:
            await _preload_pg(db.url, n)
    return {"operations": n, "events": n * EVENTS_PER_OP, "seconds": time.perf_counter() - t0}


# -- census ----------------------------------------------------------------------------------

_CENSUS = {
    "operations": "SELECT state, count(*) FROM sg_operations GROUP BY state",
    "callbacks": "SELECT state, count(*) FROM sg_callbacks GROUP BY state",
    "events": "SELECT kind, count(*) FROM sg_events GROUP BY kind",
    "callback_attempts": "SELECT attempts, count(*) FROM sg_callbacks GROUP BY attempts",
    "dispatch_attempts": "SELECT attempts, count(*) FROM sg_operations GROUP BY attempts",
}


async def census(db: Database) -> dict[str, dict[str, int]]:
    """Rows per state after a run (with the gateway stopped): nothing should be left running."""
    out: dict[str, dict[str, int]] = {}
    if db.target.db == "sqlite":
        conn = sqlite3.connect(_sqlite_path(db.url))
        try:
            for name, sql in _CENSUS.items():
                out[name] = {str(k): int(v) for k, v in conn.execute(sql).fetchall()}
        finally:
            conn.close()
        return out
    pg = await asyncpg.connect(db.url, timeout=10)
    try:
        for name, sql in _CENSUS.items():
            out[name] = {str(r[0]): int(r[1]) for r in await pg.fetch(sql)}
    finally:
        await pg.close()
    return out


def db_size_bytes(db: Database) -> int | None:
    if db.target.db != "sqlite":
        return None
    path = Path(_sqlite_path(db.url))
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.exists())
