"""The durable engine: start, dispatch with retries, cancel, timeouts, completions, callbacks.

Every state change is one store transaction with its event (and its callback outbox row).
Work is claimed with leases, so any replica may die at any instant and another one (or a
restart) resumes the work once the lease has expired.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

from adapters.http import parse_retry_after
from gateway.domain.clock import Clock
from gateway.domain.dispatch import (
    AgentAdapter,
    CancelRequest,
    DispatchRequest,
    Outcome,
    OutcomeKind,
    Transport,
    TransportError,
)
from gateway.domain.errors import HandlerError, HandlerErrorType, StoreError
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    Work,
    failure,
    operation_error,
)
from gateway.domain.ports import Created, NewOperation, Store
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy
from gateway.engine import backoff
from gateway.engine.batching import GroupCommit
from gateway.engine.breaker import CircuitBreaker, Limits
from gateway.engine.metrics import Metrics
from gateway.engine.signing import CallbackSigner
from registry.service import Registry, check_payload

log = logging.getLogger("swarmgate.engine")
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    owner: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:12]}")
    public_url: str = "http://127.0.0.1:8080"
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    claim_batch: int = 64
    max_inflight: int = 256
    sync_wait_s: float = 5.0  # how long start waits inline for the agent before answering 201
    callback_ttl_s: float = 24 * 3600.0
    callback_timeout_s: float = 15.0
    callback_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_s=1.0, max_s=3600.0, jitter_s=1.0)
    )
    cancel_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_s=1.0, max_s=3600.0, jitter_s=1.0)
    )
    idempotency_ttl_s: float = 24 * 3600.0
    max_timeout_s: float = 30 * 24 * 3600.0
    max_pending_starts: int = 1000  # start requests in progress before answering 429
    breaker_threshold: int = 5  # consecutive retryable failures that open an agent's circuit
    breaker_cooldown_s: float = 60.0  # open -> half-open
    shutdown_grace_s: float = 5.0
    task_poll_s: float = 5.0  # GetTask-style polling of accepted tasks (adapters with poll())
    # Group commit of starts and completions: concurrent writes share one commit (and on
    # PostgreSQL one statement); a lone write pays nothing extra.
    group_commit: bool = True
    cancel_after_close_s: float = 3600.0  # keep telling an agent to stop for this long


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
    timeout_s: float | None = None
    traceparent: str | None = None


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


def _forget(tasks: dict[str, asyncio.Task[None]], key: str, _task: asyncio.Task[None]) -> None:
    tasks.pop(key, None)


def http_date(dt: datetime) -> str:
    """IMF-fixdate (whole seconds) of an aware datetime."""
    return _http_date(int(dt.timestamp()))


@functools.lru_cache(maxsize=256)
def _http_date(seconds: int) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def rfc3339_ms(dt: datetime) -> str:
    """UTC with milliseconds and ``Z`` (isoformat: strftime was a visible share per close)."""
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        adapters: Mapping[AdapterKind, AgentAdapter],
        transport: Transport,
        clock: Clock,
        config: EngineConfig,
        secret: bytes,
        signer: CallbackSigner | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.adapters = adapters
        self.transport = transport
        self.clock = clock
        self.config = config
        self._secret = secret
        self.signer = signer
        self.metrics = metrics or Metrics()
        self.breaker = CircuitBreaker(
            threshold=config.breaker_threshold, cooldown_s=config.breaker_cooldown_s
        )
        self.limits = Limits()
        # Delivered callbacks are recorded in shared transactions. An ack may be late or lost
        # (a crash before it commits means the callback is sent again with the same
        # webhook-id: at least once); a failure is logged by the delivery task.
        self._acks: GroupCommit[Event, None] = GroupCommit(
            self._record_delivered, self._record_one_delivered, max_batch=500
        )
        # Through self.store at call time, so a wrapped store (fault injection) sees the calls.
        self._completions: GroupCommit[Completion, bool] = GroupCommit(
            lambda batch: self.store.complete_many(batch),
            lambda one: self.store.complete(one),
        )
        self._starts: GroupCommit[NewOperation, Created] = GroupCommit(
            lambda batch: self.store.create_operations(batch),
            lambda one: self.store.create_operation(*one),
        )
        self.pending_starts = 0
        self._wake_work = asyncio.Event()
        self._wake_callbacks = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._cb_inflight: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- helpers ----------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def completion_token(self, op_id: str) -> str:
        mac = hmac.new(self._secret, b"completion:" + op_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check_completion_token(self, op_id: str, token: str) -> bool:
        return hmac.compare_digest(self.completion_token(op_id), token)

    def dispatch_request(
        self, op: Operation, agent: AgentSpec, spec: OperationSpec, timeout_s: float | None = None
    ) -> DispatchRequest:
        """What an adapter needs to call (or poll) the agent for this operation."""
        return DispatchRequest(
            operation=op,
            agent=agent,
            spec=spec,
            attempt=op.attempts,
            completion_url=self.completion_url(op.id),
            completion_token=self.completion_token(op.id),
            timeout_s=spec.attempt_timeout_s if timeout_s is None else timeout_s,
            deadline=op.deadline_at,
        )

    def completion_url(self, op_id: str) -> str:
        return f"{self.config.public_url.rstrip('/')}/api/completions/{op_id}"

    def _event(self, op_id: str, kind: str, **data: Any) -> Event:
        return Event(operation_id=op_id, kind=kind, at=self.now(), data=data)

    # -- start ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Bound the start requests in progress; beyond it the caller gets 429 + Retry-After."""
        if self.pending_starts >= self.config.max_pending_starts:
            self.metrics.rejected.inc()
            raise HandlerError(
                HandlerErrorType.RESOURCE_EXHAUSTED,
                "the gateway is saturated; retry later",
                headers={"Retry-After": "1"},
            )
        self.pending_starts += 1
        try:
            yield
        finally:
            self.pending_starts -= 1

    async def start(self, req: StartRequest) -> StartResult:
        agent, spec = await self.registry.resolve(req.service, req.operation)
        errors = check_payload(spec.input_schema, req.input, req.content_type, "input")
        if errors:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST,
                "input does not match the operation's schema",
                details=errors,
            )
        now = self.now()
        timeout = spec.timeout_s if req.timeout_s is None else min(req.timeout_s, spec.timeout_s)
        timeout = min(timeout, self.config.max_timeout_s)
        op_id = str(uuid.uuid4())
        fp = fingerprint(req)
        expires = now + timedelta(seconds=self.config.idempotency_ttl_s)
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
            work=Work.DISPATCH,
            attempts=1,
            next_attempt_at=now,
            lease_owner=self.config.owner,
            lease_until=now + timedelta(seconds=self.config.lease_s),
            deadline_at=now + timedelta(seconds=timeout),
            traceparent=req.traceparent,
        )
        started = self._event(
            op_id,
            "operation.started",
            service=req.service,
            operation=req.operation,
            caller=req.caller,
            request_id=req.request_id,
            timeout_s=timeout,
            callback=bool(req.callback_url),
        )
        attempt = self._event(op_id, "attempt.started", attempt=1, owner=self.config.owner)
        new = (op, [started, attempt], idem)
        if self.config.group_commit:
            stored, existing = await self._starts.submit(new)
        else:
            stored, existing = await self.store.create_operation(*new)
        if existing is not None:
            self.metrics.deduplicated.inc()
            if (
                stored.lease_owner == self.config.owner
                and stored.work is Work.DISPATCH
                and stored.state is OperationState.RUNNING
                and stored.id not in self._inflight
            ):
                # Our own lease with no task behind it: the first start committed but its
                # reply was lost before the dispatch began. Run it now, not at lease expiry.
                self._spawn(stored, agent, spec)
            return StartResult(
                operation=stored,
                created=False,
                replay=existing,
                idempotency_keys=tuple((r.scope, r.key) for r in idem),
            )
        self.metrics.child(self.metrics.started, req.service).inc()
        self._spawn(stored, agent, spec)
        return StartResult(
            operation=stored, created=True, idempotency_keys=tuple((r.scope, r.key) for r in idem)
        )

    async def wait_inline(self, op_id: str, timeout_s: float | None = None) -> Operation | None:
        """Wait (bounded) for the in-process first attempt. Returns the operation as stored
        once that attempt is over, or None while it is still running (the caller answers 201
        with what it has, without reading it back)."""
        task = self._inflight.get(op_id)
        if task is not None:
            wait = timeout_s if timeout_s is not None else self.config.sync_wait_s
            if wait <= 0:
                return None
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), wait)
            if not task.done():
                return None
        return await self.store.get_operation(op_id)

    # -- background loops -------------------------------------------------------------------

    async def run(self) -> None:
        """Start the background loops (returns at once)."""
        self._stopping = False
        self._loops = [
            asyncio.create_task(
                self._claim_loop("work", self._wake_work, self.claim_and_run_work), name="sg-work"
            ),
            asyncio.create_task(
                self._claim_loop(
                    "callbacks", self._wake_callbacks, self.claim_and_deliver_callbacks
                ),
                name="sg-callbacks",
            ),
            asyncio.create_task(self._timeout_loop(), name="sg-timeouts"),
            asyncio.create_task(self._lease_loop(), name="sg-leases"),
            asyncio.create_task(self._housekeeping_loop(), name="sg-housekeeping"),
            asyncio.create_task(self._closures_loop(), name="sg-closures"),
        ]

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work, let in-flight work finish for ``grace_s``, then cancel what is
        left and release its leases so another replica takes it over at once."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        pending = list(self._inflight.values()) + list(self._cb_inflight.values())
        if pending:
            _done, not_done = await asyncio.wait(pending, timeout=grace)
            for t in not_done:
                t.cancel()
            await asyncio.gather(*not_done, return_exceptions=True)
        try:
            released = await self.store.release_leases(self.config.owner)
            if released:
                log.info("released %d leases on shutdown", released)
        except StoreError as exc:
            log.warning("could not release leases on shutdown (they will expire): %s", exc)

    def wake(self) -> None:
        self._wake_work.set()
        self._wake_callbacks.set()

    async def _sleep_or_wake(self, ev: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), seconds)
        ev.clear()

    async def _guarded(self, name: str, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            self.metrics.loop_errors.labels(name, "store").inc()
            log.warning("%s: store error: %s", name, exc)
            await asyncio.sleep(self.config.poll_interval_s)
        except Exception:
            self.metrics.loop_errors.labels(name, "unexpected").inc()
            log.exception("%s failed", name)
            await asyncio.sleep(self.config.poll_interval_s)

    async def _claim_loop(
        self, name: str, wake: asyncio.Event, step: Callable[[], Awaitable[int]]
    ) -> None:
        while not self._stopping:
            await self._guarded(name, step())
            await self._sleep_or_wake(wake, self.config.poll_interval_s)

    async def _claim(
        self,
        inflight: dict[str, asyncio.Task[None]],
        wake: asyncio.Event,
        lease_s: float,
        claim: Callable[[str, datetime, datetime, int], Awaitable[Sequence[T]]],
        start: Callable[[T], None],
    ) -> int:
        """Lease as much due work as there is room for and start it; a full batch means more
        may be due, so the loop goes round again at once."""
        limit = min(self.config.max_inflight - len(inflight), self.config.claim_batch)
        if limit <= 0:
            return 0
        now = self.now()
        items = await claim(self.config.owner, now, now + timedelta(seconds=lease_s), limit)
        for item in items:
            start(item)
        if len(items) == limit:
            wake.set()
        return len(items)

    async def claim_and_run_work(self) -> int:
        return await self._claim(
            self._inflight,
            self._wake_work,
            self.config.lease_s,
            self.store.claim_work,
            lambda op: self._spawn(op, None, None),
        )

    def _spawn(self, op: Operation, agent: AgentSpec | None, spec: OperationSpec | None) -> None:
        task = asyncio.create_task(self._handle_claimed(op, agent, spec), name=f"op-{op.id}")
        self._inflight[op.id] = task
        task.add_done_callback(functools.partial(_forget, self._inflight, op.id))

    async def _lease_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(max(0.2, self.config.lease_s / 3))
            await self._guarded("leases", self._extend_leases())

    async def _extend_leases(self) -> None:
        until = self.now() + timedelta(seconds=self.config.lease_s)
        await self.store.extend_leases(self.config.owner, list(self._inflight), until)

    async def _timeout_loop(self) -> None:
        while not self._stopping:
            await self._guarded("timeouts", self.expire_timeouts())
            await asyncio.sleep(self.config.poll_interval_s)

    async def _closures_loop(self) -> None:
        """Wake long-polls here when another replica closes their operation (a hint: they
        re-read the store every poll interval anyway); resubscribe when the listener drops."""
        while not self._stopping:
            await self._guarded("closures", self.store.listen_closed(self._notify_many))
            await asyncio.sleep(self.config.poll_interval_s)

    def _notify_many(self, op_ids: Sequence[str]) -> None:
        for op_id in op_ids:
            self._notify(op_id)

    async def _housekeeping_loop(self) -> None:
        while not self._stopping:
            await self._guarded("idempotency", self.store.purge_idempotency(self.now()))
            await asyncio.sleep(60.0)

    # -- one claimed unit of work -----------------------------------------------------------

    async def _handle_claimed(
        self, op: Operation, agent: AgentSpec | None, spec: OperationSpec | None
    ) -> None:
        try:
            if agent is None or spec is None:
                found = await self.registry.get(op.service)
                agent = found
                spec = found.operations.get(op.operation) if found else None
            if op.state.terminal:  # closed under the agent (timeout): tell it to stop
                await self._cancel_after_close(op, agent)
                return
            if agent is None or spec is None:
                await self._fail(
                    op,
                    f"agent {op.service}/{op.operation} is no longer registered",
                    owner=self.config.owner,
                )
                return
            if op.cancel_requested_at is not None and op.work is Work.DISPATCH:
                await self._finish(
                    op,
                    OperationState.CANCELED,
                    failure=operation_error(OperationState.CANCELED, "operation canceled"),
                    kind="operation.canceled",
                    owner=self.config.owner,
                    before_dispatch=True,
                )
                return
            if op.work is Work.CANCEL:
                await self._propagate_cancel(op, agent)
                return
            if op.work is Work.POLL:
                await self._poll(op, agent, spec)
                return
            await self._dispatch(op, agent, spec)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            # The lease runs out and another attempt happens later; nothing is lost.
            log.warning("store error, lease left to expire: %s", exc, extra={"operation_id": op.id})
        except Exception:
            log.exception("unexpected error; lease left to expire", extra={"operation_id": op.id})

    async def _dispatch(self, op: Operation, agent: AgentSpec, spec: OperationSpec) -> None:
        adapter = self.adapters.get(agent.adapter)
        if adapter is None:
            await self._fail(op, f"no adapter for {agent.adapter}", owner=self.config.owner)
            return
        if op.prev_lease_owner and op.prev_lease_owner != self.config.owner:
            self.metrics.takeovers.inc()
        retry_at = self.breaker.allow(agent.name, self.now())
        if retry_at is not None and op.deadline_at is not None:
            retry_at = min(retry_at, op.deadline_at)
        if retry_at is not None:  # circuit open: defer without calling the agent
            self.metrics.deferred.labels(agent.name).inc()
            await self.store.update_running(
                op.id,
                self.config.owner,
                work=Work.DISPATCH,
                next_attempt_at=retry_at,
                refund_attempt=True,
                last_error=op.last_error,
                event=self._event(
                    op.id, "attempt.deferred", reason="circuit open", until=retry_at.isoformat()
                ),
            )
            return
        if spec.concurrency:
            async with self.limits.semaphore(agent.name, spec.name, spec.concurrency):
                await self._call_agent(op, agent, spec, adapter)
        else:
            await self._call_agent(op, agent, spec, adapter)

    async def _call_agent(
        self, op: Operation, agent: AgentSpec, spec: OperationSpec, adapter: AgentAdapter
    ) -> None:
        started = self.now()
        req = self.dispatch_request(op, agent, spec)
        try:
            # asyncio.timeout, not wait_for: no extra task per attempt (3.11's wait_for wraps
            # the coroutine in one)
            async with asyncio.timeout(spec.attempt_timeout_s + 1.0):
                outcome = await adapter.start(req)
        except TimeoutError:
            outcome = Outcome(kind=OutcomeKind.RETRYABLE, error="attempt timed out")
        elapsed = (self.now() - started).total_seconds()
        self.metrics.child(self.metrics.attempts, agent.name, outcome.kind.value).inc()
        self.metrics.child(self.metrics.dispatch_seconds, agent.name).observe(max(0.0, elapsed))
        if outcome.kind is OutcomeKind.RETRYABLE:
            if self.breaker.failure(agent.name, self.now()):
                self.metrics.breaker_open.labels(agent.name).set(1)
        else:  # any other outcome closes the circuit (and ends a half-open trial)
            if self.breaker.is_open(agent.name):
                self.metrics.breaker_open.labels(agent.name).set(0)
            self.breaker.success(agent.name)
        await self.apply_outcome(
            op, spec, outcome, round(elapsed * 1000, 1), pollable=hasattr(adapter, "poll")
        )

    async def _poll(self, op: Operation, agent: AgentSpec, spec: OperationSpec) -> None:
        """One durable poll of an accepted task; the next one is persisted as next_attempt_at."""
        adapter = self.adapters.get(agent.adapter)
        poll = getattr(adapter, "poll", None)
        if poll is None:  # the adapter changed since: wait for the agent's completion
            await self.store.update_running(
                op.id,
                self.config.owner,
                work=None,
                next_attempt_at=None,
                event=None,
                now=self.now(),
            )
            return
        req = self.dispatch_request(op, agent, spec)
        try:
            async with asyncio.timeout(spec.attempt_timeout_s + 1.0):
                outcome: Outcome = await poll(req)
        except TimeoutError:
            outcome = Outcome(kind=OutcomeKind.RETRYABLE, error="poll timed out")
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.OPERATION_FAILED):
            await self.apply_outcome(op, spec, outcome)
            return
        # Still running (or the agent did not answer): poll again later; the schedule-to-close
        # timeout bounds how long. Polls are not state changes, so they write no event.
        await self.store.update_running(
            op.id,
            self.config.owner,
            work=Work.POLL,
            next_attempt_at=self.now() + timedelta(seconds=self.config.task_poll_s),
            last_error=outcome.error if outcome.kind is not OutcomeKind.ACCEPTED else None,
            event=None,
            now=self.now(),
        )

    async def apply_outcome(
        self,
        op: Operation,
        spec: OperationSpec,
        outcome: Outcome,
        elapsed_ms: float = 0.0,
        *,
        pollable: bool = False,
    ) -> None:
        owner = self.config.owner
        if outcome.kind is OutcomeKind.SUCCEEDED:
            errors = check_payload(
                spec.output_schema, outcome.result or b"", outcome.content_type, "result"
            )
            if errors:
                await self._fail_output_schema(
                    op, errors, owner=owner, attempt=op.attempts, elapsed_ms=elapsed_ms
                )
                return
            await self._finish(
                op,
                OperationState.SUCCEEDED,
                result=outcome.result or b"",
                content_type=outcome.content_type,
                kind="operation.succeeded",
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
            )
        elif outcome.kind is OutcomeKind.ACCEPTED:
            poll_at = self.now() + timedelta(seconds=self.config.task_poll_s)
            await self.store.update_running(
                op.id,
                owner,
                work=Work.POLL if pollable else None,
                next_attempt_at=poll_at if pollable else None,
                agent_token=outcome.agent_token,
                event=self._event(
                    op.id,
                    "attempt.accepted",
                    attempt=op.attempts,
                    agent_token=bool(outcome.agent_token),
                    elapsed_ms=elapsed_ms,
                ),
            )
            self._wake_work.set()  # a cancel may have arrived meanwhile
        elif outcome.kind is OutcomeKind.OPERATION_FAILED:
            state = (
                OperationState.CANCELED if outcome.state == "canceled" else OperationState.FAILED
            )
            fail = outcome.failure or {"message": "operation failed"}
            if (fail.get("metadata") or {}).get("type") != "nexus.OperationError":
                fail = operation_error(
                    state, str(fail.get("message") or "operation failed"), cause=fail
                )
            await self._finish(
                op,
                state,
                failure=fail,
                kind=f"operation.{state.value}",
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
            )
        elif outcome.kind is OutcomeKind.RETRYABLE:
            exhausted = (
                spec.retry.max_attempts is not None and op.attempts >= spec.retry.max_attempts
            )
            if exhausted:
                await self._fail(
                    op,
                    f"gave up after {op.attempts} attempts: {outcome.error}",
                    cause=outcome.failure,
                    owner=owner,
                    attempt=op.attempts,
                    elapsed_ms=elapsed_ms,
                )
                return
            self.metrics.child(self.metrics.retries, op.service).inc()
            nxt = backoff.next_attempt_at(
                spec.retry, op.attempts, self.now(), outcome.retry_after_s
            )
            if op.deadline_at is not None and nxt > op.deadline_at:
                nxt = op.deadline_at
            await self.store.update_running(
                op.id,
                owner,
                work=Work.DISPATCH,
                next_attempt_at=nxt,
                last_error=outcome.error,
                event=self._event(
                    op.id,
                    "attempt.failed",
                    attempt=op.attempts,
                    retryable=True,
                    error=outcome.error,
                    status=outcome.status,
                    next_attempt_at=nxt.isoformat(),
                    elapsed_ms=elapsed_ms,
                ),
            )
        else:
            await self._fail(
                op,
                f"agent request failed: {outcome.error}",
                cause=outcome.failure,
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
                status=outcome.status,
            )

    async def _propagate_cancel(self, op: Operation, agent: AgentSpec) -> None:
        adapter = self.adapters.get(agent.adapter)
        attempt_no = int(op.attempts)
        outcome = (
            await adapter.cancel(CancelRequest(operation=op, agent=agent, timeout_s=10.0))
            if adapter is not None
            else Outcome(kind=OutcomeKind.PERMANENT, error="no adapter")
        )
        if outcome.kind is OutcomeKind.RETRYABLE:
            nxt = backoff.next_attempt_at(
                self.config.cancel_retry, attempt_no, self.now(), outcome.retry_after_s
            )
            await self.store.update_running(
                op.id,
                self.config.owner,
                work=Work.CANCEL,
                next_attempt_at=nxt,
                last_error=outcome.error,
                event=self._event(
                    op.id, "cancel.failed", error=outcome.error, next_attempt_at=nxt.isoformat()
                ),
            )
            return
        await self._finish(
            op,
            OperationState.CANCELED,
            failure=operation_error(OperationState.CANCELED, "operation canceled"),
            kind="operation.canceled",
            owner=self.config.owner,
            agent_acknowledged=outcome.kind is OutcomeKind.SUCCEEDED,
            agent_error=outcome.error,
        )

    async def _cancel_after_close(self, op: Operation, agent: AgentSpec | None) -> None:
        """The operation timed out while the agent worked on it: send the agent a cancel so it
        stops spending (retried with backoff for ``cancel_after_close_s``), then drop the work."""
        adapter = self.adapters.get(agent.adapter) if agent else None
        if agent is None or adapter is None or op.work is not Work.CANCEL:
            outcome = Outcome(kind=OutcomeKind.PERMANENT, error="agent no longer registered")
        else:
            outcome = await adapter.cancel(CancelRequest(operation=op, agent=agent, timeout_s=10.0))
        now = self.now()
        closed = op.closed_at or now
        if outcome.kind is OutcomeKind.RETRYABLE and now - closed < timedelta(
            seconds=self.config.cancel_after_close_s
        ):
            tries = 1 + int(math.log2(1 + (now - closed).total_seconds()))
            nxt = backoff.next_attempt_at(self.config.cancel_retry, tries, now)
            await self.store.update_closed(
                op.id,
                self.config.owner,
                work=Work.CANCEL,
                next_attempt_at=nxt,
                event=self._event(op.id, "cancel.failed", error=outcome.error),
            )
            return
        kind = "cancel.sent" if outcome.kind is OutcomeKind.SUCCEEDED else "cancel.abandoned"
        await self.store.update_closed(
            op.id,
            self.config.owner,
            work=None,
            next_attempt_at=None,
            event=self._event(op.id, kind, after="timeout", error=outcome.error),
        )

    # -- terminal transitions ---------------------------------------------------------------

    async def _fail(
        self,
        op: Operation,
        message: str,
        *,
        cause: dict[str, Any] | None = None,
        kind: str = "operation.failed",
        **data: Any,
    ) -> bool:
        """Close the operation as failed, with an OperationError Failure."""
        return await self._finish(
            op,
            OperationState.FAILED,
            failure=operation_error(OperationState.FAILED, message, cause=cause),
            kind=kind,
            **data,
        )

    async def _fail_output_schema(
        self, op: Operation, errors: list[dict[str, str]], **data: Any
    ) -> bool:
        return await self._fail(
            op,
            "agent result does not match the output schema",
            cause=failure("output schema violation", details={"errors": errors}),
            **data,
        )

    async def _finish(
        self,
        op: Operation,
        state: OperationState,
        *,
        kind: str,
        result: bytes | None = None,
        content_type: str | None = None,
        failure: dict[str, Any] | None = None,
        owner: str | None = None,
        then_cancel_agent: bool = False,
        **data: Any,
    ) -> bool:
        now = self.now()
        callback = self._callback_for(op, state, now, result, content_type, failure)
        direct = callback is not None and len(self._cb_inflight) < self.config.max_inflight
        if callback is not None and direct:  # leased to us in the same transaction
            callback = replace(
                callback,
                attempts=1,
                lease_owner=self.config.owner,
                lease_until=now + timedelta(seconds=self._callback_lease_s()),
            )
        data = {k: v for k, v in data.items() if v is not None}
        if failure is not None:
            data.setdefault("message", failure.get("message"))
        completion = Completion(
            operation_id=op.id,
            state=state,
            at=now,
            result=result,
            result_content_type=content_type,
            failure=failure,
            event=Event(operation_id=op.id, kind=kind, at=now, data=data),
            callback=callback,
            only_if_owner=owner,
            then_cancel_agent=then_cancel_agent,
        )
        try:
            if self.config.group_commit:
                applied = await self._completions.submit(completion)
            else:
                applied = await self.store.complete(completion)
        except StoreError:
            if callback is not None and direct:
                # The commit may have happened with the callback leased to us: look again
                # soon rather than leave it until that lease runs out.
                self._spawn_recheck(op.id)
            raise
        if applied:
            log.debug(
                "operation closed",
                extra={"operation_id": op.id, "state": state.value, "event": kind},
            )
            self.metrics.child(self.metrics.closed, op.service, state.value).inc()
            self.metrics.child(self.metrics.operation_seconds, op.service, state.value).observe(
                max(0.0, (now - op.created_at).total_seconds())
            )
            self._notify(op.id)
            if callback is not None and direct:
                self._start_delivery(callback)  # no claim round trip
            elif callback is not None:
                self._wake_callbacks.set()
        return applied

    def _callback_for(
        self,
        op: Operation,
        state: OperationState,
        now: datetime,
        result: bytes | None,
        content_type: str | None,
        fail: dict[str, Any] | None,
    ) -> CallbackDelivery | None:
        if not op.callback_url:
            return None
        headers = dict(op.callback_headers)
        headers.update(
            {
                "Nexus-Operation-Token": op.id,
                "Nexus-Operation-Id": op.id,
                "Nexus-Operation-State": state.value,
                "Nexus-Operation-Start-Time": http_date(op.created_at),
                "Nexus-Operation-Close-Time": rfc3339_ms(now),
            }
        )
        if op.links:
            headers["Nexus-Link"] = ", ".join(op.links)
        if op.traceparent:
            headers["traceparent"] = op.traceparent
        if state is OperationState.SUCCEEDED:
            body = result or b""
            headers["Content-Type"] = content_type or "application/json"
        else:
            body = json.dumps(fail or {}).encode()
            headers["Content-Type"] = "application/json"
        return CallbackDelivery(
            id=f"msg_{uuid.uuid4().hex}",
            operation_id=op.id,
            caller=op.caller,
            url=op.callback_url,
            headers=headers,
            body=body,
            created_at=now,
            expires_at=now + timedelta(seconds=self.config.callback_ttl_s),
            next_attempt_at=now,
        )

    def _notify(self, op_id: str) -> None:
        for fut in self._waiters.pop(op_id, []):
            if not fut.done():
                fut.set_result(None)

    async def wait_terminal(self, op_id: str, wait_s: float) -> Operation | None:
        """Long-poll: the operation once terminal, or as it stands when ``wait_s`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        while True:
            op = await self.store.get_operation(op_id)
            remaining = deadline - loop.time()
            if op is None or op.state.terminal or remaining <= 0:
                return op
            # Completions by other replicas wake this through _closures_loop; re-reading now
            # and then covers a lost notification.
            await self.wait_change(op_id, min(remaining, max(0.05, self.config.poll_interval_s)))

    async def wait_change(self, op_id: str, timeout_s: float) -> None:
        """Sleep until this replica closes the operation or ``timeout_s`` passes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(op_id, []).append(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout_s)
        finally:
            waiters = self._waiters.get(op_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(op_id, None)

    async def expire_timeouts(self) -> int:
        ops = await self.store.due_timeouts(self.now(), 200)
        n = 0
        for op in ops:
            applied = await self._fail(
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
                self._wake_work.set()
        return n

    # -- caller-facing actions ----------------------------------------------------------------

    async def cancel(self, op_id: str, by: str) -> Operation:
        op = await self.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state is OperationState.RUNNING and op.cancel_requested_at is None:
            applied = await self.store.request_cancel(
                op_id, self.now(), self._event(op_id, "cancel.requested", by=by)
            )
            if applied:
                self._wake_work.set()
        return op

    async def complete_from_agent(
        self,
        op_id: str,
        state: OperationState,
        *,
        result: bytes | None = None,
        content_type: str | None = None,
        fail: dict[str, Any] | None = None,
    ) -> tuple[Operation, bool]:
        op = await self.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state.terminal:
            return op, False
        if state is OperationState.SUCCEEDED:
            found = await self.registry.get(op.service)
            spec = found.operations.get(op.operation) if found else None
            errors = check_payload(
                spec.output_schema if spec else None, result or b"", content_type, "result"
            )
            if errors:
                applied = await self._fail_output_schema(op, errors, via="completion")
                return op, applied
            applied = await self._finish(
                op,
                state,
                result=result or b"",
                content_type=content_type,
                kind="operation.succeeded",
                via="completion",
            )
        else:
            body = fail or {"message": f"operation {state.value}"}
            if (body.get("metadata") or {}).get("type") != "nexus.OperationError":
                body = operation_error(state, str(body.get("message") or state.value), cause=body)
            applied = await self._finish(
                op, state, failure=body, kind=f"operation.{state.value}", via="completion"
            )
        return op, applied

    async def redrive(self, op_id: str, by: str) -> bool:
        ok = await self.store.redrive(
            op_id, self.now(), self._event(op_id, "operation.redriven", by=by)
        )
        if ok:
            self._wake_work.set()
        return ok

    async def redrive_callback(self, delivery_id: str, op_id: str, by: str) -> bool:
        now = self.now()
        ok = await self.store.redrive_callback(
            delivery_id,
            now,
            now + timedelta(seconds=self.config.callback_ttl_s),
            self._event(op_id, "callback.redriven", delivery_id=delivery_id, by=by),
        )
        if ok:
            self._wake_callbacks.set()
        return ok

    # -- callback delivery ------------------------------------------------------------------

    async def claim_and_deliver_callbacks(self) -> int:
        return await self._claim(
            self._cb_inflight,
            self._wake_callbacks,
            self._callback_lease_s(),
            self.store.claim_callbacks,
            self._start_delivery,
        )

    def _spawn_recheck(self, op_id: str) -> None:
        task = asyncio.create_task(self._recheck_callbacks(op_id), name=f"cb-recheck-{op_id}")
        self._cb_inflight[f"recheck-{op_id}"] = task
        task.add_done_callback(functools.partial(_forget, self._cb_inflight, f"recheck-{op_id}"))

    async def _recheck_callbacks(self, op_id: str) -> None:
        """After a commit whose reply was lost: deliver callbacks it leased to us, if any."""
        for _ in range(20):
            await asyncio.sleep(self.config.poll_interval_s)
            try:
                deliveries = await self.store.list_callbacks(op_id)
            except StoreError:
                continue
            for d in deliveries:
                mine = d.lease_owner == self.config.owner
                if d.state is DeliveryState.PENDING and mine and d.id not in self._cb_inflight:
                    self._start_delivery(d)
            return

    async def _record_delivered(self, events: Sequence[Event]) -> list[None]:
        await self.store.callbacks_delivered(self.config.owner, events)
        return [None] * len(events)

    async def _record_one_delivered(self, event: Event) -> None:
        await self.store.callbacks_delivered(self.config.owner, [event])

    def _callback_lease_s(self) -> float:
        return self.config.callback_timeout_s + self.config.lease_s

    def _start_delivery(self, d: CallbackDelivery) -> None:
        task = asyncio.create_task(self._deliver(d), name=f"cb-{d.id}")
        self._cb_inflight[d.id] = task
        task.add_done_callback(functools.partial(_forget, self._cb_inflight, d.id))

    async def _deliver(self, d: CallbackDelivery) -> None:
        try:
            await self._deliver_once(d)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.warning(
                "store error, lease left to expire: %s",
                exc,
                extra={"operation_id": d.operation_id, "delivery_id": d.id},
            )
        except Exception:
            log.exception(
                "unexpected error delivering a callback",
                extra={"operation_id": d.operation_id, "delivery_id": d.id},
            )

    async def _deliver_once(self, d: CallbackDelivery) -> None:
        now = self.now()
        headers = dict(d.headers)
        if self.signer is not None:
            headers.update(await self.signer.headers(d.caller, d.id, d.body, int(now.timestamp())))
        else:
            headers["webhook-id"] = d.id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
        status: int | None = None
        retry_after: float | None = None
        sent_at = self.now()
        try:
            resp = await self.transport.request(
                "POST",
                d.url,
                headers=headers,
                body=d.body,
                timeout_s=self.config.callback_timeout_s,
            )
            status = resp.status
            error = None if 200 <= status < 300 else f"receiver answered HTTP {status}"
            if status in (429, 502, 503, 504):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            permanent = False
        except TransportError as exc:
            error = str(exc)
            permanent = not exc.retryable
        now = self.now()
        self.metrics.callback_seconds.observe(max(0.0, (now - sent_at).total_seconds()))
        if error is None:
            self.metrics.child(self.metrics.callbacks, "delivered").inc()
            await self._acks.submit(
                Event(
                    operation_id=d.operation_id,
                    kind="callback.delivered",
                    at=now,
                    data={"delivery_id": d.id, "attempt": d.attempts, "status": status},
                )
            )
            return
        self.metrics.child(self.metrics.callbacks, "failed").inc()
        nxt = backoff.next_attempt_at(self.config.callback_retry, d.attempts, now, retry_after)
        if status == 410 or permanent:
            state, kind = DeliveryState.DISABLED, "callback.disabled"
        elif nxt >= d.expires_at:
            state, kind = DeliveryState.EXPIRED, "callback.expired"
        else:
            state, kind = DeliveryState.PENDING, "callback.failed"
        await self.store.finish_callback(
            d.id,
            self.config.owner,
            state=state,
            next_attempt_at=nxt,
            last_error=error,
            event=Event(
                operation_id=d.operation_id,
                kind=kind,
                at=now,
                data={
                    "delivery_id": d.id,
                    "attempt": d.attempts,
                    "status": status,
                    "error": error,
                    "next_attempt_at": nxt.isoformat() if state is DeliveryState.PENDING else None,
                },
            ),
        )
