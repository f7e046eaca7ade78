"""The Store port's input-required promises (issue 15 item 4), on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.domain.model import Event, Work
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
