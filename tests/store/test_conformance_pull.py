"""The Store port's pull-queue promises (issue 12 item 4), on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from gateway.domain.model import Event, OperationState
from gateway.domain.ports import Store
from gateway.domain.specs import PULL_LEASED, PULL_QUEUED
from tests.store.test_conformance import at, kinds, start


async def queued(store: Store, n: float, **fields: object) -> str:
    op = await start(store, created_at=at(n), work=None, next_attempt_at=None, **fields)
    await store.update_running(
        op.id, None, work=None, next_attempt_at=None, event=None, agent_token=PULL_QUEUED
    )
    return op.id


async def test_a_poll_leases_the_oldest_queued_tasks_of_its_agent_only(port_store: Store) -> None:
    store = port_store
    ids = [await queued(store, n, operation="a" if n % 2 else "b") for n in range(4)]
    other = await queued(store, 0.5, service="other")
    pushed = await start(store, created_at=at(0.1))  # an http agent's dispatch: not a task
    leases = {"a": at(100), "b": at(200)}
    got = await store.claim_tasks("svc", "w1", at(10), leases, at(50), 3)
    assert [op.id for op in got] == ids[:3]
    for op in got:
        assert op.agent_token == PULL_LEASED + "w1"
        assert op.heartbeat_until == leases[op.operation]
        assert await kinds(store, op) == ["operation.started", "attempt.leased"]
        events = await store.list_events(op.id)
        assert events[-1].data == {"attempt": op.attempts, "worker_id": "w1"}
    rest = await store.claim_tasks("svc", "w2", at(11), {}, at(60), 10)
    assert [op.id for op in rest] == ids[3:] and rest[0].heartbeat_until == at(60)
    assert await store.claim_tasks("svc", "w3", at(12), {}, at(60), 10) == []
    assert await store.pull_counts("svc") == {PULL_LEASED + "w1": 3, PULL_LEASED + "w2": 1}
    assert await store.pull_counts("other") == {PULL_QUEUED: 1}
    assert (await store.get_operation(other)).agent_token == PULL_QUEUED  # type: ignore[union-attr]
    assert (await store.get_operation(pushed.id)).agent_token is None  # type: ignore[union-attr]


async def test_concurrent_polls_never_lease_one_task_twice(port_store: Store) -> None:
    store = port_store
    ids = {await queued(store, n) for n in range(20)}
    polls = await asyncio.gather(
        *(store.claim_tasks("svc", f"w{i}", at(10), {}, at(40), 3) for i in range(8))
    )
    leased = [op.id for batch in polls for op in batch]
    assert len(leased) == len(set(leased)) == len(ids) and set(leased) == ids


async def test_closed_and_cancel_requested_tasks_are_not_leased(port_store: Store) -> None:
    store = port_store
    canceled = await queued(store, 0)
    await store.request_cancel(canceled, at(1), Event(operation_id=canceled, kind="x", at=at(1)))
    assert await store.claim_tasks("svc", "w1", at(10), {}, at(40), 10) == []
    op = await store.get_operation(canceled)
    assert op is not None and op.state is OperationState.RUNNING


async def test_a_worker_poll_is_remembered_and_old_ones_are_forgotten(port_store: Store) -> None:
    store = port_store
    await store.touch_worker("svc", "w1", at(1))
    await store.touch_worker("svc", "w2", at(2))
    await store.touch_worker("svc", "w1", at(5))
    await store.touch_worker("other", "w9", at(5))
    assert await store.list_workers("svc", at(0)) == [("w1", at(5)), ("w2", at(2))]
    assert await store.list_workers("svc", at(3)) == [("w1", at(5))]
    assert await store.forget_workers(at(3)) == 1
    assert await store.list_workers("svc", at(0)) == [("w1", at(5))]
