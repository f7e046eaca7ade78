"""Cancellation and timeouts: a caller's cancel, telling the agent to stop, expiring deadlines.

This room owns the caller-facing ``cancel`` (records the request; the work loop acts on it),
propagating a cancel to an agent that accepted the work (retried with backoff), telling an
agent to stop after its operation closed under it (``cancel_after_close_s``), and the
schedule-to-close timeout sweep (``expire_timeouts``).
"""

from __future__ import annotations

import math
from datetime import timedelta

from gateway.domain.dispatch import CancelRequest, Outcome, OutcomeKind
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import Operation, OperationState, Work, failure, operation_error
from gateway.domain.specs import AgentSpec
from gateway.engine import backoff
from gateway.engine.closing import Closer
from gateway.engine.core import EngineCore


class Cancels:
    def __init__(self, core: EngineCore, closer: Closer) -> None:
        self._core = core
        self._closer = closer

    async def cancel(self, op_id: str, by: str) -> Operation:
        core = self._core
        op = await core.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state is OperationState.RUNNING and op.cancel_requested_at is None:
            applied = await core.store.request_cancel(
                op_id, core.now(), core.event(op_id, "cancel.requested", by=by)
            )
            if applied:
                core.wake_work.set()
        return op

    async def expire_timeouts(self) -> int:
        core = self._core
        ops = await core.store.due_timeouts(core.now(), 200)
        n = 0
        for op in ops:
            applied = await self._closer.fail(
                op,
                "operation timed out (schedule-to-close)",
                cause=failure(
                    "operation timed out",
                    type="TimeoutError",
                    details={"timeoutType": "SCHEDULE_TO_CLOSE"},
                ),
                kind="operation.timed_out",
                # An agent that accepted the work is still on it: tell it to stop.
                then_cancel_agent=op.agent_token is not None or op.work is not Work.DISPATCH,
            )
            n += int(applied)
            if applied:
                core.wake_work.set()
        return n

    async def propagate(self, op: Operation, agent: AgentSpec) -> None:
        """Tell the agent working on a running operation to stop, then close it as canceled."""
        core = self._core
        adapter = core.adapters.get(agent.adapter)
        attempt_no = int(op.attempts)
        outcome = (
            await core.calls.follow(
                CancelRequest(operation=op, agent=agent, timeout_s=10.0), adapter.cancel
            )
            if adapter is not None
            else Outcome(kind=OutcomeKind.PERMANENT, error="no adapter")
        )
        if outcome.kind is OutcomeKind.RETRYABLE:
            nxt = backoff.next_attempt_at(
                core.config.cancel_retry, attempt_no, core.now(), outcome.retry_after_s
            )
            await core.store.update_running(
                op.id,
                core.config.owner,
                work=Work.CANCEL,
                next_attempt_at=nxt,
                last_error=outcome.error,
                event=core.event(
                    op.id, "cancel.failed", error=outcome.error, next_attempt_at=nxt.isoformat()
                ),
            )
            return
        if outcome.kind is OutcomeKind.ACCEPTED:
            # Cancel is a request (Nexus): the agent took it and ends the operation itself,
            # in whatever state; if it has not within the grace, the gateway closes it.
            grace_until = core.now() + timedelta(seconds=core.config.cancel_grace_s)
            await core.store.update_running(
                op.id,
                core.config.owner,
                work=Work.CANCEL_WAIT,
                next_attempt_at=grace_until,
                event=core.event(
                    op.id,
                    "cancel.delivered",
                    status=outcome.status,
                    grace_until=grace_until.isoformat(),
                ),
            )
            return
        await self._closer.finish(
            op,
            OperationState.CANCELED,
            failure=operation_error(OperationState.CANCELED, "operation canceled"),
            kind="operation.canceled",
            owner=core.config.owner,
            agent_acknowledged=outcome.kind is OutcomeKind.SUCCEEDED,
            agent_error=outcome.error,
        )

    async def grace_over(self, op: Operation) -> None:
        """The agent took the cancel but did not end the operation in time: close it."""
        core = self._core
        await self._closer.finish(
            op,
            OperationState.CANCELED,
            failure=operation_error(
                OperationState.CANCELED, "operation canceled (the agent did not confirm in time)"
            ),
            kind="operation.canceled",
            owner=core.config.owner,
            reason="cancel grace ran out",
        )

    async def after_close(self, op: Operation, agent: AgentSpec | None) -> None:
        """The operation timed out while the agent worked on it: send the agent a cancel so it
        stops spending (retried with backoff for ``cancel_after_close_s``), then drop the work."""
        core = self._core
        adapter = core.adapters.get(agent.adapter) if agent else None
        if agent is None or adapter is None or op.work is not Work.CANCEL:
            outcome = Outcome(kind=OutcomeKind.PERMANENT, error="agent no longer registered")
        else:
            outcome = await core.calls.follow(
                CancelRequest(operation=op, agent=agent, timeout_s=10.0), adapter.cancel
            )
        now = core.now()
        closed = op.closed_at or now
        if outcome.kind is OutcomeKind.RETRYABLE and now - closed < timedelta(
            seconds=core.config.cancel_after_close_s
        ):
            tries = 1 + int(math.log2(1 + (now - closed).total_seconds()))
            nxt = backoff.next_attempt_at(core.config.cancel_retry, tries, now)
            await core.store.update_closed(
                op.id,
                core.config.owner,
                work=Work.CANCEL,
                next_attempt_at=nxt,
                event=core.event(op.id, "cancel.failed", error=outcome.error),
            )
            return
        sent = outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.ACCEPTED)
        kind = "cancel.sent" if sent else "cancel.abandoned"
        await core.store.update_closed(
            op.id,
            core.config.owner,
            work=None,
            next_attempt_at=None,
            event=core.event(op.id, kind, after="timeout", error=outcome.error),
        )
