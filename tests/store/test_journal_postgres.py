"""PostgreSQL specifics of heartbeats and step records (issue 17 item 4)."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.domain.model import Heartbeat, StepRecord
from gateway.store import open_store
from gateway.store import sql_postgres as sql
from gateway.testing import eventually
from tests.store.test_conformance import at, ev
from tests.store.test_conformance_journal import accepted


async def test_a_heartbeat_is_a_hot_update_that_touches_no_index(pg_db: str) -> None:
    # (an indexed column that changed would force a new entry in every index of the table)
    store = open_store(pg_db)
    await store.migrate()
    try:
        op_id = await accepted(store, hb_until=10)
        conn = await asyncpg.connect(pg_db)
        try:
            async with conn.transaction():
                rows = await conn.fetch(
                    sql.PG_HEARTBEAT_MANY, [op_id], [1], [at(20)], [True], ['{"page": 2}']
                )
                hot = await conn.fetchrow(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                    " WHERE relname = 'sg_operations'"
                )
        finally:
            await conn.close()
        assert [r["id"] for r in rows] == [op_id]
        assert (hot["n_tup_upd"], hot["n_tup_hot_upd"]) == (1, 1)
        got = await store.get_operation(op_id)
        assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (
            at(20),
            {"page": 2},
        )
    finally:
        await store.close()


async def test_batched_heartbeats_and_steps_of_many_operations_each_get_their_own_answer(
    pg_db: str,
) -> None:
    # a batch bigger than one page of the table, in an order unlike the id order
    store = open_store(pg_db)
    await store.migrate()
    try:
        ids = [await accepted(store, hb_until=10) for _ in range(40)]
        op = await store.get_operation(ids[0])
        assert op is not None
        order = ids[::-1]
        acks = await store.heartbeat_many(
            [Heartbeat(operation_id=i, attempt=1, until=at(30)) for i in order]
        )
        assert all(a is not None and a.attempt == 1 for a in acks)
        steps = [
            StepRecord(operation_id=i, name=f"s{n}", result={"i": i}, at=at(3), attempt=1)
            for n, i in enumerate(order)
        ]
        recorded = await store.record_steps([(s, ev(op, "step.completed", 3)) for s in steps])
        assert recorded == [(s, True) for s in steps]
        again = await store.record_steps([(s, ev(op, "step.completed", 4)) for s in steps[:3]])
        assert again == [(s, False) for s in steps[:3]]
        for s in steps[:3]:
            assert await store.list_steps(s.operation_id) == [s]
    finally:
        await store.close()


async def test_a_heartbeat_waiting_on_a_row_another_writer_changed_still_counts(
    pg_db: str,
) -> None:
    # the other writer commits after the heartbeat's statement took its snapshot: the
    # heartbeat must update the row's newest version, not find nothing
    store = open_store(pg_db)
    await store.migrate()
    try:
        op_id = await accepted(store, hb_until=10)
        other, beat, watch = [await asyncpg.connect(pg_db) for _ in range(3)]
        try:
            tx = other.transaction()
            await tx.start()
            await other.execute("UPDATE sg_operations SET last_error = 'x' WHERE id = $1", op_id)
            pid = await beat.fetchval("SELECT pg_backend_pid()")
            waiting = asyncio.create_task(
                beat.fetch(sql.PG_HEARTBEAT_MANY, [op_id], [1], [at(20)], [False], [None])
            )

            async def blocked() -> bool:
                state = await watch.fetchval(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
                )
                return bool(state == "Lock")

            await eventually(blocked, until=bool, what="the heartbeat waiting for the row lock")
            await tx.commit()
            rows = await waiting
        finally:
            for conn in (other, beat, watch):
                await conn.close()
        assert [(r["id"], r["attempts"]) for r in rows] == [(op_id, 1)]
        got = await store.get_operation(op_id)
        assert got is not None and (got.heartbeat_until, got.last_error) == (at(20), "x")
    finally:
        await store.close()
