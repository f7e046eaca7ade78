"""SQLite's write rounds run inline, with the fsync and any wait for the lock on a thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import aiosqlite
import pytest

from gateway.domain.errors import UniqueViolation
from gateway.store import SqlStore
from gateway.store.sqlite import _driver_connection
from gateway.store.sqlite_inline import InlineConnection, raw_connection
from tests.store.conftest import SQLITE_FILE
from tests.store.test_conformance import new_op


async def test_the_aiosqlite_connection_still_holds_its_sqlite3_connection(
    tmp_path: Path,
) -> None:
    aio = await aiosqlite.connect(tmp_path / "a.db", isolation_level=None, check_same_thread=False)
    try:
        raw = raw_connection(aio)
        assert isinstance(raw, sqlite3.Connection)
        await aio.execute("CREATE TABLE t (v INTEGER)")
        assert raw.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        await aio.close()


async def test_a_round_waits_for_another_processs_write_lock_without_stopping_the_loop(
    tmp_path: Path, sqlite_store: SqlStore
) -> None:
    store = sqlite_store
    other = sqlite3.connect(tmp_path / SQLITE_FILE, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        op = new_op(id="op-locked")
        write = asyncio.create_task(store.create_operations([(op, [], [])]))
        ticks = 0
        while ticks < 20:  # the loop goes on serving while the write waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        other.execute("COMMIT")
        await asyncio.wait_for(write, 30)
        assert (await store.get_operation("op-locked")) is not None
    finally:
        other.close()


async def test_a_call_on_the_thread_ends_before_its_cancelled_caller_hears_of_it(
    tmp_path: Path,
) -> None:
    aio = await aiosqlite.connect(tmp_path / "c.db", isolation_level=None, check_same_thread=False)
    ran = threading.Event()

    def slow() -> int:
        time.sleep(0.2)
        ran.set()
        return 1

    try:
        await aio.create_function("slow", 0, slow)
        db = InlineConnection(aio)
        call = asyncio.create_task(db.commit("SELECT slow()"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert ran.is_set()  # the connection is free again only now
    finally:
        await aio.close()


async def test_a_failed_write_in_a_round_leaves_the_connection_usable(
    sqlite_store: SqlStore,
) -> None:
    store = sqlite_store
    await store.create_operations([(new_op(id="op-1"), [], [])])
    with pytest.raises(UniqueViolation):
        await store.create_operations([(new_op(id="op-1"), [], [])])
    await store.create_operations([(new_op(id="op-2"), [], [])])
    assert (await store.get_operation("op-2")) is not None
    assert len(await store.list_operations()) == 2


async def test_the_driver_connection_is_read_directly_and_again_after_an_invalidation(
    sqlite_store: SqlStore,
) -> None:
    store = sqlite_store
    async with store.engine.connect() as conn:
        direct = await _driver_connection(conn)
        assert direct is (await conn.get_raw_connection()).driver_connection
        assert isinstance(direct, aiosqlite.Connection)
    async with store.engine.connect() as conn:
        await conn.invalidate()  # SQLAlchemy must connect again: the awaited path
        fresh = await _driver_connection(conn)
        assert isinstance(fresh, aiosqlite.Connection) and fresh is not direct
        assert await (await fresh.execute("SELECT 1")).fetchone() == (1,)
    # and the store goes on with the fresh connection
    await store.create_operations([(new_op(id="op-after-invalidate"), [], [])])
    assert (await store.get_operation("op-after-invalidate")) is not None
