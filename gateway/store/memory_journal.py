"""The in-memory store's heartbeats and step journal (see ``journal.JournalTables``)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from gateway.domain.model import (
    CallbackDelivery,
    Event,
    Heartbeat,
    HeartbeatAck,
    Operation,
    OperationState,
    StepRecord,
    Work,
)
from gateway.store.memory_records import MemoryTables


class MemoryJournal(MemoryTables):
    """Heartbeat fields of the operations and the journal, on dicts."""

    def __init__(self) -> None:
        super().__init__()
        self._steps: dict[str, dict[str, StepRecord]] = {}  # op id -> name -> step

    async def heartbeat(
        self,
        op_id: str,
        attempt: int | None,
        until: datetime,
        *,
        details: Any = None,
        has_details: bool,
    ) -> HeartbeatAck | None:
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING:
            return None
        if attempt is not None and op.attempts != attempt:
            return None
        self._ops[op_id] = replace(
            op,
            heartbeat_until=None if op.heartbeat_until is None else until,
            heartbeat_details=copy.deepcopy(details) if has_details else op.heartbeat_details,
        )
        return HeartbeatAck(
            state=op.state,
            attempt=op.attempts,
            cancel_requested=op.cancel_requested_at is not None,
        )

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatAck | None]:
        return [
            await self.heartbeat(
                b.operation_id, b.attempt, b.until, details=b.details, has_details=b.has_details
            )
            for b in beats
        ]

    async def due_heartbeats(self, now: datetime, limit: int) -> list[Operation]:
        due = [
            op
            for op in self._ops.values()
            if op.state is OperationState.RUNNING
            and op.heartbeat_until is not None
            and op.heartbeat_until <= now
            and op.work is None
        ]
        due.sort(key=lambda o: o.heartbeat_until or now)
        return copy.deepcopy(due[:limit])

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
        op = self._ops.get(op_id)
        if (
            op is None
            or op.state is not OperationState.RUNNING
            or op.attempts != attempt
            or op.work is not None
            or op.heartbeat_until is None
            or op.heartbeat_until > now
        ):
            return False
        self._ops[op_id] = replace(
            op,
            work=Work.DISPATCH,
            next_attempt_at=next_attempt_at,
            heartbeat_until=None,
            agent_token=None,
            last_error=last_error,
            lease_owner=None,
            lease_until=None,
        )
        self._add_event(event)
        return True

    async def record_step(self, step: StepRecord, event: Event) -> tuple[StepRecord, bool] | None:
        op = self._ops.get(step.operation_id)
        if op is None or op.state is not OperationState.RUNNING:
            return None
        journal = self._steps.setdefault(step.operation_id, {})
        existing = journal.get(step.name)
        if existing is not None:
            return copy.deepcopy(existing), False
        journal[step.name] = copy.deepcopy(step)
        self._add_event(event)
        return copy.deepcopy(step), True

    async def record_steps(
        self, items: Sequence[tuple[StepRecord, Event]]
    ) -> list[tuple[StepRecord, bool] | None]:
        return [await self.record_step(step, event) for step, event in items]

    async def list_steps(self, op_id: str) -> list[StepRecord]:
        steps = sorted(self._steps.get(op_id, {}).values(), key=lambda s: (s.at, s.name))
        return copy.deepcopy(steps)

    async def record_question(
        self, step: StepRecord, event: Event, delivery: CallbackDelivery | None
    ) -> tuple[StepRecord, bool] | None:
        recorded = await self.record_step(step, event)
        if recorded is not None and recorded[1] and delivery is not None:
            self._add_callback(delivery)
        return recorded

    async def park_for_input(self, op_id: str, attempt: int) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING or op.attempts != attempt:
            return False
        self._ops[op_id] = replace(op, heartbeat_until=None)
        return True

    async def resume_with_input(self, op_id: str, now: datetime, event: Event) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING or op.work is not None:
            return False
        self._ops[op_id] = replace(
            op,
            work=Work.DISPATCH,
            next_attempt_at=now,
            heartbeat_until=None,
            lease_owner=None,
            lease_until=None,
        )
        self._add_event(event)
        return True
