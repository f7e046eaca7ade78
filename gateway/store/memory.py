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
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from gateway.domain.errors import UniqueViolation
from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
)
from gateway.domain.ports import Created, NewOperation
from gateway.store.rows import attempt_data
from registry.model import AgentSpec


@dataclass
class _Agent:
    spec: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass
class _PushConfig:
    config: dict[str, Any]
    created_at: datetime
    delivery_id: str | None = None


def _due(at: datetime | None, lease_until: datetime | None, now: datetime) -> bool:
    return at is not None and at <= now and (lease_until is None or lease_until < now)


class MemoryStore:
    """The Store port on Python dicts."""

    dialect = "memory"

    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}
        self._events: list[Event] = []
        self._event_ids = itertools.count(1)
        self._keys: dict[tuple[str, str], IdempotencyRecord] = {}
        self._callbacks: dict[str, CallbackDelivery] = {}
        self._secrets: dict[str, CallerSecrets] = {}
        self._settings: dict[str, str] = {}
        self._agents: dict[str, _Agent] = {}
        self._push: dict[tuple[str, str], _PushConfig] = {}
        self._listeners: list[Callable[[list[str]], None]] = []

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """Undo every change of the block if it raises (the tables are copied, not rows:
        rows are frozen dataclasses, replaced rather than changed)."""
        saved = (
            dict(self._ops),
            list(self._events),
            dict(self._keys),
            dict(self._callbacks),
            dict(self._secrets),
            dict(self._settings),
            dict(self._agents),
            {k: replace(v) for k, v in self._push.items()},
        )
        try:
            yield
        except BaseException:
            (
                self._ops,
                self._events,
                self._keys,
                self._callbacks,
                self._secrets,
                self._settings,
                self._agents,
                self._push,
            ) = saved
            raise

    def _add_event(self, e: Event) -> None:
        self._events.append(replace(e, id=next(self._event_ids), data=copy.deepcopy(e.data)))

    def _add_callback(self, d: CallbackDelivery) -> None:
        if d.id in self._callbacks:
            raise UniqueViolation("callback delivery id taken")
        self._callbacks[d.id] = copy.deepcopy(d)

    def _closed(self, ids: list[str]) -> None:
        if ids:
            for listener in list(self._listeners):
                listener(list(ids))

    # -- lifecycle ---------------------------------------------------------------------------

    async def migrate(self) -> None:
        return None

    async def migrations_current(self) -> bool:
        return True

    async def ping(self) -> None:
        return None

    async def maintenance_warnings(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None

    async def get_or_create_setting(self, name: str, value: str) -> str:
        return self._settings.setdefault(name, value)

    # -- registry ----------------------------------------------------------------------------

    async def upsert_agent(self, agent: AgentSpec, at: datetime) -> int:
        spec = json.loads(json.dumps(agent.to_json()))  # as a JSON column gives it back
        row = self._agents.get(agent.name)
        if row is None:
            self._agents[agent.name] = _Agent(spec, 1, at, at)
            return 1
        if row.spec == spec:
            return row.version
        self._agents[agent.name] = _Agent(spec, row.version + 1, row.created_at, at)
        return row.version + 1

    async def get_agent(self, name: str) -> tuple[AgentSpec, int] | None:
        row = self._agents.get(name)
        return (AgentSpec.from_json(copy.deepcopy(row.spec)), row.version) if row else None

    async def list_agents(self) -> list[tuple[AgentSpec, int]]:
        return [
            (AgentSpec.from_json(copy.deepcopy(r.spec)), r.version)
            for _, r in sorted(self._agents.items())
        ]

    async def delete_agent(self, name: str) -> bool:
        return self._agents.pop(name, None) is not None

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
    ) -> list[Operation]:
        found = [
            op
            for op in self._ops.values()
            if (caller is None or op.caller == caller)
            and (service is None or op.service == service)
            and (state is None or op.state is state)
        ]
        found.sort(key=lambda o: o.id)
        found.sort(key=lambda o: o.created_at, reverse=True)
        return copy.deepcopy(found[:limit])

    async def count_operations(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self._ops.values():
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
                if cancel_pending
                else next_attempt_at
            ),
            lease_owner=None,
            lease_until=None,
            last_error=last_error,
            agent_token=agent_token if agent_token is not None else op.agent_token,
            attempts=op.attempts - (1 if refund_attempt else 0),
        )
        if event is not None:
            self._add_event(event)
        return True

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

    # -- caller secrets ----------------------------------------------------------------------

    async def caller_secrets(self, caller: str, now: datetime, new_secret: str) -> CallerSecrets:
        return self._secrets.setdefault(
            caller, CallerSecrets(caller=caller, secret=new_secret, created_at=now)
        )

    async def rotate_caller_secret(
        self, caller: str, new_secret: str, now: datetime, previous_until: datetime
    ) -> CallerSecrets:
        row = self._secrets.get(caller)
        if row is None:
            fresh = CallerSecrets(caller=caller, secret=new_secret, created_at=now)
        else:
            fresh = CallerSecrets(
                caller=caller,
                secret=new_secret,
                created_at=row.created_at,
                previous_secret=row.secret,
                previous_until=previous_until,
                rotated_at=now,
            )
        self._secrets[caller] = fresh
        return fresh

    # -- idempotency -------------------------------------------------------------------------

    async def save_response(
        self, scope: str, key: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        rec = self._keys.get((scope, key))
        if rec is not None:
            self._keys[(scope, key)] = replace(
                rec, response_status=status, response_body=body, response_headers=dict(headers)
            )

    async def purge_idempotency(self, now: datetime) -> int:
        expired = [k for k, rec in self._keys.items() if rec.expires_at <= now]
        for k in expired:
            del self._keys[k]
        return len(expired)

    # -- a2a ---------------------------------------------------------------------------------

    async def a2a_save_push_config(
        self, op_id: str, config_id: str, config: dict[str, Any], at: datetime
    ) -> None:
        stored = json.loads(json.dumps(config))
        row = self._push.get((op_id, config_id))
        if row is None:
            self._push[(op_id, config_id)] = _PushConfig(stored, at)
        else:
            row.config = stored

    def _configs(self, op_id: str | None = None) -> list[tuple[tuple[str, str], _PushConfig]]:
        found = [(k, v) for k, v in self._push.items() if op_id is None or k[0] == op_id]
        found.sort(key=lambda kv: kv[1].created_at)
        return found

    async def a2a_push_configs(self, op_id: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(v.config) for _, v in self._configs(op_id)]

    async def a2a_delete_push_config(self, op_id: str, config_id: str) -> bool:
        return self._push.pop((op_id, config_id), None) is not None

    async def a2a_due_pushes(self, limit: int) -> list[tuple[str, dict[str, Any], Operation]]:
        due = []
        for (op_id, config_id), v in self._configs():
            op = self._ops.get(op_id)
            if v.delivery_id is None and op is not None and op.state.terminal:
                due.append((config_id, copy.deepcopy(v.config), copy.deepcopy(op)))
        return due[:limit]

    async def a2a_enqueue_push(
        self, op_id: str, config_id: str, delivery: CallbackDelivery, event: Event
    ) -> bool:
        with self._tx():
            row = self._push.get((op_id, config_id))
            if row is None or row.delivery_id is not None:
                return False
            self._add_callback(delivery)
            self._push[(op_id, config_id)] = replace(row, delivery_id=delivery.id)
            self._add_event(event)
        return True
