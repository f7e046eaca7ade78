"""Heartbeats and the durable step journal on SQLAlchemy Core (portable; issue 12).

A heartbeat is one in-place ``UPDATE`` of the operation's ``heartbeat_until`` (and
``heartbeat_details`` when it brings a checkpoint), never a rewrite of the row nor an event.
The sweep for missed heartbeats reads a partial index of running operations that heartbeat,
on ``heartbeat_check_at``, which a heartbeat leaves alone (migration 0009).
Steps are rows of ``sg_steps``: the first write of a name wins, with its ``step.completed``
event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from gateway.domain.model import (
    CallbackDelivery,
    Event,
    Heartbeat,
    HeartbeatAck,
    Operation,
    OperationState,
    StepRecord,
)
from gateway.store import rows
from gateway.store import schema as t
from gateway.store import statements as s
from gateway.store.errors import translate
from gateway.store.records import RecordTables

ADVANCE_BATCH = 1000  # check times moved per sweep (the rest at the next one)


class JournalTables(RecordTables):
    """Heartbeat columns of ``sg_operations`` and the ``sg_steps`` journal."""

    @translate
    async def heartbeat(
        self,
        op_id: str,
        attempt: int | None,
        until: datetime,
        *,
        details: Any = None,
        has_details: bool,
    ) -> HeartbeatAck | None:
        beat = Heartbeat(
            operation_id=op_id,
            attempt=attempt,
            until=until,
            details=details,
            has_details=has_details,
        )
        return (await self.heartbeat_many([beat]))[0]

    @translate
    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatAck | None]:
        acks: dict[int, HeartbeatAck | None] = {}
        order = sorted(range(len(beats)), key=lambda i: beats[i].operation_id)  # lock order
        async with self._tx() as conn:
            for i in order:
                b = beats[i]
                params: dict[str, Any] = {
                    "b_id": b.operation_id,
                    "b_any_attempt": b.attempt is None,
                    "b_attempt": b.attempt if b.attempt is not None else -1,
                    "b_until": b.until,
                }
                if b.has_details:
                    params["b_details"] = b.details
                row = (await conn.execute(s.HEARTBEAT[b.has_details], params)).first()
                acks[i] = (
                    None
                    if row is None
                    else HeartbeatAck(
                        state=OperationState(row.state),
                        attempt=int(row.attempts),
                        cancel_requested=row.cancel_requested_at is not None,
                    )
                )
        return [acks[i] for i in range(len(beats))]

    @translate
    async def due_heartbeats(self, now: datetime, limit: int) -> list[Operation]:
        # first the check times that passed while the agent kept heartbeating: up to the
        # deadline (see statements.ADVANCE_HEARTBEAT_CHECKS)
        async with self._tx() as conn:
            await conn.execute(s.ADVANCE_HEARTBEAT_CHECKS, {"b_now": now, "b_limit": ADVANCE_BATCH})
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.DUE_HEARTBEATS, {"b_now": now, "b_limit": limit})).all()
        return [rows.OPERATION.load(r) for r in rs]

    @translate
    async def expire_heartbeat(
        self,
        op_id: str,
        attempt: int,
        now: datetime,
        *,
        next_attempt_at: datetime,
        last_error: str,
        event: Event,
    ) -> bool:
        params = {
            "b_id": op_id,
            "b_attempt": attempt,
            "b_now": now,
            "b_next": next_attempt_at,
            "b_error": last_error,
        }
        async with self._tx() as conn:
            await self._lock_operation(conn, op_id)
            res = await conn.execute(s.EXPIRE_HEARTBEAT, params)
            if not res.rowcount:
                return False
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True

    @translate
    async def record_step(self, step: StepRecord, event: Event) -> tuple[StepRecord, bool] | None:
        return (await self.record_steps([(step, event)]))[0]

    @translate
    async def record_steps(
        self, items: Sequence[tuple[StepRecord, Event]]
    ) -> list[tuple[StepRecord, bool] | None]:
        out: dict[int, tuple[StepRecord, bool] | None] = {}
        st = t.steps
        ins = self._insert_if_new(st, [st.c.operation_id, st.c.name]).returning(st.c.name)
        order = sorted(range(len(items)), key=lambda i: items[i][0].operation_id)  # lock order
        async with self._tx() as conn:
            for i in order:
                step, event = items[i]
                state = (
                    await conn.execute(s.LOCK_OPERATION_STATE, {"b_id": step.operation_id})
                ).scalar()
                if state != OperationState.RUNNING.value:
                    out[i] = None
                elif (await conn.execute(ins, rows.STEP.values(step))).first() is not None:
                    await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
                    out[i] = (step, True)
                else:
                    key = {"b_id": step.operation_id, "b_name": step.name}
                    row = (await conn.execute(s.SELECT_STEP, key)).one()
                    out[i] = (rows.STEP.load(row), False)
        return [out[i] for i in range(len(items))]

    @translate
    async def list_steps(self, op_id: str) -> list[StepRecord]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.LIST_STEPS, {"b_id": op_id})).all()
        return [rows.STEP.load(r) for r in rs]

    # -- input-required (issue 15 item 4) ---------------------------------------------------

    @translate
    async def record_question(
        self, step: StepRecord, event: Event, delivery: CallbackDelivery | None
    ) -> tuple[StepRecord, bool] | None:
        st = t.steps
        ins = self._insert_if_new(st, [st.c.operation_id, st.c.name]).returning(st.c.name)
        async with self._tx() as conn:
            state = (
                await conn.execute(s.LOCK_OPERATION_STATE, {"b_id": step.operation_id})
            ).scalar()
            if state != OperationState.RUNNING.value:
                return None
            if (await conn.execute(ins, rows.STEP.values(step))).first() is None:
                key = {"b_id": step.operation_id, "b_name": step.name}
                row = (await conn.execute(s.SELECT_STEP, key)).one()
                return rows.STEP.load(row), False
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
            if delivery is not None:
                await conn.execute(insert(t.callbacks).values(**rows.CALLBACK.values(delivery)))
        return step, True

    @translate
    async def park_for_input(self, op_id: str, attempt: int) -> bool:
        async with self._tx() as conn:
            res = await conn.execute(s.PARK_FOR_INPUT, {"b_id": op_id, "b_attempt": attempt})
        return bool(res.rowcount)

    @translate
    async def resume_with_input(self, op_id: str, now: datetime, event: Event) -> bool:
        async with self._tx() as conn:
            await self._lock_operation(conn, op_id)
            res = await conn.execute(s.RESUME_WITH_INPUT, {"b_id": op_id, "b_now": now})
            if not res.rowcount:
                return False
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True
