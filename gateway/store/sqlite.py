"""SQLite (aiosqlite): the embedded default. One connection in WAL mode, every write
transaction ``BEGIN IMMEDIATE`` (writers are serialized, so no row locks are needed), and the
group-committed writes driven on the aiosqlite connection directly. Its SQL is in
``sql_sqlite``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Insert, Table, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from gateway.domain.model import (
    Completion,
    Event,
    Heartbeat,
    HeartbeatAck,
    Operation,
    OperationState,
    StepRecord,
)
from gateway.domain.ports import NewOperation
from gateway.store import rows
from gateway.store import sql_sqlite as sql
from gateway.store.base import SqlStore
from gateway.store.errors import translate
from gateway.store.sqlite_inline import InlineConnection, raw_connection, read_inline
from gateway.store.sqlite_rounds import Rounds


class SqliteStore(SqlStore):
    """The Store port on one SQLite file."""

    dialect = "sqlite"

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
        self._synchronous = sqlite_synchronous.upper()
        # acks commit with NORMAL (WAL: on disk at the next checkpoint or durable commit, kept
        # across a crash of the gateway, lost only with the OS) when the level is stricter
        self._ack_lighter = ack_commit == "async" and self._synchronous in ("FULL", "EXTRA")
        self._rounds = Rounds(self._round_tx)
        self._prepare_path()
        self.engine = create_async_engine(
            self.url,
            hide_parameters=True,  # an error's text must never carry a row's values (secrets)
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            # the write rounds run their statements on the sqlite3 connection from the loop's
            # thread (sqlite_inline); the pool's one connection is never used by two at once
            connect_args={"timeout": 30, "check_same_thread": False},
            # every user ends its own transaction (SQLAlchemy's connections roll back theirs,
            # a write round commits or rolls back, or invalidates the connection): the pool's
            # reset rollback would be one more trip to aiosqlite's thread per round (~110 us)
            pool_reset_on_return=None,
        )
        # checkouts of the pool's one connection; the count after the last round that ended
        # cleanly: a round that finds another checkout in between settles the thread first
        self._checkouts = 0
        self._clean_at = -1
        self._install_hooks(sqlite_synchronous)
        # an operation read inline, decoded as this engine's dialect decodes it
        self._operation_row = rows.driver_decoder(sql._o, self.engine.dialect)

    def _prepare_path(self) -> None:
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        if path and path != ":memory:":
            Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)

    def _install_hooks(self, synchronous: str) -> None:
        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            for pragma in sql.pragmas(synchronous):
                cur.execute(pragma)
            cur.close()

        @event.listens_for(self.engine.sync_engine, "checkout")
        def _on_checkout(*_: Any) -> None:
            self._checkouts += 1

        @event.listens_for(self.engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql(sql.BEGIN)

    def _insert_if_new(self, table: Table, keys: list[Column[Any]]) -> Insert:
        return sqlite_insert(table).on_conflict_do_nothing(index_elements=keys)

    async def close(self) -> None:
        await self._rounds.close()
        await super().close()

    def _sqlite_tx(self, *, flushed: bool = True) -> AbstractAsyncContextManager[Any]:
        """A write on the pooled aiosqlite connection, driven directly, in a transaction shared
        with the writes that arrive meanwhile (``sqlite_rounds``: one commit for all of them).
        ``flushed=False`` (callback acks, see ``Settings.callback_ack_commit``): it may commit
        with ``synchronous=NORMAL`` if every write of its round is such a one."""
        return self._rounds.transaction(flushed=flushed)

    async def _settle_if_shared(self, db: InlineConnection) -> None:
        """Before statements run inline: if another user had the connection since the last
        clean inline use, wait until what it queued on aiosqlite's thread has run."""
        if self._checkouts != self._clean_at + 1:
            await db.settle()

    @asynccontextmanager
    async def _round_tx(self, flushed: bool) -> AsyncIterator[Any]:
        """One round's transaction: the connection, the synchronous level, BEGIN, COMMIT."""
        lighter = not flushed and self._ack_lighter
        async with self.engine.connect() as conn:
            db = InlineConnection(await _driver_connection(conn))
            await self._settle_if_shared(db)
            if lighter:  # SQLite changes the level only outside a transaction
                await db.execute(sql.synchronous("NORMAL"))
            try:
                await db.begin(sql.BEGIN)
                try:
                    yield db
                    await db.commit(sql.COMMIT)
                except BaseException:
                    # (a failed COMMIT leaves the transaction open too)
                    if db.in_transaction:
                        with contextlib.suppress(Exception):
                            await db.execute(sql.ROLLBACK)
                    if db.in_transaction:  # never hand the pool a connection in a transaction
                        await conn.invalidate()
                    raise
            finally:
                if lighter:
                    try:
                        await db.execute(sql.synchronous(self._synchronous))
                    except BaseException:
                        # never hand the next (durable) writer a connection left at NORMAL
                        await conn.invalidate()
                        raise
            self._clean_at = self._checkouts

    @translate
    async def get_operation(self, op_id: str) -> Operation | None:
        """Read inline on the pool's connection (``sqlite_inline.read_inline``), decoded as
        SQLAlchemy decodes it: through SQLAlchemy a read was ~1.2 ms of CPU here (BEGIN,
        execute, fetch and rollback, each a trip to aiosqlite's thread), and every synchronous
        answer, info and result poll reads an operation. Locked: the SQLAlchemy path."""
        async with self.engine.connect() as conn:
            aio = await _driver_connection(conn)
            await self._settle_if_shared(InlineConnection(aio))
            found = read_inline(raw_connection(aio), sql.SQ_GET_OPERATION, (op_id,))
            if found is not None:
                self._clean_at = self._checkouts
        if found is None:
            return await super().get_operation(op_id)
        if not found:
            return None
        return rows.OPERATION.load(
            self._operation_row(dict(zip(sql.SQ_OPERATION_COLUMNS, found[0], strict=True)))
        )

    @translate
    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        # Every writer is this process, which wakes its own waiters.
        await asyncio.Event().wait()

    # -- the batch path on the aiosqlite connection ------------------------------------------

    async def _start_batch(self, items: Sequence[NewOperation]) -> set[str]:
        if not items:
            return set()
        keys = [sql.SQ_IDEM.args(rows.IDEMPOTENCY.values(k[0])) for _, _, k in items if k]
        async with self._sqlite_tx() as db:
            claimed: set[str] = set()
            if keys:
                flat = [v for row in keys for v in row]
                found = await db.execute_fetchall(sql.claim_keys(len(keys)), flat)
                claimed = {r[0] for r in found}
            new = [(op, evs) for op, evs, k in items if not k or op.id in claimed]
            if new:
                await db.executemany(
                    sql.SQ_OP.insert, [sql.SQ_OP.args(rows.OPERATION.values(op)) for op, _ in new]
                )
                await db.executemany(
                    sql.SQ_EVENT.insert,
                    [
                        (op.id, sql.SQ_TS(e.at), e.kind, sql.SQ_JSON(e.data))
                        for op, evs in new
                        for e in evs
                    ],
                )
        return {op.id for op, _ in new}

    async def _complete_batch(self, batch: Sequence[Completion]) -> set[str]:
        values = []
        for c in batch:
            p = rows.completion_params(c)
            values.append(
                (
                    p["b_id"],
                    p["b_state"],
                    p["b_work"],
                    sql.SQ_TS(p["b_next"]),
                    p["b_result"],
                    p["b_ctype"],
                    sql.SQ_JSON(p["b_failure"]),
                    sql.SQ_TS(p["b_at"]),
                    p["b_owner"],
                )
            )
        async with self._sqlite_tx() as db:
            flat = [v for row in values for v in row]
            found = await db.execute_fetchall(sql.complete_many(len(values)), flat)
            done = {r[0] for r in found}
            closed = [c for c in batch if c.operation_id in done]
            if closed:
                await db.executemany(
                    sql.SQ_EVENT.insert,
                    [
                        (
                            c.operation_id,
                            sql.SQ_TS(c.event.at),
                            c.event.kind,
                            sql.SQ_JSON(c.event.data),
                        )
                        for c in closed
                    ],
                )
            deliveries = [
                sql.SQ_CB.args(rows.CALLBACK.values(c.callback)) for c in closed if c.callback
            ]
            if deliveries:
                await db.executemany(sql.SQ_CB.insert, deliveries)
        return done

    @translate
    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatAck | None]:
        """Every beat of the batch in one commit on the aiosqlite connection: the first beat of
        each operation in one statement (``sql_sqlite.heartbeat_many``), repeats one by one
        after it."""
        first: dict[str, int] = {}
        for i, b in enumerate(beats):
            first.setdefault(b.operation_id, i)
        out: list[HeartbeatAck | None] = [None] * len(beats)
        async with self._sqlite_tx() as db:
            flat: list[Any] = []
            for i in first.values():
                b = beats[i]
                flat += (
                    b.operation_id,
                    sql.SQ_TS(b.until),
                    b.has_details,
                    sql.SQ_JSON(b.details) if b.has_details else None,
                    b.attempt,
                )
            for row in await db.execute_fetchall(sql.heartbeat_many(len(first)), flat):
                out[first[row[0]]] = HeartbeatAck(
                    state=OperationState(row[1]),
                    attempt=int(row[2]),
                    cancel_requested=row[3] is not None,
                )
            for i, b in enumerate(beats):
                if first[b.operation_id] == i:
                    continue
                found = await db.execute_fetchall(
                    sql.HEARTBEAT,
                    (
                        sql.SQ_TS(b.until),
                        b.has_details,
                        sql.SQ_JSON(b.details) if b.has_details else None,
                        b.operation_id,
                        b.attempt,
                    ),
                )
                row = found[0] if found else None
                out[i] = (
                    None
                    if row is None
                    else HeartbeatAck(
                        state=OperationState(row[0]),
                        attempt=int(row[1]),
                        cancel_requested=row[2] is not None,
                    )
                )
        return out

    @translate
    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        if not events:
            return 0
        by_id = {str(e.data["delivery_id"]): e for e in events}
        at = sql.SQ_TS(max(e.at for e in events))
        ids = list(by_id)
        async with self._sqlite_tx(flushed=False) as db:
            found = await db.execute_fetchall(
                sql.callbacks_delivered(len(ids)), [at, at, owner, *ids]
            )
            done = [by_id[r[0]] for r in found]
            if done:
                await db.executemany(
                    sql.SQ_EVENT.insert,
                    [(e.operation_id, sql.SQ_TS(e.at), e.kind, sql.SQ_JSON(e.data)) for e in done],
                )
        return len(done)

    @translate
    async def record_steps(
        self, items: Sequence[tuple[StepRecord, Event]]
    ) -> list[tuple[StepRecord, bool] | None]:
        """The batch in one commit on the aiosqlite connection (see ``sql_sqlite.insert_steps``);
        steps that were already recorded are read afterwards."""
        out: list[tuple[StepRecord, bool] | None] = [None] * len(items)
        first: dict[tuple[str, str], int] = {}
        for i, (step, _) in enumerate(items):
            first.setdefault((step.operation_id, step.name), i)
        ids = list({step.operation_id for step, _ in items})
        async with self._sqlite_tx() as db:
            running = {r[0] for r in await db.execute_fetchall(sql.running_of(len(ids)), ids)}
            new = [i for i in first.values() if items[i][0].operation_id in running]
            created: set[tuple[str, str]] = set()
            if new:
                flat = [v for i in new for v in sql.SQ_STEP.args(rows.STEP.values(items[i][0]))]
                found = await db.execute_fetchall(sql.insert_steps(len(new)), flat)
                created = {(r[0], r[1]) for r in found}
            if created:
                await db.executemany(
                    sql.SQ_EVENT.insert,
                    [
                        (e.operation_id, sql.SQ_TS(e.at), e.kind, sql.SQ_JSON(e.data))
                        for st, e in (items[i] for i in new)
                        if (st.operation_id, st.name) in created
                    ],
                )
        there: dict[tuple[str, str], StepRecord | None] = {}
        for i, (step, _) in enumerate(items):
            key = (step.operation_id, step.name)
            if step.operation_id not in running:
                continue
            if key in created:
                out[i] = (step, True) if first[key] == i else (items[first[key]][0], False)
                continue
            if key not in there:  # recorded before this batch: read it (after the commit)
                there[key] = next(
                    (s for s in await self.list_steps(step.operation_id) if s.name == step.name),
                    None,
                )
            recorded = there[key]
            out[i] = None if recorded is None else (recorded, False)
        return out

    @translate
    async def record_step(self, step: StepRecord, event: Event) -> tuple[StepRecord, bool] | None:
        return (await self.record_steps([(step, event)]))[0]


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The aiosqlite connection under a checked-out ``conn``.

    Right after the checkout SQLAlchemy holds it already, and it is read without the greenlet
    hop of ``get_raw_connection`` (~11 of ~59 us of CPU per checkout here, figures:
    bench/README.md); a connection SQLAlchemy has to establish again takes that hop.
    """
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated:
        with contextlib.suppress(MissingGreenlet):
            return sync.connection.driver_connection
    return (await conn.get_raw_connection()).driver_connection
