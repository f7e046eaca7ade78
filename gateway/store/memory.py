"""An in-memory ``Store`` for fast unit tests: the semantics of the SQL stores, in one process.

Every method runs without yielding to the event loop while it changes state, so each is one
atomic transaction (a failed one leaves nothing behind). It honours what the port promises:
idempotency keys (an unexpired key returns the first operation), compare-and-set terminal
transitions, leases fenced by their owner, event ids ascending (globally, like a sequence),
the callback outbox with its leases, caller secrets, A2A push configs and ``listen_closed``.
Nothing survives the process; values are copied in and out, as a database would.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from gateway.domain.dispatch import RESULT_STEP
from gateway.domain.errors import UniqueViolation
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    RunningUpdate,
    Work,
)
from gateway.domain.ports import Created, NewOperation
from gateway.store.memory_journal import MemoryJournal
from gateway.store.memory_pull import MemoryPull
from gateway.store.rows import attempt_data


def _due(at: datetime | None, lease_until: datetime | None, now: datetime) -> bool:
    return at is not None and at <= now and (lease_until is None or lease_until < now)


class MemoryStore(MemoryPull, MemoryJournal):
    """The Store port on Python dicts."""

    # -- operations --------------------------------------------------------------------------

    def _create(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> Created:
        saved_keys = dict(self._keys)
        for rec in idempotency:
            existing = self._keys.get((rec.scope, rec.key))
            if existing is not None and existing.expires_at > rec.created_at:
                first = self._ops.get(existing.operation_id)
                if first is not None:
                    self._keys = saved_keys  # keys taken above for this start are released
                    return copy.deepcopy(first), copy.deepcopy(existing)
            self._keys[(rec.scope, rec.key)] = copy.deepcopy(rec)  # new, or expired: reused
        if op.id in self._ops:
            raise UniqueViolation("operation id taken")
        self._ops[op.id] = copy.deepcopy(replace(op, prev_lease_owner=None))
        for e in events:
            self._add_event(e)
        return op, None

    async def create_operation(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> tuple[Operation, IdempotencyRecord | None]:
        with self._tx():
            return self._create(op, events, idempotency)

    async def create_operations(self, items: Sequence[NewOperation]) -> list[Created]:
        with self._tx():
            return [self._create(*item) for item in items]

    async def get_operation(self, op_id: str) -> Operation | None:
        op = self._ops.get(op_id)
        return copy.deepcopy(op) if op else None

    async def list_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        limit: int = 100,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> list[Operation]:
        found = [
            op
            for op in self._ops.values()
            if _matches(op, caller, service, created_after, created_before, request_id_contains)
            and (state is None or op.state is state)
        ]
        found.sort(key=lambda o: o.id)
        found.sort(key=lambda o: o.created_at, reverse=True)
        return copy.deepcopy(found[:limit])

    async def page_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        with_link: str | None = None,
        or_id: str | None = None,
        changed_after: datetime | None = None,
        waiting: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Operation], int]:
        found = [
            op
            for op in self._ops.values()
            if _matches(op, caller, service, None, None, None)
            and (state is None or op.state is state)
            and (with_link is None or with_link in op.links or op.id == or_id)
            and (changed_after is None or (op.closed_at or op.created_at) > changed_after)
            and (waiting is None or self._waiting(op) is waiting)
        ]
        found.sort(key=lambda o: o.id)
        found.sort(key=lambda o: o.created_at, reverse=True)
        return copy.deepcopy(found[offset : offset + limit]), len(found)

    def _waiting(self, op: Operation) -> bool:
        if op.state is not OperationState.RUNNING or op.work is not None:
            return False
        names = self._steps.get(op.id, {})
        return any(n.startswith("$ask:") and "$input:" + n[5:] not in names for n in names)

    async def count_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self._ops.values():
            if _matches(op, caller, service, created_after, created_before, request_id_contains):
                counts[op.state.value] = counts.get(op.state.value, 0) + 1
        return counts

    async def claim_work(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Operation]:
        due = [
            op
            for op in self._ops.values()
            if op.work is not None and _due(op.next_attempt_at, op.lease_until, now)
        ]
        due.sort(key=lambda o: o.next_attempt_at or now)
        claimed = []
        for op in due[:limit]:
            attempt = op.work is Work.DISPATCH and op.cancel_requested_at is None
            op = replace(
                op,
                prev_lease_owner=op.lease_owner,
                lease_owner=owner,
                lease_until=lease_until,
                attempts=op.attempts + (1 if attempt else 0),
            )
            self._ops[op.id] = op
            if attempt:
                data = attempt_data(op, owner)
                self._add_event(
                    Event(operation_id=op.id, kind="attempt.started", at=now, data=data)
                )
            claimed.append(copy.deepcopy(op))
        return claimed

    async def extend_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        for op_id in ids:
            op = self._ops.get(op_id)
            if op is not None and op.lease_owner == owner:
                self._ops[op_id] = replace(op, lease_until=until)

    async def extend_callback_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        for d_id in ids:
            d = self._callbacks.get(d_id)
            if d is not None and d.lease_owner == owner:
                self._callbacks[d_id] = replace(d, lease_until=until)

    async def release_leases(self, owner: str) -> int:
        released = 0
        for op in list(self._ops.values()):
            if op.lease_owner == owner and op.state is OperationState.RUNNING:
                self._ops[op.id] = replace(op, lease_owner=None, lease_until=None)
                released += 1
        for d in list(self._callbacks.values()):
            if d.lease_owner == owner and d.state is DeliveryState.PENDING:
                self._callbacks[d.id] = replace(
                    d, lease_owner=None, lease_until=None, attempts=d.attempts - 1
                )
        return released

    async def update_running(
        self,
        op_id: str,
        owner: str | None,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event | None,
        agent_token: str | None = None,
        last_error: str | None = None,
        refund_attempt: bool = False,
        now: datetime | None = None,
        heartbeat_until: datetime | None = None,
    ) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING:
            return False
        if owner is not None and op.lease_owner != owner:
            return False
        # A cancel requested while the lease was held must not be lost.
        cancel_pending = op.cancel_requested_at is not None
        self._ops[op_id] = replace(
            op,
            work=Work.CANCEL if cancel_pending and work in (None, Work.POLL) else work,
            next_attempt_at=(
                (now or (event.at if event else next_attempt_at))
                if cancel_pending and work is not Work.CANCEL_WAIT
                else next_attempt_at
            ),
            lease_owner=None,
            lease_until=None,
            last_error=last_error,
            agent_token=agent_token if agent_token is not None else op.agent_token,
            attempts=op.attempts - (1 if refund_attempt else 0),
            heartbeat_until=heartbeat_until,
        )
        if event is not None:
            self._add_event(event)
        return True

    async def update_running_many(self, updates: Sequence[RunningUpdate]) -> list[bool]:
        return [
            await self.update_running(
                u.op_id,
                u.owner,
                work=u.work,
                next_attempt_at=u.next_attempt_at,
                event=u.event,
                agent_token=u.agent_token,
                last_error=u.last_error,
                refund_attempt=u.refund_attempt,
                now=u.now,
                heartbeat_until=u.heartbeat_until,
            )
            for u in updates
        ]

    async def update_closed(
        self,
        op_id: str,
        owner: str,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event,
    ) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state is OperationState.RUNNING or op.lease_owner != owner:
            return False
        self._ops[op_id] = replace(
            op, work=work, next_attempt_at=next_attempt_at, lease_owner=None, lease_until=None
        )
        self._add_event(event)
        return True

    async def request_cancel(self, op_id: str, now: datetime, event: Event) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state is not OperationState.RUNNING or op.cancel_requested_at:
            return False
        self._ops[op_id] = replace(
            op,
            cancel_requested_at=now,
            work=Work.CANCEL if op.work in (None, Work.POLL) else op.work,
            next_attempt_at=now,
        )
        self._add_event(event)
        return True

    def _complete(self, c: Completion) -> bool:
        op = self._ops.get(c.operation_id)
        if op is None or op.state is not OperationState.RUNNING:
            return False
        if c.only_if_owner is not None and op.lease_owner != c.only_if_owner:
            return False
        self._ops[op.id] = replace(
            op,
            state=c.state,
            work=Work.CANCEL if c.then_cancel_agent else None,
            next_attempt_at=c.at if c.then_cancel_agent else None,
            lease_owner=None,
            lease_until=None,
            result=c.result,
            result_content_type=c.result_content_type,
            failure=copy.deepcopy(c.failure),
            closed_at=c.at,
        )
        if c.callback is not None:
            self._add_callback(c.callback)
        self._add_event(c.event)
        return True

    async def complete(self, completion: Completion) -> bool:
        with self._tx():
            applied = self._complete(completion)
        self._closed([completion.operation_id] if applied else [])
        return applied

    async def complete_many(self, completions: Sequence[Completion]) -> list[bool]:
        with self._tx():
            applied = [self._complete(c) for c in completions]
        self._closed([c.operation_id for c, ok in zip(completions, applied, strict=True) if ok])
        return applied

    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        self._listeners.append(on_closed)
        try:
            await asyncio.Event().wait()
        finally:
            self._listeners.remove(on_closed)

    async def redrive(self, op_id: str, now: datetime, event: Event) -> bool:
        op = self._ops.get(op_id)
        if op is None or op.state not in (OperationState.FAILED, OperationState.CANCELED):
            return False
        self._steps.get(op_id, {}).pop(RESULT_STEP, None)  # run again: not the old answer
        self._ops[op_id] = replace(
            op,
            state=OperationState.RUNNING,
            work=Work.DISPATCH,
            next_attempt_at=now,
            failure=None,
            closed_at=None,
            cancel_requested_at=None,
            agent_token=None,
            lease_owner=None,
            lease_until=None,
        )
        self._add_event(event)
        return True

    async def due_timeouts(self, now: datetime, limit: int) -> list[Operation]:
        due = [
            op
            for op in self._ops.values()
            if op.state is OperationState.RUNNING
            and op.deadline_at is not None
            and op.deadline_at <= now
        ]
        due.sort(key=lambda o: o.deadline_at or now)
        return copy.deepcopy(due[:limit])

    # -- events ------------------------------------------------------------------------------

    async def list_events(self, op_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        found = [e for e in self._events if e.operation_id == op_id and (e.id or 0) > after]
        return copy.deepcopy(found[:limit])

    # -- callbacks ---------------------------------------------------------------------------

    async def claim_callbacks(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[CallbackDelivery]:
        due = [
            d
            for d in self._callbacks.values()
            if d.state is DeliveryState.PENDING and _due(d.next_attempt_at, d.lease_until, now)
        ]
        due.sort(key=lambda d: d.next_attempt_at)
        claimed = []
        for d in due[:limit]:
            d = replace(d, lease_owner=owner, lease_until=lease_until, attempts=d.attempts + 1)
            self._callbacks[d.id] = d
            claimed.append(copy.deepcopy(d))
        return claimed

    async def finish_callback(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: DeliveryState,
        next_attempt_at: datetime,
        last_error: str | None,
        event: Event,
    ) -> bool:
        d = self._callbacks.get(delivery_id)
        if d is None or d.lease_owner != owner or d.state is not DeliveryState.PENDING:
            return False
        self._callbacks[d.id] = replace(
            d,
            state=state,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            lease_owner=None,
            lease_until=None,
            delivered_at=event.at if state is DeliveryState.DELIVERED else d.delivered_at,
        )
        self._add_event(event)
        return True

    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        if not events:
            return 0
        by_id = {str(e.data["delivery_id"]): e for e in events}
        at = max(e.at for e in events)
        marked = 0
        for delivery_id, event in by_id.items():
            d = self._callbacks.get(delivery_id)
            if d is None or d.lease_owner != owner or d.state is not DeliveryState.PENDING:
                continue
            self._callbacks[d.id] = replace(
                d,
                state=DeliveryState.DELIVERED,
                delivered_at=at,
                next_attempt_at=at,
                last_error=None,
                lease_owner=None,
                lease_until=None,
            )
            self._add_event(event)
            marked += 1
        return marked

    async def list_callbacks(self, op_id: str) -> list[CallbackDelivery]:
        found = [d for d in self._callbacks.values() if d.operation_id == op_id]
        found.sort(key=lambda d: d.created_at)
        return copy.deepcopy(found)

    async def redrive_callback(
        self, delivery_id: str, now: datetime, expires_at: datetime, event: Event
    ) -> bool:
        d = self._callbacks.get(delivery_id)
        if d is None or d.state not in (DeliveryState.EXPIRED, DeliveryState.DISABLED):
            return False
        self._callbacks[d.id] = replace(
            d,
            state=DeliveryState.PENDING,
            next_attempt_at=now,
            expires_at=expires_at,
            lease_owner=None,
            lease_until=None,
        )
        self._add_event(event)
        return True


def _matches(
    op: Operation,
    caller: str | None,
    service: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    request_id_contains: str | None,
) -> bool:
    """The filters ``list_operations`` and ``count_operations`` share."""
    return (
        (caller is None or op.caller == caller)
        and (service is None or op.service == service)
        and (created_after is None or op.created_at >= created_after)
        and (created_before is None or op.created_at < created_before)
        and (
            not request_id_contains or request_id_contains.lower() in (op.request_id or "").lower()
        )
    )
