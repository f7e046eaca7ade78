"""SQLite's raw SQL: connection pragmas and the group-committed batch statements.

The group-committed writes (starts, completions, delivery acks) run as a handful of driver
calls per batch on the pooled aiosqlite connection: BEGIN IMMEDIATE, one multi-row statement
or executemany per table, COMMIT. Values get the same conversions SQLAlchemy applies (naive
UTC datetimes as text, JSON as text), taken from the column types; timestamps by
:func:`sqlite_timestamp`, which writes the same text as SQLAlchemy's two processors (ours,
then its SQLite DATETIME) at under half their cost (issue 17: they were ~9% of the gateway's
CPU on SQLite).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.dialects import sqlite as sqlite_dialect

from gateway.domain.model import DeliveryState, OperationState
from gateway.domain.timetext import sqlite_text
from gateway.store import jsontext
from gateway.store import schema as t

_o, _e, _cb_t, _i = t.operations, t.events, t.callbacks, t.idempotency


def synchronous(level: str) -> str:
    """Set the connection's durability level (outside a transaction only)."""
    return f"PRAGMA synchronous={level}"


BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's write lock


def busy_timeout(ms: int) -> str:
    return f"PRAGMA busy_timeout={int(ms)}"


def pragmas(level: str) -> list[str]:
    """Run on every new connection (we issue BEGIN ourselves)."""
    return ["PRAGMA journal_mode=WAL", synchronous(level), busy_timeout(BUSY_TIMEOUT_MS)]


BEGIN = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

SQLITE_DIALECT = sqlite_dialect.dialect()


_TEXT: dict[datetime, str] = {}  # UTC datetimes and their text
_TEXT_MAX = 4096


def sqlite_timestamp(value: datetime | None) -> str | None:
    """A timestamp as the text SQLAlchemy stores on SQLite: naive UTC, ``YYYY-MM-DD
    HH:MM:SS.ffffff`` (a naive value is taken as UTC, as :class:`schema.UTCDateTime` does).

    Remembered for the last few thousand values: a batch writes the same few instants in
    many columns (an operation's ``now`` is its creation, its first attempt and its events),
    and a hit costs ~0.15 us where formatting one (:func:`~gateway.domain.timetext.sqlite_text`)
    costs ~0.8 (``isoformat`` 1.5); a timestamp was ~5% of the gateway's CPU on SQLite."""
    if value is None:
        return None
    if value.tzinfo is UTC:  # the clock's own values: the common case, without a conversion
        text = _TEXT.get(value)
        if text is None:
            if len(_TEXT) >= _TEXT_MAX:
                _TEXT.clear()
            text = _TEXT[value] = sqlite_text(value)
        return text
    # (not remembered: equal is not always the same instant in a zone with a DST fold, PEP 495)
    return sqlite_text(value)


def _bind_processor(table: Table, name: str) -> Callable[[Any], Any] | None:
    column_type = table.c[name].type
    if isinstance(column_type, t.UTCDateTime):
        return sqlite_timestamp
    if isinstance(column_type, JSON):
        return jsontext.dumps  # None as JSON null, as SQLAlchemy's JSON type binds it
    return column_type.dialect_impl(SQLITE_DIALECT).bind_processor(SQLITE_DIALECT)


class SqliteRow:
    def __init__(self, table: Table, names: Sequence[str]) -> None:
        self.table = table
        self.names = tuple(names)
        self.procs = [_bind_processor(table, n) for n in self.names]
        self._pairs = tuple(zip(self.names, self.procs, strict=True))
        self.row = "(" + ", ".join("?" * len(self.names)) + ")"
        self.insert = f"INSERT INTO {table.name} ({', '.join(self.names)}) VALUES {self.row}"

    def args(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple([values[n] if proc is None else proc(values[n]) for n, proc in self._pairs])


SQ_OP = SqliteRow(_o, [c.name for c in _o.c if c.name not in t.OPERATION_NOT_AT_START])
SQ_IDEM = SqliteRow(_i, [c.name for c in _i.c])
SQ_CB = SqliteRow(_cb_t, [c.name for c in _cb_t.c])
SQ_EVENT = SqliteRow(_e, ("operation_id", "at", "kind", "data"))
SQ_OPERATION_COLUMNS = tuple(c.name for c in _o.c)
SQ_GET_OPERATION = f"SELECT {', '.join(SQ_OPERATION_COLUMNS)} FROM {_o.name} WHERE id = ?"
SQ_TS = sqlite_timestamp
SQ_JSON = jsontext.dumps


@functools.lru_cache(maxsize=256)
def claim_keys(n: int) -> str:
    return (
        f"INSERT INTO {_i.name} ({', '.join(SQ_IDEM.names)}) VALUES "
        + ", ".join([SQ_IDEM.row] * n)
        + " ON CONFLICT (scope, key) DO NOTHING RETURNING operation_id"
    )


SQ_COMPLETE_COLS = (
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
def complete_many(n: int) -> str:
    row = "(" + ", ".join("?" * len(SQ_COMPLETE_COLS)) + ")"
    return f"""
    WITH v({", ".join(SQ_COMPLETE_COLS)}) AS (VALUES {", ".join([row] * n)})
    UPDATE {_o.name}
    SET state = v.state, work = v.work, next_attempt_at = v.next_at, lease_owner = NULL,
        lease_until = NULL, result = v.result, result_content_type = v.ctype,
        failure = v.failure, closed_at = v.closed_at
    FROM v
    WHERE {_o.name}.id = v.id AND {_o.name}.state = '{OperationState.RUNNING.value}'
      AND (v.owner IS NULL OR {_o.name}.lease_owner = v.owner)
    RETURNING {_o.name}.id"""


@functools.lru_cache(maxsize=256)
def callbacks_delivered(n: int) -> str:
    return f"""
    UPDATE {_cb_t.name}
    SET state = '{DeliveryState.DELIVERED.value}', delivered_at = ?, next_attempt_at = ?,
        last_error = NULL, lease_owner = NULL, lease_until = NULL
    WHERE lease_owner = ? AND state = '{DeliveryState.PENDING.value}'
      AND id IN ({", ".join("?" * n)})
    RETURNING id"""


# One heartbeat on the aiosqlite connection (a batch runs it once per beat in one commit):
# the heartbeat columns only, in place, answering state, attempt and the cancel request
# (?1 deadline, ?2 has details, ?3 details, ?4 id, ?5 attempt). The sweep's check time only
# moves back, when a shorter timeout brings the deadline before it (migration 0009).
HEARTBEAT = f"""
    UPDATE {_o.name}
    SET heartbeat_until = CASE WHEN heartbeat_until IS NULL THEN NULL ELSE ?1 END,
        heartbeat_check_at = CASE WHEN ?1 < heartbeat_check_at THEN ?1
                                  ELSE heartbeat_check_at END,
        heartbeat_details = CASE WHEN ?2 THEN ?3 ELSE heartbeat_details END
    WHERE id = ?4 AND state = '{OperationState.RUNNING.value}' AND (?5 IS NULL OR attempts = ?5)
    RETURNING state, attempts, cancel_requested_at"""


# Step records (a group-committed batch, issue 17 item 4), on the aiosqlite connection in one
# commit: which of the batch's operations run, then every new step in one multi-row insert
# (first write wins) and the events of those it inserted.
SQ_STEP = SqliteRow(t.steps, [c.name for c in t.steps.c])


@functools.lru_cache(maxsize=256)
def running_of(n: int) -> str:
    return (
        f"SELECT id FROM {_o.name} WHERE state = '{OperationState.RUNNING.value}'"
        f" AND id IN ({', '.join('?' * n)})"
    )


@functools.lru_cache(maxsize=256)
def insert_steps(n: int) -> str:
    return (
        SQ_STEP.insert.replace(f" VALUES {SQ_STEP.row}", " VALUES " + ", ".join([SQ_STEP.row] * n))
        + " ON CONFLICT (operation_id, name) DO NOTHING RETURNING operation_id, name"
    )


# A batch of heartbeats in one statement (one per operation: the caller runs repeats of an
# operation with HEARTBEAT afterwards, in the same commit): the same columns as HEARTBEAT.
@functools.lru_cache(maxsize=256)
def heartbeat_many(n: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?, ?)"] * n)
    return f"""
    WITH v(id, until, has_details, details, attempt) AS (VALUES {rows})
    UPDATE {_o.name}
    SET heartbeat_until = CASE WHEN {_o.name}.heartbeat_until IS NULL THEN NULL ELSE v.until END,
        heartbeat_check_at = CASE WHEN v.until < {_o.name}.heartbeat_check_at THEN v.until
                                  ELSE {_o.name}.heartbeat_check_at END,
        heartbeat_details = CASE WHEN v.has_details THEN v.details
                                 ELSE {_o.name}.heartbeat_details END
    FROM v
    WHERE {_o.name}.id = v.id AND {_o.name}.state = '{OperationState.RUNNING.value}'
      AND (v.attempt IS NULL OR {_o.name}.attempts = v.attempt)
    RETURNING {_o.name}.id, {_o.name}.state, {_o.name}.attempts, {_o.name}.cancel_requested_at"""
