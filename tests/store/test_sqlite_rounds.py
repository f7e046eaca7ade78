"""SQLite rounds: concurrent writes share one commit, and each still stands or falls alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gateway.domain.errors import UniqueViolation
from gateway.store import SqlStore
from gateway.store.sqlite_rounds import Rounds
from tests.store.test_conformance import new_op


class Db:
    """One aiosqlite connection and a record of the rounds' transactions."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.opened: list[bool] = []  # each round's flushed flag
        self.fail_commit = False

    @asynccontextmanager
    async def opener(self, flushed: bool) -> AsyncIterator[Any]:
        self.opened.append(flushed)
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            if self.fail_commit:
                raise OSError("disk I/O error at commit")
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise
        await self.conn.execute("COMMIT")

    async def values(self) -> list[int]:
        rows = await self.conn.execute_fetchall("SELECT v FROM t ORDER BY v")
        return [int(r[0]) for r in rows]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    conn = await aiosqlite.connect(tmp_path / "r.db", isolation_level=None)
    await conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    try:
        yield Db(conn)
    finally:
        await conn.close()


async def insert(rounds: Rounds, v: int, *, flushed: bool = True) -> int:
    async with rounds.transaction(flushed=flushed) as conn:
        await conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
    return v


async def test_writes_that_arrive_together_commit_in_one_round(db: Db) -> None:
    rounds = Rounds(db.opener)
    assert await asyncio.gather(*(insert(rounds, v) for v in range(10))) == list(range(10))
    # the first found nothing else writing and ran alone; the nine behind it shared a commit
    assert (rounds.rounds, rounds.bodies) == (2, 10)
    assert await db.values() == list(range(10))


async def test_a_round_takes_at_most_max_writes(db: Db) -> None:
    rounds = Rounds(db.opener, max_writes=3)
    await asyncio.gather(*(insert(rounds, v) for v in range(7)))
    assert rounds.rounds == 3  # 1 alone, then 3 + 3
    assert await db.values() == list(range(7))


async def test_a_failing_write_is_undone_alone_and_raises_to_its_own_caller(db: Db) -> None:
    rounds = Rounds(db.opener)

    async def twice() -> int:
        async with rounds.transaction() as conn:
            await conn.execute("INSERT INTO t (v) VALUES (100)")
            await conn.execute("INSERT INTO t (v) VALUES (1)")  # taken by the write before
        return 100

    got = await asyncio.gather(
        insert(rounds, 1), twice(), insert(rounds, 2), return_exceptions=True
    )
    assert got[0] == 1 and got[2] == 2
    assert isinstance(got[1], aiosqlite.IntegrityError)
    assert await db.values() == [1, 2]  # 100 was rolled back with its block


async def test_a_first_write_that_fails_is_rolled_back_and_the_rest_go_on(db: Db) -> None:
    # the first write of a transaction takes no savepoint (nothing else is in it yet): when it
    # fails, its transaction is rolled back and the writes waiting behind it run in a new one
    rounds = Rounds(db.opener)
    await insert(rounds, 1)

    async def bad() -> int:
        async with rounds.transaction() as conn:
            await conn.execute("INSERT INTO t (v) VALUES (200)")
            await conn.execute("INSERT INTO t (v) VALUES (1)")  # taken
        return 200

    # 10 runs alone; bad, 2 and 3 arrive meanwhile and form a round, bad first in it
    got = await asyncio.gather(
        insert(rounds, 10), bad(), insert(rounds, 2), insert(rounds, 3), return_exceptions=True
    )
    assert isinstance(got[1], aiosqlite.IntegrityError) and got[2:] == [2, 3]
    assert await db.values() == [1, 2, 3, 10]
    # 1; 10; the round's transaction that bad rolled back, and the one 2 and 3 committed in
    assert len(db.opened) == 4
    with pytest.raises(aiosqlite.IntegrityError):
        await bad()  # alone: rolled back, nothing waits
    await rounds.close()  # the round has ended (its caller may hear of the failure first)
    assert await db.values() == [1, 2, 3, 10]
    assert await insert(rounds, 4) == 4


async def test_a_failed_commit_fails_every_write_of_the_round(db: Db) -> None:
    rounds = Rounds(db.opener)
    db.fail_commit = True
    got = await asyncio.gather(*(insert(rounds, v) for v in range(3)), return_exceptions=True)
    assert all(isinstance(g, OSError) for g in got), got
    db.fail_commit = False
    assert await db.values() == []
    assert await insert(rounds, 5) == 5  # the next round works
    assert await db.values() == [5]


async def test_a_write_that_must_be_flushed_never_joins_a_round_that_is_not(db: Db) -> None:
    rounds = Rounds(db.opener)
    # the first of each gather runs alone; the others form a round behind it
    await asyncio.gather(
        insert(rounds, 1), insert(rounds, 2, flushed=False), insert(rounds, 3, flushed=True)
    )
    assert db.opened == [True, False, True]
    # the other way round, an unflushed write may ride along a flushed round
    db.opened.clear()
    await asyncio.gather(
        insert(rounds, 4), insert(rounds, 5, flushed=True), insert(rounds, 6, flushed=False)
    )
    assert db.opened == [True, True]


async def test_a_caller_cancelled_while_waiting_does_not_hold_up_the_round(db: Db) -> None:
    rounds = Rounds(db.opener)
    gate = asyncio.Event()

    async def slow() -> None:
        async with rounds.transaction() as conn:
            await conn.execute("INSERT INTO t (v) VALUES (1)")
            await gate.wait()

    first = asyncio.create_task(slow())
    await asyncio.sleep(0)  # the round opens with the slow write (a scheduling step, not a wait)
    waiting = asyncio.create_task(insert(rounds, 2))
    third = asyncio.create_task(insert(rounds, 3))
    for _ in range(5):
        await asyncio.sleep(0)
    waiting.cancel()
    gate.set()
    await first
    assert await third == 3
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await db.values() == [1, 3]


async def test_the_sqlite_store_merges_concurrent_starts_and_keeps_each_ones_outcome(
    sqlite_store: SqlStore,
) -> None:
    store = sqlite_store
    ops = [new_op(id=f"op-{i}") for i in range(8)]
    dup = new_op(id="op-0")  # the same id again: refused alone
    results = await asyncio.gather(
        *(store.create_operations([(op, [], [])]) for op in ops),
        store.create_operations([(dup, [], [])]),
        return_exceptions=True,
    )
    assert all(not isinstance(r, BaseException) for r in results[:8]), results
    assert isinstance(results[8], UniqueViolation)
    assert store._rounds.rounds < 9  # merged, not one commit each
    for op in ops:
        assert (await store.get_operation(op.id)) is not None
