"""Pull workers' task queues on SQLAlchemy Core (portable; issue 12 item 4).

A pull agent's operation waits for a worker as a running row with no work owed and the agent
token ``pull-queued`` (a partial index covers exactly these). A worker's poll leases up to
``limit`` of them in one statement, oldest first, with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (two replicas' polls never lease the same row; SQLite serialises writers): the
agent token becomes ``pull-worker:<id>`` and the heartbeat deadline is set, so a worker that
dies loses the task to the heartbeat sweep, which dispatches it again. Each leased task gets
an ``attempt.leased`` event in the same transaction. ``sg_pull_workers`` keeps each worker's
last poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, case, func, select, update

from gateway.domain.model import Event, Operation, OperationState
from gateway.domain.specs import PULL_LEASED, PULL_QUEUED
from gateway.store import rows
from gateway.store import schema as t
from gateway.store import statements as s
from gateway.store.errors import translate
from gateway.store.records import RecordTables

_o, _w = t.operations, t.pull_workers
_TS = t.UTCDateTime()
_RUNNING = OperationState.RUNNING.value
_QUEUED = and_(
    _o.c.service == bindparam("b_service"),
    _o.c.state == _RUNNING,
    _o.c.work.is_(None),
    _o.c.agent_token == PULL_QUEUED,
)


def _claim_statement(n_ops: int) -> Any:
    due = (
        select(_o.c.id)
        .where(_QUEUED, _o.c.cancel_requested_at.is_(None))
        .order_by(_o.c.created_at)
        .limit(bindparam("b_limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )
    until: Any = bindparam("b_default", type_=_TS)
    if n_ops:
        until = case(
            *(
                (_o.c.operation == bindparam(f"b_op{i}"), bindparam(f"b_until{i}", type_=_TS))
                for i in range(n_ops)
            ),
            else_=until,
        )
    return (
        update(_o)
        .where(_o.c.id.in_(due.scalar_subquery()))
        .values(agent_token=bindparam("b_token"), heartbeat_until=until, heartbeat_check_at=until)
        .returning(*_o.c)
    )


_CLAIMS = {n: _claim_statement(n) for n in range(9)}  # the common shapes, built once
_TOUCH = (
    update(_w)
    .where(_w.c.agent == bindparam("b_agent"), _w.c.worker_id == bindparam("b_worker"))
    .values(last_poll_at=bindparam("b_at", type_=_TS))
)
_LIST_WORKERS = (
    select(_w.c.worker_id, _w.c.last_poll_at)
    .where(_w.c.agent == bindparam("b_agent"), _w.c.last_poll_at >= bindparam("b_since", type_=_TS))
    .order_by(_w.c.worker_id)
)
_FORGET_WORKERS = _w.delete().where(_w.c.last_poll_at < bindparam("b_before", type_=_TS))
_COUNTS = (
    select(_o.c.agent_token, func.count())
    .where(
        _o.c.service == bindparam("b_service"),
        _o.c.state == _RUNNING,
        _o.c.work.is_(None),
        _o.c.agent_token.like("pull-%"),
    )
    .group_by(_o.c.agent_token)
)


class PullTables(RecordTables):
    """Pull agents' queues (rows of ``sg_operations``) and ``sg_pull_workers``."""

    @translate
    async def claim_tasks(
        self,
        service: str,
        worker_id: str,
        now: datetime,
        leases: Mapping[str, datetime],
        default_until: datetime,
        limit: int,
    ) -> list[Operation]:
        items = sorted(leases.items())
        stmt = _CLAIMS.get(len(items))
        if stmt is None:
            stmt = _claim_statement(len(items))
        params: dict[str, Any] = {
            "b_service": service,
            "b_limit": limit,
            "b_token": PULL_LEASED + worker_id,
            "b_default": default_until,
        }
        for i, (name, until) in enumerate(items):
            params[f"b_op{i}"] = name
            params[f"b_until{i}"] = until
        async with self._tx() as conn:
            ops = [rows.OPERATION.load(r) for r in (await conn.execute(stmt, params))]
            if ops:
                evs = [
                    rows.EVENT.values(
                        Event(
                            operation_id=op.id,
                            kind="attempt.leased",
                            at=now,
                            data={"attempt": op.attempts, "worker_id": worker_id},
                        )
                    )
                    for op in ops
                ]
                await conn.execute(s.INSERT_EVENTS, evs)
        ops.sort(key=lambda o: o.created_at)
        return ops

    @translate
    async def touch_worker(self, agent: str, worker_id: str, at: datetime) -> None:
        key = {"b_agent": agent, "b_worker": worker_id, "b_at": at}
        async with self._tx() as conn:
            if (await conn.execute(_TOUCH, key)).rowcount:
                return
            ins = self._insert_if_new(_w, [_w.c.agent, _w.c.worker_id])
            await conn.execute(ins, {"agent": agent, "worker_id": worker_id, "last_poll_at": at})
            await conn.execute(_TOUCH, key)  # a concurrent first poll inserted it: ours is later

    @translate
    async def list_workers(self, agent: str, since: datetime) -> list[tuple[str, datetime]]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(_LIST_WORKERS, {"b_agent": agent, "b_since": since})).all()
        return [(str(r[0]), r[1]) for r in rs]

    @translate
    async def forget_workers(self, before: datetime) -> int:
        async with self._tx() as conn:
            res = await conn.execute(_FORGET_WORKERS, {"b_before": before})
        return int(res.rowcount or 0)

    @translate
    async def pull_counts(self, service: str) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rs = (await conn.execute(_COUNTS, {"b_service": service})).all()
        return {str(r[0]): int(r[1]) for r in rs}
