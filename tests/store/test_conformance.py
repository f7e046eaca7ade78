"""The Store port's contract, run against every implementation: memory, SQLite, PostgreSQL.

Each test states one promise of ``gateway.domain.ports.Store``; the in-memory store used by
fast unit tests must keep exactly the promises the databases keep.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.domain.errors import UniqueViolation
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    RunningUpdate,
    Work,
)
from gateway.domain.ports import Store
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.store import MemoryStore, PostgresStore, SqliteStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_op(**fields: Any) -> Operation:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "service": "svc",
        "operation": "op",
        "state": OperationState.RUNNING,
        "caller": "alice",
        "created_at": T0,
        "work": Work.DISPATCH,
        "next_attempt_at": T0,
    }
    values.update(fields)
    return Operation(**values)


def started(op: Operation) -> list[Event]:
    return [Event(operation_id=op.id, kind="operation.started", at=op.created_at)]


def key(
    op: Operation, name: str = "k1", created: float = 0, ttl_s: float = 60
) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope="alice",
        key=f"key:{name}",
        fingerprint="fp",
        operation_id=op.id,
        created_at=at(created),
        expires_at=at(created + ttl_s),
    )


def delivery(op: Operation, n: int = 0, **fields: Any) -> CallbackDelivery:
    values: dict[str, Any] = {
        "id": f"d{n}-{op.id}",
        "operation_id": op.id,
        "url": "https://caller.example/cb",
        "headers": {"x-a": "1"},
        "body": b'{"ok":true}',
        "created_at": at(n),
        "expires_at": at(3600),
        "next_attempt_at": at(n),
        "caller": "alice",
    }
    values.update(fields)
    return CallbackDelivery(**values)


def closing(
    op: Operation,
    when: float = 1,
    state: OperationState = OperationState.SUCCEEDED,
    **fields: Any,
) -> Completion:
    values: dict[str, Any] = {
        "operation_id": op.id,
        "state": state,
        "at": at(when),
        "result": b'{"r":1}',
        "result_content_type": "application/json",
        "event": Event(operation_id=op.id, kind=f"operation.{state.value}", at=at(when)),
    }
    values.update(fields)
    return Completion(**values)


def ev(op: Operation, kind: str, when: float = 1, **data: Any) -> Event:
    return Event(operation_id=op.id, kind=kind, at=at(when), data=data)


async def start(store: Store, **fields: Any) -> Operation:
    op = new_op(**fields)
    assert await store.create_operation(op, started(op), []) == (op, None)
    return op


async def kinds(store: Store, op: Operation) -> list[str]:
    return [e.kind for e in await store.list_events(op.id)]


# -- the implementations ----------------------------------------------------------------------


PORT_METHODS = sorted(
    name for name, value in vars(Store).items() if inspect.iscoroutinefunction(value)
)


@pytest.mark.parametrize("impl", [MemoryStore, SqliteStore, PostgresStore])
def test_every_store_has_every_port_method_with_its_signature(impl: type[Any]) -> None:
    assert len(PORT_METHODS) > 30
    for name in PORT_METHODS:
        method = getattr(impl, name)
        assert inspect.iscoroutinefunction(method), name
        port = inspect.signature(getattr(Store, name))
        mine = inspect.signature(method)
        assert [(p.name, p.kind, p.default) for p in mine.parameters.values()] == [
            (p.name, p.kind, p.default) for p in port.parameters.values()
        ], name


# -- lifecycle, settings, registry ------------------------------------------------------------


async def test_a_migrated_store_is_current_and_answers_a_ping(port_store: Store) -> None:
    assert await port_store.migrations_current()
    await port_store.ping()
    assert isinstance(await port_store.maintenance_warnings(), list)


async def test_a_setting_keeps_its_first_value(port_store: Store) -> None:
    assert await port_store.get_or_create_setting("jwt", "one") == "one"
    assert await port_store.get_or_create_setting("jwt", "two") == "one"


async def test_an_agent_version_rises_only_when_its_spec_changes(port_store: Store) -> None:
    spec = AgentSpec(name="b-agent", endpoint="http://127.0.0.1:1")
    assert await port_store.upsert_agent(spec, T0) == 1
    assert await port_store.upsert_agent(spec, at(1)) == 1
    changed = AgentSpec(
        name="b-agent", endpoint="http://127.0.0.1:1", operations={"x": OperationSpec(name="x")}
    )
    assert await port_store.upsert_agent(changed, at(2)) == 2
    await port_store.upsert_agent(AgentSpec(name="a-agent", endpoint="http://127.0.0.1:2"), T0)
    assert await port_store.get_agent("b-agent") == (changed, 2)
    assert [(a.name, v) for a, v in await port_store.list_agents()] == [
        ("a-agent", 1),
        ("b-agent", 2),
    ]
    assert await port_store.delete_agent("b-agent")
    assert not await port_store.delete_agent("b-agent")
    assert await port_store.get_agent("b-agent") is None


async def test_an_agent_is_replaced_or_deleted_only_by_its_owner_or_an_admin(
    port_store: Store,
) -> None:
    mine = AgentSpec(name="owned", endpoint="http://127.0.0.1:1", owner="alice")
    assert await port_store.write_agent_if_owner("owned", mine, T0, owner="alice") == (
        "created",
        1,
    )
    theirs = AgentSpec(name="owned", endpoint="http://127.0.0.1:9", owner="mallory")
    assert await port_store.write_agent_if_owner("owned", theirs, at(1), owner="mallory") == (
        "forbidden",
        1,
    )
    assert await port_store.write_agent_if_owner("owned", None, at(1), owner="mallory") == (
        "forbidden",
        1,
    )
    assert await port_store.get_agent("owned") == (mine, 1)
    assert await port_store.write_agent_if_owner("owned", mine, at(2), owner="alice") == (
        "unchanged",
        1,
    )
    moved = AgentSpec(name="owned", endpoint="http://127.0.0.1:2", owner="alice")
    assert await port_store.write_agent_if_owner("owned", moved, at(3), owner=None) == (
        "updated",
        2,
    )
    assert await port_store.write_agent_if_owner("owned", None, at(4), owner="alice") == (
        "deleted",
        2,
    )
    assert await port_store.write_agent_if_owner("owned", None, at(5), owner="alice") == (
        "absent",
        0,
    )
    assert await port_store.get_agent("owned") is None


# -- starts and idempotency -------------------------------------------------------------------


async def test_a_start_is_read_back_with_every_field_it_was_given(port_store: Store) -> None:
    op = new_op(
        input=b"\x00in",
        input_content_type="application/octet-stream",
        request_id="rid-1",
        callback_url="https://caller.example/cb",
        callback_headers={"authorization": "Bearer t"},
        links=["l1", "l2"],
        deadline_at=at(60),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    events = [ev(op, "operation.started", 0, a=1), ev(op, "dispatch.queued", 0)]
    assert await port_store.create_operation(op, events, [key(op)]) == (op, None)
    assert await port_store.get_operation(op.id) == op
    stored = await port_store.list_events(op.id)
    assert [(e.kind, e.data) for e in stored] == [
        ("operation.started", {"a": 1}),
        ("dispatch.queued", {}),
    ]
    assert await port_store.get_operation("nope") is None


async def test_a_taken_key_returns_the_first_operation_and_its_record(port_store: Store) -> None:
    first = new_op()
    await port_store.create_operation(first, started(first), [key(first)])
    second = new_op()
    got, record = await port_store.create_operation(
        second, started(second), [key(second, created=1)]
    )
    assert got == first
    assert record is not None and (record.operation_id, record.key) == (first.id, "key:k1")
    assert await port_store.get_operation(second.id) is None
    assert await port_store.list_events(second.id) == []


async def test_an_expired_key_is_taken_by_the_next_start(port_store: Store) -> None:
    first = new_op()
    await port_store.create_operation(first, started(first), [key(first, ttl_s=10)])
    second = new_op()
    got = await port_store.create_operation(second, started(second), [key(second, created=20)])
    assert got == (second, None)


async def test_keys_taken_by_a_start_that_found_an_earlier_one_are_released(
    port_store: Store,
) -> None:
    first = new_op()
    await port_store.create_operation(first, started(first), [key(first, "k2")])
    second = new_op()
    both = [key(second, "k1"), key(second, "k2")]
    assert (await port_store.create_operation(second, started(second), both))[0] == first
    assert await port_store.purge_idempotency(at(1000)) == 1  # k2 only: k1 was let go
    third = new_op()
    assert await port_store.create_operation(third, started(third), [key(third, "k1")]) == (
        third,
        None,
    )


async def test_a_reused_operation_id_is_a_unique_violation(port_store: Store) -> None:
    op = await start(port_store)
    with pytest.raises(UniqueViolation):
        await port_store.create_operation(op, started(op), [])


async def test_batched_starts_answer_each_in_order_and_duplicates_with_the_first(
    port_store: Store,
) -> None:
    a, b, c, d = new_op(), new_op(), new_op(), new_op()
    items = [
        (a, started(a), [key(a, "ka")]),
        (b, started(b), []),
        (c, started(c), [key(c, "ka")]),  # the same key as a: answered with a
        (d, started(d), [key(d, "kd1"), key(d, "kd2")]),
    ]
    results = await port_store.create_operations(items)
    assert [r[0].id for r in results] == [a.id, b.id, a.id, d.id]
    assert results[0][1] is None and results[2][1] is not None
    assert await port_store.get_operation(c.id) is None
    assert await kinds(port_store, d) == ["operation.started"]


async def test_a_saved_response_is_returned_with_its_key_until_purged(port_store: Store) -> None:
    op = new_op()
    await port_store.create_operation(op, started(op), [key(op, ttl_s=10)])
    await port_store.save_response("alice", "key:k1", 201, b"body", {"x": "y"})
    _, record = await port_store.create_operation(new_op(), [], [key(new_op(), created=1)])
    assert record is not None
    assert (record.response_status, record.response_body, record.response_headers) == (
        201,
        b"body",
        {"x": "y"},
    )
    assert await port_store.purge_idempotency(at(5)) == 0
    assert await port_store.purge_idempotency(at(10)) == 1
    fresh = new_op()
    assert await port_store.create_operation(fresh, [], [key(fresh, created=11)]) == (fresh, None)


async def test_operations_are_listed_newest_first_filtered_and_counted(port_store: Store) -> None:
    old = await start(port_store, created_at=at(0), caller="bob")
    mid = await start(port_store, created_at=at(1), service="other")
    new = await start(port_store, created_at=at(2))
    await port_store.complete(closing(new))
    assert [o.id for o in await port_store.list_operations()] == [new.id, mid.id, old.id]
    assert [o.id for o in await port_store.list_operations(caller="bob")] == [old.id]
    assert [o.id for o in await port_store.list_operations(service="other")] == [mid.id]
    running = await port_store.list_operations(state=OperationState.RUNNING)
    assert [o.id for o in running] == [mid.id, old.id]
    assert [o.id for o in await port_store.list_operations(limit=1)] == [new.id]
    assert await port_store.count_operations() == {"running": 2, "succeeded": 1}


async def test_operations_are_filtered_by_time_range_and_request_id_text_and_counted_alike(
    port_store: Store,
) -> None:
    early = await start(port_store, created_at=at(0), request_id="Order-100%")
    middle = await start(port_store, created_at=at(5), request_id="order-200", caller="bob")
    await start(port_store, created_at=at(10), request_id=None)
    window = await port_store.list_operations(created_after=at(0), created_before=at(10))
    assert [o.id for o in window] == [middle.id, early.id]
    assert [o.id for o in await port_store.list_operations(created_after=at(5))][-1] == middle.id
    assert [o.id for o in await port_store.list_operations(request_id_contains="ORDER")] == [
        middle.id,
        early.id,
    ]
    # the text is matched literally: % and _ are not wildcards
    assert [o.id for o in await port_store.list_operations(request_id_contains="0%")] == [early.id]
    assert await port_store.list_operations(request_id_contains="r_2") == []
    assert await port_store.count_operations(request_id_contains="order") == {"running": 2}
    assert await port_store.count_operations(caller="bob") == {"running": 1}
    assert await port_store.count_operations(created_before=at(5), service="svc") == {"running": 1}


# -- claims, leases, fences --------------------------------------------------------------------


async def test_a_claim_leases_due_work_once_and_counts_the_dispatch_attempt(
    port_store: Store,
) -> None:
    due = await start(port_store, next_attempt_at=at(0))
    later = await start(port_store, next_attempt_at=at(100))
    claimed = await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert [o.id for o in claimed] == [due.id]
    got = claimed[0]
    assert (got.lease_owner, got.lease_until, got.attempts) == ("w1", at(1) + LEASE, 1)
    assert await port_store.get_operation(due.id) == got
    assert await port_store.claim_work("w2", at(2), at(2) + LEASE, 10) == []
    attempt = (await port_store.list_events(due.id))[-1]
    assert (attempt.kind, attempt.data) == ("attempt.started", {"attempt": 1, "owner": "w1"})
    assert await kinds(port_store, later) == ["operation.started"]


async def test_claims_come_oldest_first_up_to_the_limit(port_store: Store) -> None:
    ops = [await start(port_store, next_attempt_at=at(-i)) for i in range(3)]
    claimed = await port_store.claim_work("w1", at(1), at(1) + LEASE, 2)
    assert sorted(o.id for o in claimed) == sorted([ops[2].id, ops[1].id])


async def test_an_expired_lease_is_taken_over_and_the_takeover_recorded(
    port_store: Store,
) -> None:
    op = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert await port_store.claim_work("w2", at(20), at(20) + LEASE, 10) == []
    (taken,) = await port_store.claim_work("w2", at(40), at(40) + LEASE, 10)
    assert (taken.lease_owner, taken.prev_lease_owner, taken.attempts) == ("w2", "w1", 2)
    last = (await port_store.list_events(op.id))[-1]
    assert last.data == {"attempt": 2, "owner": "w2", "taken_over_from": "w1"}


async def test_a_cancel_claim_counts_no_attempt_and_writes_no_attempt_event(
    port_store: Store,
) -> None:
    op = await start(port_store, work=Work.CANCEL)
    (claimed,) = await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert claimed.attempts == 0
    assert await kinds(port_store, op) == ["operation.started"]


async def test_leases_are_extended_and_released_only_for_their_owner(port_store: Store) -> None:
    mine = await start(port_store)
    theirs = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 1)
    await port_store.claim_work("w2", at(1), at(1) + LEASE, 1)
    a = await port_store.get_operation(mine.id)
    assert a is not None
    owned, other = (mine, theirs) if a.lease_owner == "w1" else (theirs, mine)
    await port_store.extend_leases("w1", [owned.id, other.id], at(500))
    assert (await port_store.get_operation(owned.id)).lease_until == at(500)  # type: ignore[union-attr]
    assert (await port_store.get_operation(other.id)).lease_until == at(1) + LEASE  # type: ignore[union-attr]
    await port_store.extend_leases("w1", [], at(900))
    assert await port_store.release_leases("w1") == 1
    released = await port_store.get_operation(owned.id)
    assert released is not None and (released.lease_owner, released.lease_until) == (None, None)
    (again,) = await port_store.claim_work("w3", at(2), at(2) + LEASE, 10)
    assert again.id == owned.id


async def test_a_running_update_is_fenced_by_the_owner_and_releases_the_lease(
    port_store: Store,
) -> None:
    op = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert not await port_store.update_running(
        op.id, "w2", work=Work.DISPATCH, next_attempt_at=at(5), event=None
    )
    assert await port_store.update_running(
        op.id,
        "w1",
        work=Work.POLL,
        next_attempt_at=at(5),
        event=ev(op, "attempt.accepted"),
        agent_token="task-1",
        last_error="slow",
    )
    got = await port_store.get_operation(op.id)
    assert got is not None
    assert (got.work, got.next_attempt_at, got.lease_owner, got.lease_until) == (
        Work.POLL,
        at(5),
        None,
        None,
    )
    assert (got.agent_token, got.last_error, got.attempts) == ("task-1", "slow", 1)
    assert await port_store.update_running(
        op.id, None, work=Work.DISPATCH, next_attempt_at=at(6), event=None, refund_attempt=True
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.agent_token, got.last_error, got.attempts) == (
        "task-1",
        None,
        0,
    )
    assert (await kinds(port_store, op))[-1] == "attempt.accepted"


async def test_running_updates_in_one_transaction_each_answer_for_themselves(
    port_store: Store,
) -> None:
    ops = [await start(port_store) for _ in range(3)]
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    closed = ops[2]
    assert await port_store.complete(closing(closed))
    updates = [
        RunningUpdate(
            op_id=op.id,
            owner=owner,
            work=None,
            next_attempt_at=None,
            event=ev(op, "attempt.accepted"),
            agent_token=f"task-{i}",
            heartbeat_until=at(30),
        )
        for i, (op, owner) in enumerate(zip(ops, ["w1", "w2", "w1"], strict=True))
    ]
    # the second is fenced off (another owner), the third is closed: only the first applies
    assert await port_store.update_running_many(updates) == [True, False, False]
    assert await port_store.update_running_many([]) == []
    first, second, third = [await port_store.get_operation(op.id) for op in ops]
    assert first is not None and second is not None and third is not None
    assert (first.agent_token, first.heartbeat_until, first.lease_owner) == ("task-0", at(30), None)
    assert (second.agent_token, second.lease_owner) == (None, "w1")
    assert third.state is OperationState.SUCCEEDED
    assert (await kinds(port_store, ops[0]))[-1] == "attempt.accepted"
    assert "attempt.accepted" not in await kinds(port_store, ops[1])  # no event for a refusal
    assert "attempt.accepted" not in await kinds(port_store, ops[2])


async def test_a_cancel_requested_under_a_lease_is_not_lost_when_the_lease_ends(
    port_store: Store,
) -> None:
    op = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert await port_store.request_cancel(op.id, at(2), ev(op, "cancel.requested", 2))
    assert not await port_store.request_cancel(op.id, at(3), ev(op, "cancel.requested", 3))
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.cancel_requested_at, got.work) == (at(2), Work.DISPATCH)
    # an accepted operation with a cancel pending gets cancel work, due at once
    assert await port_store.update_running(
        op.id, "w1", work=None, next_attempt_at=None, event=None, now=at(4)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.CANCEL, at(4))
    # a retry keeps its work but becomes due at once
    assert await port_store.update_running(
        op.id, None, work=Work.DISPATCH, next_attempt_at=at(99), event=ev(op, "retry", 5)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.DISPATCH, at(5))


async def test_a_cancel_request_turns_waiting_into_cancel_work(port_store: Store) -> None:
    op = await start(port_store, work=None, next_attempt_at=None)
    assert await port_store.request_cancel(op.id, at(2), ev(op, "cancel.requested", 2))
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.CANCEL, at(2))
    await port_store.complete(closing(op, 3, OperationState.CANCELED))
    other = await start(port_store)
    await port_store.complete(closing(other))
    assert not await port_store.request_cancel(other.id, at(4), ev(other, "cancel.requested"))


# -- terminal transitions ----------------------------------------------------------------------


async def test_a_completion_applies_once_and_only_while_running(port_store: Store) -> None:
    op = await start(port_store)
    done = closing(op, callback=delivery(op))
    assert await port_store.complete(done)
    assert not await port_store.complete(closing(op, 2, OperationState.FAILED))
    got = await port_store.get_operation(op.id)
    assert got is not None
    assert (got.state, got.result, got.result_content_type, got.closed_at, got.work) == (
        OperationState.SUCCEEDED,
        b'{"r":1}',
        "application/json",
        at(1),
        None,
    )
    assert await kinds(port_store, op) == ["operation.started", "operation.succeeded"]
    assert await port_store.list_callbacks(op.id) == [delivery(op)]


async def test_a_fenced_completion_applies_only_for_the_lease_holder(port_store: Store) -> None:
    op = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert not await port_store.complete(closing(op, only_if_owner="w2"))
    failure = {"message": "boom", "metadata": {}}
    assert await port_store.complete(
        closing(op, 2, OperationState.FAILED, only_if_owner="w1", failure=failure, result=None)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.state, got.failure, got.lease_owner) == (
        OperationState.FAILED,
        failure,
        None,
    )


async def test_a_completion_under_the_agent_leaves_cancel_work_for_the_closer(
    port_store: Store,
) -> None:
    op = await start(port_store)
    await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert await port_store.complete(
        closing(op, 2, OperationState.FAILED, then_cancel_agent=True, result=None)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.CANCEL, at(2))
    (claimed,) = await port_store.claim_work("w1", at(3), at(3) + LEASE, 10)
    assert claimed.id == op.id and claimed.attempts == 1
    assert not await port_store.update_closed(
        op.id, "w2", work=None, next_attempt_at=None, event=ev(op, "agent.canceled")
    )
    assert await port_store.update_closed(
        op.id, "w1", work=None, next_attempt_at=None, event=ev(op, "agent.canceled", 4)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.lease_owner, got.state) == (
        None,
        None,
        OperationState.FAILED,
    )
    running = await start(port_store)
    await port_store.claim_work("w1", at(5), at(5) + LEASE, 10)
    assert not await port_store.update_closed(
        running.id, "w1", work=None, next_attempt_at=None, event=ev(running, "x")
    )


async def test_a_batch_of_completions_closes_each_operation_once(port_store: Store) -> None:
    a = await start(port_store)
    b = await start(port_store)
    closed = await start(port_store)
    await port_store.complete(closing(closed))
    applied = await port_store.complete_many(
        [
            closing(a, callback=delivery(a)),
            closing(b, only_if_owner="nobody"),
            closing(closed, 2),
            closing(a, 3, OperationState.FAILED),  # later than a's first: a is closed by then
            closing(b, 4, OperationState.CANCELED),  # b's first was fenced out: this applies
        ]
    )
    assert applied == [True, False, False, False, True]
    states = [(await port_store.get_operation(o.id)).state for o in (a, b)]  # type: ignore[union-attr]
    assert states == [OperationState.SUCCEEDED, OperationState.CANCELED]
    assert await kinds(port_store, a) == ["operation.started", "operation.succeeded"]
    assert [d.id for d in await port_store.list_callbacks(a.id)] == [delivery(a).id]


async def test_only_failed_or_canceled_operations_are_redriven(port_store: Store) -> None:
    running = await start(port_store)
    assert not await port_store.redrive(running.id, at(1), ev(running, "redriven"))
    ok = await start(port_store)
    await port_store.complete(closing(ok))
    assert not await port_store.redrive(ok.id, at(1), ev(ok, "redriven"))
    failed = await start(port_store, agent_token="t")
    fail = {"message": "no", "metadata": {}}
    await port_store.complete(closing(failed, 1, OperationState.FAILED, failure=fail))
    assert await port_store.redrive(failed.id, at(2), ev(failed, "operation.redriven", 2))
    got = await port_store.get_operation(failed.id)
    assert got is not None
    assert (got.state, got.work, got.next_attempt_at, got.failure, got.closed_at) == (
        OperationState.RUNNING,
        Work.DISPATCH,
        at(2),
        None,
        None,
    )
    assert (got.agent_token, got.cancel_requested_at, got.lease_owner) == (None, None, None)
    assert (await kinds(port_store, failed))[-1] == "operation.redriven"


async def test_due_timeouts_are_running_operations_past_their_deadline(port_store: Store) -> None:
    late = await start(port_store, deadline_at=at(5))
    later = await start(port_store, deadline_at=at(3))
    await start(port_store, deadline_at=at(50))
    await start(port_store)  # no deadline
    closed = await start(port_store, deadline_at=at(1))
    await port_store.complete(closing(closed))
    assert [o.id for o in await port_store.due_timeouts(at(10), 10)] == [later.id, late.id]
    assert [o.id for o in await port_store.due_timeouts(at(10), 1)] == [later.id]


async def test_closed_operations_are_announced_to_listeners(port_store: Store) -> None:
    if getattr(port_store, "dialect", "") == "sqlite":
        pytest.skip("SQLite has one writer process, which wakes its own waiters")
    heard: set[str] = set()
    news = asyncio.Event()

    def on_closed(ids: list[str]) -> None:
        heard.update(ids)
        news.set()

    listener = asyncio.create_task(port_store.listen_closed(on_closed))
    try:
        closed: list[str] = []
        for _ in range(50):  # the subscription has no ready signal: close until one is heard
            op = await start(port_store)
            await port_store.complete_many([closing(op)])
            closed.append(op.id)
            try:
                await asyncio.wait_for(news.wait(), 0.2)
                break
            except TimeoutError:
                continue
        assert heard and heard <= set(closed)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


# -- events ------------------------------------------------------------------------------------


async def test_event_ids_ascend_per_operation_and_page_from_an_id(port_store: Store) -> None:
    op = await start(port_store)
    other = await start(port_store)
    for n in range(5):
        await port_store.update_running(
            op.id, None, work=Work.DISPATCH, next_attempt_at=at(n), event=ev(op, f"e{n}", n)
        )
    events = await port_store.list_events(op.id)
    ids = [e.id or 0 for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert [e.kind for e in events] == ["operation.started", "e0", "e1", "e2", "e3", "e4"]
    assert all(e.operation_id == op.id for e in events)
    assert [e.kind for e in await port_store.list_events(op.id, after=ids[2], limit=2)] == [
        "e2",
        "e3",
    ]
    assert await port_store.list_events(op.id, after=ids[-1]) == []
    assert await kinds(port_store, other) == ["operation.started"]


# -- the callback outbox -----------------------------------------------------------------------


async def closed_with_callbacks(
    store: Store, n: int = 1
) -> tuple[Operation, list[CallbackDelivery]]:
    op = await start(store)
    first = delivery(op, 0)
    await store.complete(closing(op, callback=first))
    rest = [delivery(op, i) for i in range(1, n)]
    for i, d in enumerate(rest, start=1):
        cfg = f"c{i}"
        await store.a2a_save_push_config(op.id, cfg, {"url": d.url}, at(i))
        assert await store.a2a_enqueue_push(op.id, cfg, d, ev(op, "push.queued", i))
    return op, [first, *rest]


async def test_pending_callbacks_are_leased_once_and_count_an_attempt(port_store: Store) -> None:
    op, (d0, d1) = await closed_with_callbacks(port_store, 2)
    claimed = await port_store.claim_callbacks("w1", at(0.5), at(0.5) + LEASE, 10)
    assert [d.id for d in claimed] == [d0.id]  # d1 is not due yet
    assert (claimed[0].lease_owner, claimed[0].attempts) == ("w1", 1)
    assert await port_store.claim_callbacks("w2", at(2), at(2) + LEASE, 10) == [
        (await port_store.list_callbacks(op.id))[1]
    ]
    assert await port_store.claim_callbacks("w3", at(3), at(3) + LEASE, 10) == []
    (taken,) = await port_store.claim_callbacks("w3", at(40), at(40) + LEASE, 1)
    assert (taken.id, taken.lease_owner, taken.attempts) == (d0.id, "w3", 2)
    assert d1.id in {d.id for d in await port_store.list_callbacks(op.id)}


async def test_callback_leases_are_extended_only_for_their_owner(port_store: Store) -> None:
    op, _ = await closed_with_callbacks(port_store, 2)
    (mine,) = await port_store.claim_callbacks("w1", at(0.5), at(0.5) + LEASE, 1)
    (theirs,) = await port_store.claim_callbacks("w2", at(2), at(2) + LEASE, 1)
    await port_store.extend_callback_leases("w1", [mine.id, theirs.id], at(500))
    await port_store.extend_callback_leases("w1", [], at(900))
    by_id = {d.id: d for d in await port_store.list_callbacks(op.id)}
    assert by_id[mine.id].lease_until == at(500)
    assert by_id[theirs.id].lease_until == at(2) + LEASE
    # an extended lease keeps the delivery from others; the other one is taken over
    (taken,) = await port_store.claim_callbacks("w3", at(40), at(40) + LEASE, 10)
    assert taken.id == theirs.id


async def test_a_finished_delivery_is_fenced_by_its_lease_owner(port_store: Store) -> None:
    op, (d0,) = await closed_with_callbacks(port_store)
    await port_store.claim_callbacks("w1", at(1), at(1) + LEASE, 10)
    retry = {"state": DeliveryState.PENDING, "next_attempt_at": at(9), "last_error": "503"}
    assert not await port_store.finish_callback(d0.id, "w2", event=ev(op, "cb.failed"), **retry)  # type: ignore[arg-type]
    assert await port_store.finish_callback(
        d0.id, "w1", event=ev(op, "callback.failed", 2), **retry
    )  # type: ignore[arg-type]
    (got,) = await port_store.list_callbacks(op.id)
    assert (got.state, got.next_attempt_at, got.last_error, got.lease_owner) == (
        DeliveryState.PENDING,
        at(9),
        "503",
        None,
    )
    await port_store.claim_callbacks("w1", at(10), at(10) + LEASE, 10)
    assert await port_store.finish_callback(
        d0.id,
        "w1",
        state=DeliveryState.DELIVERED,
        next_attempt_at=at(11),
        last_error=None,
        event=ev(op, "callback.delivered", 11),
    )
    (got,) = await port_store.list_callbacks(op.id)
    assert (got.state, got.delivered_at, got.attempts) == (DeliveryState.DELIVERED, at(11), 2)
    assert (await kinds(port_store, op))[-2:] == ["callback.failed", "callback.delivered"]


async def test_delivery_acks_count_only_for_the_lease_holder_and_only_once(
    port_store: Store,
) -> None:
    op, (d0, d1) = await closed_with_callbacks(port_store, 2)
    await port_store.claim_callbacks("w1", at(5), at(5) + LEASE, 10)
    assert await port_store.callbacks_delivered("w1", []) == 0
    acks = [ev(op, "callback.delivered", 6, delivery_id=d.id) for d in (d0, d1)]
    assert await port_store.callbacks_delivered("w2", acks) == 0
    assert await port_store.callbacks_delivered("w1", acks) == 2
    assert await port_store.callbacks_delivered("w1", acks) == 0
    for got in await port_store.list_callbacks(op.id):
        assert (got.state, got.delivered_at, got.lease_owner) == (
            DeliveryState.DELIVERED,
            at(6),
            None,
        )
    assert (await kinds(port_store, op)).count("callback.delivered") == 2


async def test_release_leases_hands_back_callbacks_without_counting_the_attempt(
    port_store: Store,
) -> None:
    op, _ = await closed_with_callbacks(port_store)
    await port_store.claim_callbacks("w1", at(1), at(1) + LEASE, 10)
    assert await port_store.release_leases("w1") == 0  # no running operation leased
    (got,) = await port_store.list_callbacks(op.id)
    assert (got.lease_owner, got.attempts) == (None, 0)


async def test_only_expired_or_disabled_deliveries_are_redriven(port_store: Store) -> None:
    op, (d0,) = await closed_with_callbacks(port_store)
    assert not await port_store.redrive_callback(d0.id, at(2), at(99), ev(op, "cb.redriven"))
    await port_store.claim_callbacks("w1", at(1), at(1) + LEASE, 10)
    await port_store.finish_callback(
        d0.id,
        "w1",
        state=DeliveryState.EXPIRED,
        next_attempt_at=at(1),
        last_error="gone",
        event=ev(op, "callback.expired"),
    )
    assert await port_store.redrive_callback(d0.id, at(2), at(99), ev(op, "callback.redriven", 2))
    (got,) = await port_store.list_callbacks(op.id)
    assert (got.state, got.next_attempt_at, got.expires_at, got.lease_owner) == (
        DeliveryState.PENDING,
        at(2),
        at(99),
        None,
    )
    assert (await kinds(port_store, op))[-1] == "callback.redriven"


# -- caller secrets ----------------------------------------------------------------------------


async def test_a_callers_secret_is_created_once_and_rotation_keeps_the_previous(
    port_store: Store,
) -> None:
    first = await port_store.caller_secrets("alice", T0, "s1")
    assert (first.secret, first.created_at, first.previous_secret) == ("s1", T0, None)
    assert await port_store.caller_secrets("alice", at(1), "s-other") == first
    rotated = await port_store.rotate_caller_secret("alice", "s2", at(2), at(60))
    assert (rotated.secret, rotated.previous_secret, rotated.previous_until) == ("s2", "s1", at(60))
    assert (rotated.created_at, rotated.rotated_at) == (T0, at(2))
    assert await port_store.caller_secrets("alice", at(3), "s-other") == rotated
    assert rotated.active(at(10)) == ["s2", "s1"] and rotated.active(at(61)) == ["s2"]
    new = await port_store.rotate_caller_secret("bob", "b1", at(4), at(60))
    assert (new.secret, new.previous_secret, new.created_at) == ("b1", None, at(4))


# -- A2A push configs --------------------------------------------------------------------------


async def test_push_configs_are_saved_replaced_listed_and_deleted(port_store: Store) -> None:
    op = await start(port_store)
    await port_store.a2a_save_push_config(op.id, "c1", {"url": "https://a.example/1"}, at(1))
    await port_store.a2a_save_push_config(op.id, "c2", {"url": "https://a.example/2"}, at(2))
    await port_store.a2a_save_push_config(op.id, "c1", {"url": "https://a.example/1b"}, at(3))
    assert await port_store.a2a_push_configs(op.id) == [
        {"url": "https://a.example/1b"},
        {"url": "https://a.example/2"},
    ]
    assert await port_store.a2a_delete_push_config(op.id, "c2")
    assert not await port_store.a2a_delete_push_config(op.id, "c2")
    assert await port_store.a2a_push_configs(op.id) == [{"url": "https://a.example/1b"}]


async def test_a_push_is_due_once_its_task_is_closed_and_is_queued_once(port_store: Store) -> None:
    op = await start(port_store)
    await port_store.a2a_save_push_config(op.id, "c1", {"url": "https://a.example/1"}, at(1))
    assert await port_store.a2a_due_pushes(10) == []
    await port_store.complete(closing(op, 2))
    due = await port_store.a2a_due_pushes(10)
    assert [(c, cfg, o.id, o.state) for c, cfg, o in due] == [
        ("c1", {"url": "https://a.example/1"}, op.id, OperationState.SUCCEEDED)
    ]
    push = delivery(op, 3)
    assert await port_store.a2a_enqueue_push(op.id, "c1", push, ev(op, "push.queued", 3))
    assert not await port_store.a2a_enqueue_push(
        op.id, "c1", delivery(op, 4), ev(op, "push.queued", 4)
    )
    assert await port_store.a2a_due_pushes(10) == []
    assert await port_store.list_callbacks(op.id) == [push]
    assert (await kinds(port_store, op)).count("push.queued") == 1


async def test_progress_of_a_running_task_is_queued_once_per_range_of_its_history(
    port_store: Store,
) -> None:
    op = await start(port_store)
    assert await port_store.a2a_progress_pushes(10) == []  # no config yet
    await port_store.a2a_save_push_config(op.id, "c1", {"url": "https://a.example/1"}, at(1))
    due = await port_store.a2a_progress_pushes(10)
    assert [(c, cfg, o.id, cursor) for c, cfg, o, cursor in due] == [
        ("c1", {"url": "https://a.example/1"}, op.id, 0)
    ]
    upto = (await port_store.list_events(op.id))[-1].id or 0
    first = delivery(op, 2)
    assert await port_store.a2a_enqueue_progress(op.id, "c1", 0, upto, [first])
    # another replica that read the same cursor loses the compare-and-set and queues nothing
    assert not await port_store.a2a_enqueue_progress(op.id, "c1", 0, upto, [delivery(op, 3)])
    assert await port_store.a2a_progress_pushes(10) == []  # nothing new after the cursor
    assert await port_store.list_callbacks(op.id) == [first]
    await port_store.complete(closing(op, 4))
    assert await port_store.a2a_progress_pushes(10) == []  # closed: the final push takes over
    assert [c for c, _cfg, _o in await port_store.a2a_due_pushes(10)] == ["c1"]
