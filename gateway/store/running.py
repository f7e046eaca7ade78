"""Lease-releasing changes of an operation's pending work on SQLAlchemy Core (portable).

``update_running``: a running operation's next step (a retry time, polling, an agent's
acceptance), one or many in a transaction. ``update_closed``: the work left on a closed
operation (telling its agent to cancel). Each is fenced by the lease owner when given, and
writes its event in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.domain.model import Event, RunningUpdate, Work
from gateway.store import rows
from gateway.store import statements as s
from gateway.store.errors import translate
from gateway.store.records import RecordTables


class RunningTables(RecordTables):
    """``update_running`` (one or many in a transaction) and ``update_closed``."""

    @translate
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
        update = RunningUpdate(
            op_id=op_id,
            owner=owner,
            work=work,
            next_attempt_at=next_attempt_at,
            event=event,
            agent_token=agent_token,
            last_error=last_error,
            refund_attempt=refund_attempt,
            now=now,
            heartbeat_until=heartbeat_until,
        )
        return (await self._update_running([update]))[0]

    @translate
    async def update_running_many(self, updates: Sequence[RunningUpdate]) -> list[bool]:
        return await self._update_running(updates)

    async def _update_running(self, updates: Sequence[RunningUpdate]) -> list[bool]:
        done: list[bool] = []
        events: list[dict[str, Any]] = []
        async with self._tx() as conn:
            for u in updates:
                params = {
                    "b_hb_until": u.heartbeat_until,
                    "b_id": u.op_id,
                    "b_owner": u.owner,
                    "b_cancelable": u.work in (None, Work.POLL),
                    # a cancel's grace keeps its own time
                    "b_due_now": u.work is not Work.CANCEL_WAIT,
                    "b_work": u.work.value if u.work else None,
                    "b_now": u.now or (u.event.at if u.event else u.next_attempt_at),
                    "b_next": u.next_attempt_at,
                    "b_error": u.last_error,
                    "b_token": u.agent_token,
                    # deferred (e.g. circuit open), not made
                    "b_refund": 1 if u.refund_attempt else 0,
                }
                res = await conn.execute(s.UPDATE_RUNNING[u.owner is not None], params)
                done.append(bool(res.rowcount))
                if res.rowcount and u.event is not None:
                    events.append(rows.EVENT.values(u.event))
            if events:
                await conn.execute(s.INSERT_EVENTS, events)
        return done

    @translate
    async def update_closed(
        self,
        op_id: str,
        owner: str,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event,
    ) -> bool:
        params = {
            "b_id": op_id,
            "b_owner": owner,
            "b_work": work.value if work else None,
            "b_next": next_attempt_at,
        }
        async with self._tx() as conn:
            res = await conn.execute(s.UPDATE_CLOSED, params)
            if not res.rowcount:
                return False
            await conn.execute(s.INSERT_EVENTS, [rows.EVENT.values(event)])
        return True
