"""PostgreSQL's write cycles (``gateway.store.pg_cycles``): starts, completions and acks that
wait while a statement is in flight share the next one, and each caller still gets its own
kind's answer and errors, as if its write had run alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.domain.errors import DataRejected
from gateway.domain.model import OperationState
from gateway.store import SqlStore
from gateway.store.postgres import PostgresStore
from tests.store.test_conformance import (
    LEASE,
    at,
    closed_with_callbacks,
    closing,
    delivery,
    ev,
    kinds,
    new_op,
    start,
    started,
)


def _pg(url: str, **options: Any) -> PostgresStore:
    store = SqlStore(url, **options)
    assert isinstance(store, PostgresStore)
    return store


@pytest.fixture
async def store(pg_db: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store with write cycles on (one statement in flight), closed after."""
    s = _pg(pg_db)
    try:
        yield s
    finally:
        await s.close()


async def _three_kinds(store: PostgresStore) -> tuple[list[Any], list[str]]:
    """A lone start in flight, then a batch of starts, of completions and an ack behind it;
    their answers and the ids to check."""
    r1, r2 = await start(store), await start(store)
    acked, (d0,) = await closed_with_callbacks(store)
    await store.claim_callbacks("w1", at(5), at(5) + LEASE, 10)
    lone, b, c = new_op(), new_op(), new_op()
    answers = await asyncio.gather(
        store.create_operation(lone, started(lone), []),
        store.create_operations([(b, started(b), []), (c, started(c), [])]),
        store.complete_many([closing(r1, 6), closing(r2, 6, OperationState.FAILED)]),
        store.callbacks_delivered("w1", [ev(acked, "callback.delivered", 6, delivery_id=d0.id)]),
    )
    return list(answers), [lone.id, b.id, c.id, r1.id, r2.id, acked.id]


async def test_starts_completions_and_acks_queued_behind_a_statement_share_the_next_one(
    store: PostgresStore,
) -> None:
    (one, many, closed, marked), (lone, b, c, r1, r2, acked) = await _three_kinds(store)
    assert (store._cycles.cycles, store._cycles.merged) == (1, 3)

    assert one[0].id == lone and [op.id for op, _ in many] == [b, c]
    assert closed == [True, True] and marked == 1
    for op_id in (lone, b, c):
        assert (await store.list_events(op_id))[0].kind == "operation.started"
    for op_id, state in ((r1, "succeeded"), (r2, "failed")):
        op = await store.get_operation(op_id)
        assert op is not None and op.state.value == state
        assert [e.kind for e in await store.list_events(op_id)][-1] == f"operation.{state}"
    (cb,) = await store.list_callbacks(acked)
    assert cb.delivered_at == at(6)
    assert [e.kind for e in await store.list_events(acked)][-1] == "callback.delivered"


async def test_with_write_cycles_off_each_kind_runs_its_own_statement_with_the_same_answers(
    pg_db: str,
) -> None:
    store = _pg(pg_db, write_cycles=0)
    try:
        (one, many, closed, marked), _ = await _three_kinds(store)
        assert store._cycles.cycles == 0
        assert len(one) == 2 and len(many) == 2 and closed == [True, True] and marked == 1
    finally:
        await store.close()


async def test_an_ack_and_a_completion_of_one_operation_wait_for_separate_cycles(
    store: PostgresStore,
) -> None:
    # An A2A push of a running task is delivered while the task completes: in one statement the
    # completion's update would hide the row from the ack's lock, and its event would be lost.
    running = await start(store)
    push = delivery(running, 1)
    await store.a2a_save_push_config(running.id, "c1", {"url": push.url}, at(1))
    assert await store.a2a_enqueue_push(running.id, "c1", push, ev(running, "push.queued", 1))
    (claimed,) = await store.claim_callbacks("w1", at(2), at(2) + LEASE, 10)
    other = new_op()
    _, closed, marked = await asyncio.gather(
        store.create_operation(other, started(other), []),
        store.complete(closing(running, 6)),
        store.callbacks_delivered(
            "w1", [ev(running, "callback.delivered", 6, delivery_id=claimed.id)]
        ),
    )
    assert (closed, marked) == (True, 1)
    assert store._cycles.cycles == 0  # the two could not share one
    assert (await kinds(store, running))[-2:] == ["operation.succeeded", "callback.delivered"]


async def test_a_start_the_database_refuses_fails_alone_and_the_completion_beside_it_commits(
    store: PostgresStore,
) -> None:
    running = await start(store)
    lone, bad, good = new_op(), new_op(service="s" * 300), new_op()  # service: varchar(200)
    answers = await asyncio.gather(
        store.create_operation(lone, started(lone), []),
        store.create_operations([(bad, started(bad), []), (good, started(good), [])]),
        store.complete(closing(running, 6)),
        return_exceptions=True,
    )
    assert isinstance(answers[1], DataRejected)
    assert answers[2] is True and store._cycles.cycles == 0
    done = await store.get_operation(running.id)
    assert done is not None and done.state is OperationState.SUCCEEDED
    assert await store.get_operation(lone.id) is not None
    assert await store.get_operation(good.id) is None  # its batch was refused as a whole


@pytest.mark.parametrize("cancel", ["lone", "queued"])
async def test_a_caller_that_gives_up_does_not_stop_the_writes_of_the_others(
    store: PostgresStore, cancel: str
) -> None:
    running = await start(store)
    lone, queued = new_op(), new_op()
    first = asyncio.ensure_future(store.create_operation(lone, started(lone), []))
    second = asyncio.ensure_future(store.create_operations([(queued, started(queued), [])]))
    third = asyncio.ensure_future(store.complete(closing(running, 6)))
    await asyncio.sleep(0)  # all three submitted: the first in flight, two queued
    (first if cancel == "lone" else second).cancel()
    assert await third is True
    await asyncio.gather(first, second, return_exceptions=True)
    done = await store.get_operation(running.id)
    assert done is not None and done.state is OperationState.SUCCEEDED
    # a write already sent may commit although its caller left; a queued one may not run
    if cancel == "queued":
        assert await store.get_operation(lone.id) is not None
