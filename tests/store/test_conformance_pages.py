"""The Store port's paged listing with an exact count (A2A ListTasks, issue 15 item 7), on
memory, SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.domain.model import Event, OperationState
from gateway.domain.ports import Store
from tests.store.test_conformance import at, closing, new_op, start, started
from tests.store.test_conformance_journal import accepted, step

CTX = '<ctx-1>; type="a2a.contextId"'


async def test_a_page_comes_with_the_exact_count_of_every_match(port_store: Store) -> None:
    # more than the 10,000 the old ListTasks scanned: the count is a query, not a scan
    ops = [new_op(created_at=at(i / 1000)) for i in range(10_003)]
    for i in range(0, len(ops), 2000):
        chunk = ops[i : i + 2000]
        await port_store.create_operations([(op, started(op), []) for op in chunk])
    page, total = await port_store.page_operations(offset=10_000, limit=50)
    assert total == 10_003
    assert [o.id for o in page] == [o.id for o in reversed(ops[:3])]  # newest first
    first, _ = await port_store.page_operations(limit=2)
    assert [o.id for o in first] == [ops[-1].id, ops[-2].id]
    beyond, total = await port_store.page_operations(offset=20_000, limit=50)
    assert (beyond, total) == ([], 10_003)


async def test_pages_filter_by_caller_state_context_time_and_waiting(port_store: Store) -> None:
    mine = await start(port_store, created_at=at(1), links=[CTX])
    await start(port_store, created_at=at(2), links=[CTX], caller="bob")
    root = await start(port_store, id="ctx-1", created_at=at(3))  # the context's first task
    other = await start(port_store, created_at=at(4), service="other")
    assert await port_store.complete(closing(other, 50))
    ids = {o.id for o in (await port_store.page_operations(caller="alice", limit=10))[0]}
    assert ids == {mine.id, root.id, other.id}
    page, total = await port_store.page_operations(caller="alice", with_link=CTX, or_id="ctx-1")
    assert ([o.id for o in page], total) == ([root.id, mine.id], 2)
    page, total = await port_store.page_operations(with_link=CTX)
    assert total == 2 and root.id not in {o.id for o in page}
    page, total = await port_store.page_operations(state=OperationState.SUCCEEDED)
    assert ([o.id for o in page], total) == ([other.id], 1)
    # changed after: closed after it, or else created after it
    page, total = await port_store.page_operations(changed_after=at(2.5))
    assert {o.id for o in page} == {root.id, other.id} and total == 2
    page, _ = await port_store.page_operations(changed_after=at(10))
    assert [o.id for o in page] == [other.id]  # closed at 50
    # waiting for input: a question without answer, owing no work
    asking = await accepted(port_store)
    await port_store.record_step(step(asking, "$ask:1", {"prompt": "?"}), _ev(asking))
    waiting, total = await port_store.page_operations(waiting=True)
    assert ([o.id for o in waiting], total) == ([asking], 1)
    running, _ = await port_store.page_operations(state=OperationState.RUNNING, waiting=False)
    assert asking not in {o.id for o in running} and mine.id in {o.id for o in running}
    await port_store.record_step(step(asking, "$input:1", {"value": 1}), _ev(asking))
    assert (await port_store.page_operations(waiting=True))[1] == 0


def _ev(op_id: str) -> Event:
    return Event(operation_id=op_id, kind="step.completed", at=at(2))
