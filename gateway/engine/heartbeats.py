"""Heartbeats and the durable step journal of accepted operations (issue 12).

This room owns what an agent may do while it works on an operation it accepted: heartbeat it
(``beat``: one in-place store update of the attempt's heartbeat deadline and, when given, its
checkpoint details, group-committed with concurrent heartbeats; no event per heartbeat), read
the journal of earlier attempts (``journal``), record a completed step (``record_step``: first
write wins, with a ``step.completed`` event), and the sweep that fails an attempt whose
heartbeats stopped (``expire``: event ``attempt.heartbeat_timeout``, dispatched again with
backoff under the same idempotency key, carrying the last checkpoint). Every check is a store
read or write, so a heartbeat counts on whichever replica it reaches.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway.domain.dispatch import STEP_NAME_MAX, Journal
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import (
    Event,
    Heartbeat,
    HeartbeatAck,
    Operation,
    StepRecord,
    failure,
)
from gateway.domain.specs import AdapterKind, OperationSpec
from gateway.domain.tracing import NO_TRACER
from gateway.engine import backoff
from gateway.engine.batching import GroupCommit
from gateway.engine.closing import Closer
from gateway.engine.core import EngineCore
from gateway.engine.inputs import open_question, retry_attempts

log = logging.getLogger("swarmgate.engine")
NAMES_CACHED = 100_000  # operations whose names a heartbeat remembers (LRU)
Names = tuple[str, str, str | None]  # agent, operation, the operation's traceparent


@dataclass(frozen=True, kw_only=True)
class HeartbeatAnswer:
    """What a heartbeat tells the agent: where the operation stands and whether to stop."""

    state: str
    cancel_requested: bool
    heartbeat_timeout_s: float | None
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "cancelRequested": self.cancel_requested,
            "heartbeatTimeoutS": self.heartbeat_timeout_s,
            "attempt": self.attempt,
        }


class Heartbeats:
    def __init__(
        self,
        core: EngineCore,
        closer: Closer,
        check_token: Any,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self._core = core
        self._closer = closer
        self._check_token = check_token  # (op_id, token) -> bool: the completion token
        # wakes this replica's waiters of an operation (a heartbeat with details: progress)
        self._notify = notify
        # operation id -> (agent, operation, traceparent): they never change, so a heartbeat
        # after the first needs no read of the operation
        self._names: OrderedDict[str, Names] = OrderedDict()
        # operation id -> its completion token, once checked (as many as names, oldest out
        # first): a heartbeat after the first compares strings instead of computing an HMAC
        self._tokens: dict[str, str] = {}
        # Through core.store at call time, so a wrapped store (fault injection) sees the calls.
        self._beats: GroupCommit[Heartbeat, HeartbeatAck | None] = GroupCommit(
            lambda batch: core.store.heartbeat_many(batch),
            lambda one: core.store.heartbeat(
                one.operation_id,
                one.attempt,
                one.until,
                details=one.details,
                has_details=one.has_details,
            ),
        )
        self._steps: GroupCommit[tuple[StepRecord, Event], tuple[StepRecord, bool] | None] = (
            GroupCommit(
                lambda batch: core.store.record_steps(batch),
                lambda one: core.store.record_step(*one),
            )
        )

    @property
    def names_cached(self) -> int:
        """Operations whose names a heartbeat remembers."""
        return len(self._names)

    def forget(self, op_id: str) -> None:
        """The operation closed (or changed under a heartbeat): drop what was remembered."""
        self._names.pop(op_id, None)
        self._tokens.pop(op_id, None)

    def prime(self, op: Operation, token: str) -> None:
        """This replica is handing ``op`` to its agent with ``token``: remember both, so the
        first heartbeat is the steady-state one (a stale attempt or a closed operation is
        still told apart: the update finds no row and ``_running`` says why)."""
        self._remember(op)
        self._remember_token(op.id, token)

    # -- what the agent calls -------------------------------------------------------------------

    async def _running(self, op_id: str, token: str, attempt: int | None = None) -> Operation:
        """The running operation the token is for; 401, 404 or 409 otherwise."""
        if not token or not self._check_token(op_id, token):
            raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid operation token")
        op = await self._core.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state.terminal:
            raise HandlerError(
                HandlerErrorType.CONFLICT, f"operation is closed ({op.state.value}): stop"
            )
        if attempt is not None and attempt != op.attempts:
            raise HandlerError(
                HandlerErrorType.CONFLICT,
                f"attempt {attempt} is stale (the operation is on attempt {op.attempts}): stop",
            )
        return op

    async def _spec(self, op: Operation) -> OperationSpec | None:
        return await self._spec_of(op.service, op.operation)

    async def _spec_of(self, service: str, operation: str) -> OperationSpec | None:
        agent = await self._core.registry.get(service)
        return agent.operations.get(operation) if agent else None

    async def _grace_s(self, service: str, operation: str) -> float:
        """How far a heartbeat moves the deadline of an operation without heartbeat_timeout_s."""
        agent = await self._core.registry.get(service)
        spec = agent.operations.get(operation) if agent else None
        if agent is not None and spec is not None and agent.adapter is AdapterKind.PULL:
            return spec.attempt_timeout_s  # a pull task's lease is its attempt timeout
        return 3600.0

    def _token_ok(self, op_id: str, token: str) -> bool:
        known = self._tokens.get(op_id)
        if known is not None:
            return hmac.compare_digest(known, token)
        if not token or not self._check_token(op_id, token):
            return False
        self._remember_token(op_id, token)
        return True

    def _remember_token(self, op_id: str, token: str) -> None:
        self._tokens.pop(op_id, None)  # (again: it goes to the young end)
        self._tokens[op_id] = token
        if len(self._tokens) > NAMES_CACHED:  # the oldest checked goes first
            del self._tokens[next(iter(self._tokens))]

    async def beat(
        self, op_id: str, token: str, *, attempt: int | None, details: Any, has_details: bool
    ) -> HeartbeatAnswer:
        """One heartbeat: in the steady state one group-committed ``UPDATE ... RETURNING``
        (the operation's agent and operation names, and its checked token, are remembered
        after the first)."""
        core = self._core
        if not self._token_ok(op_id, token):
            raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid operation token")
        names = self._names.get(op_id)
        if names is None:
            op = await self._running(op_id, token, attempt)
            names = self._remember(op)
        else:
            self._names.move_to_end(op_id)
        spec = await self._spec_of(names[0], names[1])
        timeout = spec.heartbeat_timeout_s if spec else None
        beat = Heartbeat(
            operation_id=op_id,
            attempt=attempt,
            # (an operation registered again without heartbeats keeps an hour's grace; a pull
            # task without heartbeats renews its attempt-timeout lease)
            until=core.now()
            + timedelta(seconds=timeout or await self._grace_s(names[0], names[1])),
            details=details,
            has_details=has_details,
        )
        with core.tracer.span(
            "heartbeat", names[2], operation_id=op_id, agent=names[0], attempt=attempt
        ) as span:
            ack = await self._beats.submit(beat)
            if ack is None:
                span.set(outcome="stale", details=has_details)
            else:
                outcome = "cancel_requested" if ack.cancel_requested else "recorded"
                span.set(attempt=ack.attempt, outcome=outcome, details=has_details)
        if ack is None:  # unknown, closed or on another attempt: say which
            self.forget(op_id)
            await self._running(op_id, token, attempt)
            raise HandlerError(HandlerErrorType.CONFLICT, "operation changed: stop")
        if has_details and self._notify is not None:  # progress watchers re-read it now
            self._notify(op_id)
        return HeartbeatAnswer(
            state=ack.state.value,
            cancel_requested=ack.cancel_requested,
            heartbeat_timeout_s=timeout,
            attempt=ack.attempt,
        )

    def _remember(self, op: Operation) -> Names:
        names = self._names[op.id] = (op.service, op.operation, op.traceparent)
        self._names.move_to_end(op.id)
        if len(self._names) > NAMES_CACHED:
            self._names.popitem(last=False)
        return names

    async def _names_of(self, op_id: str) -> Names | None:
        """The cached names; read only when tracing is on (a span needs the trace)."""
        names = self._names.get(op_id)
        if names is None and self._core.tracer is not NO_TRACER:
            op = await self._core.store.get_operation(op_id)
            names = self._remember(op) if op is not None else None
        return names

    async def journal(self, op_id: str, token: str) -> Journal:
        if not token or not self._check_token(op_id, token):
            raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid operation token")
        core = self._core
        op = await core.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        return Journal(steps=await core.store.list_steps(op_id), details=op.heartbeat_details)

    async def load_journal(self, op: Operation) -> Journal:
        """The journal a dispatch carries (the engine reads it for attempts after the first)."""
        return Journal(steps=await self._core.store.list_steps(op.id), details=op.heartbeat_details)

    async def record_step(
        self, op_id: str, token: str, name: str, result: Any, *, attempt: int | None = None
    ) -> tuple[StepRecord, bool]:
        if not name or len(name) > STEP_NAME_MAX:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST, f"a step name has 1 to {STEP_NAME_MAX} characters"
            )
        core = self._core
        if attempt is None:  # the SDK names it; others get the operation's current attempt
            attempt = (await self._running(op_id, token)).attempts
        elif not self._token_ok(op_id, token):
            raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid operation token")
        at = core.now()  # the record and its event share the instant (one timestamp text)
        step = StepRecord(operation_id=op_id, name=name, result=result, at=at, attempt=attempt)
        event = Event(
            operation_id=op_id,
            kind="step.completed",
            at=at,
            data={"name": name, "attempt": attempt},
        )
        names = await self._names_of(op_id)
        with core.tracer.span(
            "step",
            names[2] if names else None,
            operation_id=op_id,
            agent=names[0] if names else None,
            attempt=attempt,
            step=name,
        ) as span:
            recorded = await self._steps.submit((step, event))
            span.set(
                outcome="stale" if recorded is None else "recorded" if recorded[1] else "replayed"
            )
        if recorded is None:  # unknown or closed: say which
            await self._running(op_id, token)
            raise HandlerError(HandlerErrorType.CONFLICT, "operation changed")
        return recorded

    # -- the sweep ------------------------------------------------------------------------------

    async def expire(self) -> int:
        """Fail the attempts whose heartbeat is overdue; each goes back to dispatch."""
        core = self._core
        now = core.now()
        n = 0
        for op in await core.store.due_heartbeats(now, 200):
            if op.work is not None:  # a cancel (or a poll) is owed first: that wins
                continue
            if open_question(await core.store.list_steps(op.id)) is not None:
                # it asked its caller and waits: no heartbeat is owed (the accepted answer
                # landed after the question parked it)
                await core.store.park_for_input(op.id, op.attempts)
                continue
            spec = await self._spec(op)
            timeout = spec.heartbeat_timeout_s if spec else None
            if spec is not None and spec.retry.max_attempts is not None:
                limit = spec.retry.max_attempts
                if op.attempts >= limit and await retry_attempts(core, op) >= limit:
                    applied = await self._closer.fail(
                        op,
                        f"gave up after {op.attempts} attempts: heartbeat timed out",
                        cause=failure(
                            "heartbeat timed out",
                            type="TimeoutError",
                            details={"timeoutType": "HEARTBEAT"},
                        ),
                        kind="operation.failed",
                        attempt=op.attempts,
                    )
                    n += int(applied)
                    continue
            policy = spec.retry if spec else core.config.cancel_retry
            nxt = backoff.next_attempt_at(policy, op.attempts, now)
            if op.deadline_at is not None and nxt > op.deadline_at:
                nxt = op.deadline_at
            applied = await core.store.expire_heartbeat(
                op.id,
                op.attempts,
                now,
                next_attempt_at=nxt,
                last_error="heartbeat timed out",
                event=core.event(
                    op.id,
                    "attempt.heartbeat_timeout",
                    attempt=op.attempts,
                    heartbeat_timeout_s=timeout,
                    next_attempt_at=nxt.isoformat(),
                    details=op.heartbeat_details,
                ),
            )
            if applied:
                n += 1
                core.calls.pool.lost(op.service, op.id, "heartbeat timed out")  # pools: move on
                core.metrics.child(core.metrics.retries, op.service).inc()
                core.wake_work.set()
        return n
