"""Store conformance for the Nexus wire work (issue 14), on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.domain.model import OperationState, Work
from gateway.domain.ports import Store
from tests.store.test_conformance import LEASE, at, closing, ev, start


async def test_the_callers_headers_for_the_handler_are_read_back_with_the_operation(
    port_store: Store,
) -> None:
    op = await start(
        port_store,
        handler_headers={"x-tenant": "acme", "nexus-header-k": "v"},
        links=['<https://a.example/1>; type="a.v1.A"', '<https://b.example/2>; type="b.B"'],
    )
    got = await port_store.get_operation(op.id)
    assert got == op
    (claimed,) = await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert claimed.handler_headers == {"x-tenant": "acme", "nexus-header-k": "v"}


async def test_a_cancel_the_agent_took_waits_for_its_grace_and_a_completion_ends_the_wait(
    port_store: Store,
) -> None:
    op = await start(port_store)
    (first,) = await port_store.claim_work("w1", at(1), at(1) + LEASE, 10)
    assert await port_store.request_cancel(op.id, at(2), ev(op, "cancel.requested", 2))
    # the cancel was sent and taken (202): the operation waits until the grace ends, even
    # though a cancel is pending (other work with a cancel pending becomes due at once)
    assert await port_store.update_running(
        op.id, "w1", work=Work.CANCEL_WAIT, next_attempt_at=at(300), event=ev(op, "x", 3)
    )
    got = await port_store.get_operation(op.id)
    assert got is not None and (got.work, got.next_attempt_at) == (Work.CANCEL_WAIT, at(300))
    assert await port_store.claim_work("w1", at(100), at(100) + LEASE, 10) == []
    (due,) = await port_store.claim_work("w1", at(301), at(301) + LEASE, 10)
    assert due.work is Work.CANCEL_WAIT and due.attempts == first.attempts  # not an attempt
    # the agent's completion in any state closes it and ends the wait
    assert await port_store.complete(closing(op, 302, OperationState.SUCCEEDED))
    got = await port_store.get_operation(op.id)
    assert got is not None and got.state is OperationState.SUCCEEDED and got.work is None
