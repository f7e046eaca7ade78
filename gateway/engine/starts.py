"""Starts: admitting a start request, persisting it, and the bounded inline wait.

This room owns the start request and result values and their idempotency fingerprint,
admission (the bound on start requests in progress, 429 beyond it), ``start`` (schema check,
the new operation leased to this replica with its events and idempotency records in one
group-committed transaction, then the first attempt in-process), and ``wait_inline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.frozen import fast_init
from gateway.domain.ids import uuid7_text
from gateway.domain.model import IdempotencyRecord, Operation, OperationState, Work
from gateway.domain.ports import Created, NewOperation
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.engine import faults
from gateway.engine.batching import LINGER_FROM, GroupCommit
from gateway.engine.core import EngineCore
from gateway.engine.dispatch import Dispatcher
from registry.service import check_payload_off_loop


@fast_init
@dataclass(frozen=True, kw_only=True)
class StartRequest:
    service: str
    operation: str
    caller: str
    input: bytes
    content_type: str | None
    request_id: str | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    callback_headers: Mapping[str, str] = field(default_factory=dict)
    links: tuple[str, ...] = ()
    handler_headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    traceparent: str | None = None


@fast_init
@dataclass(frozen=True, kw_only=True)
class StartResult:
    operation: Operation
    created: bool
    replay: IdempotencyRecord | None = None
    idempotency_keys: tuple[tuple[str, str], ...] = ()  # (scope, key) to store the response


def fingerprint(req: StartRequest) -> str:
    h = hashlib.sha256()
    for part in (req.service, req.operation, req.content_type or "", req.callback_url or ""):
        h.update(part.encode())
        h.update(b"\0")
    h.update(req.input)
    return h.hexdigest()


MAX_REQUEST_ID = 200  # the columns' widths: a longer value would be a data error at commit
MAX_CONTENT_TYPE = 200
MAX_TRACEPARENT = 100


def _check_bounds(req: StartRequest) -> None:
    """400 for values the operation's columns cannot hold (never a data error at commit)."""
    if req.request_id is not None and len(req.request_id) > MAX_REQUEST_ID:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"the request id is over {MAX_REQUEST_ID} characters"
        )
    if req.content_type is not None and len(req.content_type) > MAX_CONTENT_TYPE:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"Content-Type is over {MAX_CONTENT_TYPE} characters"
        )


class Starts:
    def __init__(self, core: EngineCore, dispatcher: Dispatcher) -> None:
        self._core = core
        self._dispatcher = dispatcher
        self.pending = 0  # start requests in progress
        # (scope, key) of the Idempotency-Keys whose first request is being answered here
        self.answering: set[tuple[str, str]] = set()
        # Through core.store at call time, so a wrapped store (fault injection) sees the calls.
        self._starts: GroupCommit[NewOperation, Created] = GroupCommit(
            lambda batch: core.store.create_operations(batch),
            lambda one: core.store.create_operation(*one),
            linger_s=core.config.write_linger_s,
            linger_from=LINGER_FROM,  # under load only: a lone start commits at once
        )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Bound the start requests in progress; beyond it the caller gets 429 + Retry-After."""
        if self.pending >= self._core.config.max_pending_starts:
            self._core.metrics.rejected.inc()
            raise HandlerError(
                HandlerErrorType.RESOURCE_EXHAUSTED,
                "the gateway is saturated; retry later",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    @contextlib.contextmanager
    def answer(self, keys: tuple[tuple[str, str], ...]) -> Iterator[None]:
        """While the first request of these idempotency keys is being answered (its response
        saved): a retry meanwhile is "in progress" (409). Only in this process: after a crash
        nothing holds the key and a retry regenerates the answer from the operation."""
        held = [k for k in keys if k not in self.answering]
        self.answering.update(held)
        try:
            yield
        finally:
            self.answering.difference_update(held)

    async def start(self, req: StartRequest) -> StartResult:
        core = self._core
        _check_bounds(req)
        agent, spec = await core.registry.resolve(req.service, req.operation)
        errors = await check_payload_off_loop(
            spec.input_schema, req.input, req.content_type, "input"
        )
        if errors:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST,
                "input does not match the operation's schema",
                details=errors,
            )
        op_id = uuid7_text()
        with core.tracer.span(
            "start",
            req.traceparent,
            operation_id=op_id,
            agent=req.service,
            operation=req.operation,
            caller=req.caller,
        ) as span:
            # stored as the operation's trace context: attempts and callbacks are its children
            result = await self._create(req, agent, spec, op_id, span.traceparent)
            span.set(outcome="created" if result.created else "deduplicated")
        return result

    async def _create(
        self,
        req: StartRequest,
        agent: AgentSpec,
        spec: OperationSpec,
        op_id: str,
        traceparent: str | None,
    ) -> StartResult:
        core = self._core
        config = core.config
        now = core.now()
        timeout = spec.timeout_s if req.timeout_s is None else min(req.timeout_s, spec.timeout_s)
        timeout = min(timeout, config.max_timeout_s)
        fp = fingerprint(req)
        expires = now + timedelta(seconds=config.idempotency_ttl_s)
        records = []
        if req.request_id:
            records.append("rid:" + req.request_id)
        if req.idempotency_key:
            records.append("key:" + req.idempotency_key)
        idem = [
            IdempotencyRecord(
                scope=req.caller,
                key=k,
                fingerprint=fp,
                operation_id=op_id,
                created_at=now,
                expires_at=expires,
            )
            for k in records
        ]
        op = Operation(
            id=op_id,
            service=req.service,
            operation=req.operation,
            state=OperationState.RUNNING,
            caller=req.caller,
            created_at=now,
            input=req.input,
            input_content_type=req.content_type,
            request_id=req.request_id,
            callback_url=req.callback_url,
            callback_headers=dict(req.callback_headers),
            links=list(req.links),
            handler_headers=dict(req.handler_headers),
            work=Work.DISPATCH,
            attempts=1,
            next_attempt_at=now,
            lease_owner=config.owner,
            lease_until=now + timedelta(seconds=config.lease_s),
            deadline_at=now + timedelta(seconds=timeout),
            # not ours to refuse: an over-long trace context is dropped, not stored
            traceparent=traceparent
            or (
                req.traceparent
                if req.traceparent and len(req.traceparent) <= MAX_TRACEPARENT
                else None
            ),
        )
        started = core.event(
            op_id,
            "operation.started",
            service=req.service,
            operation=req.operation,
            caller=req.caller,
            request_id=req.request_id,
            timeout_s=timeout,
            callback=bool(req.callback_url),
        )
        attempt = core.event(op_id, "attempt.started", attempt=1, owner=config.owner)
        new = (op, [started, attempt], idem)
        if config.group_commit:
            stored, existing = await self._starts.submit(new)
        else:
            stored, existing = await core.store.create_operation(*new)
        faults.point(faults.AFTER_START_COMMIT)
        if existing is not None:
            core.metrics.deduplicated.inc()
            if (
                stored.lease_owner == config.owner
                and stored.work is Work.DISPATCH
                and stored.state is OperationState.RUNNING
                and stored.id not in core.inflight
            ):
                # Our own lease with no task behind it: the first start committed but its
                # reply was lost before the dispatch began. Run it now, not at lease expiry.
                self._dispatcher.spawn(stored, agent, spec)
            return StartResult(
                operation=stored,
                created=False,
                replay=existing,
                idempotency_keys=tuple((r.scope, r.key) for r in idem),
            )
        core.metrics.child(core.metrics.started, req.service).inc()
        self._dispatcher.spawn(stored, agent, spec)
        return StartResult(
            operation=stored, created=True, idempotency_keys=tuple((r.scope, r.key) for r in idem)
        )

    async def wait_inline(
        self, op_id: str, timeout_s: float | None = None, *, answers_sync: bool = False
    ) -> Operation | None:
        """Wait (bounded) for the in-process first attempt. Returns the operation as stored
        once that attempt is over, or None while it is still running (the caller answers 201
        with what it has, without reading it back).

        With ``answers_sync`` (a Nexus start), a close by that attempt while it waits writes
        no callback: the caller gets the outcome in this answer (see :meth:`sync_links`). A
        close that claimed the answer just as the wait ran out is waited for, so a claimed
        close is always answered."""
        core = self._core
        task = core.inflight.get(op_id)
        if task is not None:
            wait = timeout_s if timeout_s is not None else core.config.sync_wait_s
            if wait <= 0:
                return None
            if answers_sync:
                core.sync_waiting.add(op_id)
            try:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), wait)
            finally:
                core.sync_waiting.discard(op_id)
            if not task.done() and op_id in core.sync_claimed:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), core.config.lease_s)
            if not task.done():
                core.sync_claimed.pop(op_id, None)
                return None
        return await core.store.get_operation(op_id)

    def sync_links(self, op_id: str) -> list[str] | None:
        """The agent's links of a close claimed for a synchronous answer (None: not claimed,
        a callback was written). Taking them ends the claim."""
        return self._core.sync_claimed.pop(op_id, None)
