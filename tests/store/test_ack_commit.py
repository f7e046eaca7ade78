"""Callback delivery acks commit without waiting for the disk flush (``callback_ack_commit``),
and never leave that setting behind for the writes that must be flushed."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from gateway.store import SqlStore
from gateway.store import sql_postgres as sql
from tests.store.test_conformance import LEASE, at, closed_with_callbacks, ev


async def _sync_level(store: SqlStore) -> int:
    async with store.engine.connect() as conn:
        db = (await conn.get_raw_connection()).driver_connection
        ((level,),) = await db.execute_fetchall("PRAGMA synchronous")  # type: ignore[union-attr]
        return int(level)


@pytest.mark.parametrize("mode", ["async", "durable"])
async def test_a_sqlite_ack_leaves_the_connection_at_its_own_synchronous_level(
    tmp_path: Path, mode: str
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/g.db", sqlite_synchronous="FULL", ack_commit=mode)
    await store.migrate()
    try:
        op, (d0,) = await closed_with_callbacks(store)
        await store.claim_callbacks("w1", at(5), at(5) + LEASE, 10)
        assert await _sync_level(store) == 2  # FULL
        ack = ev(op, "callback.delivered", 6, delivery_id=d0.id)
        assert await store.callbacks_delivered("w1", [ack]) == 1
        assert await _sync_level(store) == 2  # the next writer commits with FULL again
        (got,) = await store.list_callbacks(op.id)
        assert got.delivered_at == at(6)
    finally:
        await store.close()


async def test_the_unflushed_postgresql_ack_is_unflushed_for_its_own_transaction_only(
    pg_db: str,
) -> None:
    # PostgreSQL reads synchronous_commit when the transaction commits: the unflushed ack sets
    # it off for its own transaction (inside an explicit one here, to look), the flushed one
    # leaves it on; after the commit the session is back at its own setting either way
    conn = await asyncpg.connect(pg_db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for statement, inside in (
            (sql.PG_CALLBACKS_DELIVERED[1], "off"),
            (sql.PG_CALLBACKS_DELIVERED[0], "on"),
        ):
            async with conn.transaction():
                await conn.fetchval(statement, [], "[]", at(1), "w1")
                assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == inside
            assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["async", "durable"])
async def test_postgresql_acks_mark_deliveries_in_either_mode(pg_db: str, mode: str) -> None:
    store = SqlStore(pg_db, ack_commit=mode)
    try:
        op, (d0,) = await closed_with_callbacks(store)
        await store.claim_callbacks("w1", at(5), at(5) + LEASE, 10)
        ack = ev(op, "callback.delivered", 6, delivery_id=d0.id)
        assert await store.callbacks_delivered("w1", [ack]) == 1
        assert await store.callbacks_delivered("w1", [ack]) == 0
        (got,) = await store.list_callbacks(op.id)
        assert got.delivered_at == at(6)
    finally:
        await store.close()
