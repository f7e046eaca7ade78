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

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from gateway.store.sqlstore import SqlStore

EVENTS_PER_OP = 4  # operation.started, attempt.started, operation.succeeded, callback.delivered
_CHUNK = 5000


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


def pg_url(admin: str, name: str) -> str:
    return admin.rsplit("/", 1)[0] + "/" + name


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
        db = Database(target=target, url=pg_url(pg_admin, name), pg_admin=pg_admin, pg_name=name)
    store = SqlStore(db.url, sqlite_synchronous=target.sqlite_synchronous or "FULL")
    try:
        await store.migrate()
    finally:
        await store.close()
    return db


# -- preload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    ops: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    callbacks: list[tuple[Any, ...]]
    idem: list[tuple[Any, ...]]


OP_COLS = (
    "id",
    "service",
    "operation",
    "state",
    "caller",
    "request_id",
    "input",
    "input_content_type",
    "callback_url",
    "callback_headers",
    "links",
    "work",
    "attempts",
    "next_attempt_at",
    "lease_owner",
    "lease_until",
    "deadline_at",
    "cancel_requested_at",
    "agent_token",
    "result",
    "result_content_type",
    "failure",
    "created_at",
    "closed_at",
    "last_error",
    "traceparent",
)
EVENT_COLS = ("operation_id", "at", "kind", "data")
CB_COLS = (
    "id",
    "operation_id",
    "caller",
    "url",
    "headers",
    "body",
    "state",
    "attempts",
    "next_attempt_at",
    "lease_owner",
    "lease_until",
    "expires_at",
    "created_at",
    "delivered_at",
    "last_error",
)
IDEM_COLS = (
    "scope",
    "key",
    "fingerprint",
    "operation_id",
    "response_status",
    "response_body",
    "response_headers",
    "created_at",
    "expires_at",
)


def _chunks(n: int, dialect: str) -> Iterator[_Rows]:
    """Rows for ``n`` finished operations; datetimes as the dialect's driver wants them."""
    base = datetime.now(UTC) - timedelta(hours=1)
    sqlite = dialect == "sqlite"

    def ts(dt: datetime) -> Any:
        return dt.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else dt

    def js(v: Any) -> str:
        return json.dumps(v)

    payload = b'{"i": 0, "pad": "preloaded-operation-input"}'
    for start in range(0, n, _CHUNK):
        rows = _Rows([], [], [], [])
        for i in range(start, min(n, start + _CHUNK)):
            op_id = str(uuid.uuid4())
            created = base + timedelta(microseconds=i * 20)
            closed = created + timedelta(milliseconds=5)
            rid = f"preload-{i}"
            cb_url = f"http://127.0.0.1:9/cb/{rid}"
            result = payload
            rows.ops.append(
                (
                    op_id,
                    "bench",
                    "echo",
                    "succeeded",
                    "anonymous",
                    rid,
                    payload,
                    "application/json",
                    cb_url,
                    js({}),
                    js([]),
                    None,
                    1,
                    None,
                    None,
                    None,
                    ts(created + timedelta(hours=1)),
                    None,
                    None,
                    result,
                    "application/json",
                    js(None),
                    ts(created),
                    ts(closed),
                    None,
                    None,
                )
            )
            for kind, data in (
                ("operation.started", {"service": "bench", "operation": "echo", "caller": "x"}),
                ("attempt.started", {"attempt": 1, "owner": "preload"}),
                ("operation.succeeded", {"attempt": 1, "elapsed_ms": 1.0}),
                ("callback.delivered", {"delivery_id": f"msg_{i}", "attempt": 1, "status": 200}),
            ):
                rows.events.append((op_id, ts(closed), kind, js(data)))
            rows.callbacks.append(
                (
                    f"msg_{uuid.uuid4().hex}",
                    op_id,
                    "anonymous",
                    cb_url,
                    js({"Nexus-Operation-Id": op_id, "Content-Type": "application/json"}),
                    result,
                    "delivered",
                    1,
                    ts(closed),
                    None,
                    None,
                    ts(closed + timedelta(days=1)),
                    ts(closed),
                    ts(closed),
                    None,
                )
            )
            rows.idem.append(
                (
                    "anonymous",
                    "rid:" + rid,
                    "0" * 64,
                    op_id,
                    201,
                    b'{"token": "x", "state": "running"}',
                    js({"Content-Type": "application/json"}),
                    ts(created),
                    ts(created + timedelta(days=1)),
                )
            )
        yield rows


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


def _preload_sqlite(url: str, n: int) -> None:
    conn = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        for rows in _chunks(n, "sqlite"):
            for table, cols, data in (
                ("sg_operations", OP_COLS, rows.ops),
                ("sg_events", EVENT_COLS, rows.events),
                ("sg_callbacks", CB_COLS, rows.callbacks),
                ("sg_idempotency", IDEM_COLS, rows.idem),
            ):
                marks = ",".join("?" * len(cols))
                conn.executemany(
                    f"INSERT INTO {table} ({','.join(cols)}) VALUES ({marks})",
                    data,
                )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _preload_pg(url: str, n: int) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction():
            for rows in _chunks(n, "postgresql"):
                await conn.copy_records_to_table("sg_operations", records=rows.ops, columns=OP_COLS)
                await conn.copy_records_to_table(
                    "sg_events", records=rows.events, columns=EVENT_COLS
                )
                await conn.copy_records_to_table(
                    "sg_callbacks", records=rows.callbacks, columns=CB_COLS
                )
                await conn.copy_records_to_table(
                    "sg_idempotency", records=rows.idem, columns=IDEM_COLS
                )
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
            _preload_sqlite(db.url, n)
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
