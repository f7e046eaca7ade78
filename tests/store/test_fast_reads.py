"""``get_operation`` without SQLAlchemy's machinery (a lane on PostgreSQL, inline on SQLite)
reads exactly what the SQLAlchemy path reads, and only what is committed."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta

from gateway.domain.model import (
    Completion,
    Event,
    Operation,
    OperationState,
)
from gateway.store import SqlStore
from gateway.store.base import SqlStore as PortableStore
from gateway.store.sql_sqlite import BUSY_TIMEOUT_MS
from gateway.store.sqlite_inline import read_inline
from tests.store.test_conformance import new_op


def every_field(now: datetime) -> Operation:
    return new_op(
        created_at=now,
        input=b'{"x": "\xc3\xa9\\u0000 bytes \x00\xff"}',
        input_content_type="application/json",
        request_id="rid-1",
        callback_url="https://cb.example/x?y=1",
        callback_headers={"Nexus-Callback-Token": "t", "x-Other": "é"},
        links=["https://a.example/1", "urn:x"],
        attempts=3,
        next_attempt_at=now + timedelta(seconds=1, microseconds=7),
        lease_owner="gw-1",
        lease_until=now + timedelta(seconds=30),
        deadline_at=now + timedelta(days=30),
        agent_token="agent-token",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        handler_headers={"X-Trace": "1"},
    )


async def both_reads(store: SqlStore, op_id: str) -> tuple[object, object]:
    return await store.get_operation(op_id), await PortableStore.get_operation(store, op_id)


async def test_the_fast_read_is_the_sqlalchemy_read_for_every_field(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.migrate()
    try:
        now = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
        op = every_field(now)
        await store.create_operation(op, [Event(operation_id=op.id, kind="k", at=now)], [])
        fast, slow = await both_reads(store, op.id)
        assert fast == slow and fast is not None
        assert fast.callback_headers == op.callback_headers and fast.input == op.input
        assert fast.created_at == now and fast.created_at.tzinfo is not None
        details = {"n": [1, 2**70]}
        await store.heartbeat(
            op.id, 3, now + timedelta(seconds=60), details=details, has_details=True
        )
        closed = Completion(
            operation_id=op.id,
            state=OperationState.FAILED,
            at=now + timedelta(seconds=2),
            failure={"message": "no", "details": {"deep": [None, True, 1.5]}},
            event=Event(operation_id=op.id, kind="operation.failed", at=now),
        )
        assert await store.complete(closed)
        fast, slow = await both_reads(store, op.id)
        assert fast == slow and fast is not None
        assert fast.state is OperationState.FAILED and fast.failure == closed.failure
        assert await both_reads(store, "no-such-operation") == (None, None)
    finally:
        await store.close()


async def test_the_inline_sqlite_read_sees_only_what_is_committed(tmp_path: object) -> None:
    path = f"{tmp_path}/g.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        now = datetime.now(UTC)
        op = every_field(now)
        await store.create_operation(op, [], [])
        other.execute("BEGIN IMMEDIATE")  # another process writes and has not committed
        other.execute("UPDATE sg_operations SET state = 'succeeded' WHERE id = ?", (op.id,))
        seen = await store.get_operation(op.id)
        assert seen is not None and seen.state is OperationState.RUNNING
        other.execute("COMMIT")
        seen = await store.get_operation(op.id)
        assert seen is not None and seen.state is OperationState.SUCCEEDED
    finally:
        other.close()
        await store.close()


def test_an_inline_read_never_waits_for_a_lock_nor_reads_inside_a_transaction(
    tmp_path: object,
) -> None:
    path = f"{tmp_path}/plain.db"  # a rollback journal: a writer's lock keeps readers out
    writer = sqlite3.connect(path, isolation_level=None)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("CREATE TABLE t (x)")
        writer.execute("INSERT INTO t VALUES (1)")
        assert read_inline(reader, "SELECT x FROM t") == [(1,)]
        writer.execute("BEGIN EXCLUSIVE")
        began = time.monotonic()
        assert read_inline(reader, "SELECT x FROM t") is None  # locked: read it elsewhere
        assert time.monotonic() - began < 1.0  # at once, not after the busy timeout
        writer.execute("COMMIT")
        assert reader.execute("PRAGMA busy_timeout").fetchone() == (BUSY_TIMEOUT_MS,)
        reader.execute("BEGIN")
        assert read_inline(reader, "SELECT x FROM t") is None  # it would see the transaction's
        reader.execute("ROLLBACK")
    finally:
        writer.close()
        reader.close()
