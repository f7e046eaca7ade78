"""The in-memory store's tables and the small ones' methods: settings, the agent registry,
caller secrets, saved idempotent responses and A2A push configs (see ``memory.MemoryStore``).
"""

from __future__ import annotations

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
    Event,
    IdempotencyRecord,
    Operation,
)
from gateway.domain.specs import AgentSpec


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
    pushed_event_id: int = 0


class MemoryTables:
    """The tables (dicts of frozen rows), transactions and the small tables' methods."""

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

    async def write_agent_if_owner(
        self, name: str, agent: AgentSpec | None, at: datetime, *, owner: str | None
    ) -> tuple[str, int]:
        row = self._agents.get(name)
        if row is None:
            if agent is None:
                return "absent", 0
            return "created", await self.upsert_agent(agent, at)
        if owner is not None and row.spec.get("owner") != owner:
            return "forbidden", row.version
        if agent is None:
            del self._agents[name]
            return "deleted", row.version
        version = await self.upsert_agent(agent, at)
        return ("unchanged" if version == row.version else "updated"), version

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

    async def a2a_progress_pushes(
        self, limit: int
    ) -> list[tuple[str, dict[str, Any], Operation, int]]:
        due = []
        for (op_id, config_id), v in self._configs():
            op = self._ops.get(op_id)
            if v.delivery_id is not None or op is None or op.state.terminal:
                continue
            if any(
                e.operation_id == op_id and (e.id or 0) > v.pushed_event_id for e in self._events
            ):
                due.append(
                    (config_id, copy.deepcopy(v.config), copy.deepcopy(op), v.pushed_event_id)
                )
        return due[:limit]

    async def a2a_enqueue_progress(
        self,
        op_id: str,
        config_id: str,
        after: int,
        upto: int,
        deliveries: Sequence[CallbackDelivery],
    ) -> bool:
        with self._tx():
            row = self._push.get((op_id, config_id))
            if row is None or row.delivery_id is not None or row.pushed_event_id != after:
                return False
            for d in deliveries:
                self._add_callback(d)
            self._push[(op_id, config_id)] = replace(row, pushed_event_id=upto)
        return True

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
