"""Driver errors reach callers as store errors whose messages hold no row values, SQL text
or statement parameters (any of them may be a secret)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from gateway.domain.errors import StoreError, UniqueViolation
from gateway.domain.model import Event, Operation, OperationState, Work
from gateway.store import SqlStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_op() -> Operation:
    return Operation(
        id=f"secret-{uuid.uuid4()}",
        service="svc",
        operation="op",
        state=OperationState.RUNNING,
        caller="alice",
        created_at=T0,
        work=Work.DISPATCH,
        next_attempt_at=T0,
    )


async def test_a_duplicate_key_error_does_not_repeat_the_key_it_clashed_on(db_url: str) -> None:
    store = SqlStore(db_url)
    try:
        await store.migrate()
        op = new_op()
        events = [Event(operation_id=op.id, kind="operation.started", at=T0)]
        await store.create_operation(op, events, [])
        with pytest.raises(UniqueViolation) as info:
            await store.create_operation(op, events, [])
        assert op.id not in str(info.value)
        assert "DETAIL" not in str(info.value)
    finally:
        await store.close()


async def test_a_statement_that_cannot_bind_its_values_names_neither_sql_nor_values(
    db_url: str,
) -> None:
    store = SqlStore(db_url)
    try:
        await store.migrate()
        config = {"token": "s3cr3t-push-token", "bad": object()}  # not JSON: binding fails
        with pytest.raises(StoreError) as info:
            await store.a2a_save_push_config("op-1", "c1", config, T0)
        message = str(info.value)
        assert "s3cr3t" not in message and "[SQL" not in message and "sg_" not in message
        assert "TypeError" in message
    finally:
        await store.close()
