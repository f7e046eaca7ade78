"""The store port on both databases: leases, takeovers, error translation."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from gateway.domain.clock import SystemClock
from gateway.domain.errors import StoreError, StoreUnavailable, UniqueViolation
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.engine.batching import GroupCommit
from gateway.store import SqlStore
from gateway.store.errors import is_connection_error as _is_connection_error
from gateway.store.errors import translate as _translate
from tests.conftest import pg_admin


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


def key_for(op: Operation, key: str, at: datetime, ttl_s: float = 60) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope="alice",
        key=key,
        fingerprint="f",
        operation_id=op.id,
        created_at=at,
        expires_at=at + timedelta(seconds=ttl_s),
    )


def leased_delivery(op: Operation, at: datetime, owner: str = "w1") -> CallbackDelivery:
    """A callback outbox row as the engine inserts it: leased to the closing worker."""
    return CallbackDelivery(
        id=f"d-{op.id}",
        operation_id=op.id,
        url="https://caller.example/cb",
        headers={},
        body=b"{}",
        created_at=at,
        expires_at=at + timedelta(hours=1),
        next_attempt_at=at,
        attempts=1,
        lease_owner=owner,
        lease_until=at + timedelta(seconds=30),
    )


def succeeded(op: Operation, at: datetime, callback: CallbackDelivery | None = None) -> Completion:
    return Completion(
        operation_id=op.id,
        state=OperationState.SUCCEEDED,
        at=at,
        result=b"{}",
        event=Event(operation_id=op.id, kind="operation.succeeded", at=at),
        callback=callback,
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


async def test_a_write_queued_just_as_the_flusher_finishes_is_still_committed() -> None:
    done: list[int] = []

    async def one(item: int) -> int:
        done.append(item)
        return item

    async def many(items: Sequence[int]) -> list[int]:
        done.extend(items)
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(many, one)
    assert await group.submit(1) == 1
    # This writer woke up before the finished flusher's task was tidied away; no other writer
    # comes after it, so nobody else would start a flusher for it.
    async with asyncio.timeout(2.0):  # not wait_for: the write must be queued in this task
        assert await group.submit(2) == 2
    assert done == [1, 2]


async def test_a_writer_that_stops_waiting_does_not_cancel_the_batch_others_wait_for(
    db_url: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    committing = asyncio.Event()

    async def slow_many(items: Sequence[Completion]) -> list[bool]:
        committing.set()
        await asyncio.sleep(0.1)  # the commit is under way when one writer gives up
        return await store.complete_many(items)

    try:
        ops = [new_op(now) for _ in range(3)]
        for op in ops:
            await store.create_operation(op, [], [])
        group: GroupCommit[Completion, bool] = GroupCommit(slow_many, store.complete)
        writers = [asyncio.ensure_future(group.submit(succeeded(op, now))) for op in ops]
        await committing.wait()
        writers[0].cancel()
        assert await asyncio.gather(*writers[1:]) == [True, True]
        assert writers[0].cancelled()
        # the writer that gave up was in the batch: its operation closed all the same
        assert await store.count_operations() == {"succeeded": 3}
    finally:
        await store.close()


async def test_a_taken_key_returns_the_first_operation_and_leaves_no_partial_write(
    db_url: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()

    def rec(key: str, op: Operation) -> IdempotencyRecord:
        return key_for(op, key, now)

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
        later = key_for(fourth, "rid:1", now + timedelta(seconds=120))
        evs = [Event(operation_id=fourth.id, kind="started", at=now)]
        assert (await store.create_operation(fourth, evs, [later]))[1] is None
    finally:
        await store.close()


async def test_a_start_and_its_completion_store_every_field_they_were_given(db_url: str) -> None:
    # On PostgreSQL both go through the one-statement hot path; on SQLite through SQLAlchemy.
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    try:
        op = replace(
            new_op(now),
            request_id="r-1",
            input=b'{"q": "\\u00e9t\\u00e9"}',
            input_content_type="application/json",
            callback_url="https://caller.example/cb",
            callback_headers={"nexus-callback-token": "t", "x-trace": "1"},
            links=[{"url": "https://x.example/1", "type": "t"}],
            lease_owner="w1",
            lease_until=now + timedelta(seconds=30),
            deadline_at=now + timedelta(seconds=300),
            traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        )
        events = [
            Event(operation_id=op.id, kind="operation.started", at=now, data={"n": [1, "é"]}),
            Event(operation_id=op.id, kind="attempt.started", at=now, data={"attempt": 1}),
        ]
        key = IdempotencyRecord(
            scope="alice",
            key="rid:r-1",
            fingerprint="f",
            operation_id=op.id,
            created_at=now,
            expires_at=now + timedelta(seconds=60),
        )
        assert await store.create_operation(op, events, [key]) == (op, None)
        assert await store.get_operation(op.id) == op
        got = await store.list_events(op.id)
        assert [(e.kind, e.data, e.at) for e in got] == [(e.kind, e.data, e.at) for e in events]

        later = now + timedelta(seconds=2)
        callback = CallbackDelivery(
            id="d-1",
            operation_id=op.id,
            url="https://caller.example/cb",
            headers={"content-type": "application/json"},
            body=b'{"state": "failed"}',
            created_at=later,
            expires_at=later + timedelta(hours=1),
            next_attempt_at=later,
            caller="alice",
            attempts=1,
            lease_owner="w1",
            lease_until=later + timedelta(seconds=30),
        )
        fail = {"message": "agent refused", "metadata": {"type": "x"}}
        closing = Completion(
            operation_id=op.id,
            state=OperationState.FAILED,
            at=later,
            failure=fail,
            event=Event(operation_id=op.id, kind="operation.failed", at=later, data={"a": 1}),
            callback=callback,
            only_if_owner="someone-else",
        )
        assert not await store.complete(closing)  # fenced out: another owner holds the lease
        assert (await store.get_operation(op.id)) == op
        assert await store.complete(replace(closing, only_if_owner="w1"))
        closed = await store.get_operation(op.id)
        assert closed is not None
        assert (closed.state, closed.failure, closed.closed_at) == (
            OperationState.FAILED,
            fail,
            later,
        )
        assert (closed.lease_owner, closed.work, closed.result) == (None, None, None)
        assert [e.kind for e in await store.list_events(op.id)][-1] == "operation.failed"
        assert await store.list_callbacks(op.id) == [callback]
        assert not await store.complete(replace(closing, only_if_owner=None))  # closed once
    finally:
        await store.close()


async def test_a_connection_killed_under_the_hot_path_is_replaced_not_reused(
    pg_db: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(pg_db, pool_size=1)
    try:

        async def start() -> Operation:
            op = new_op(now)
            await store.create_operation(op, [Event(operation_id=op.id, kind="s", at=now)], [])
            return op

        await start()  # the pool's only connection is open and idle
        name = pg_db.rsplit("/", 1)[1]
        pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        with pytest.raises(StoreUnavailable):
            await start()
        op = await start()  # a fresh connection, not the dead one back from the pool
        assert await store.get_operation(op.id) == op
    finally:
        await store.close()


async def test_batched_starts_insert_the_free_ones_and_answer_duplicates_with_the_first(
    db_url: str,
) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()

    def start(*keys: str) -> tuple[Operation, list[Event], list[IdempotencyRecord]]:
        op = new_op(now)
        evs = [
            Event(operation_id=op.id, kind="operation.started", at=now),
            Event(operation_id=op.id, kind="attempt.started", at=now, data={"attempt": 1}),
        ]
        return op, evs, [key_for(op, k, now) for k in keys]

    try:
        earlier = start("rid:old")
        await store.create_operation(*earlier)
        plain, keyed, twin, taken, two = (
            start(),
            start("rid:a"),
            start("rid:a"),  # the same request id twice in one batch
            start("rid:old"),  # a key taken by an earlier start
            start("key:k", "rid:b"),  # two keys: the one-by-one path
        )
        results = await store.create_operations([plain, keyed, twin, taken, two])
        assert [op.id for op, _ in results] == [
            plain[0].id,
            keyed[0].id,
            keyed[0].id,
            earlier[0].id,
            two[0].id,
        ]
        assert [rec.key if rec else None for _, rec in results] == [
            None,
            None,
            "rid:a",
            "rid:old",
            None,
        ]
        for op in (plain[0], keyed[0], two[0]):
            assert await store.get_operation(op.id) == op
            kinds = [e.kind for e in await store.list_events(op.id)]
            assert kinds == ["operation.started", "attempt.started"]
        for op in (twin[0], taken[0]):  # nothing of a deduplicated start stays behind
            assert await store.get_operation(op.id) is None
            assert await store.list_events(op.id) == []
    finally:
        await store.close()


async def test_a_delivery_ack_counts_only_for_the_lease_holder_and_only_once(db_url: str) -> None:
    now = SystemClock().now()
    store = SqlStore(db_url)
    await store.migrate()
    try:
        op = new_op(now)
        await store.create_operation(op, [Event(operation_id=op.id, kind="s", at=now)], [])
        delivery = leased_delivery(op, now, owner="w1")
        assert await store.complete(succeeded(op, now, delivery))
        ack = Event(
            operation_id=op.id,
            kind="callback.delivered",
            at=now,
            data={"delivery_id": delivery.id},
        )
        assert await store.callbacks_delivered("w2", [ack]) == 0  # not the lease holder
        assert await store.callbacks_delivered("w1", [ack]) == 1
        assert await store.callbacks_delivered("w1", [ack]) == 0  # already delivered
        (stored,) = await store.list_callbacks(op.id)
        assert (stored.state.value, stored.delivered_at, stored.lease_owner) == (
            "delivered",
            now,
            None,
        )
        kinds = [e.kind for e in await store.list_events(op.id)]
        assert kinds == ["s", "operation.succeeded", "callback.delivered"]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (sqlite3.OperationalError("database is locked"), StoreUnavailable),
        (sqlite3.OperationalError("disk I/O error"), StoreUnavailable),
        (sqlite3.IntegrityError("UNIQUE constraint failed: sg_operations.id"), UniqueViolation),
        (sqlite3.OperationalError("no such table: sg_operations"), StoreError),
    ],
)
async def test_sqlite_driver_errors_on_the_hot_path_become_store_errors(
    raised: Exception, expected: type[StoreError]
) -> None:
    @_translate
    async def write() -> None:
        raise raised

    with pytest.raises(expected) as info:
        await write()
    assert type(info.value) is expected


async def test_the_migrations_go_down_to_nothing_and_back_up(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        await store.migrate()
        cfg = store._alembic_config()

        def downgrade(sync_conn: Any) -> list[str]:
            cfg.attributes["connection"] = sync_conn
            command.downgrade(cfg, "base")
            return [n for n in inspect(sync_conn).get_table_names() if n.startswith("sg_")]

        async with store.engine.begin() as conn:
            assert await conn.run_sync(downgrade) == []
        assert not await store.migrations_current()
        await store.migrate()
        assert await store.migrations_current()
        now = SystemClock().now()
        op = new_op(now)
        await store.create_operation(op, [Event(operation_id=op.id, kind="s", at=now)], [])
        assert await store.get_operation(op.id) == op
    finally:
        await store.close()


async def test_hot_batches_stay_key_lookups_after_the_tables_grow_without_analyze(
    pg_db: str,
) -> None:
    # A plan cached while the tables were empty scans them whole once they are big, and with
    # autovacuum off no ANALYZE ever replaces it: every batch must be planned for what it is.
    now = SystemClock().now()
    store = SqlStore(pg_db, pool_size=2)  # one hot-path connection: every batch plans there
    try:

        async def batch() -> None:
            ops = [new_op(now) for _ in range(2)]
            await store.create_operations(
                [(op, [Event(operation_id=op.id, kind="s", at=now)], []) for op in ops]
            )
            closing = [succeeded(op, now, leased_delivery(op, now)) for op in ops]
            assert await store.complete_many(closing) == [True, True]
            acks = [
                Event(
                    operation_id=op.id,
                    kind="callback.delivered",
                    at=now,
                    data={"delivery_id": f"d-{op.id}"},
                )
                for op in ops
            ]
            assert await store.callbacks_delivered("w1", acks) == 2

        for _ in range(8):  # more than the 5 executions after which a generic plan may stick
            await batch()
        conn = await asyncpg.connect(pg_db)
        try:
            await conn.execute(
                "INSERT INTO sg_operations (id, service, operation, state, caller, input,"
                " callback_headers, links, work, attempts, next_attempt_at, created_at,"
                " deadline_at) SELECT 'bulk-' || g, 'a', 'b', 'running', 'c', ''::bytea, '{}',"
                " '[]', 'dispatch', 1, now(), now(), now() + interval '1 hour'"
                " FROM generate_series(1, 20000) g"
            )
            await conn.execute(
                "INSERT INTO sg_callbacks (id, operation_id, caller, url, headers, body, state,"
                " attempts, next_attempt_at, expires_at, created_at) SELECT 'bulk-' || g,"
                " 'bulk-' || g, 'c', 'u', '{}', ''::bytea, 'pending', 0, now(), now(), now()"
                " FROM generate_series(1, 20000) g"
            )
            read = (
                "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables"
                " WHERE relname IN ('sg_operations', 'sg_callbacks')"
            )
            before = await conn.fetchval(read)
            await batch()
            await store.close()  # a backend reports its table statistics when it exits
            await asyncio.sleep(0.5)
            after = await conn.fetchval(read)
        finally:
            await conn.close()
        assert after - before < 1000  # not 20,000 rows read to close two operations
    finally:
        await store.close()


async def test_postgresql_without_autovacuum_is_reported_at_start(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        warnings = await store.maintenance_warnings()
        if store.dialect == "sqlite":
            assert warnings == []
            return
        conn = await asyncpg.connect(db_url)
        try:
            autovacuum = await conn.fetchval("SELECT current_setting('autovacuum')")
        finally:
            await conn.close()
        assert bool(warnings) is (autovacuum == "off")
        assert all("VACUUM ANALYZE" in w for w in warnings)
    finally:
        await store.close()
