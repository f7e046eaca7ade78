"""PostgreSQL's raw SQL: the one-statement hot path, the batch (unnest) statements, NOTIFY.

A start and a completion are each ONE statement (data-modifying CTEs) run on the driver
connection in its implicit transaction: one round trip instead of five (BEGIN, three
writes, COMMIT) and no SQLAlchemy execution layer. Profiled under load, that layer and
those round trips were the largest share of the gateway's CPU. Built from the table definitions in
``schema.py``, so the columns and their types cannot drift from the schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import JSON, Table
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects.postgresql import JSONB

from gateway.domain.model import Completion, DeliveryState, OperationState
from gateway.store import jsontext
from gateway.store import schema as t
from gateway.store.rows import completion_params

_o, _e, _cb_t, _i = t.operations, t.events, t.callbacks, t.idempotency
MIGRATION_LOCK = 0x5357_4152  # arbitrary advisory lock key ("SWAR")
# SQLAlchemy's pool (claims, sweeps, reads: statements whose best plan depends on the sizes):
# planned at every execution.
PLAN_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
# The hot lanes (LANE_STATEMENTS): one generic plan per statement and connection, rows reached
# by primary key only (see postgres.PgLanes).
LANE_SETTINGS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}
AUTOVACUUM = "SELECT current_setting('autovacuum')"
LOCK_FOR_MIGRATION = "SELECT pg_advisory_xact_lock(:k)"

PG_DIALECT = pg_dialect.dialect()  # type: ignore[no-untyped-call]


class PgRow:
    """Positional ``$n::type`` placeholders and arguments for a set of a table's columns."""

    def __init__(self, table: Table, names: Sequence[str]) -> None:
        self.names = tuple(names)
        cols = [table.c[n] for n in self.names]
        self.types = [c.type.compile(dialect=PG_DIALECT) for c in cols]
        self.json = [isinstance(c.type, (JSON, JSONB)) for c in cols]

    def placeholders(self, first: int) -> str:
        return ", ".join(f"${first + i}::{typ}" for i, typ in enumerate(self.types))

    def args(self, values: dict[str, Any]) -> list[Any]:
        return [
            pg_json(values[n]) if js else values[n]
            for n, js in zip(self.names, self.json, strict=True)
        ]


def pg_json(value: Any) -> str | None:
    return None if value is None else jsontext.dumps(value)


def json_rows(rows: Sequence[Any]) -> str:
    """A batch's rows as one JSON parameter (see the batch statements below)."""
    return jsontext.dumps(rows)


PG_OP = PgRow(_o, [c.name for c in _o.c if c.name not in t.OPERATION_NOT_AT_START])
PG_IDEM = PgRow(_i, [c.name for c in _i.c])
PG_CB = PgRow(_cb_t, [c.name for c in _cb_t.c])


def _pg_start_sql(with_key: bool) -> str:
    n_op = len(PG_OP.names)
    ev = n_op + 1  # three arrays: at, kind, data (JSON text), in event order
    op_cols = ", ".join(PG_OP.names)
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
        INSERT INTO {_o.name} ({op_cols}) VALUES ({PG_OP.placeholders(1)}) RETURNING id
    ),{events}"""
    # The operation is inserted only if its key was free: a taken key writes nothing here
    # and the caller falls back to the transaction that looks at the existing operation.
    return f"""
    WITH idem AS (
        INSERT INTO {_i.name} ({", ".join(PG_IDEM.names)})
        VALUES ({PG_IDEM.placeholders(ev + 3)})
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING 1
    ), op AS (
        INSERT INTO {_o.name} ({op_cols})
        SELECT {PG_OP.placeholders(1)} FROM idem
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
        INSERT INTO {_cb_t.name} ({", ".join(PG_CB.names)})
        SELECT {PG_CB.placeholders(13)} FROM upd
    ),"""
        if with_callback
        else ""
    )
    return f"""
    WITH locked AS (
        -- by primary key only, the state checked on the locked row (see PG_COMPLETE_MANY)
        SELECT o.id, o.state, o.lease_owner FROM {_o.name} o WHERE o.id = $1::varchar FOR UPDATE
    ), upd AS (
        UPDATE {_o.name} o
        SET state = $2::varchar, work = $3::varchar, next_attempt_at = $4::timestamptz,
            lease_owner = NULL, lease_until = NULL, result = $5::bytea,
            result_content_type = $6::varchar, failure = $7::jsonb, closed_at = $8::timestamptz
        FROM locked l
        WHERE o.id = $1::varchar AND o.id = l.id AND l.state = '{OperationState.RUNNING.value}'
          AND ($9::varchar IS NULL OR l.lease_owner = $9::varchar)
        RETURNING o.id
    ),{callback}
    ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT upd.id, $10::timestamptz, $11::varchar, $12::jsonb FROM upd
    )
    SELECT count(*), {_NOTIFY_CLOSED} FROM upd"""


PG_COMPLETE = {False: _pg_complete_sql(False), True: _pg_complete_sql(True)}


# Batches (group commit): the same writes for many operations in one statement.
# A batch's rows go as ONE JSON parameter per table, expanded by json_populate_recordset into
# rows of the table's own type. The earlier form, one array per column (27 for a start), cost
# the gateway more CPU than the statement: the driver checks and encodes every element of every
# array on its own (figures: bench/README.md, ``python -m bench.statements``). Values keep
# their column types: timestamps as ISO 8601 text, bytea as ``\x`` hex text, JSON columns as
# nested JSON. Ids that are looked up also go as a varchar[] (``= ANY``): a lookup by primary
# key whatever the planner guesses of a JSON function's row count.


def _cols(names: Sequence[str], alias: str) -> str:
    return ", ".join(f"{alias}.{n}" for n in names)


class _Part(NamedTuple):
    """One kind of batch write as data-modifying CTEs, its parameters numbered from ``first``
    and its CTE names prefixed, so that one kind makes a statement alone and several kinds
    make one statement together (``compose``; ``python -m bench.statements`` prices such a
    "write cycle"). ``result`` is its answer (SQL values)."""

    ctes: str
    params: int
    result: str


def _start_part(first: int, p: str) -> _Part:
    # the operations (JSON array of rows), their keys (at most one per operation), the events
    # (operation_id, at, kind, data) in order. An operation with a key is inserted only if its
    # key was free; the caller sends the others down the one-by-one path.
    a, b, c = (f"${first + i}::json" for i in range(3))
    ctes = f"""{p}v AS (
        SELECT * FROM json_populate_recordset(NULL::{_o.name}, {a})
    ), {p}k AS (
        SELECT * FROM json_populate_recordset(NULL::{_i.name}, {b})
    ), {p}idem AS (
        INSERT INTO {_i.name} ({", ".join(PG_IDEM.names)})
        SELECT {_cols(PG_IDEM.names, f"{p}k")} FROM {p}k
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING operation_id
    ), {p}op AS (
        INSERT INTO {_o.name} ({", ".join(PG_OP.names)})
        SELECT {_cols(PG_OP.names, f"{p}v")} FROM {p}v
        WHERE {p}v.id NOT IN (SELECT operation_id FROM {p}k)
           OR {p}v.id IN (SELECT operation_id FROM {p}idem)
        RETURNING id
    ), {p}ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT u.operation_id, u.at, u.kind, u.data
        FROM ROWS FROM (json_to_recordset({c})
                        AS (operation_id varchar, at timestamptz, kind varchar, data jsonb))
             WITH ORDINALITY AS u(operation_id, at, kind, data, n)
        WHERE u.operation_id IN (SELECT id FROM {p}op)
        ORDER BY u.n
    )"""
    return _Part(ctes, 3, f"(SELECT array_agg(id) FROM {p}op)")


def _complete_part(first: int, p: str) -> _Part:
    # One completion per operation (the caller keeps later ones of the same operation for
    # afterwards): their ids (varchar[]), the completions (JSON rows: id, state, work, next_at,
    # result, ctype, failure, closed_at, owner, ev_at, ev_kind, ev_data), the callback
    # deliveries (JSON rows of the callbacks table). Rows are locked in id order first, like
    # every multi-row writer, so two replicas' batches cannot deadlock; the update only touches
    # rows that CTE locked, and the events and callbacks come FROM the update (written after
    # the row lock). The answer: the closed ids, NOTIFY'd.
    ids, rows_, cbs = f"${first}::varchar[]", f"${first + 1}::json", f"${first + 2}::json"
    ctes = f"""{p}v AS (
        SELECT * FROM json_to_recordset({rows_})
            AS v(id varchar, state varchar, work varchar, next_at timestamptz, result bytea,
                 ctype varchar, failure jsonb, closed_at timestamptz, owner varchar,
                 ev_at timestamptz, ev_kind varchar, ev_data jsonb)
    ), {p}locked AS (
        -- by primary key only: a condition on state would let a generic plan pick the partial
        -- index of running operations and walk all of them for every batch
        SELECT o.id, o.state, o.lease_owner FROM {_o.name} o
        WHERE o.id = ANY({ids}) ORDER BY o.id FOR UPDATE
    ), {p}upd AS (
        UPDATE {_o.name} o
        SET state = v.state, work = v.work, next_attempt_at = v.next_at, lease_owner = NULL,
            lease_until = NULL, result = v.result, result_content_type = v.ctype,
            failure = v.failure, closed_at = v.closed_at
        FROM {p}v v JOIN {p}locked l ON l.id = v.id
        -- by the locked ids only: the table's scan is rescanned once per row, and an array
        -- key beside it would be sorted at every rescan (13% of PostgreSQL's CPU under load)
        WHERE o.id = l.id
          AND l.state = '{OperationState.RUNNING.value}'
          AND (v.owner IS NULL OR l.lease_owner = v.owner)
        RETURNING o.id
    ), {p}ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT v.id, v.ev_at, v.ev_kind, v.ev_data FROM {p}v v JOIN {p}upd u ON u.id = v.id
    ), {p}cb AS (
        INSERT INTO {_cb_t.name} ({", ".join(PG_CB.names)})
        SELECT {_cols(PG_CB.names, "c")}
        FROM json_populate_recordset(NULL::{_cb_t.name}, {cbs}) c
        JOIN {p}upd u ON u.id = c.operation_id
    )"""
    # two values: the closed ids, then the NOTIFY's (NULL)
    closed = f"(SELECT array_agg(id) FROM {p}upd), (SELECT {_NOTIFY_CLOSED} FROM {p}upd)"
    return _Part(ctes, 3, closed)


# Delivered callbacks (a batch of acks): mark them delivered, then lock their operations in
# id order and write one event each, the events coming FROM the locked rows. The delivery ids
# (varchar[]), their events (JSON rows: id, at, kind, data), the time, the owner: one JSON
# parameter, not an array per column (the arrays' encoding made the ack the costliest
# statement per row in the gateway's profile). The answer: how many were marked.
def _ack_part(first: int, p: str) -> _Part:
    ids, evs = f"${first}::varchar[]", f"${first + 1}::json"
    at, owner = f"${first + 2}::timestamptz", f"${first + 3}::varchar"
    ctes = f"""{p}d AS (
        SELECT * FROM json_to_recordset({evs}) AS d(id varchar, at timestamptz,
            kind varchar, data jsonb)
    ), {p}mine AS (
        -- by primary key only (see the completions), then checked on the locked rows
        SELECT c.id, c.state, c.lease_owner FROM {_cb_t.name} c
        WHERE c.id = ANY({ids}) ORDER BY c.id FOR UPDATE
    ), {p}done AS (
        UPDATE {_cb_t.name} c
        SET state = '{DeliveryState.DELIVERED.value}', delivered_at = {at},
            next_attempt_at = {at}, last_error = NULL, lease_owner = NULL,
            lease_until = NULL
        FROM {p}mine m  -- by the locked ids only (see the completions)
        WHERE c.id = m.id AND m.lease_owner = {owner}
          AND m.state = '{DeliveryState.PENDING.value}'
        RETURNING c.id, c.operation_id
    ), {p}locked AS (
        SELECT o.id FROM {_o.name} o WHERE o.id IN (SELECT operation_id FROM {p}done)
        ORDER BY o.id FOR UPDATE
    ), {p}ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT dn.operation_id, d.at, d.kind, d.data
        FROM {p}d d JOIN {p}done dn ON dn.id = d.id JOIN {p}locked l ON l.id = dn.operation_id
    )"""
    return _Part(ctes, 4, f"(SELECT count(*) FROM {p}done)")


_PARTS = ((_start_part, "s_"), (_complete_part, "c_"), (_ack_part, "a_"))


def compose(kinds: Sequence[bool], extra: str = "") -> str:
    """One statement of the kinds marked in ``kinds`` (starts, completions, acks), their
    parameters in that order; it answers one row: the started ids, the closed ids and the
    NOTIFY's NULL, the count of acks marked (of the kinds present, in that order)."""
    parts, first = [], 1
    for (build, prefix), present in zip(_PARTS, kinds, strict=True):
        if present:
            part = build(first, prefix)
            parts.append(part)
            first += part.params
    ctes = ", ".join(part.ctes for part in parts)
    return f"WITH {ctes}\n    SELECT {', '.join(part.result for part in parts)}{extra}"


PG_START_MANY = compose((True, False, False))
# The write cycles' statements (pg_cycles), by the kinds present: two or three of them.
PG_CYCLES = {
    kinds: compose(kinds)
    for kinds in ((True, True, False), (True, False, True), (False, True, True), (True, True, True))
}
PG_COMPLETE_MANY = compose((False, True, False))
# Without the flush: set_config(..., true) lasts for this statement's own transaction, and
# PostgreSQL reads synchronous_commit at its commit, so the commit does not wait for the WAL
# flush (the WAL writer flushes it within 3 x wal_writer_delay; any later durable commit
# flushes it too). Lost only if the database server or the OS crashes first.
# [flushed, not flushed]: indexed by "the ack commit is async"
PG_CALLBACKS_DELIVERED = (
    compose((False, False, True)),
    compose((False, False, True), ", set_config('synchronous_commit', 'off', true)"),
)


def completion_json(c: Completion) -> dict[str, Any]:
    """One row of PG_COMPLETE_MANY's $2."""
    p = completion_params(c)
    return {
        "id": p["b_id"],
        "state": p["b_state"],
        "work": p["b_work"],
        "next_at": p["b_next"],
        "result": p["b_result"],
        "ctype": p["b_ctype"],
        "failure": p["b_failure"],
        "closed_at": p["b_at"],
        "owner": p["b_owner"],
        "ev_at": c.event.at,
        "ev_kind": c.event.kind,
        "ev_data": c.event.data,
    }


def completion_row(c: Completion) -> list[Any]:
    """$1..$12 of PG_COMPLETE."""
    p = completion_params(c)
    return [
        p["b_id"],
        p["b_state"],
        p["b_work"],
        p["b_next"],
        p["b_result"],
        p["b_ctype"],
        pg_json(p["b_failure"]),
        p["b_at"],
        p["b_owner"],
        c.event.at,
        c.event.kind,
        jsontext.dumps(c.event.data),
    ]


# Heartbeats (a group-committed batch): one statement. The rows are locked in id order first,
# like every multi-row writer, together with the values they are checked against (as locked:
# the newest version); the update joins the table to them by id only and moves only the
# heartbeat columns, in place (a HOT update: no indexed column changes, see migration 0009),
# answering what the agent needs (state, attempt, whether a cancel was asked). Every condition
# is on the locked rows, not on the table, so a table without statistics (autovacuum off)
# cannot make the planner pick the partial index of running operations and loop batch x batch
# times over the locked rows (measured: 7 ms per batch of 128, against 2.6 ms). (Not by tuple
# id: a row another writer changed after this statement's snapshot is locked in its newest
# version, which a TID scan under that snapshot does not see.) ``heartbeat_check_at`` (where
# the sweep looks) only ever moves back here, when a shorter timeout brings the deadline before
# it. One beat per operation: the caller folds repeats of an operation in a batch into one.
PG_HEARTBEAT_MANY = f"""
    WITH locked AS (
        SELECT o.id, o.state, o.attempts, v.attempt, v.until, v.has_details, v.details
        FROM unnest($1::varchar[], $2::integer[], $3::timestamptz[], $4::boolean[],
                    $5::text[]) AS v(id, attempt, until, has_details, details)
        JOIN {_o.name} o ON o.id = v.id
        ORDER BY o.id FOR UPDATE OF o
    )
    UPDATE {_o.name} o
    SET heartbeat_until = CASE WHEN o.heartbeat_until IS NULL THEN NULL ELSE l.until END,
        heartbeat_check_at = CASE WHEN l.until < o.heartbeat_check_at THEN l.until
                                  ELSE o.heartbeat_check_at END,
        heartbeat_details = CASE WHEN l.has_details THEN l.details::jsonb
                                 ELSE o.heartbeat_details END
    FROM locked l
    WHERE o.id = l.id AND l.state = '{OperationState.RUNNING.value}'
      AND (l.attempt IS NULL OR l.attempts = l.attempt)
    RETURNING o.id, o.state, o.attempts, o.cancel_requested_at"""


# Step records (a group-committed batch, issue 17 item 4): one statement. The operations are
# locked in id order with the items (``locked``: one row per item, its operation's state as
# locked), each new step of a running operation is inserted (first write wins) and the
# ``step.completed`` events of those inserted are written after the row locks. The tests of
# "was it inserted" are hashed subplans over the insert's RETURNING (``IS TRUE`` keeps them
# subplans): a join between the CTEs would be planned from guessed sizes and could loop
# batch x batch times. One item per (operation, name): the caller sends repeats in a next
# statement and reads the steps that were already there afterwards (a row another transaction
# inserted after this statement's snapshot is not visible here).
_st = t.steps
PG_RECORD_STEPS = f"""
    WITH locked AS (
        SELECT v.*, o.state
        FROM unnest($1::varchar[], $2::varchar[], $3::text[], $4::timestamptz[],
                    $5::integer[], $6::timestamptz[], $7::varchar[], $8::text[])
             WITH ORDINALITY AS v(op, name, result, at, attempt, ev_at, ev_kind, ev_data, n)
        JOIN {_o.name} o ON o.id = v.op
        ORDER BY o.id FOR UPDATE OF o
    ), ins AS (
        INSERT INTO {_st.name} (operation_id, name, result, at, attempt)
        SELECT l.op, l.name, l.result::jsonb, l.at, l.attempt FROM locked l
        WHERE l.state = '{OperationState.RUNNING.value}'
        ORDER BY l.n
        ON CONFLICT (operation_id, name) DO NOTHING
        RETURNING operation_id, name
    ), ev AS (
        INSERT INTO {_e.name} (operation_id, at, kind, data)
        SELECT l.op, l.ev_at, l.ev_kind, l.ev_data::jsonb FROM locked l
        WHERE ((l.op, l.name) IN (SELECT operation_id, name FROM ins)) IS TRUE
        ORDER BY l.n
    )
    SELECT l.n, l.state = '{OperationState.RUNNING.value}' AS running,
           ((l.op, l.name) IN (SELECT operation_id, name FROM ins)) IS TRUE AS created
    FROM locked l"""
PG_SELECT_STEPS = f"""
    SELECT s.operation_id, s.name, s.result::text AS result, s.at, s.attempt
    FROM {_st.name} s JOIN unnest($1::varchar[], $2::varchar[]) AS k(op, name)
      ON s.operation_id = k.op AND s.name = k.name"""


# An operation read by primary key on a lane (Store.get_operation): through SQLAlchemy a read
# cost ~465 us of the gateway's CPU (checkout, BEGIN, execute, fetch, rollback, result rows).
PG_GET_OPERATION = f"SELECT {', '.join(c.name for c in _o.c)} FROM {_o.name} WHERE id = $1"


# Every statement the lanes run (their plans are checked: tests/store/test_pg_lane_plans.py).
LANE_STATEMENTS: dict[str, str] = {
    "start": PG_START[False],
    "start_keyed": PG_START[True],
    "complete": PG_COMPLETE[False],
    "complete_callback": PG_COMPLETE[True],
    "start_many": PG_START_MANY,
    "complete_many": PG_COMPLETE_MANY,
    "callbacks_delivered": PG_CALLBACKS_DELIVERED[0],
    "callbacks_delivered_unflushed": PG_CALLBACKS_DELIVERED[1],
    "heartbeat_many": PG_HEARTBEAT_MANY,
    "record_steps": PG_RECORD_STEPS,
    "select_steps": PG_SELECT_STEPS,
    "get_operation": PG_GET_OPERATION,
    **{
        "cycle_" + "".join(k for k, on in zip("sca", kinds, strict=True) if on): statement
        for kinds, statement in PG_CYCLES.items()
    },
}
