"""The Store port's heartbeat and step-journal promises, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.domain.model import Heartbeat, HeartbeatAck, OperationState, StepRecord, Work
from gateway.domain.ports import Store
from tests.store.test_conformance import LEASE, at, closing, ev, kinds, start


async def accepted(store: Store, hb_until: float | None = 10) -> str:
    """A dispatched operation its agent accepted (attempt 1), owing a heartbeat at ``hb_until``."""
    op = await start(store)
    await store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert await store.update_running(
        op.id,
        "w1",
        work=None,
        next_attempt_at=None,
        event=ev(op, "attempt.accepted"),
        agent_token="t",
        heartbeat_until=None if hb_until is None else at(hb_until),
    )
    return op.id


def step(op_id: str, name: str, result: object, when: float = 2) -> StepRecord:
    return StepRecord(operation_id=op_id, name=name, result=result, at=at(when), attempt=1)


async def test_a_heartbeat_moves_the_deadline_and_keeps_details_in_place(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store)
    before = await port_store.get_operation(op_id)
    assert before is not None and before.heartbeat_until == at(10)
    assert await port_store.heartbeat(op_id, 1, at(20), has_details=False)
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (at(20), None)
    assert await port_store.heartbeat(op_id, 1, at(25), details={"page": 3}, has_details=True)
    assert await port_store.heartbeat(op_id, 1, at(30), has_details=False)
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (at(30), {"page": 3})
    # nothing else of the row changed, and no event was written
    assert (got.work, got.attempts, got.agent_token) == (before.work, 1, "t")
    assert (await kinds(port_store, got))[-1] == "attempt.accepted"


async def test_a_heartbeat_of_another_attempt_or_a_closed_operation_writes_nothing(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store)
    assert not await port_store.heartbeat(op_id, 2, at(20), details=1, has_details=True)
    assert not await port_store.heartbeat("missing", 1, at(20), has_details=False)
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (at(10), None)
    assert got is not None
    assert await port_store.complete(closing(got, 3))
    assert not await port_store.heartbeat(op_id, 1, at(20), details=1, has_details=True)
    closed = await port_store.get_operation(op_id)
    assert closed is not None and closed.heartbeat_details is None


async def test_a_heartbeat_before_the_accept_is_recorded_sets_no_deadline(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store, hb_until=None)
    assert await port_store.heartbeat(op_id, 1, at(20), details="d", has_details=True)
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (None, "d")
    assert await port_store.due_heartbeats(at(1000), 10) == []


async def test_due_heartbeats_are_running_operations_past_their_heartbeat_deadline(
    port_store: Store,
) -> None:
    late = await accepted(port_store, hb_until=5)
    later = await accepted(port_store, hb_until=8)
    await accepted(port_store, hb_until=50)
    closed_id = await accepted(port_store, hb_until=4)
    closed = await port_store.get_operation(closed_id)
    assert closed is not None and await port_store.complete(closing(closed, 3))
    assert [o.id for o in await port_store.due_heartbeats(at(10), 10)] == [late, later]
    assert [o.id for o in await port_store.due_heartbeats(at(10), 1)] == [late]


async def test_an_expired_heartbeat_sends_the_operation_back_to_dispatch_once(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store, hb_until=5)
    assert await port_store.heartbeat(op_id, 1, at(5), details={"k": 1}, has_details=True)
    op = await port_store.get_operation(op_id)
    assert op is not None
    timeout_event = ev(op, "attempt.heartbeat_timeout", 6)
    # not yet due, or another attempt: nothing happens
    assert not await port_store.expire_heartbeat(
        op_id, 1, at(4), next_attempt_at=at(7), last_error="hb", event=timeout_event
    )
    assert not await port_store.expire_heartbeat(
        op_id, 2, at(6), next_attempt_at=at(7), last_error="hb", event=timeout_event
    )
    assert await port_store.expire_heartbeat(
        op_id, 1, at(6), next_attempt_at=at(7), last_error="hb", event=timeout_event
    )
    assert not await port_store.expire_heartbeat(  # the second sweep (another replica) loses
        op_id, 1, at(6), next_attempt_at=at(7), last_error="hb", event=timeout_event
    )
    got = await port_store.get_operation(op_id)
    assert got is not None
    assert (got.work, got.next_attempt_at, got.heartbeat_until) == (Work.DISPATCH, at(7), None)
    assert (got.agent_token, got.last_error, got.heartbeat_details) == (None, "hb", {"k": 1})
    assert (await kinds(port_store, got)).count("attempt.heartbeat_timeout") == 1
    claimed = await port_store.claim_work("w2", at(7), at(7) + LEASE, 10)
    assert [(o.id, o.attempts) for o in claimed] == [(op_id, 2)]


async def test_a_cancel_owed_keeps_an_overdue_heartbeat_from_expiring(port_store: Store) -> None:
    op_id = await accepted(port_store, hb_until=5)
    op = await port_store.get_operation(op_id)
    assert op is not None
    assert await port_store.request_cancel(op_id, at(4), ev(op, "cancel.requested", 4))
    assert not await port_store.expire_heartbeat(
        op_id, 1, at(6), next_attempt_at=at(7), last_error="hb", event=ev(op, "x", 6)
    )
    got = await port_store.get_operation(op_id)
    assert got is not None and got.work is Work.CANCEL


async def test_the_first_record_of_a_step_wins_with_one_event(port_store: Store) -> None:
    op_id = await accepted(port_store)
    op = await port_store.get_operation(op_id)
    assert op is not None
    first = step(op_id, "fetch", {"rows": [1, 2]})
    assert await port_store.record_step(first, ev(op, "step.completed", 2)) == (first, True)
    again = step(op_id, "fetch", "other", when=3)
    assert await port_store.record_step(again, ev(op, "step.completed", 3)) == (first, False)
    second = step(op_id, "write", None, when=4)
    assert await port_store.record_step(second, ev(op, "step.completed", 4)) == (second, True)
    assert await port_store.list_steps(op_id) == [first, second]
    assert (await kinds(port_store, op)).count("step.completed") == 2
    assert await port_store.list_steps("other") == []


async def test_no_step_is_recorded_for_an_unknown_or_closed_operation(port_store: Store) -> None:
    op_id = await accepted(port_store)
    op = await port_store.get_operation(op_id)
    assert op is not None
    assert await port_store.record_step(step("nope", "a", 1), ev(op, "step.completed")) is None
    assert await port_store.complete(closing(op, 3, OperationState.FAILED))
    assert await port_store.record_step(step(op_id, "a", 1), ev(op, "step.completed")) is None
    assert await port_store.list_steps(op_id) == []
    assert "step.completed" not in await kinds(port_store, op)


async def test_batched_heartbeats_answer_each_in_order_with_the_state_and_any_cancel(
    port_store: Store,
) -> None:
    live = await accepted(port_store)
    canceling = await accepted(port_store)
    op = await port_store.get_operation(canceling)
    assert op is not None
    assert await port_store.request_cancel(canceling, at(3), ev(op, "cancel.requested", 3))
    beats = [
        Heartbeat(operation_id=canceling, attempt=1, until=at(20)),
        Heartbeat(operation_id="missing", attempt=None, until=at(20)),
        Heartbeat(operation_id=live, attempt=None, until=at(21), details=[1], has_details=True),
        Heartbeat(operation_id=live, attempt=7, until=at(22)),
    ]
    assert await port_store.heartbeat_many(beats) == [
        HeartbeatAck(state=OperationState.RUNNING, attempt=1, cancel_requested=True),
        None,
        HeartbeatAck(state=OperationState.RUNNING, attempt=1, cancel_requested=False),
        None,
    ]
    got = await port_store.get_operation(live)
    assert got is not None and (got.heartbeat_until, got.heartbeat_details) == (at(21), [1])


async def test_batched_step_records_answer_each_in_order_and_the_first_write_wins(
    port_store: Store,
) -> None:
    a = await accepted(port_store)
    b = await accepted(port_store)
    op_a, op_b = await port_store.get_operation(a), await port_store.get_operation(b)
    assert op_a is not None and op_b is not None
    first = step(a, "x", 1)
    items = [
        (first, ev(op_a, "step.completed", 2)),
        (step("missing", "x", 1), ev(op_a, "step.completed", 2)),
        (step(a, "x", 2, when=3), ev(op_a, "step.completed", 3)),
        (step(b, "y", [3]), ev(op_b, "step.completed", 2)),
    ]
    assert await port_store.record_steps(items) == [
        (first, True),
        None,
        (first, False),
        (step(b, "y", [3]), True),
    ]
    assert (await kinds(port_store, op_a)).count("step.completed") == 1
    assert (await kinds(port_store, op_b)).count("step.completed") == 1


async def test_a_redrive_forgets_the_recorded_answer_and_keeps_the_completed_steps(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store)
    op = await port_store.get_operation(op_id)
    assert op is not None
    done = step(op_id, "a", 1)
    answer = step(op_id, "$result", {"status": 424, "state": "failed", "body": {}}, when=3)
    assert await port_store.record_steps(
        [(done, ev(op, "step.completed", 2)), (answer, ev(op, "step.completed", 3))]
    ) == [(done, True), (answer, True)]
    assert await port_store.complete(closing(op, 4, OperationState.FAILED))
    assert await port_store.redrive(op_id, at(5), ev(op, "operation.redriven", 5))
    assert await port_store.list_steps(op_id) == [done]


async def test_an_overdue_heartbeat_with_a_cancel_owed_is_not_due(port_store: Store) -> None:
    op_id = await accepted(port_store, hb_until=5)
    op = await port_store.get_operation(op_id)
    assert op is not None
    assert await port_store.request_cancel(op_id, at(4), ev(op, "cancel.requested", 4))
    assert await port_store.due_heartbeats(at(10), 10) == []


async def test_an_operation_that_keeps_heartbeating_is_never_due_and_one_that_stops_is(
    port_store: Store,
) -> None:
    # (the sweep's check time, first the accepted deadline, passes while the beats go on)
    op_id = await accepted(port_store, hb_until=10)
    for t in (8, 15, 22):
        assert await port_store.heartbeat(op_id, 1, at(t + 10), has_details=False)
        assert await port_store.due_heartbeats(at(t + 4), 10) == []
    assert await port_store.due_heartbeats(at(31), 10) == []
    assert [o.id for o in await port_store.due_heartbeats(at(32), 10)] == [op_id]


async def test_a_shorter_heartbeat_timeout_is_swept_at_its_own_deadline(
    port_store: Store,
) -> None:
    # accepted under a long timeout, then the agent was registered again with a short one
    op_id = await accepted(port_store, hb_until=3600)
    op = await port_store.get_operation(op_id)
    assert op is not None
    assert await port_store.heartbeat(op_id, 1, at(20), has_details=False)
    assert await port_store.due_heartbeats(at(19), 10) == []
    assert [o.id for o in await port_store.due_heartbeats(at(21), 10)] == [op_id]
    assert await port_store.expire_heartbeat(
        op_id, 1, at(21), next_attempt_at=at(22), last_error="hb", event=ev(op, "x", 21)
    )
    assert await port_store.due_heartbeats(at(5000), 10) == []
