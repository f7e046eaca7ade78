"""The store port on both databases: leases, takeovers, error translation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy.exc import DBAPIError

from gateway.domain.clock import SystemClock
from gateway.domain.errors import StoreError, StoreUnavailable
from gateway.domain.model import (
    Completion,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.engine.batching import GroupCommit
from gateway.store.sqlstore import SqlStore, _is_connection_error


def new_op(now: object) -> Operation:
    assert hasattr(now, "tzinfo")
    return Operation(
        id=str(uuid.uuid4()),
        service="a",
        operation="b",
        state=OperationState.RUNNING,
        caller="c",
        created_at=now,  # type: ignore[arg-type]
        work=Work.DISPATCH,
        next_attempt_at=now,  # type: ignore[arg-type]
    )


async def test_concurrent_claimers_never_lease_the_same_operation(db_url: str) -> None:
    now = SystemClock().now()
    setup = SqlStore(db_url)
    await setup.migrate()
    ids = set()
    for _ in range(60):
        op = new_op(now)
        ids.add(op.id)
        await setup.create_operation(op, [Event(operation_id=op.id, kind="started", at=now)], [])
    await setup.close()

    async def claimer(name: str) -> list[str]:
        store = SqlStore(db_url)
        got: list[str] = []
        try:
            while True:
                batch = await store.claim_work(name, now, now + timedelta(seconds=30), 4)
                if not batch:
                    return got
                got += [o.id for o in batch]
        finally:
            await store.close()

    a, b, c = await asyncio.gather(claimer("a"), claimer("b"), claimer("c"))
    assert sorted(a + b + c) == sorted(ids)  # everything claimed exactly once
    assert not (set(a) & set(b)) and not (set(a) & set(c)) and not (set(b) & set(c))


async def test_an_expired_lease_is_taken_over_and_the_takeover_is_recorded(db_url: str) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    try:
        op = new_op(now)
        await store.create_operation(op, [Event(operation_id=op.id, kind="started", at=now)], [])
        first = await store.claim_work("a", now, now + timedelta(seconds=5), 10)
        assert [o.id for o in first] == [op.id]
        assert await store.claim_work("b", now + timedelta(seconds=1), now, 10) == []  # leased
        later = now + timedelta(seconds=6)
        second = await store.claim_work("b", later, later + timedelta(seconds=5), 10)
        assert [o.attempts for o in second] == [2]
        events = await store.list_events(op.id)
        assert events[-1].data == {"attempt": 2, "owner": "b", "taken_over_from": "a"}
        # The dead owner's late result is fenced off: its lease is gone.
        assert not await store.update_running(
            op.id, "a", work=None, next_attempt_at=None, event=None, now=later
        )
    finally:
        await store.close()


class _PgError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["57P01", "57P03", "08006", "53300"])
def test_server_shutdown_and_connection_sqlstates_mean_the_store_is_unavailable(
    sqlstate: str,
) -> None:
    err = DBAPIError("SELECT 1", None, _PgError(sqlstate, "the database system is shutting down"))
    assert _is_connection_error(err)


def test_a_constraint_or_syntax_sqlstate_is_not_mistaken_for_unavailability() -> None:
    assert not _is_connection_error(DBAPIError("x", None, _PgError("42601", "syntax error")))


async def test_an_unreachable_database_is_reported_as_unavailable() -> None:
    store = SqlStore("postgresql://postgres@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    assert issubclass(StoreUnavailable, StoreError)


async def test_a_batch_of_completions_commits_together_and_each_operation_closes_once(
    db_url: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    try:
        ops = [new_op(now) for _ in range(3)]
        for op in ops:
            await store.create_operation(
                op, [Event(operation_id=op.id, kind="started", at=now)], []
            )

        def closing(op: Operation, kind: str) -> Completion:
            return Completion(
                operation_id=op.id,
                state=OperationState.SUCCEEDED,
                at=now,
                result=kind.encode(),
                event=Event(operation_id=op.id, kind=kind, at=now),
            )

        # The first operation is closed twice in one batch (say, by the agent and a timeout).
        batch = [closing(ops[0], "first"), closing(ops[1], "x"), closing(ops[0], "second")]
        batch.append(closing(ops[2], "y"))
        assert await store.complete_many(batch) == [True, True, False, True]
        first = await store.get_operation(ops[0].id)
        assert first is not None and first.result == b"first"
        kinds = [e.kind for e in await store.list_events(ops[0].id)]
        assert kinds == ["started", "first"]
    finally:
        await store.close()


async def test_group_commit_shares_transactions_and_answers_every_writer(db_url: str) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    calls: list[int] = []

    async def many(items: Sequence[Completion]) -> list[bool]:
        calls.append(len(items))
        return await store.complete_many(items)

    try:
        ops = [new_op(now) for _ in range(40)]
        for op in ops:
            await store.create_operation(
                op, [Event(operation_id=op.id, kind="started", at=now)], []
            )
        group: GroupCommit[Completion, bool] = GroupCommit(many, store.complete)
        results = await asyncio.gather(
            *(
                group.submit(
                    Completion(
                        operation_id=op.id,
                        state=OperationState.FAILED,
                        at=now,
                        failure={"message": "no"},
                        event=Event(operation_id=op.id, kind="operation.failed", at=now),
                    )
                )
                for op in ops
            )
        )
        assert results == [True] * 40
        assert sum(calls) + (40 - sum(calls)) == 40 and calls  # some writers shared a commit
        assert max(calls) > 1
        counts = await store.count_operations()
        assert counts == {"failed": 40}
    finally:
        await store.close()


async def test_a_taken_key_returns_the_first_operation_and_leaves_no_partial_write(
    db_url: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()

    def rec(key: str, op: Operation, ttl_s: float = 60) -> IdempotencyRecord:
        return IdempotencyRecord(
            scope="alice",
            key=key,
            fingerprint="f",
            operation_id=op.id,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )

    try:
        first = new_op(now)
        started = [Event(operation_id=first.id, kind="started", at=now)]
        assert (await store.create_operation(first, started, [rec("rid:1", first)]))[1] is None
        # A second start carries a new key and the taken one: nothing of it may stay behind.
        second = new_op(now)
        evs = [Event(operation_id=second.id, kind="started", at=now)]
        got, existing = await store.create_operation(
            second, evs, [rec("key:new", second), rec("rid:1", second)]
        )
        assert got.id == first.id and existing is not None and existing.key == "rid:1"
        assert await store.get_operation(second.id) is None
        third = new_op(now)
        evs = [Event(operation_id=third.id, kind="started", at=now)]
        assert (await store.create_operation(third, evs, [rec("key:new", third)]))[1] is None
        # An expired key is reused by the next start.
        fourth = new_op(now + timedelta(seconds=120))
        later = IdempotencyRecord(
            scope="alice",
            key="rid:1",
            fingerprint="f",
            operation_id=fourth.id,
            created_at=now + timedelta(seconds=120),
            expires_at=now + timedelta(seconds=180),
        )
        evs = [Event(operation_id=fourth.id, kind="started", at=now)]
        assert (await store.create_operation(fourth, evs, [later]))[1] is None
    finally:
        await store.close()
