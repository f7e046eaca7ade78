"""The small tables around operations: settings, the agent registry, caller secrets, saved
idempotent responses and A2A push configs. Portable SQLAlchemy Core, shared by both databases
through :class:`gateway.store.base.SqlStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Insert, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.domain.model import CallbackDelivery, CallerSecrets, Event, Operation
from gateway.domain.specs import AgentSpec
from gateway.store import rows
from gateway.store import schema as t
from gateway.store import statements as s
from gateway.store.errors import translate


class RecordTables:
    """Settings, registry, caller secrets, idempotency and A2A push configs."""

    engine: AsyncEngine

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def _lock_operation(self, conn: AsyncConnection, op_id: str) -> None:
        """Every transaction that writes an operation's events holds its row lock first, so
        the event ids of one operation are assigned in commit order (readers resuming from
        ``Last-Event-ID`` never skip an event that committed late)."""

    def _insert_if_new(self, table: Table, keys: list[Column[Any]]) -> Insert:
        """``INSERT ... ON CONFLICT (keys) DO NOTHING`` in the dialect's spelling."""
        raise NotImplementedError

    @translate
    async def get_or_create_setting(self, name: str, value: str) -> str:
        async with self._tx() as conn:
            row = (
                await conn.execute(select(t.settings.c.value).where(t.settings.c.name == name))
            ).first()
            if row is not None:
                return str(row[0])
            await conn.execute(insert(t.settings).values(name=name, value=value))
            return value

    # -- registry ----------------------------------------------------------------------------

    @translate
    async def upsert_agent(self, agent: AgentSpec, at: datetime) -> int:
        spec = agent.to_json()
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(t.agents.c.version, t.agents.c.spec)
                    .where(t.agents.c.name == agent.name)
                    .with_for_update()
                )
            ).first()
            if row is None:
                await conn.execute(
                    insert(t.agents).values(
                        name=agent.name, version=1, spec=spec, created_at=at, updated_at=at
                    )
                )
                return 1
            if row.spec == spec:
                return int(row.version)
            version = int(row.version) + 1
            await conn.execute(
                update(t.agents)
                .where(t.agents.c.name == agent.name)
                .values(version=version, spec=spec, updated_at=at)
            )
            return version

    @translate
    async def get_agent(self, name: str) -> tuple[AgentSpec, int] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.agents).where(t.agents.c.name == name))).first()
        return (AgentSpec.from_json(row.spec), int(row.version)) if row else None

    @translate
    async def list_agents(self) -> list[tuple[AgentSpec, int]]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(select(t.agents).order_by(t.agents.c.name))).all()
        return [(AgentSpec.from_json(r.spec), int(r.version)) for r in rs]

    @translate
    async def delete_agent(self, name: str) -> bool:
        async with self._tx() as conn:
            res = await conn.execute(delete(t.agents).where(t.agents.c.name == name))
        return bool(res.rowcount)

    @translate
    async def write_agent_if_owner(
        self, name: str, agent: AgentSpec | None, at: datetime, *, owner: str | None
    ) -> tuple[str, int]:
        spec = agent.to_json() if agent is not None else None
        try:
            return await self._write_agent_if_owner_once(name, spec, at, owner)
        except IntegrityError:  # a concurrent first registration of the name won: decide again
            return await self._write_agent_if_owner_once(name, spec, at, owner)

    async def _write_agent_if_owner_once(
        self, name: str, spec: dict[str, Any] | None, at: datetime, owner: str | None
    ) -> tuple[str, int]:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(t.agents.c.version, t.agents.c.spec)
                    .where(t.agents.c.name == name)
                    .with_for_update()
                )
            ).first()
            if row is None:
                if spec is None:
                    return "absent", 0
                await conn.execute(
                    insert(t.agents).values(
                        name=name, version=1, spec=spec, created_at=at, updated_at=at
                    )
                )
                return "created", 1
            stored_owner = row.spec.get("owner") if isinstance(row.spec, dict) else None
            if owner is not None and stored_owner != owner:
                return "forbidden", int(row.version)
            if spec is None:
                await conn.execute(delete(t.agents).where(t.agents.c.name == name))
                return "deleted", int(row.version)
            if row.spec == spec:
                return "unchanged", int(row.version)
            version = int(row.version) + 1
            await conn.execute(
                update(t.agents)
                .where(t.agents.c.name == name)
                .values(version=version, spec=spec, updated_at=at)
            )
            return "updated", version

    # -- caller secrets ----------------------------------------------------------------------

    @translate
    async def caller_secrets(self, caller: str, now: datetime, new_secret: str) -> CallerSecrets:
        cs = t.caller_secrets
        async with self._tx() as conn:
            row = (await conn.execute(select(cs).where(cs.c.caller == caller))).first()
            if row is None:  # first use: insert unless a concurrent first use won
                await conn.execute(
                    self._insert_if_new(cs, [cs.c.caller]).values(
                        caller=caller, secret=new_secret, created_at=now
                    )
                )
                row = (await conn.execute(select(cs).where(cs.c.caller == caller))).one()
        return rows.CALLER_SECRETS.load(row)

    @translate
    async def rotate_caller_secret(
        self, caller: str, new_secret: str, now: datetime, previous_until: datetime
    ) -> CallerSecrets:
        cs = t.caller_secrets
        async with self._tx() as conn:
            row = (
                await conn.execute(select(cs).where(cs.c.caller == caller).with_for_update())
            ).first()
            if row is None:
                await conn.execute(
                    insert(cs).values(caller=caller, secret=new_secret, created_at=now)
                )
                return CallerSecrets(caller=caller, secret=new_secret, created_at=now)
            await conn.execute(
                update(cs)
                .where(cs.c.caller == caller)
                .values(
                    secret=new_secret,
                    previous_secret=row.secret,
                    previous_until=previous_until,
                    rotated_at=now,
                )
            )
        return CallerSecrets(
            caller=caller,
            secret=new_secret,
            created_at=row.created_at,
            previous_secret=row.secret,
            previous_until=previous_until,
            rotated_at=now,
        )

    # -- idempotency -------------------------------------------------------------------------

    @translate
    async def save_response(
        self, scope: str, key: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        params = {
            "b_scope": scope,
            "b_key": key,
            "b_status": status,
            "b_body": body,
            "b_headers": headers,
        }
        async with self._tx() as conn:
            await conn.execute(s.SAVE_RESPONSE, params)

    @translate
    async def purge_idempotency(self, now: datetime) -> int:
        async with self._tx() as conn:
            res = await conn.execute(s.PURGE_IDEMPOTENCY, {"b_now": now})
        return int(res.rowcount or 0)

    # -- a2a (A2A facade: durable push-notification configs; delivery reuses the callback outbox)

    @translate
    async def a2a_save_push_config(
        self, op_id: str, config_id: str, config: dict[str, Any], at: datetime
    ) -> None:
        """Create or replace one push-notification config of an operation (A2A task)."""
        p = t.a2a_push_configs
        async with self._tx() as conn:
            res = await conn.execute(
                update(p)
                .where(p.c.operation_id == op_id, p.c.config_id == config_id)
                .values(config=config)
            )
            if not res.rowcount:
                await conn.execute(
                    insert(p).values(
                        operation_id=op_id,
                        config_id=config_id,
                        config=config,
                        created_at=at,
                        delivery_id=None,
                    )
                )

    @translate
    async def a2a_push_configs(self, op_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.A2A_PUSH_CONFIGS, {"b_id": op_id})).all()
        return [dict(r[0]) for r in rs]

    @translate
    async def a2a_delete_push_config(self, op_id: str, config_id: str) -> bool:
        p = t.a2a_push_configs
        async with self._tx() as conn:
            res = await conn.execute(
                delete(p).where(p.c.operation_id == op_id, p.c.config_id == config_id)
            )
        return bool(res.rowcount)

    @translate
    async def a2a_due_pushes(self, limit: int) -> list[tuple[str, dict[str, Any], Operation]]:
        """(config id, config, operation) for configs of terminal operations not yet queued."""
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.A2A_DUE_PUSHES, {"b_limit": limit})).all()
        return [(str(r[0]), dict(r[1]), rows.OPERATION.load(r)) for r in rs]

    @translate
    async def a2a_progress_pushes(
        self, limit: int
    ) -> list[tuple[str, dict[str, Any], Operation, int]]:
        """(config id, config, operation, cursor) for configs of running operations with
        history after the config's progress cursor."""
        async with self.engine.connect() as conn:
            rs = (await conn.execute(s.A2A_PROGRESS_PUSHES, {"b_limit": limit})).all()
        return [(str(r[0]), dict(r[1]), rows.OPERATION.load(r), int(r[2])) for r in rs]

    @translate
    async def a2a_enqueue_progress(
        self,
        op_id: str,
        config_id: str,
        after: int,
        upto: int,
        deliveries: Sequence[CallbackDelivery],
    ) -> bool:
        """Move the config's progress cursor from ``after`` to ``upto`` (compare-and-set) and
        queue ``deliveries`` in the callback outbox, in one transaction."""
        params = {"b_id": op_id, "b_config": config_id, "b_after": after, "b_upto": upto}
        async with self._tx() as conn:
            res = await conn.execute(s.A2A_ADVANCE_PROGRESS, params)
            if not res.rowcount:
                return False
            for d in deliveries:
                await conn.execute(insert(t.callbacks).values(**rows.CALLBACK.values(d)))
        return True

    @translate
    async def a2a_enqueue_push(
        self, op_id: str, config_id: str, delivery: CallbackDelivery, event: Event
    ) -> bool:
        """Queue a push in the callback outbox, once per config (compare-and-set), with its
        event, in one transaction."""
        params = {"b_id": op_id, "b_config": config_id, "b_delivery": delivery.id}
        async with self._tx() as conn:
            await self._lock_operation(conn, op_id)
            res = await conn.execute(s.A2A_MARK_QUEUED, params)
            if not res.rowcount:
                return False
            await conn.execute(insert(t.callbacks).values(**rows.CALLBACK.values(delivery)))
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True
