"""The Store port on SQLAlchemy Core (async): everything both databases do the same way.

:class:`SqlStore` holds the portable transactions; ``postgres.PostgresStore`` and
``sqlite.SqliteStore`` add their engine set-up and their hot paths (the ``_start_batch``,
``_complete_batch`` and ``callbacks_delivered`` lanes). ``SqlStore(url, ...)`` picks the
subclass for the URL, so callers keep constructing it by its old name.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.domain.ports import Created, NewOperation
from gateway.store import rows
from gateway.store import schema as t
from gateway.store import statements as s
from gateway.store.errors import FullState, translate
from gateway.store.journal import JournalTables
from gateway.store.pull import PullTables
from gateway.store.running import RunningTables

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``sqlite:///`` URLs and pick the async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://") and "+aiosqlite" not in url:
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


class SqlStore(PullTables, JournalTables, RunningTables):
    """The Store port on SQLAlchemy Core (async); ``SqlStore(url)`` builds the subclass for
    the URL's database."""

    dialect: ClassVar[str] = ""
    engine: AsyncEngine

    def __new__(cls, url: str, **kwargs: Any) -> SqlStore:
        if cls is SqlStore:
            from gateway.store.postgres import PostgresStore
            from gateway.store.sqlite import SqliteStore

            sub: type[SqlStore] = (
                SqliteStore if normalize_url(url).startswith("sqlite") else PostgresStore
            )
            return super().__new__(sub)
        return super().__new__(cls)

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        sqlite_synchronous: str = "FULL",
        ack_commit: str = "async",
        write_cycles: int = 1,
    ) -> None:
        self.url = normalize_url(url)
        self.full_state = FullState()  # disk full seen lately (see /readyz)
        i = t.idempotency
        self._claim_key = self._insert_if_new(i, [i.c.scope, i.c.key]).returning(i.c.key)

    # -- what a database does its own way (overridden) --------------------------------------

    async def _lock_operations(self, conn: AsyncConnection, ids: Sequence[str]) -> None:
        """Lock several operations in id order, like every multi-row writer."""

    async def _before_migrate(self, conn: AsyncConnection) -> None:
        """Serialize concurrent migrations where the database needs it."""

    async def _start_batch(self, items: Sequence[NewOperation]) -> set[str]:
        """Insert the starts whose key (at most one) is free, in one commit; their ids."""
        raise NotImplementedError

    async def _complete_batch(self, batch: Sequence[Completion]) -> set[str]:
        """Apply one completion per operation in one commit; the ids that closed."""
        raise NotImplementedError

    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        raise NotImplementedError

    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    @translate
    async def migrate(self) -> None:
        cfg = self._alembic_config()

        def run(sync_conn: Connection) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self._tx() as conn:
            await self._before_migrate(conn)
            await conn.run_sync(run)

    @translate
    async def migrations_current(self) -> bool:
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()

        def current(sync_conn: Connection) -> str | None:
            return MigrationContext.configure(sync_conn).get_current_revision()

        async with self.engine.connect() as conn:
            rev = await conn.run_sync(current)
        return rev == head

    @translate
    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def maintenance_warnings(self) -> list[str]:
        """What in the database's own settings will hurt a long-running gateway."""
        return []

    def write_cycle_counts(self) -> dict[str, int]:
        """Counters of merged writes since start (PostgreSQL's write cycles; none here)."""
        return {}

    async def close(self) -> None:
        await self.engine.dispose()

    # -- operations --------------------------------------------------------------------------

    async def _start_one(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> bool:
        """The hot path for one start with at most one key: True if it was inserted."""
        return op.id in await self._start_batch([(op, events, idempotency)])

    @translate
    async def create_operation(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> tuple[Operation, IdempotencyRecord | None]:
        if len(idempotency) <= 1 and await self._start_one(op, events, idempotency):
            return op, None
        # The key was taken (or there are several): the transaction below finds (or
        # reclaims) the existing operation.
        return await self._create_operation_tx(op, events, idempotency)

    @translate
    async def create_operations(self, items: Sequence[NewOperation]) -> list[Created]:
        """Several starts in one commit (group commit). A start whose key is taken, or that
        carries more than one key, goes through ``create_operation`` after the batch."""
        results: list[Created | None] = [None] * len(items)
        batch = [i for i, (_, _, keys) in enumerate(items) if len(keys) <= 1]
        inserted = await self._start_batch([items[i] for i in batch]) if batch else set()
        for i in batch:
            if items[i][0].id in inserted:
                results[i] = (items[i][0], None)
        for i, done in enumerate(results):
            if done is None:
                results[i] = await self._create_operation_tx(*items[i])
        return [r for r in results if r is not None]

    async def _create_operation_tx(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> Created:
        claim_key = self._claim_key
        async with self._tx() as conn:
            for rec in idempotency:
                # Common case in one statement: the key is new and is taken right here.
                values = rows.IDEMPOTENCY.values(rec)
                if (await conn.execute(claim_key, values)).first() is not None:
                    continue
                key = {"b_scope": rec.scope, "b_key": rec.key}
                existing = (await conn.execute(s.SELECT_IDEMPOTENCY, key)).one()
                if existing.expires_at > rec.created_at:
                    row = (
                        await conn.execute(s.SELECT_OPERATION, {"b_id": existing.operation_id})
                    ).first()
                    if row is not None:
                        await conn.rollback()  # keys taken above for this start are released
                        return rows.OPERATION.load(row), rows.IDEMPOTENCY.load(existing)
                await conn.execute(s.DELETE_IDEMPOTENCY, key)  # expired: the key may be reused
                await conn.execute(s.INSERT_IDEMPOTENCY, values)
            await conn.execute(s.INSERT_OPERATION, rows.OPERATION.values(op))
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(e) for e in events])
        return op, None

    @translate
    async def get_operation(self, op_id: str) -> Operation | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(s.SELECT_OPERATION, {"b_id": op_id})).first()
        return rows.OPERATION.load(row) if row else None

    @translate
    async def list_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        limit: int = 100,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> list[Operation]:
        o = t.operations
        q = _filtered(
            select(o), caller, service, created_after, created_before, request_id_contains
        )
        if state is not None:
            q = q.where(o.c.state == state.value)
        q = q.order_by(o.c.created_at.desc(), o.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rs = (await conn.execute(q)).all()
        return [rows.OPERATION.load(r) for r in rs]

    @translate
    async def page_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        with_link: str | None = None,
        or_id: str | None = None,
        changed_after: datetime | None = None,
        waiting: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Operation], int]:
        o = t.operations
        q = _filtered(select(o), caller, service, None, None, None)
        if state is not None:
            q = q.where(o.c.state == state.value)
        if with_link is not None:
            has = self._links_contain(with_link)
            q = q.where(or_(has, o.c.id == or_id) if or_id is not None else has)
        if changed_after is not None:
            q = q.where(func.coalesce(o.c.closed_at, o.c.created_at) > changed_after)
        if waiting is not None:
            q = q.where(_waiting_for_input() if waiting else ~_waiting_for_input())
        counted = select(func.count()).select_from(q.subquery())
        page = q.order_by(o.c.created_at.desc(), o.c.id).offset(offset).limit(limit)
        async with self.engine.connect() as conn:
            total = int((await conn.execute(counted)).scalar_one())
            rs = (await conn.execute(page)).all() if offset < total else []
        return [rows.OPERATION.load(r) for r in rs], total

    def _links_contain(self, link: str) -> ColumnElement[bool]:
        """The operation's ``links`` (a JSON array of strings) include ``link``."""
        o = t.operations
        if self.engine.dialect.name == "postgresql":
            return type_coerce(o.c.links, JSONB).contains([link])
        each = func.json_each(o.c.links).table_valued("value")
        return exists(select(literal(1)).select_from(each).where(each.c.value == link))

    @translate
    async def count_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> dict[str, int]:
        o = t.operations
        q = _filtered(
            select(o.c.state, func.count()),
            caller,
            service,
            created_after,
            created_before,
            request_id_contains,
        ).group_by(o.c.state)
        async with self.engine.connect() as conn:
            rs = (await conn.execute(q)).all()
        return {str(r[0]): int(r[1]) for r in rs}

    @translate
    async def claim_work(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Operation]:
        params = {"b_owner": owner, "b_now": now, "b_until": lease_until, "b_limit": limit}
        async with self._tx() as conn:
            ops = [rows.OPERATION.load(r) for r in (await conn.execute(s.CLAIM_WORK, params))]
            evs = [
                rows.EVENT.values(
                    Event(
                        operation_id=op.id,
                        kind="attempt.started",
                        at=now,
                        data=rows.attempt_data(op, owner),
                    )
                )
                for op in ops
                if op.work is Work.DISPATCH and op.cancel_requested_at is None
            ]
            if evs:
                await conn.execute(s.INSERT_EVENTS, evs)
        return ops

    @translate
    async def extend_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        if not ids:
            return
        async with self._tx() as conn:
            await self._lock_operations(conn, sorted(ids))
            await conn.execute(
                s.EXTEND_LEASES, {"b_ids": list(ids), "b_owner": owner, "b_until": until}
            )

    @translate
    async def extend_callback_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        if not ids:
            return
        async with self._tx() as conn:
            await conn.execute(
                s.EXTEND_CALLBACK_LEASES,
                {"b_ids": sorted(ids), "b_owner": owner, "b_until": until},
            )

    @translate
    async def release_leases(self, owner: str) -> int:
        """Give up every lease this owner holds (graceful shutdown): others take over at once."""
        async with self._tx() as conn:
            res = await conn.execute(s.RELEASE_OPERATIONS, {"b_owner": owner})
            await conn.execute(s.RELEASE_CALLBACKS, {"b_owner": owner})
        return int(res.rowcount or 0)

    @translate
    async def request_cancel(self, op_id: str, now: datetime, event: Event) -> bool:
        """Record a cancel request; the worker that next holds the lease acts on it:
        undelivered dispatches become canceled, accepted ones get a cancel sent to the agent."""
        async with self._tx() as conn:
            res = await conn.execute(s.REQUEST_CANCEL, {"b_id": op_id, "b_now": now})
            if not res.rowcount:
                return False
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True

    @translate
    async def complete(self, completion: Completion) -> bool:
        return completion.operation_id in await self._complete_batch([completion])

    @translate
    async def complete_many(self, completions: Sequence[Completion]) -> list[bool]:
        return await _first_per_operation(completions, self._complete_batch)

    @translate
    async def redrive(self, op_id: str, now: datetime, event: Event) -> bool:
        """Re-run a failed/canceled operation from scratch (same id: same idempotency key)."""
        async with self._tx() as conn:
            res = await conn.execute(s.REDRIVE, {"b_id": op_id, "b_now": now})
            if not res.rowcount:
                return False
            await conn.execute(s.DELETE_RESULT_STEP, {"b_id": op_id})  # completed steps stay
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True

    @translate
    async def due_timeouts(self, now: datetime, limit: int) -> list[Operation]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.DUE_TIMEOUTS, {"b_now": now, "b_limit": limit})).all()
        return [rows.OPERATION.load(r) for r in rs]

    # -- events ------------------------------------------------------------------------------

    @translate
    async def list_events(self, op_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        params = {"b_id": op_id, "b_after": after, "b_limit": limit}
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.LIST_EVENTS, params)).all()
        return [rows.EVENT.load(r) for r in rs]

    # -- callbacks ---------------------------------------------------------------------------

    @translate
    async def claim_callbacks(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[CallbackDelivery]:
        params = {"b_owner": owner, "b_now": now, "b_until": lease_until, "b_limit": limit}
        async with self._tx() as conn:
            rs = (await conn.execute(s.CLAIM_CALLBACKS, params)).all()
        return [rows.CALLBACK.load(r) for r in rs]

    @translate
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
            res = await conn.execute(s.FINISH_CALLBACK, params)
            if not res.rowcount:
                return False
            await self._lock_operation(conn, event.operation_id)
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True

    @translate
    async def list_callbacks(self, op_id: str) -> list[CallbackDelivery]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.LIST_CALLBACKS, {"b_id": op_id})).all()
        return [rows.CALLBACK.load(r) for r in rs]

    @translate
    async def redrive_callback(
        self, delivery_id: str, now: datetime, expires_at: datetime, event: Event
    ) -> bool:
        params = {"b_id": delivery_id, "b_now": now, "b_expires": expires_at}
        async with self._tx() as conn:
            res = await conn.execute(s.REDRIVE_CALLBACK, params)
            if not res.rowcount:
                return False
            await self._lock_operation(conn, event.operation_id)
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True


async def _first_per_operation(
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


def _waiting_for_input() -> ColumnElement[bool]:
    """The operation waits for input: running, owing no work, a question without answer."""
    o, ask, ans = t.operations, t.steps.alias("ask"), t.steps.alias("ans")
    answered = exists(
        select(literal(1))
        .select_from(ans)
        .where(
            ans.c.operation_id == ask.c.operation_id,
            ans.c.name == literal("$input:") + func.substr(ask.c.name, 6),
        )
    )
    asked = exists(
        select(literal(1))
        .select_from(ask)
        .where(ask.c.operation_id == o.c.id, ask.c.name.like("$ask:%"), ~answered)
    )
    return and_(o.c.state == OperationState.RUNNING.value, o.c.work.is_(None), asked)


def _filtered(
    q: Select[Any],
    caller: str | None,
    service: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    request_id_contains: str | None,
) -> Select[Any]:
    """The filters ``list_operations`` and ``count_operations`` share."""
    o = t.operations
    if caller is not None:
        q = q.where(o.c.caller == caller)
    if service is not None:
        q = q.where(o.c.service == service)
    if created_after is not None:
        q = q.where(o.c.created_at >= created_after)
    if created_before is not None:
        q = q.where(o.c.created_at < created_before)
    if request_id_contains:
        q = q.where(
            func.lower(o.c.request_id).contains(request_id_contains.lower(), autoescape=True)
        )
    return q
