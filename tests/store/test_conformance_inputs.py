"""The Store port's input-required promises (issue 15 item 4), on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

from gateway.domain.model import CallbackDelivery, Event, StepRecord, Work
from gateway.domain.ports import Store
from tests.store.test_conformance import at, closing, kinds
from tests.store.test_conformance_journal import accepted


def resumed(op_id: str) -> Event:
    return Event(operation_id=op_id, kind="operation.resumed", at=at(30))


async def test_a_parked_attempt_owes_no_heartbeat_and_an_answer_dispatches_it_again(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store, hb_until=10)
    assert not await port_store.park_for_input(op_id, 2)  # another attempt: nothing changes
    got = await port_store.get_operation(op_id)
    assert got is not None and got.heartbeat_until == at(10)
    assert await port_store.park_for_input(op_id, 1)
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.heartbeat_until, got.work) == (None, None)
    assert await port_store.due_heartbeats(at(1000), 10) == []
    assert await port_store.resume_with_input(op_id, at(30), resumed(op_id))
    got = await port_store.get_operation(op_id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.DISPATCH, at(30))
    assert (await kinds(port_store, got))[-1] == "operation.resumed"
    # owing work already (the dispatch): a second answer does not resume it again
    assert not await port_store.resume_with_input(op_id, at(31), resumed(op_id))


async def test_a_closed_or_unknown_operation_is_neither_parked_nor_resumed(
    port_store: Store,
) -> None:
    op_id = await accepted(port_store)
    got = await port_store.get_operation(op_id)
    assert got is not None and await port_store.complete(closing(got, 3))
    assert not await port_store.park_for_input(op_id, 1)
    assert not await port_store.resume_with_input(op_id, at(30), resumed(op_id))
    assert not await port_store.resume_with_input("missing", at(30), resumed("missing"))
    closed = await port_store.get_operation(op_id)
    assert closed is not None and closed.work is None


def question(op_id: str, name: str = "$ask:1") -> tuple[StepRecord, Event, CallbackDelivery]:
    step = StepRecord(operation_id=op_id, name=name, result={"prompt": "ok?"}, at=at(5))
    event = Event(operation_id=op_id, kind="input.requested", at=at(5), data={"name": "1"})
    delivery = CallbackDelivery(
        id=f"msg_{uuid.uuid4().hex}",
        operation_id=op_id,
        caller="alice",
        url="http://127.0.0.1:9/hook",
        headers={"Swarmgate-Event": "input.requested"},
        body=b"{}",
        created_at=at(5),
        expires_at=at(500),
        next_attempt_at=at(5),
    )
    return step, event, delivery


async def test_a_question_queues_its_callback_with_its_event_once(port_store: Store) -> None:
    op_id = await accepted(port_store)
    step, event, delivery = question(op_id)
    recorded = await port_store.record_question(step, event, delivery)
    assert recorded is not None and recorded[1]
    (queued,) = await port_store.list_callbacks(op_id)
    assert (queued.id, queued.body, queued.headers) == (delivery.id, b"{}", delivery.headers)
    got = await port_store.get_operation(op_id)
    assert got is not None and (await kinds(port_store, got)).count("input.requested") == 1
    # asked again (a re-run): the first question stands, nothing more is queued or written
    again = await port_store.record_question(*question(op_id))
    assert again is not None and not again[1] and again[0].name == "$ask:1"
    assert len(await port_store.list_callbacks(op_id)) == 1
    assert (await kinds(port_store, got)).count("input.requested") == 1
    # without a callback (the caller did not ask): the question and its event only
    second = await port_store.record_question(*question(op_id, "$ask:2")[:2], None)
    assert second is not None and second[1]
    assert len(await port_store.list_callbacks(op_id)) == 1
    # a closed operation takes no question
    assert await port_store.complete(closing(got, 3))
    assert await port_store.record_question(*question(op_id, "$ask:3")) is None
    assert len(await port_store.list_callbacks(op_id)) == 1
