"""The PostgreSQL batch statements are parts composed by ``sql_postgres.compose``: several kinds
in one statement (a "write cycle", priced by ``python -m bench.statements``) write what each
kind's own statement writes."""

from __future__ import annotations

import asyncpg

from gateway.store import SqlStore
from gateway.store import postgres as pg
from gateway.store import sql_postgres as sql
from tests.store.test_conformance import (
    LEASE,
    at,
    closed_with_callbacks,
    closing,
    ev,
    key,
    kinds,
    new_op,
    start,
    started,
)


async def test_one_composed_statement_starts_completes_and_acks_as_the_three_statements_do(
    pg_db: str,
) -> None:
    store = SqlStore(pg_db)
    conn = await asyncpg.connect(pg_db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        running = await start(store)
        acked, (d0,) = await closed_with_callbacks(store)
        await store.claim_callbacks("w1", at(5), at(5) + LEASE, 10)
        new = new_op()
        args = [
            *pg.start_args([(new, started(new), [key(new)])]),
            *pg.complete_args([closing(running, 6)]),
            *pg.ack_args("w1", [ev(acked, "callback.delivered", 6, delivery_id=d0.id)]),
        ]
        started_ids, closed_ids, _notified, marked = await conn.fetchrow(
            sql.compose((True, True, True)), *args
        )
        assert (started_ids, closed_ids, marked) == ([new.id], [running.id], 1)

        assert await store.get_operation(new.id) == new
        assert await kinds(store, new) == ["operation.started"]
        done = await store.get_operation(running.id)
        assert done is not None and done.state.value == "succeeded"
        assert await kinds(store, running) == ["operation.started", "operation.succeeded"]
        (delivered,) = await store.list_callbacks(acked.id)
        assert delivered.delivered_at == at(6)
        assert (await kinds(store, acked))[-1] == "callback.delivered"
    finally:
        await conn.close()
        await store.close()


def test_each_kind_alone_is_the_statement_its_lane_runs() -> None:
    assert sql.compose((True, False, False)) == sql.PG_START_MANY
    assert sql.compose((False, True, False)) == sql.PG_COMPLETE_MANY
    assert sql.compose((False, False, True)) == sql.PG_CALLBACKS_DELIVERED[0]
