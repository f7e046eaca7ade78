"""SQLAlchemy-async implementation of the Store port: every SQL statement lives here.

SQLite (aiosqlite, WAL, one connection, BEGIN IMMEDIATE) is the embedded default;
PostgreSQL (asyncpg) claims work with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    event,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.sql.elements import ColumnElement

from gateway.domain.errors import StoreError, StoreUnavailable, UniqueViolation, WriteConflict
from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.domain.ports import Created, NewOperation
from gateway.domain.specs import AgentSpec
from gateway.store import schema as t

P = ParamSpec("P")
R = TypeVar("R")

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x5357_4152  # arbitrary advisory lock key ("SWAR")


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``sqlite:///`` URLs and pick the async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://") and "+aiosqlite" not in url:
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def _translate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Translate driver errors into our own exceptions at the store boundary."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except IntegrityError as exc:
            raise UniqueViolation(str(exc.orig)) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_connection_error(exc):
                raise StoreUnavailable(type(exc.orig).__name__) from exc
            if str(getattr(exc.orig, "sqlstate", "") or "") in ("40P01", "40001"):
                raise WriteConflict(str(exc.orig)) from exc
            raise StoreError(f"{type(exc.orig).__name__}: {exc.orig}") from exc
        except asyncpg.PostgresError as exc:  # the hot path runs on the driver directly
            state = str(exc.sqlstate or "")
            if state == "23505":
                raise UniqueViolation(str(exc)) from exc
            if _pg_unavailable(exc):
                raise StoreUnavailable(type(exc).__name__) from exc
            if state in ("40P01", "40001"):
                raise WriteConflict(str(exc)) from exc
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        except sqlite3.IntegrityError as exc:  # the SQLite hot path, on aiosqlite directly
            raise UniqueViolation(str(exc)) from exc
        except sqlite3.OperationalError as exc:
            if any(s in str(exc).lower() for s in ("locked", "busy", "disk i/o", "unable to open")):
                raise StoreUnavailable(str(exc)) from exc
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, ConnectionError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        except PoolTimeout as exc:
            raise StoreUnavailable("no database connection free in time") from exc
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc

    return wrapper


# SQLSTATEs meaning "the server cannot serve you right now": connection exceptions (08*),
# admin/crash shutdown and "cannot connect now" while starting or stopping (57P01-57P03),
# too many connections (53300).
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}


def _pg_unavailable(exc: asyncpg.PostgresError) -> bool:
    state = str(exc.sqlstate or "")
    return state.startswith("08") or state in _UNAVAILABLE_SQLSTATES


def _is_connection_error(exc: DBAPIError) -> bool:
    sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
    if sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES:
        return True
    name = type(exc.orig).__name__.lower()
    text_ = str(exc.orig).lower()
    return any(
        s in name or s in text_
        for s in (
            "connection",
            "cannotconnectnow",
            "adminshutdown",
            "interfaceerror",
            "closed",
            "database is locked",
        )
    )


# -- hot-path statements, built once -------------------------------------------------------
# Building a Core statement per call (and its bind parameters) was ~40% of the gateway's CPU
# under load; these are constructed once, compiled once per dialect, and executed with plain
# parameter dicts.

_o, _e, _cb_t, _i = t.operations, t.events, t.callbacks, t.idempotency
# Queries served by a partial index (migration 0004) compare with SQL literals, not bound
# parameters: a generic prepared plan cannot prove a parameter matches the index predicate.
_RUNNING: ColumnElement[str] = literal_column(f"'{OperationState.RUNNING.value}'")
_PENDING: ColumnElement[str] = literal_column(f"'{DeliveryState.PENDING.value}'")
_TS = t.UTCDateTime()

INSERT_OPERATION = insert(_o)
INSERT_EVENTS = insert(_e)
INSERT_IDEMPOTENCY = insert(_i)
SELECT_OPERATION = select(_o).where(_o.c.id == bindparam("b_id"))
SELECT_IDEMPOTENCY = select(_i).where(
    _i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key")
)
DELETE_IDEMPOTENCY = delete(_i).where(
    _i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key")
)
SAVE_RESPONSE = (
    update(_i)
    .where(_i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key"))
    .values(
        response_status=bindparam("b_status"),
        response_body=bindparam("b_body"),
        response_headers=bindparam("b_headers"),
    )
)
LOCK_OPERATION = select(_o.c.id).where(_o.c.id == bindparam("b_id")).with_for_update()
LOCK_OPERATIONS = (
    select(_o.c.id)
    .where(_o.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(_o.c.id)
    .with_for_update()
)


def _lease_due_statement(table: Table, pending: Any, **values: Any) -> Any:
    """Lease up to ``b_limit`` rows of ``table`` that are pending and due, with no live lease,
    oldest first, skipping rows another claimer holds; returns the leased rows."""
    now = bindparam("b_now", type_=_TS)
    due = (
        select(table.c.id)
        .where(
            pending,
            table.c.next_attempt_at <= now,
            or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(table.c.next_attempt_at)
        .limit(bindparam("b_limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )
    return (
        update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(
            lease_owner=bindparam("b_owner"),
            lease_until=bindparam("b_until", type_=_TS),
            **values,
        )
        .returning(*table.c)
    )


_COUNTS_AS_ATTEMPT = and_(_o.c.work == Work.DISPATCH.value, _o.c.cancel_requested_at.is_(None))
CLAIM_WORK = _lease_due_statement(
    _o,
    _o.c.work.is_not(None),
    prev_lease_owner=_o.c.lease_owner,
    attempts=_o.c.attempts + case((_COUNTS_AS_ATTEMPT, 1), else_=0),
)


def _update_running_statement(fenced: bool) -> Any:
    # A cancel requested while the lease was held must not be lost: an accepted (or polled)
    # operation gets cancel work, a retry becomes due at once (the next claim cancels it).
    cancel_pending = _o.c.cancel_requested_at.is_not(None)
    conds = [_o.c.id == bindparam("b_id"), _o.c.state == OperationState.RUNNING.value]
    if fenced:
        conds.append(_o.c.lease_owner == bindparam("b_owner"))
    cancelable = bindparam("b_cancelable", type_=Boolean())
    return (
        update(_o)
        .where(*conds)
        .values(
            work=case(
                (and_(cancel_pending, cancelable), Work.CANCEL.value),
                else_=bindparam("b_work", type_=String()),
            ),
            next_attempt_at=case(
                (cancel_pending, bindparam("b_now", type_=_TS)),
                else_=bindparam("b_next", type_=_TS),
            ),
            lease_owner=None,
            lease_until=None,
            last_error=bindparam("b_error", type_=Text()),
            agent_token=func.coalesce(bindparam("b_token", type_=Text()), _o.c.agent_token),
            attempts=_o.c.attempts - bindparam("b_refund", type_=Integer()),
        )
    )


UPDATE_RUNNING = {True: _update_running_statement(True), False: _update_running_statement(False)}


UPDATE_CLOSED = (
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state != OperationState.RUNNING.value,
        _o.c.lease_owner == bindparam("b_owner"),
    )
    .values(
        work=bindparam("b_work", type_=String()),
        next_attempt_at=bindparam("b_next", type_=_TS),
        lease_owner=None,
        lease_until=None,
    )
)


CLAIM_CALLBACKS = _lease_due_statement(
    _cb_t,
    _cb_t.c.state == _PENDING,  # a literal: the partial index applies
    attempts=_cb_t.c.attempts + 1,
)
FINISH_CALLBACK = (
    update(_cb_t)
    .where(
        _cb_t.c.id == bindparam("b_id"),
        _cb_t.c.lease_owner == bindparam("b_owner"),
        _cb_t.c.state == DeliveryState.PENDING.value,
    )
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next", type_=_TS),
        last_error=bindparam("b_error", type_=Text()),
        lease_owner=None,
        lease_until=None,
        delivered_at=func.coalesce(bindparam("b_delivered", type_=_TS), _cb_t.c.delivered_at),
    )
)


# -- PostgreSQL hot path -------------------------------------------------------------------
# A start and a completion are each ONE statement (data-modifying CTEs) run on the driver
# connection in its implicit transaction: one round trip instead of five (BEGIN, three
# writes, COMMIT) and no SQLAlchemy execution layer. Profiled under load, that layer and
# those round trips were half of the gateway's CPU. Built from the table definitions above,
# so the columns and their types cannot drift from the schema.

_PG_DIALECT = pg_dialect.dialect()  # type: ignore[no-untyped-call]


class _PgRow:
    """Positional ``$n::type`` placeholders and arguments for a set of a table's columns."""

    def __init__(self, table: Table, names: Sequence[str]) -> None:
        self.names = tuple(names)
        cols = [table.c[n] for n in self.names]
        self.types = [c.type.compile(dialect=_PG_DIALECT) for c in cols]
        self.json = [isinstance(c.type, (JSON, JSONB)) for c in cols]

    def placeholders(self, first: int) -> str:
        return ", ".join(f"${first + i}::{typ}" for i, typ in enumerate(self.types))

    def args(self, values: dict[str, Any]) -> list[Any]:
        return [
            _pg_json(values[n]) if js else values[n]
            for n, js in zip(self.names, self.json, strict=True)
        ]


def _pg_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


_PG_OP = _PgRow(_o, [c.name for c in _o.c if c.name != "prev_lease_owner"])
_PG_IDEM = _PgRow(_i, [c.name for c in _i.c])
_PG_CB = _PgRow(_cb_t, [c.name for c in _cb_t.c])


def _pg_start_sql(with_key: bool) -> str:
    n_op = len(_PG_OP.names)
    ev = n_op + 1  # three arrays: at, kind, data (JSON text), in event order
    op_cols = ", ".join(_PG_OP.names)
    events = f"""
    ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT op.id, u.at, u.kind, u.data::jsonb
        FROM op, unnest(${ev}::timestamptz[], ${ev + 1}::text[], ${ev + 2}::text[])
             WITH ORDINALITY AS u(at, kind, data, n)
        ORDER BY u.n
    )
    SELECT count(*) FROM op"""
    if not with_key:
        return f"""
    WITH op AS (
        INSERT INTO {_o.name} ({op_cols}) VALUES ({_PG_OP.placeholders(1)}) RETURNING id
    ),{events}"""
    # The operation is inserted only if its key was free: a taken key writes nothing here
    # and the caller falls back to the transaction that looks at the existing operation.
    return f"""
    WITH idem AS (
        INSERT INTO {_i.name} ({", ".join(_PG_IDEM.names)})
        VALUES ({_PG_IDEM.placeholders(ev + 3)})
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING 1
    ), op AS (
        INSERT INTO {_o.name} ({op_cols})
        SELECT {_PG_OP.placeholders(1)} FROM idem
        RETURNING id
    ),{events}"""


PG_START = {False: _pg_start_sql(False), True: _pg_start_sql(True)}


# Closing statements tell every listening replica which operations they closed, at commit
# (NOTIFY is transactional): a long-poll waiting in another process wakes at once instead of
# at its next re-read. One notification per statement; ids are comma-separated (a batch of
# 128 completions is ~4.7 kB, under PostgreSQL's 8 kB payload limit). A hint only: waiters
# still re-read the store now and then, so a lost notification costs latency, not results.
CLOSED_CHANNEL = "swarmgate_closed"
_NOTIFY_CLOSED = (
    f"CASE WHEN count(*) > 0 THEN pg_notify('{CLOSED_CHANNEL}', string_agg(id, ',')) END"
)


def _pg_complete_sql(with_callback: bool) -> str:
    # $1 id, $2 state, $3 work, $4 next_attempt_at, $5 result, $6 content type, $7 failure,
    # $8 closed_at, $9 fence owner (NULL: unfenced), $10..$12 the event, then the callback.
    # The event rows come FROM the update, so they are written after its row lock is taken
    # (event ids of one operation ascend in commit order).
    callback = (
        f"""
    cb AS (
        INSERT INTO {_cb_t.name} ({", ".join(_PG_CB.names)})
        SELECT {_PG_CB.placeholders(13)} FROM upd
    ),"""
        if with_callback
        else ""
    )
    return f"""
    WITH upd AS (
        UPDATE {_o.name}
        SET state = $2::varchar, work = $3::varchar, next_attempt_at = $4::timestamptz,
            lease_owner = NULL, lease_until = NULL, result = $5::bytea,
            result_content_type = $6::varchar, failure = $7::jsonb, closed_at = $8::timestamptz
        WHERE id = $1::varchar AND state = '{OperationState.RUNNING.value}'
          AND ($9::varchar IS NULL OR lease_owner = $9::varchar)
        RETURNING id
    ),{callback}
    ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT upd.id, $10::timestamptz, $11::varchar, $12::jsonb FROM upd
    )
    SELECT count(*), {_NOTIFY_CLOSED} FROM upd"""


PG_COMPLETE = {False: _pg_complete_sql(False), True: _pg_complete_sql(True)}


# Batches (group commit): the same writes for many operations in one statement, the values
# passed as one array per column and zipped back into rows by unnest().


def _array_types(row: _PgRow) -> list[str]:
    return ["text[]" if js else f"{typ}[]" for typ, js in zip(row.types, row.json, strict=True)]


def _select_list(row: _PgRow, alias: str) -> str:
    return ", ".join(
        f"{alias}.{n}::jsonb" if js else f"{alias}.{n}"
        for n, js in zip(row.names, row.json, strict=True)
    )


def _unnest(row: _PgRow, first: int, alias: str, extra: Sequence[tuple[str, str]] = ()) -> str:
    types = _array_types(row) + [typ for _, typ in extra]
    names = list(row.names) + [n for n, _ in extra]
    params = ", ".join(f"${first + i}::{typ}" for i, typ in enumerate(types))
    return f"unnest({params}) AS {alias}({', '.join(names)})"


def _pg_start_many_sql() -> str:
    # $1..$26 operation columns, $27 keyed (bool[]); then the keys (one per keyed operation);
    # then the events: operation id, at, kind, data. An operation with a key is inserted only
    # if its key was free; the caller sends the others down the one-by-one path.
    n_op = len(_PG_OP.names) + 1
    n_idem = len(_PG_IDEM.names)
    ev = n_op + n_idem + 1
    return f"""
    WITH v AS (
        SELECT * FROM {_unnest(_PG_OP, 1, "v", [("keyed", "boolean[]")])}
    ), idem AS (
        INSERT INTO {_i.name} ({", ".join(_PG_IDEM.names)})
        SELECT {_select_list(_PG_IDEM, "k")} FROM {_unnest(_PG_IDEM, n_op + 1, "k")}
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING operation_id
    ), op AS (
        INSERT INTO {_o.name} ({", ".join(_PG_OP.names)})
        SELECT {_select_list(_PG_OP, "v")} FROM v
        WHERE NOT v.keyed OR v.id IN (SELECT operation_id FROM idem)
        RETURNING id
    ), ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT u.op, u.at, u.kind, u.data::jsonb
        FROM unnest(${ev}::varchar[], ${ev + 1}::timestamptz[], ${ev + 2}::text[],
                    ${ev + 3}::text[]) WITH ORDINALITY AS u(op, at, kind, data, n)
        WHERE u.op IN (SELECT id FROM op)
        ORDER BY u.n
    )
    SELECT id FROM op"""


PG_START_MANY = _pg_start_many_sql()


def _pg_complete_many_sql() -> str:
    # One completion per operation (the caller keeps later ones of the same operation for
    # afterwards). Rows are locked in id order first, like every multi-row writer, so two
    # replicas' batches cannot deadlock; the update only touches rows that CTE locked, and the
    # events and callbacks come FROM the update (written after the row lock).
    cb = 13
    return f"""
    WITH v AS (
        SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::timestamptz[],
                             $5::bytea[], $6::varchar[], $7::text[], $8::timestamptz[],
                             $9::varchar[], $10::timestamptz[], $11::varchar[], $12::text[])
            AS v(id, state, work, next_at, result, ctype, failure, closed_at, owner,
                 ev_at, ev_kind, ev_data)
    ), locked AS (
        -- by primary key only: a condition on state would let a generic plan pick the partial
        -- index of running operations and walk all of them for every batch
        SELECT o.id, o.state, o.lease_owner FROM {_o.name} o
        WHERE o.id = ANY($1::varchar[]) ORDER BY o.id FOR UPDATE
    ), upd AS (
        UPDATE {_o.name} o
        SET state = v.state, work = v.work, next_attempt_at = v.next_at, lease_owner = NULL,
            lease_until = NULL, result = v.result, result_content_type = v.ctype,
            failure = v.failure::jsonb, closed_at = v.closed_at
        FROM v JOIN locked l ON l.id = v.id
        WHERE o.id = ANY($1::varchar[]) AND o.id = l.id
          AND l.state = '{OperationState.RUNNING.value}'
          AND (v.owner IS NULL OR l.lease_owner = v.owner)
        RETURNING o.id
    ), ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT v.id, v.ev_at, v.ev_kind, v.ev_data::jsonb FROM v JOIN upd ON upd.id = v.id
    ), cb AS (
        INSERT INTO {_cb_t.name} ({", ".join(_PG_CB.names)})
        SELECT {_select_list(_PG_CB, "c")} FROM {_unnest(_PG_CB, cb, "c")}
        JOIN upd ON upd.id = c.operation_id
    )
    SELECT array_agg(id), {_NOTIFY_CLOSED} FROM upd"""


PG_COMPLETE_MANY = _pg_complete_many_sql()

# Delivered callbacks (a batch of acks): mark them delivered, then lock their operations in
# id order and write one event each, the events coming FROM the locked rows.
PG_CALLBACKS_DELIVERED = f"""
    WITH d AS (
        SELECT * FROM unnest($1::varchar[], $2::timestamptz[], $3::varchar[], $4::text[])
            AS d(id, at, kind, data)
    ), mine AS (
        -- by primary key only (see PG_COMPLETE_MANY), then checked on the locked rows
        SELECT c.id, c.state, c.lease_owner FROM {_cb_t.name} c
        WHERE c.id = ANY($1::varchar[]) ORDER BY c.id FOR UPDATE
    ), done AS (
        UPDATE {_cb_t.name} c
        SET state = '{DeliveryState.DELIVERED.value}', delivered_at = $5::timestamptz,
            next_attempt_at = $5::timestamptz, last_error = NULL, lease_owner = NULL,
            lease_until = NULL
        FROM mine m
        WHERE c.id = ANY($1::varchar[]) AND c.id = m.id AND m.lease_owner = $6::varchar
          AND m.state = '{DeliveryState.PENDING.value}'
        RETURNING c.id, c.operation_id
    ), locked AS (
        SELECT o.id FROM {_o.name} o WHERE o.id IN (SELECT operation_id FROM done)
        ORDER BY o.id FOR UPDATE
    ), ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT done.operation_id, d.at, d.kind, d.data::jsonb
        FROM d JOIN done ON done.id = d.id JOIN locked ON locked.id = done.operation_id
    )
    SELECT count(*) FROM done"""


# -- SQLite hot path -----------------------------------------------------------------------
# The group-committed writes (starts, completions, delivery acks) as a handful of driver calls
# per batch on the pooled aiosqlite connection: BEGIN IMMEDIATE, one multi-row statement or
# executemany per table, COMMIT. Values get the same conversions SQLAlchemy applies (naive UTC
# datetimes as text, JSON as text), taken from the column types.

_SQLITE_DIALECT = sqlite_dialect.dialect()


class _SqliteRow:
    def __init__(self, table: Table, names: Sequence[str]) -> None:
        self.table = table
        self.names = tuple(names)
        self.procs = [
            table.c[n].type.dialect_impl(_SQLITE_DIALECT).bind_processor(_SQLITE_DIALECT)
            for n in self.names
        ]
        self.row = "(" + ", ".join("?" * len(self.names)) + ")"
        self.insert = f"INSERT INTO {table.name} ({', '.join(self.names)}) VALUES {self.row}"

    def args(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(
            values[n] if proc is None else proc(values[n])
            for n, proc in zip(self.names, self.procs, strict=True)
        )


_SQ_OP = _SqliteRow(_o, _PG_OP.names)
_SQ_IDEM = _SqliteRow(_i, _PG_IDEM.names)
_SQ_CB = _SqliteRow(_cb_t, _PG_CB.names)
_SQ_EVENT = _SqliteRow(_e, ("operation_id", "at", "kind", "data"))
_SQ_TS: Callable[[Any], Any] = _SQ_EVENT.procs[1] or (lambda v: v)
_SQ_JSON: Callable[[Any], Any] = _SQ_EVENT.procs[3] or (lambda v: v)


@functools.lru_cache(maxsize=256)
def _sqlite_claim_keys(n: int) -> str:
    return (
        f"INSERT INTO {_i.name} ({', '.join(_SQ_IDEM.names)}) VALUES "
        + ", ".join([_SQ_IDEM.row] * n)
        + " ON CONFLICT (scope, key) DO NOTHING RETURNING operation_id"
    )


_SQ_COMPLETE_COLS = (
    "id",
    "state",
    "work",
    "next_at",
    "result",
    "ctype",
    "failure",
    "closed_at",
    "owner",
)


@functools.lru_cache(maxsize=256)
def _sqlite_complete_many(n: int) -> str:
    row = "(" + ", ".join("?" * len(_SQ_COMPLETE_COLS)) + ")"
    return f"""
    WITH v({", ".join(_SQ_COMPLETE_COLS)}) AS (VALUES {", ".join([row] * n)})
    UPDATE {_o.name}
    SET state = v.state, work = v.work, next_attempt_at = v.next_at, lease_owner = NULL,
        lease_until = NULL, result = v.result, result_content_type = v.ctype,
        failure = v.failure, closed_at = v.closed_at
    FROM v
    WHERE {_o.name}.id = v.id AND {_o.name}.state = '{OperationState.RUNNING.value}'
      AND (v.owner IS NULL OR {_o.name}.lease_owner = v.owner)
    RETURNING {_o.name}.id"""


@functools.lru_cache(maxsize=256)
def _sqlite_callbacks_delivered(n: int) -> str:
    return f"""
    UPDATE {_cb_t.name}
    SET state = '{DeliveryState.DELIVERED.value}', delivered_at = ?, next_attempt_at = ?,
        last_error = NULL, lease_owner = NULL, lease_until = NULL
    WHERE lease_owner = ? AND state = '{DeliveryState.PENDING.value}'
      AND id IN ({", ".join("?" * n)})
    RETURNING id"""


EXTEND_LEASES = (
    update(_o)
    .where(
        _o.c.id.in_(bindparam("b_ids", expanding=True)), _o.c.lease_owner == bindparam("b_owner")
    )
    .values(lease_until=bindparam("b_until", type_=_TS))
)


class _PgLanes:
    """A few asyncpg connections, apart from SQLAlchemy's pool, for the hot-path statements.

    Checking a connection out of SQLAlchemy's pool and back (events, reset, fairy objects)
    cost more CPU than the one-statement start it served (measured: 321 vs 148 us per start).
    Here a connection is taken from a list and put back. One that broke, or was interrupted
    mid-statement, is terminated instead of reused; the next caller opens a fresh one.
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        # The hot statements are prepared once per connection and planned at every execution
        # with their actual arrays: a cached generic plan is made once, possibly while the
        # tables are still empty and never ANALYZEd (a sequential scan), and is kept until
        # statistics change, which without autovacuum is never. Seen: acks scanning every
        # callback row, completions walking every running operation.
        settings = dict(kwargs.pop("server_settings", None) or {})
        settings.setdefault("plan_cache_mode", "force_custom_plan")
        kwargs["server_settings"] = settings
        self._connect_args: tuple[list[Any], dict[str, Any]] = (list(args), dict(kwargs))
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._slots:
            if self._idle:
                conn = self._idle.pop()
            else:
                args, kwargs = self._connect_args
                conn = await asyncpg.connect(*args, **kwargs)
            try:
                yield conn
            except BaseException as exc:
                if isinstance(exc, asyncpg.PostgresError) and not _pg_unavailable(exc):
                    self._idle.append(conn)  # a statement error: the connection is fine
                else:
                    conn.terminate()
                raise
            self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def listen(self, channel: str, on_payload: Callable[[str], None]) -> None:
        """LISTEN on a connection of its own (outside the lanes' budget) until it drops or the
        caller is cancelled; each notification's payload goes to ``on_payload``."""
        args, kwargs = self._connect_args
        conn = await asyncpg.connect(*args, **kwargs)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_payload(payload))
            await lost.wait()
        finally:
            conn.terminate()


class SqlStore:
    """The Store port on SQLAlchemy Core (async)."""

    def __init__(self, url: str, *, pool_size: int = 20, sqlite_synchronous: str = "FULL") -> None:
        self.url = normalize_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        self._lanes: _PgLanes | None = None
        if self.dialect == "sqlite":
            self._prepare_sqlite_path()
            self.engine: AsyncEngine = create_async_engine(
                self.url,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=60,
                connect_args={"timeout": 30},
            )
            self._install_sqlite_hooks(sqlite_synchronous)
        else:
            # A fixed pool: overflow connections opened for a burst and closed right after it
            # made PostgreSQL fork and warm a backend per burst; under load that churn cost
            # more CPU than the queries (lifecycle 217 -> 453 ops/s without it). A request
            # beyond the pool waits for a connection.
            # The connection budget is split: half for the hot-path lanes, half for the rest.
            lanes = max(1, pool_size // 2)
            self.engine = create_async_engine(
                self.url,
                pool_size=max(1, pool_size - lanes),
                max_overflow=0,
                pool_recycle=600,
                # as on the lanes (see _PgLanes): plans from current sizes, never a cached one
                # made while the queue tables were empty
                connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
            )

            self._lanes = _PgLanes(self.engine, lanes)

        dialect_insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        self._insert_idempotency_if_new = (
            dialect_insert(_i)
            .on_conflict_do_nothing(index_elements=[_i.c.scope, _i.c.key])
            .returning(_i.c.key)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _prepare_sqlite_path(self) -> None:
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        if path and path != ":memory:":
            Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)

    def _install_sqlite_hooks(self, synchronous: str) -> None:
        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(self.engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def _lock_operation(self, conn: AsyncConnection, op_id: str) -> None:
        """Every transaction that writes an operation's events holds its row lock first, so
        the event ids of one operation are assigned in commit order (readers resuming from
        ``Last-Event-ID`` never skip an event that committed late). SQLite needs nothing:
        BEGIN IMMEDIATE already serializes writers."""
        if self.dialect == "postgresql":
            await conn.execute(LOCK_OPERATION, {"b_id": op_id})

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _sqlite_tx(self) -> AsyncIterator[Any]:
        """A write transaction on the pooled aiosqlite connection, driven directly."""
        async with self.engine.connect() as conn:
            db: Any = (await conn.get_raw_connection()).driver_connection
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    def _driver(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        assert self._lanes is not None
        return self._lanes.connection()

    async def _pg_start(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> bool:
        args = _PG_OP.args(_op_values(op))
        args.append([e.at for e in events])
        args.append([e.kind for e in events])
        args.append([json.dumps(e.data) for e in events])
        if idempotency:
            args.extend(_PG_IDEM.args(_idem_values(idempotency[0])))
        async with self._driver() as conn:
            inserted = await conn.fetchval(PG_START[bool(idempotency)], *args)
        return bool(inserted)

    async def _pg_complete(self, c: Completion) -> bool:
        args = _pg_completion_row(c)
        if c.callback is not None:
            args.extend(_PG_CB.args(_cb_values(c.callback)))
        async with self._driver() as conn:
            applied = await conn.fetchval(PG_COMPLETE[c.callback is not None], *args)
        return bool(applied)

    async def _first_per_operation(
        self,
        completions: Sequence[Completion],
        run_batch: Callable[[Sequence[Completion]], Coroutine[Any, Any, set[str]]],
    ) -> list[bool]:
        """The first completion of each operation goes in the batch; a later one of the same
        operation is applied after it, as it would be in separate commits (it may still apply
        if the first was fenced out)."""
        first: dict[str, int] = {}
        later: list[int] = []
        for i, c in enumerate(completions):
            if c.operation_id in first:
                later.append(i)
            else:
                first[c.operation_id] = i
        done = await run_batch([completions[i] for i in first.values()])
        applied = [False] * len(completions)
        for op_id, i in first.items():
            applied[i] = op_id in done
        for i in later:
            applied[i] = bool(await run_batch([completions[i]]))
        return applied

    async def _pg_complete_many(self, batch: Sequence[Completion]) -> set[str]:
        cols: list[list[Any]] = [[] for _ in range(12)]
        cbs: list[list[Any]] = [[] for _ in _PG_CB.names]
        for c in batch:
            for col, value in zip(cols, _pg_completion_row(c), strict=True):
                col.append(value)
            if c.callback is not None:
                for col, value in zip(cbs, _PG_CB.args(_cb_values(c.callback)), strict=True):
                    col.append(value)
        async with self._driver() as conn:
            return set(await conn.fetchval(PG_COMPLETE_MANY, *cols, *cbs) or ())

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    @_translate
    async def migrate(self) -> None:
        cfg = self._alembic_config()

        def run(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self._tx() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK}
                )
            await conn.run_sync(run)

    @_translate
    async def migrations_current(self) -> bool:
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()

        def current(sync_conn: Connection) -> str | None:
            return MigrationContext.configure(sync_conn).get_current_revision()

        async with self.engine.connect() as conn:
            rev = await conn.run_sync(current)
        return rev == head

    @_translate
    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @_translate
    async def maintenance_warnings(self) -> list[str]:
        """What in the database's own settings will hurt a long-running gateway."""
        if self.dialect != "postgresql":
            return []
        async with self.engine.connect() as conn:
            autovacuum = (await conn.execute(text("SELECT current_setting('autovacuum')"))).scalar()
        if autovacuum == "off":
            return [
                "PostgreSQL autovacuum is off: every closed operation and delivered callback "
                "leaves dead rows behind; run VACUUM ANALYZE on the sg_* tables regularly"
            ]
        return []

    async def close(self) -> None:
        if self._lanes is not None:
            await self._lanes.close()
        await self.engine.dispose()

    @_translate
    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        if self._lanes is None:
            # SQLite: every writer is this process, which wakes its own waiters.
            await asyncio.Event().wait()
            return
        await self._lanes.listen(CLOSED_CHANNEL, lambda payload: on_closed(payload.split(",")))

    @_translate
    async def get_or_create_setting(self, name: str, value: str) -> str:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(t.settings.c.value).where(t.settings.c.name == name))
            ).first()
            if row is not None:
                return str(row[0])
            await conn.execute(insert(t.settings).values(name=name, value=value))
            return value

    # -- registry ----------------------------------------------------------------------------

    @_translate
    async def upsert_agent(self, agent: AgentSpec, at: datetime) -> int:
        spec = agent.to_json()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(t.agents.c.version, t.agents.c.spec)
                    .where(t.agents.c.name == agent.name)
                    .with_for_update()
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(t.agents).values(
                        name=agent.name, version=1, spec=spec, created_at=at, updated_at=at
                    )
                )
                return 1
            if row.spec == spec:
                return int(row.version)
            version = int(row.version) + 1
            await conn.execute(
                update(t.agents)
                .where(t.agents.c.name == agent.name)
                .values(version=version, spec=spec, updated_at=at)
            )
            return version

    @_translate
    async def get_agent(self, name: str) -> tuple[AgentSpec, int] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.agents).where(t.agents.c.name == name))).first()
        return (AgentSpec.from_json(row.spec), int(row.version)) if row else None

    @_translate
    async def list_agents(self) -> list[tuple[AgentSpec, int]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(t.agents).order_by(t.agents.c.name))).all()
        return [(AgentSpec.from_json(r.spec), int(r.version)) for r in rows]

    @_translate
    async def delete_agent(self, name: str) -> bool:
        async with self._tx() as conn:
            res = await conn.execute(delete(t.agents).where(t.agents.c.name == name))
        return bool(res.rowcount)

    # -- operations --------------------------------------------------------------------------

    @_translate
    async def create_operation(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> tuple[Operation, IdempotencyRecord | None]:
        if len(idempotency) <= 1:
            if self.dialect == "postgresql":
                inserted = await self._pg_start(op, events, idempotency)
            else:
                inserted = op.id in await self._sqlite_start_many([(op, events, idempotency)])
            if inserted:
                return op, None
            # The key was taken: the transaction below finds (or reclaims) its operation.
        return await self._create_operation_tx(op, events, idempotency)

    @_translate
    async def create_operations(self, items: Sequence[NewOperation]) -> list[Created]:
        """Several starts in one commit (group commit). A start whose key is taken, or that
        carries more than one key, goes through ``create_operation`` after the batch."""
        results: list[Created | None] = [None] * len(items)
        batch = [i for i, (_, _, keys) in enumerate(items) if len(keys) <= 1]
        if self.dialect == "postgresql":
            inserted = await self._pg_start_many([items[i] for i in batch])
        else:
            inserted = await self._sqlite_start_many([items[i] for i in batch])
        for i in batch:
            if items[i][0].id in inserted:
                results[i] = (items[i][0], None)
        for i, done in enumerate(results):
            if done is None:
                results[i] = await self._create_operation_tx(*items[i])
        return [r for r in results if r is not None]

    async def _pg_start_many(self, items: Sequence[NewOperation]) -> set[str]:
        if not items:
            return set()
        cols: list[list[Any]] = [[] for _ in range(len(_PG_OP.names) + 1 + len(_PG_IDEM.names))]
        ev: list[list[Any]] = [[], [], [], []]
        for op, events, keys in items:
            row = [*_PG_OP.args(_op_values(op)), bool(keys)]
            if keys:
                row += _PG_IDEM.args(_idem_values(keys[0]))
            for col, value in zip(cols, row, strict=False):
                col.append(value)
            for e in events:
                ev[0].append(op.id)
                ev[1].append(e.at)
                ev[2].append(e.kind)
                ev[3].append(json.dumps(e.data))
        async with self._driver() as conn:
            rows = await conn.fetch(PG_START_MANY, *cols, *ev)
        return {r[0] for r in rows}

    async def _sqlite_start_many(self, items: Sequence[NewOperation]) -> set[str]:
        if not items:
            return set()
        keys = [_SQ_IDEM.args(_idem_values(k[0])) for _, _, k in items if k]
        async with self._sqlite_tx() as db:
            claimed: set[str] = set()
            if keys:
                flat = [v for row in keys for v in row]
                rows = await db.execute_fetchall(_sqlite_claim_keys(len(keys)), flat)
                claimed = {r[0] for r in rows}
            new = [(op, evs) for op, evs, k in items if not k or op.id in claimed]
            if new:
                await db.executemany(_SQ_OP.insert, [_SQ_OP.args(_op_values(op)) for op, _ in new])
                await db.executemany(
                    _SQ_EVENT.insert,
                    [
                        (op.id, _SQ_TS(e.at), e.kind, _SQ_JSON(e.data))
                        for op, evs in new
                        for e in evs
                    ],
                )
        return {op.id for op, _ in new}

    async def _create_operation_tx(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> Created:
        claim_key = self._insert_idempotency_if_new
        async with self._tx() as conn:
            for rec in idempotency:
                # Common case in one statement: the key is new and is taken right here.
                if (await conn.execute(claim_key, _idem_values(rec))).first() is not None:
                    continue
                key = {"b_scope": rec.scope, "b_key": rec.key}
                existing = (await conn.execute(SELECT_IDEMPOTENCY, key)).one()
                if existing.expires_at > rec.created_at:
                    row = (
                        await conn.execute(SELECT_OPERATION, {"b_id": existing.operation_id})
                    ).first()
                    if row is not None:
                        await conn.rollback()  # keys taken above for this start are released
                        return _op(row), _idem(existing)
                await conn.execute(DELETE_IDEMPOTENCY, key)  # expired: the key may be reused
                await conn.execute(INSERT_IDEMPOTENCY, _idem_values(rec))
            await conn.execute(INSERT_OPERATION, _op_values(op))
            await conn.execute(INSERT_EVENTS, [_event_values(e) for e in events])
        return op, None

    @_translate
    async def get_operation(self, op_id: str) -> Operation | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(SELECT_OPERATION, {"b_id": op_id})).first()
        return _op(row) if row else None

    @_translate
    async def list_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        limit: int = 100,
    ) -> list[Operation]:
        q = select(t.operations)
        if caller is not None:
            q = q.where(t.operations.c.caller == caller)
        if service is not None:
            q = q.where(t.operations.c.service == service)
        if state is not None:
            q = q.where(t.operations.c.state == state.value)
        q = q.order_by(t.operations.c.created_at.desc(), t.operations.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_op(r) for r in rows]

    @_translate
    async def count_operations(self) -> dict[str, int]:
        q = select(t.operations.c.state, func.count()).group_by(t.operations.c.state)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return {str(r[0]): int(r[1]) for r in rows}

    @_translate
    async def claim_work(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Operation]:
        params = {"b_owner": owner, "b_now": now, "b_until": lease_until, "b_limit": limit}
        async with self._tx() as conn:
            rows = (await conn.execute(CLAIM_WORK, params)).all()
            ops = [_op(r) for r in rows]
            evs = [
                _event_values(
                    Event(
                        operation_id=op.id,
                        kind="attempt.started",
                        at=now,
                        data=_attempt_data(op, owner),
                    )
                )
                for op in ops
                if op.work is Work.DISPATCH and op.cancel_requested_at is None
            ]
            if evs:
                await conn.execute(INSERT_EVENTS, evs)
        return ops

    @_translate
    async def extend_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        if not ids:
            return
        async with self._tx() as conn:
            if self.dialect == "postgresql":  # lock in id order, like every multi-row writer
                await conn.execute(LOCK_OPERATIONS, {"b_ids": sorted(ids)})
            await conn.execute(
                EXTEND_LEASES, {"b_ids": list(ids), "b_owner": owner, "b_until": until}
            )

    @_translate
    async def release_leases(self, owner: str) -> int:
        """Give up every lease this owner holds (graceful shutdown): others take over at once."""
        o, cb = t.operations, t.callbacks
        async with self._tx() as conn:
            res = await conn.execute(
                update(o)
                .where(o.c.lease_owner == owner, o.c.state == OperationState.RUNNING.value)
                .values(lease_owner=None, lease_until=None)
            )
            await conn.execute(
                update(cb)
                .where(cb.c.lease_owner == owner, cb.c.state == DeliveryState.PENDING.value)
                .values(lease_owner=None, lease_until=None, attempts=cb.c.attempts - 1)
            )
        return int(res.rowcount or 0)

    @_translate
    async def update_running(
        self,
        op_id: str,
        owner: str | None,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event | None,
        agent_token: str | None = None,
        last_error: str | None = None,
        refund_attempt: bool = False,
        now: datetime | None = None,
    ) -> bool:
        params = {
            "b_id": op_id,
            "b_owner": owner,
            "b_cancelable": work in (None, Work.POLL),
            "b_work": work.value if work else None,
            "b_now": now or (event.at if event else next_attempt_at),
            "b_next": next_attempt_at,
            "b_error": last_error,
            "b_token": agent_token,
            "b_refund": 1 if refund_attempt else 0,  # deferred (e.g. circuit open), not made
        }
        async with self._tx() as conn:
            res = await conn.execute(UPDATE_RUNNING[owner is not None], params)
            if not res.rowcount:
                return False
            if event is not None:
                await conn.execute(INSERT_EVENTS, [_event_values(event)])
        return True

    @_translate
    async def update_closed(
        self,
        op_id: str,
        owner: str,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event,
    ) -> bool:
        params = {
            "b_id": op_id,
            "b_owner": owner,
            "b_work": work.value if work else None,
            "b_next": next_attempt_at,
        }
        async with self._tx() as conn:
            res = await conn.execute(UPDATE_CLOSED, params)
            if not res.rowcount:
                return False
            await conn.execute(INSERT_EVENTS, [_event_values(event)])
        return True

    @_translate
    async def request_cancel(self, op_id: str, now: datetime, event: Event) -> bool:
        """Record a cancel request; the worker that next holds the lease acts on it:
        undelivered dispatches become canceled, accepted ones get a cancel sent to the agent."""
        o = t.operations
        async with self._tx() as conn:
            res = await conn.execute(
                update(o)
                .where(
                    o.c.id == op_id,
                    o.c.state == OperationState.RUNNING.value,
                    o.c.cancel_requested_at.is_(None),
                )
                .values(
                    cancel_requested_at=now,
                    work=case(
                        (
                            or_(o.c.work.is_(None), o.c.work == Work.POLL.value),
                            Work.CANCEL.value,
                        ),
                        else_=o.c.work,
                    ),
                    next_attempt_at=now,
                )
            )
            if not res.rowcount:
                return False
            await conn.execute(insert(t.events).values(**_event_values(event)))
        return True

    @_translate
    async def complete(self, c: Completion) -> bool:
        if self.dialect == "postgresql":
            return await self._pg_complete(c)
        return c.operation_id in await self._sqlite_complete_many([c])

    @_translate
    async def complete_many(self, completions: Sequence[Completion]) -> list[bool]:
        if self.dialect == "postgresql":
            return await self._first_per_operation(completions, self._pg_complete_many)
        return await self._first_per_operation(completions, self._sqlite_complete_many)

    async def _sqlite_complete_many(self, batch: Sequence[Completion]) -> set[str]:
        rows = []
        for c in batch:
            p = _complete_params(c)
            rows.append(
                (
                    p["b_id"],
                    p["b_state"],
                    p["b_work"],
                    _SQ_TS(p["b_next"]),
                    p["b_result"],
                    p["b_ctype"],
                    _SQ_JSON(p["b_failure"]),
                    _SQ_TS(p["b_at"]),
                    p["b_owner"],
                )
            )
        async with self._sqlite_tx() as db:
            flat = [v for row in rows for v in row]
            done = {r[0] for r in await db.execute_fetchall(_sqlite_complete_many(len(rows)), flat)}
            closed = [c for c in batch if c.operation_id in done]
            if closed:
                await db.executemany(
                    _SQ_EVENT.insert,
                    [
                        (c.operation_id, _SQ_TS(c.event.at), c.event.kind, _SQ_JSON(c.event.data))
                        for c in closed
                    ],
                )
            deliveries = [_SQ_CB.args(_cb_values(c.callback)) for c in closed if c.callback]
            if deliveries:
                await db.executemany(_SQ_CB.insert, deliveries)
        return done

    @_translate
    async def redrive(self, op_id: str, now: datetime, event: Event) -> bool:
        """Re-run a failed/canceled operation from scratch (same id: same idempotency key)."""
        o = t.operations
        async with self._tx() as conn:
            res = await conn.execute(
                update(o)
                .where(
                    o.c.id == op_id,
                    o.c.state.in_([OperationState.FAILED.value, OperationState.CANCELED.value]),
                )
                .values(
                    state=OperationState.RUNNING.value,
                    work=Work.DISPATCH.value,
                    next_attempt_at=now,
                    failure=None,
                    closed_at=None,
                    cancel_requested_at=None,
                    agent_token=None,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            if not res.rowcount:
                return False
            await conn.execute(insert(t.events).values(**_event_values(event)))
        return True

    @_translate
    async def due_timeouts(self, now: datetime, limit: int) -> list[Operation]:
        o = t.operations
        q = (
            select(o)
            .where(o.c.state == _RUNNING, o.c.deadline_at <= now)
            .order_by(o.c.deadline_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [_op(r) for r in rows]

    # -- events ------------------------------------------------------------------------------

    @_translate
    async def list_events(self, op_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        e = t.events
        q = select(e).where(e.c.operation_id == op_id, e.c.id > after).order_by(e.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [
            Event(id=int(r.id), operation_id=r.operation_id, kind=r.kind, at=r.at, data=r.data)
            for r in rows
        ]

    # -- callbacks ---------------------------------------------------------------------------

    @_translate
    async def claim_callbacks(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[CallbackDelivery]:
        params = {"b_owner": owner, "b_now": now, "b_until": lease_until, "b_limit": limit}
        async with self._tx() as conn:
            rows = (await conn.execute(CLAIM_CALLBACKS, params)).all()
        return [_cb(r) for r in rows]

    @_translate
    async def finish_callback(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: DeliveryState,
        next_attempt_at: datetime,
        last_error: str | None,
        event: Event,
    ) -> bool:
        params = {
            "b_id": delivery_id,
            "b_owner": owner,
            "b_state": state.value,
            "b_next": next_attempt_at,
            "b_error": last_error,
            "b_delivered": event.at if state is DeliveryState.DELIVERED else None,
        }
        async with self._tx() as conn:
            res = await conn.execute(FINISH_CALLBACK, params)
            if not res.rowcount:
                return False
            await self._lock_operation(conn, event.operation_id)
            await conn.execute(INSERT_EVENTS, [_event_values(event)])
        return True

    @_translate
    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        if not events:
            return 0
        by_id = {str(e.data["delivery_id"]): e for e in events}
        at = max(e.at for e in events)
        if self.dialect == "postgresql":
            acks = list(by_id.items())
            async with self._driver() as pg:
                marked = await pg.fetchval(
                    PG_CALLBACKS_DELIVERED,
                    [i for i, _ in acks],
                    [e.at for _, e in acks],
                    [e.kind for _, e in acks],
                    [json.dumps(e.data) for _, e in acks],
                    at,
                    owner,
                )
            return int(marked)
        ids = list(by_id)
        async with self._sqlite_tx() as db:
            rows = await db.execute_fetchall(
                _sqlite_callbacks_delivered(len(ids)), [_SQ_TS(at), _SQ_TS(at), owner, *ids]
            )
            done = [by_id[r[0]] for r in rows]
            if done:
                await db.executemany(
                    _SQ_EVENT.insert,
                    [(e.operation_id, _SQ_TS(e.at), e.kind, _SQ_JSON(e.data)) for e in done],
                )
        return len(done)

    @_translate
    async def list_callbacks(self, op_id: str) -> list[CallbackDelivery]:
        cb = t.callbacks
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(cb).where(cb.c.operation_id == op_id).order_by(cb.c.created_at)
                )
            ).all()
        return [_cb(r) for r in rows]

    @_translate
    async def redrive_callback(
        self, delivery_id: str, now: datetime, expires_at: datetime, event: Event
    ) -> bool:
        cb = t.callbacks
        async with self._tx() as conn:
            res = await conn.execute(
                update(cb)
                .where(
                    cb.c.id == delivery_id,
                    cb.c.state.in_([DeliveryState.EXPIRED.value, DeliveryState.DISABLED.value]),
                )
                .values(
                    state=DeliveryState.PENDING.value,
                    next_attempt_at=now,
                    expires_at=expires_at,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            if not res.rowcount:
                return False
            await self._lock_operation(conn, event.operation_id)
            await conn.execute(insert(t.events).values(**_event_values(event)))
        return True

    # -- caller secrets ----------------------------------------------------------------------

    @_translate
    async def caller_secrets(self, caller: str, now: datetime, new_secret: str) -> CallerSecrets:
        cs = t.caller_secrets
        async with self._tx() as conn:
            row = (await conn.execute(select(cs).where(cs.c.caller == caller))).first()
            if row is None:  # first use: insert unless a concurrent first use won
                ins = pg_insert(cs) if self.dialect == "postgresql" else sqlite_insert(cs)
                await conn.execute(
                    ins.values(
                        caller=caller, secret=new_secret, created_at=now
                    ).on_conflict_do_nothing(index_elements=[cs.c.caller])
                )
                row = (await conn.execute(select(cs).where(cs.c.caller == caller))).one()
        return _secrets(row)

    @_translate
    async def rotate_caller_secret(
        self, caller: str, new_secret: str, now: datetime, previous_until: datetime
    ) -> CallerSecrets:
        cs = t.caller_secrets
        async with self._tx() as conn:
            row = (
                await conn.execute(select(cs).where(cs.c.caller == caller).with_for_update())
            ).first()
            if row is None:
                await conn.execute(
                    insert(cs).values(caller=caller, secret=new_secret, created_at=now)
                )
                return CallerSecrets(caller=caller, secret=new_secret, created_at=now)
            await conn.execute(
                update(cs)
                .where(cs.c.caller == caller)
                .values(
                    secret=new_secret,
                    previous_secret=row.secret,
                    previous_until=previous_until,
                    rotated_at=now,
                )
            )
        return CallerSecrets(
            caller=caller,
            secret=new_secret,
            created_at=row.created_at,
            previous_secret=row.secret,
            previous_until=previous_until,
            rotated_at=now,
        )

    # -- idempotency -------------------------------------------------------------------------

    @_translate
    async def save_response(
        self, scope: str, key: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        params = {
            "b_scope": scope,
            "b_key": key,
            "b_status": status,
            "b_body": body,
            "b_headers": headers,
        }
        async with self._tx() as conn:
            await conn.execute(SAVE_RESPONSE, params)

    @_translate
    async def purge_idempotency(self, now: datetime) -> int:
        i = t.idempotency
        async with self._tx() as conn:
            res = await conn.execute(delete(i).where(i.c.expires_at <= now))
        return int(res.rowcount or 0)

    # -- a2a (A2A facade: durable push-notification configs; delivery reuses the callback outbox)

    @_translate
    async def a2a_save_push_config(
        self, op_id: str, config_id: str, config: dict[str, Any], at: datetime
    ) -> None:
        """Create or replace one push-notification config of an operation (A2A task)."""
        p = a2a_push_configs
        async with self._tx() as conn:
            res = await conn.execute(
                update(p)
                .where(p.c.operation_id == op_id, p.c.config_id == config_id)
                .values(config=config)
            )
            if not res.rowcount:
                await conn.execute(
                    insert(p).values(
                        operation_id=op_id,
                        config_id=config_id,
                        config=config,
                        created_at=at,
                        delivery_id=None,
                    )
                )

    @_translate
    async def a2a_push_configs(self, op_id: str) -> list[dict[str, Any]]:
        p = a2a_push_configs
        q = select(p.c.config).where(p.c.operation_id == op_id).order_by(p.c.created_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [dict(r[0]) for r in rows]

    @_translate
    async def a2a_delete_push_config(self, op_id: str, config_id: str) -> bool:
        p = a2a_push_configs
        async with self._tx() as conn:
            res = await conn.execute(
                delete(p).where(p.c.operation_id == op_id, p.c.config_id == config_id)
            )
        return bool(res.rowcount)

    @_translate
    async def a2a_due_pushes(self, limit: int) -> list[tuple[str, dict[str, Any], Operation]]:
        """(config id, config, operation) for configs of terminal operations not yet queued."""
        p, o = a2a_push_configs, t.operations
        q = (
            select(p.c.config_id, p.c.config, o)
            .join(o, o.c.id == p.c.operation_id)
            .where(p.c.delivery_id.is_(None), o.c.state != OperationState.RUNNING.value)
            .order_by(p.c.created_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [(str(r[0]), dict(r[1]), _op(r)) for r in rows]

    @_translate
    async def a2a_enqueue_push(
        self, op_id: str, config_id: str, delivery: CallbackDelivery, event: Event
    ) -> bool:
        """Queue a push in the callback outbox, once per config (compare-and-set), with its
        event, in one transaction."""
        p = a2a_push_configs
        async with self._tx() as conn:
            await self._lock_operation(conn, op_id)
            res = await conn.execute(
                update(p)
                .where(
                    p.c.operation_id == op_id,
                    p.c.config_id == config_id,
                    p.c.delivery_id.is_(None),
                )
                .values(delivery_id=delivery.id)
            )
            if not res.rowcount:
                return False
            await conn.execute(insert(t.callbacks).values(**_cb_values(delivery)))
            await conn.execute(insert(t.events).values(**_event_values(event)))
        return True


# -- row mapping ---------------------------------------------------------------------------------


def _complete_params(c: Completion) -> dict[str, Any]:
    return {
        "b_id": c.operation_id,
        "b_owner": c.only_if_owner,
        "b_state": c.state.value,
        "b_result": c.result,
        "b_ctype": c.result_content_type,
        "b_failure": c.failure,
        "b_at": c.at,
        "b_work": Work.CANCEL.value if c.then_cancel_agent else None,
        "b_next": c.at if c.then_cancel_agent else None,
    }


def _pg_completion_row(c: Completion) -> list[Any]:
    """$1..$12 of PG_COMPLETE, and one row of PG_COMPLETE_MANY's arrays."""
    p = _complete_params(c)
    return [
        p["b_id"],
        p["b_state"],
        p["b_work"],
        p["b_next"],
        p["b_result"],
        p["b_ctype"],
        _pg_json(p["b_failure"]),
        p["b_at"],
        p["b_owner"],
        c.event.at,
        c.event.kind,
        json.dumps(c.event.data),
    ]


def _op_values(op: Operation) -> dict[str, Any]:
    return {
        "id": op.id,
        "service": op.service,
        "operation": op.operation,
        "state": op.state.value,
        "caller": op.caller,
        "request_id": op.request_id,
        "input": op.input,
        "input_content_type": op.input_content_type,
        "callback_url": op.callback_url,
        "callback_headers": op.callback_headers,
        "links": op.links,
        "work": op.work.value if op.work else None,
        "attempts": op.attempts,
        "next_attempt_at": op.next_attempt_at,
        "lease_owner": op.lease_owner,
        "lease_until": op.lease_until,
        "deadline_at": op.deadline_at,
        "cancel_requested_at": op.cancel_requested_at,
        "agent_token": op.agent_token,
        "result": op.result,
        "result_content_type": op.result_content_type,
        "failure": op.failure,
        "created_at": op.created_at,
        "closed_at": op.closed_at,
        "last_error": op.last_error,
        "traceparent": op.traceparent,
    }


def _op(r: Row[Any]) -> Operation:
    return Operation(
        id=r.id,
        service=r.service,
        operation=r.operation,
        state=OperationState(r.state),
        caller=r.caller,
        request_id=r.request_id,
        input=bytes(r.input),
        input_content_type=r.input_content_type,
        callback_url=r.callback_url,
        callback_headers=dict(r.callback_headers or {}),
        links=list(r.links or []),
        work=Work(r.work) if r.work else None,
        attempts=int(r.attempts),
        next_attempt_at=r.next_attempt_at,
        lease_owner=r.lease_owner,
        lease_until=r.lease_until,
        deadline_at=r.deadline_at,
        cancel_requested_at=r.cancel_requested_at,
        agent_token=r.agent_token,
        result=bytes(r.result) if r.result is not None else None,
        result_content_type=r.result_content_type,
        failure=r.failure,
        created_at=r.created_at,
        closed_at=r.closed_at,
        last_error=r.last_error,
        traceparent=r.traceparent,
        prev_lease_owner=r.prev_lease_owner,
    )


def _attempt_data(op: Operation, owner: str) -> dict[str, Any]:
    data: dict[str, Any] = {"attempt": op.attempts, "owner": owner}
    if op.prev_lease_owner and op.prev_lease_owner != owner:
        data["taken_over_from"] = op.prev_lease_owner
    return data


def _secrets(r: Row[Any]) -> CallerSecrets:
    return CallerSecrets(
        caller=r.caller,
        secret=r.secret,
        created_at=r.created_at,
        previous_secret=r.previous_secret,
        previous_until=r.previous_until,
        rotated_at=r.rotated_at,
    )


def _event_values(e: Event) -> dict[str, Any]:
    return {"operation_id": e.operation_id, "at": e.at, "kind": e.kind, "data": e.data}


def _idem_values(r: IdempotencyRecord) -> dict[str, Any]:
    return {
        "scope": r.scope,
        "key": r.key,
        "fingerprint": r.fingerprint,
        "operation_id": r.operation_id,
        "response_status": r.response_status,
        "response_body": r.response_body,
        "response_headers": r.response_headers,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
    }


def _idem(r: Row[Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=r.scope,
        key=r.key,
        fingerprint=r.fingerprint,
        operation_id=r.operation_id,
        created_at=r.created_at,
        expires_at=r.expires_at,
        response_status=r.response_status,
        response_body=bytes(r.response_body) if r.response_body is not None else None,
        response_headers=dict(r.response_headers or {}),
    )


def _cb_values(c: CallbackDelivery) -> dict[str, Any]:
    return {
        "id": c.id,
        "operation_id": c.operation_id,
        "caller": c.caller,
        "url": c.url,
        "headers": c.headers,
        "body": c.body,
        "state": c.state.value,
        "attempts": c.attempts,
        "next_attempt_at": c.next_attempt_at,
        "expires_at": c.expires_at,
        "created_at": c.created_at,
        "delivered_at": c.delivered_at,
        "last_error": c.last_error,
        "lease_owner": c.lease_owner,
        "lease_until": c.lease_until,
    }


def _cb(r: Row[Any]) -> CallbackDelivery:
    return CallbackDelivery(
        id=r.id,
        operation_id=r.operation_id,
        caller=r.caller,
        url=r.url,
        headers=dict(r.headers or {}),
        body=bytes(r.body),
        state=DeliveryState(r.state),
        attempts=int(r.attempts),
        next_attempt_at=r.next_attempt_at,
        expires_at=r.expires_at,
        created_at=r.created_at,
        delivered_at=r.delivered_at,
        last_error=r.last_error,
        lease_owner=r.lease_owner,
        lease_until=r.lease_until,
    )


# -- a2a --------------------------------------------------------------------------------------

a2a_push_configs = Table(
    "sg_a2a_push_configs",
    t.metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("config_id", String(200), primary_key=True),
    Column("config", t.Json, nullable=False),
    Column("created_at", t.UTCDateTime, nullable=False),
    Column("delivery_id", String(64)),
)
