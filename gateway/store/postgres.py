"""PostgreSQL (asyncpg): the driver lanes for the hot path, NOTIFY/LISTEN on closing, the
batch (unnest) statements and the advisory-locked migration. Its SQL is in ``sql_postgres``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import Column, Insert, Table, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.domain.model import (
    Completion,
    Event,
    Heartbeat,
    HeartbeatAck,
    IdempotencyRecord,
    Operation,
    OperationState,
    StepRecord,
)
from gateway.domain.ports import NewOperation
from gateway.store import jsontext, rows
from gateway.store import sql_postgres as sql
from gateway.store import statements as s
from gateway.store.base import SqlStore
from gateway.store.errors import pg_unavailable, translate
from gateway.store.pg_cycles import ACK, COMPLETE, START, CycleWrite, WriteCycles


class PgLanes:
    """A few asyncpg connections, apart from SQLAlchemy's pool, for the hot-path statements.

    Checking a connection out of SQLAlchemy's pool and back (events, reset, fairy objects)
    cost more CPU than the one-statement start it served (figures: bench/README.md).
    Here a connection is taken from a list and put back. One that broke, or was interrupted
    mid-statement, is terminated instead of reused; the next caller opens a fresh one.
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        # The hot statements are prepared once per connection and run on ONE generic plan
        # (sql_postgres.LANE_SETTINGS): planning each execution anew cost PostgreSQL more CPU
        # than running a small batch (figures: bench/README.md). A generic plan is made once,
        # maybe while the tables are empty and never ANALYZEd, and kept; so every lane
        # statement reaches rows by primary key only, sequential scans are off on the lanes,
        # and tests/store/test_pg_lane_plans.py checks each statement's plan on empty and on
        # filled tables. (Seen before that rule: acks scanning every callback row, completions
        # walking every running operation through a partial index.)
        settings = dict(kwargs.pop("server_settings", None) or {})
        for name, value in sql.LANE_SETTINGS.items():
            settings.setdefault(name, value)
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
                if isinstance(exc, asyncpg.PostgresError) and not pg_unavailable(exc):
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


class PostgresStore(SqlStore):
    """The Store port on PostgreSQL: claims with ``FOR UPDATE SKIP LOCKED``, starts and
    completions as one statement each on the asyncpg lanes, closings NOTIFY'd."""

    dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        sqlite_synchronous: str = "FULL",
        ack_commit: str = "async",
        write_cycles: int = 1,
    ) -> None:
        super().__init__(url)
        # see Settings.callback_ack_commit: acks without waiting for the WAL flush
        self._ack_sql = sql.PG_CALLBACKS_DELIVERED[ack_commit == "async"]
        # A fixed pool: overflow connections opened for a burst and closed right after it
        # made PostgreSQL fork and warm a backend per burst; under load that churn cost
        # more CPU than the queries (figures: bench/README.md). A request
        # beyond the pool waits for a connection.
        # The connection budget is split: half for the hot-path lanes, half for the rest.
        lanes = max(1, pool_size // 2)
        self.engine = create_async_engine(
            self.url,
            hide_parameters=True,  # an error's text must never carry a row's values (secrets)
            pool_size=max(1, pool_size - lanes),
            max_overflow=0,
            pool_recycle=600,
            # as on the lanes (see PgLanes): plans from current sizes, never a cached one
            # made while the queue tables were empty
            connect_args={"server_settings": dict(sql.PLAN_SETTINGS)},
        )
        self._lanes = PgLanes(self.engine, lanes)
        # starts, completions and acks waiting at once share one statement (pg_cycles), at
        # most ``write_cycles`` such statements in flight (0: off, one statement per kind)
        self._cycles = WriteCycles(
            self._lanes.connection, enabled=write_cycles > 0, in_flight=write_cycles
        )
        # an operation read on a lane, decoded as this engine's dialect decodes it
        self._operation_row = rows.driver_decoder(sql._o, self.engine.dialect)

    def _driver(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return self._lanes.connection()

    def _insert_if_new(self, table: Table, keys: list[Column[Any]]) -> Insert:
        return pg_insert(table).on_conflict_do_nothing(index_elements=keys)

    async def _lock_operation(self, conn: AsyncConnection, op_id: str) -> None:
        await conn.execute(s.LOCK_OPERATION, {"b_id": op_id})

    async def _lock_operations(self, conn: AsyncConnection, ids: Sequence[str]) -> None:
        await conn.execute(s.LOCK_OPERATIONS, {"b_ids": list(ids)})

    async def _before_migrate(self, conn: AsyncConnection) -> None:
        await conn.execute(text(sql.LOCK_FOR_MIGRATION), {"k": sql.MIGRATION_LOCK})

    @translate
    async def maintenance_warnings(self) -> list[str]:
        """What in the database's own settings will hurt a long-running gateway."""
        async with self.engine.connect() as conn:
            autovacuum = (await conn.execute(text(sql.AUTOVACUUM))).scalar()
        if autovacuum == "off":
            return [
                "PostgreSQL autovacuum is off: every closed operation and delivered callback "
                "leaves dead rows behind; run VACUUM ANALYZE on the sg_* tables regularly"
            ]
        return []

    def write_cycle_counts(self) -> dict[str, int]:
        """``statements``: cycles that merged two or more kinds' writes into one statement;
        ``writes``: the writes (batches) those carried; ``alone``: writes that ran on their
        own kind's statement."""
        c = self._cycles
        return {"statements": c.cycles, "writes": c.merged, "alone": c.alone}

    async def close(self) -> None:
        await self._cycles.close()
        await self._lanes.close()
        await self.engine.dispose()

    @translate
    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        await self._lanes.listen(sql.CLOSED_CHANNEL, lambda payload: on_closed(payload.split(",")))

    # -- the hot path on the lanes -------------------------------------------------------------

    async def _start_one(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> bool:
        statement = sql.PG_START[bool(idempotency)]

        async def alone(conn: asyncpg.Connection) -> set[str]:
            args = sql.PG_OP.args(rows.OPERATION.values(op))
            args.append([e.at for e in events])
            args.append([e.kind for e in events])
            args.append([jsontext.dumps(e.data) for e in events])
            if idempotency:
                args.extend(sql.PG_IDEM.args(rows.IDEMPOTENCY.values(idempotency[0])))
            return {op.id} if await conn.fetchval(statement, *args) else set()

        items = [(op, events, idempotency)]
        started = await self._cycles.write(
            CycleWrite(START, alone, lambda: start_args(items), lambda: {op.id})
        )
        return op.id in started

    async def _start_batch(self, items: Sequence[NewOperation]) -> set[str]:
        if not items:
            return set()

        async def alone(conn: asyncpg.Connection) -> set[str]:
            return set(await conn.fetchval(sql.PG_START_MANY, *start_args(items)) or ())

        return set(
            await self._cycles.write(
                CycleWrite(START, alone, lambda: start_args(items), lambda: _op_ids(items))
            )
        )

    @translate
    async def complete(self, completion: Completion) -> bool:
        c = completion
        statement = sql.PG_COMPLETE[c.callback is not None]

        async def alone(conn: asyncpg.Connection) -> set[str]:
            args = sql.completion_row(c)
            if c.callback is not None:
                args.extend(sql.PG_CB.args(rows.CALLBACK.values(c.callback)))
            return {c.operation_id} if await conn.fetchval(statement, *args) else set()

        closed = await self._cycles.write(
            CycleWrite(COMPLETE, alone, lambda: complete_args([c]), lambda: {c.operation_id})
        )
        return c.operation_id in closed

    async def _complete_batch(self, batch: Sequence[Completion]) -> set[str]:
        async def alone(conn: asyncpg.Connection) -> set[str]:
            return set(await conn.fetchval(sql.PG_COMPLETE_MANY, *complete_args(batch)) or ())

        return set(
            await self._cycles.write(
                CycleWrite(
                    COMPLETE,
                    alone,
                    lambda: complete_args(batch),
                    lambda: {c.operation_id for c in batch},
                )
            )
        )

    @translate
    async def get_operation(self, op_id: str) -> Operation | None:
        """One statement on a lane (``sql_postgres.PG_GET_OPERATION``), decoded as SQLAlchemy
        decodes it: every synchronous answer, info and result poll reads an operation."""
        async with self._driver() as conn:
            row = await conn.fetchrow(sql.PG_GET_OPERATION, op_id)
        return None if row is None else rows.OPERATION.load(self._operation_row(row))

    @translate
    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatAck | None]:
        """One statement on a lane (see ``sql_postgres.PG_HEARTBEAT_MANY``); a repeat of an
        operation within the batch goes in a next statement, after the first."""
        first: dict[str, int] = {}
        later: list[int] = []
        for i, b in enumerate(beats):
            if b.operation_id in first:
                later.append(i)
            else:
                first[b.operation_id] = i
        batch = [beats[i] for i in first.values()]
        async with self._driver() as conn:
            found = await conn.fetch(
                sql.PG_HEARTBEAT_MANY,
                [b.operation_id for b in batch],
                [b.attempt for b in batch],
                [b.until for b in batch],
                [b.has_details for b in batch],
                [jsontext.dumps(b.details) if b.has_details else None for b in batch],
            )
        acks: dict[str, HeartbeatAck] = {
            r["id"]: HeartbeatAck(
                state=OperationState(r["state"]),
                attempt=int(r["attempts"]),
                cancel_requested=r["cancel_requested_at"] is not None,
            )
            for r in found
        }
        out: list[HeartbeatAck | None] = [None] * len(beats)
        for op_id, i in first.items():
            out[i] = acks.get(op_id)
        if later:
            again = await self.heartbeat_many([beats[i] for i in later])
            for i, ack in zip(later, again, strict=True):
                out[i] = ack
        return out

    @translate
    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        if not events:
            return 0
        statement = self._ack_sql

        async def alone(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(statement, *ack_args(owner, events)))

        return int(
            await self._cycles.write(
                CycleWrite(
                    ACK,
                    alone,
                    lambda: ack_args(owner, events),
                    lambda: {e.operation_id for e in events},
                )
            )
        )

    @translate
    async def record_steps(
        self, items: Sequence[tuple[StepRecord, Event]]
    ) -> list[tuple[StepRecord, bool] | None]:
        """One statement on a lane (see ``sql_postgres.PG_RECORD_STEPS``); a repeat of an
        (operation, name) within the batch goes in a next statement, after the first."""
        first: dict[tuple[str, str], int] = {}
        later: list[int] = []
        for i, (step, _) in enumerate(items):
            key = (step.operation_id, step.name)
            if key in first:
                later.append(i)
            else:
                first[key] = i
        batch = [items[i] for i in first.values()]
        out: list[tuple[StepRecord, bool] | None] = [None] * len(items)
        async with self._driver() as conn:
            found = await conn.fetch(
                sql.PG_RECORD_STEPS,
                [st.operation_id for st, _ in batch],
                [st.name for st, _ in batch],
                [jsontext.dumps(st.result) for st, _ in batch],
                [st.at for st, _ in batch],
                [st.attempt for st, _ in batch],
                [e.at for _, e in batch],
                [e.kind for _, e in batch],
                [jsontext.dumps(e.data) for _, e in batch],
            )
            there: list[int] = []  # running, but the name was recorded before
            index = list(first.values())
            for r in found:  # one row per item of an existing operation (n counts from 1)
                i = index[r["n"] - 1]
                if r["created"]:
                    out[i] = (items[i][0], True)
                elif r["running"]:
                    there.append(i)
            if there:
                rs = await conn.fetch(
                    sql.PG_SELECT_STEPS,
                    [items[i][0].operation_id for i in there],
                    [items[i][0].name for i in there],
                )
                recorded = {
                    (r["operation_id"], r["name"]): StepRecord(
                        operation_id=r["operation_id"],
                        name=r["name"],
                        result=None if r["result"] is None else json.loads(r["result"]),
                        at=r["at"],
                        attempt=int(r["attempt"]),
                    )
                    for r in rs
                }
                for i in there:
                    was = recorded.get((items[i][0].operation_id, items[i][0].name))
                    out[i] = None if was is None else (was, False)
        if later:
            again = await self.record_steps([items[i] for i in later])
            for i, res in zip(later, again, strict=True):
                out[i] = res
        return out

    @translate
    async def record_step(self, step: StepRecord, event: Event) -> tuple[StepRecord, bool] | None:
        return (await self.record_steps([(step, event)]))[0]


# -- the batch statements' parameters (sql_postgres: the starts', completions' and acks' parts)


def _op_ids(items: Sequence[NewOperation]) -> set[str]:
    return {op.id for op, _, _ in items}


def start_args(items: Sequence[NewOperation]) -> list[Any]:
    ops: list[dict[str, Any]] = []
    keys: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for op, evs, idem in items:
        ops.append(rows.OPERATION.values(op))
        if idem:
            keys.append(rows.IDEMPOTENCY.values(idem[0]))
        events.extend(
            {"operation_id": op.id, "at": e.at, "kind": e.kind, "data": e.data} for e in evs
        )
    return [sql.json_rows(ops), sql.json_rows(keys), sql.json_rows(events)]


def complete_args(batch: Sequence[Completion]) -> list[Any]:
    callbacks = [rows.CALLBACK.values(c.callback) for c in batch if c.callback is not None]
    return [
        [c.operation_id for c in batch],
        sql.json_rows([sql.completion_json(c) for c in batch]),
        sql.json_rows(callbacks),
    ]


def ack_args(owner: str, events: Sequence[Event]) -> list[Any]:
    acks = list({str(e.data["delivery_id"]): e for e in events}.items())
    return [
        [i for i, _ in acks],
        sql.json_rows([{"id": i, "at": e.at, "kind": e.kind, "data": e.data} for i, e in acks]),
        max(e.at for e in events),
        owner,
    ]
