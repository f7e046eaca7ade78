"""Dispatch: running one claimed unit of work against its agent and recording the outcome.

This room owns the work claim round and the in-flight operation tasks, what an agent is
given (``dispatch_request``, the completion URL and its HMAC token), routing a claimed
operation (dispatch, poll, cancel, cancel-after-close), one attempt through the circuit
breaker and the concurrency limits, durable polling of accepted tasks, ``apply_outcome``
(success, accepted, failure, retry with backoff), and the operator's redrive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from gateway.domain.deadlines import deadline
from gateway.domain.dispatch import AgentAdapter, DispatchRequest, Journal, Outcome, OutcomeKind
from gateway.domain.errors import DataRejected, StoreError
from gateway.domain.model import Operation, OperationState, RunningUpdate, Work, operation_error
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from gateway.engine import backoff
from gateway.engine.batching import GroupCommit
from gateway.engine.cancel import Cancels
from gateway.engine.closing import UNSTORABLE, Closer
from gateway.engine.core import EngineCore, claim_round, spawn
from gateway.engine.inputs import park_outbound, retry_attempts
from gateway.engine.pool import endpoint_data
from gateway.engine.pull import PullQueues
from registry.service import check_payload_off_loop

log = logging.getLogger("swarmgate.engine")


class Dispatcher:
    def __init__(
        self,
        core: EngineCore,
        closer: Closer,
        cancels: Cancels,
        secret: bytes,
        pull: PullQueues | None = None,
    ) -> None:
        self._core = core
        self._pull = pull  # pull agents' attempts wait in their queue for a worker
        self._closer = closer
        self._cancels = cancels
        self._secret = secret
        # Acceptances (the agent answered 201) share commits: many dispatches answered at once
        # are one transaction (each was its own: ~1 ms of CPU per accepted operation).
        self._accepts: GroupCommit[RunningUpdate, bool] = GroupCommit(
            lambda batch: core.store.update_running_many(batch),
            lambda one: _update_one(core, one),
        )

    # -- what the agent is given --------------------------------------------------------------

    def completion_token(self, op_id: str) -> str:
        mac = hmac.new(self._secret, b"completion:" + op_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def check_completion_token(self, op_id: str, token: str) -> bool:
        return hmac.compare_digest(self.completion_token(op_id), token)

    def completion_url(self, op_id: str) -> str:
        return f"{self._core.config.public_url.rstrip('/')}/api/completions/{op_id}"

    def operation_url(self, op_id: str) -> str:
        """Where the agent heartbeats (``/heartbeat``) and keeps its journal (``/steps``)."""
        return f"{self._core.config.public_url.rstrip('/')}/api/operations/{op_id}"

    async def journal(self, op: Operation) -> Journal | None:
        """What earlier attempts recorded (None for a first attempt: nothing can be there)."""
        if op.attempts <= 1 and op.heartbeat_details is None:
            return None
        steps = await self._core.store.list_steps(op.id)
        return Journal(steps=steps, details=op.heartbeat_details)

    def dispatch_request(
        self,
        op: Operation,
        agent: AgentSpec,
        spec: OperationSpec,
        timeout_s: float | None = None,
        journal: Journal | None = None,
    ) -> DispatchRequest:
        """What an adapter needs to call (or poll) the agent for this operation."""
        base = self.operation_url(op.id)
        token = self.completion_token(op.id)
        for told in self._core.on_dispatch:
            told(op, token)
        return DispatchRequest(
            heartbeat_url=base + "/heartbeat",
            steps_url=base + "/steps",
            journal=journal,
            operation=op,
            agent=agent,
            spec=spec,
            attempt=op.attempts,
            completion_url=self.completion_url(op.id),
            completion_token=token,
            timeout_s=spec.attempt_timeout_s if timeout_s is None else timeout_s,
            deadline=op.deadline_at,
        )

    # -- claiming and spawning ----------------------------------------------------------------

    async def claim_and_run(self) -> int:
        core = self._core
        return await claim_round(
            core,
            len(core.inflight),
            core.wake_work,
            core.config.lease_s,
            core.store.claim_work,
            lambda op: self.spawn(op, None, None),
        )

    def spawn(self, op: Operation, agent: AgentSpec | None, spec: OperationSpec | None) -> None:
        spawn(self._core.inflight, op.id, self._handle_claimed(op, agent, spec), f"op-{op.id}")

    async def redrive(self, op_id: str, by: str) -> bool:
        core = self._core
        ok = await core.store.redrive(
            op_id, core.now(), core.event(op_id, "operation.redriven", by=by)
        )
        if ok:
            core.wake_work.set()
        return ok

    # -- one claimed unit of work -------------------------------------------------------------

    async def _handle_claimed(
        self, op: Operation, agent: AgentSpec | None, spec: OperationSpec | None
    ) -> None:
        core = self._core
        try:
            if agent is None or spec is None:
                found = await core.registry.get(op.service)
                agent = found
                spec = found.operations.get(op.operation) if found else None
            if op.state.terminal:  # closed under the agent (timeout): tell it to stop
                await self._cancels.after_close(op, agent)
                return
            if agent is None or spec is None:
                await self._closer.fail(
                    op,
                    f"agent {op.service}/{op.operation} is no longer registered",
                    owner=core.config.owner,
                )
                return
            if op.cancel_requested_at is not None and op.work is Work.DISPATCH:
                await self._closer.finish(
                    op,
                    OperationState.CANCELED,
                    failure=operation_error(OperationState.CANCELED, "operation canceled"),
                    kind="operation.canceled",
                    owner=core.config.owner,
                    before_dispatch=True,
                )
                return
            if op.work is Work.CANCEL:
                await self._cancels.propagate(op, agent)
                return
            if op.work is Work.CANCEL_WAIT:
                await self._cancels.grace_over(op)
                return
            if op.work is Work.POLL:
                await self._poll(op, agent, spec)
                return
            await self._dispatch(op, agent, spec)
        except asyncio.CancelledError:
            raise
        except DataRejected as exc:
            # A value the database refuses is refused at every retry: close the operation
            # rather than re-dispatch it at every lease expiry (issue 13, item 11).
            log.error("data refused by the store: %s", exc, extra={"operation_id": op.id})
            with contextlib.suppress(StoreError):
                await self._closer.fail(
                    op, f"{UNSTORABLE} (the database refused a value)", owner=core.config.owner
                )
        except StoreError as exc:
            # The lease runs out and another attempt happens later; nothing is lost.
            log.warning("store error, lease left to expire: %s", exc, extra={"operation_id": op.id})
        except Exception:
            log.exception("unexpected error; lease left to expire", extra={"operation_id": op.id})

    async def _dispatch(self, op: Operation, agent: AgentSpec, spec: OperationSpec) -> None:
        core = self._core
        if agent.adapter is AdapterKind.PULL and self._pull is not None:
            await self._pull.park(op, spec)  # no call: a worker leases it from the queue
            return
        adapter = core.adapters.get(agent.adapter)
        if adapter is None:
            await self._closer.fail(op, f"no adapter for {agent.adapter}", owner=core.config.owner)
            return
        if op.prev_lease_owner and op.prev_lease_owner != core.config.owner:
            core.metrics.takeovers.inc()
        retry_at = core.breaker.allow(agent.name, core.now())
        if retry_at is not None and op.deadline_at is not None:
            retry_at = min(retry_at, op.deadline_at)
        if retry_at is not None:  # circuit open: defer without calling the agent
            core.metrics.deferred.labels(agent.name).inc()
            await core.store.update_running(
                op.id,
                core.config.owner,
                work=Work.DISPATCH,
                next_attempt_at=retry_at,
                refund_attempt=True,
                last_error=op.last_error,
                event=core.event(
                    op.id, "attempt.deferred", reason="circuit open", until=retry_at.isoformat()
                ),
            )
            return
        if spec.concurrency:
            async with core.limits.semaphore(agent.name, spec.name, spec.concurrency):
                await self._call_agent(op, agent, spec, adapter)
        else:
            await self._call_agent(op, agent, spec, adapter)

    async def _call_agent(
        self, op: Operation, agent: AgentSpec, spec: OperationSpec, adapter: AgentAdapter
    ) -> None:
        core = self._core
        metrics, breaker = core.metrics, core.breaker
        req = self.dispatch_request(op, agent, spec, journal=await self.journal(op))
        started = core.now()
        endpoint = agent.endpoint
        with core.tracer.span(
            "attempt",
            op.traceparent,
            operation_id=op.id,
            agent=agent.name,
            operation=spec.name,
            attempt=op.attempts,
        ) as span:
            if span.traceparent:  # the agent joins the trace as a child of this attempt
                req = replace(req, operation=replace(op, traceparent=span.traceparent))
            try:
                # a deadline, not wait_for: no extra task per attempt (3.11's wait_for wraps
                # the coroutine in one), and no loop timer of its own (gateway.domain.deadlines)
                with deadline(spec.attempt_timeout_s + 1.0):
                    outcome, endpoint = await core.calls.start(req, adapter.start)
            except TimeoutError:
                outcome = Outcome(kind=OutcomeKind.RETRYABLE, error="attempt timed out")
                if len(agent.pool()) > 1:
                    endpoint = core.calls.pool.last_endpoint(op.id) or endpoint
                    core.calls.pool.failure(agent.name, endpoint, "attempt timed out")
            span.set(outcome=outcome.kind.value, http_status=outcome.status)
            if outcome.error:
                span.fail(outcome.error)
        elapsed = (core.now() - started).total_seconds()
        metrics.child(metrics.attempts, agent.name, outcome.kind.value).inc()
        metrics.child(metrics.dispatch_seconds, agent.name).observe(max(0.0, elapsed))
        if outcome.kind is OutcomeKind.RETRYABLE:
            if breaker.failure(agent.name, core.now()):
                metrics.breaker_open.labels(agent.name).set(1)
        else:  # any other outcome closes the circuit (and ends a half-open trial)
            if breaker.is_open(agent.name):
                metrics.breaker_open.labels(agent.name).set(0)
            breaker.success(agent.name)
        await self.apply_outcome(
            op,
            spec,
            outcome,
            round(elapsed * 1000, 1),
            pollable=hasattr(adapter, "poll"),
            where=endpoint_data(agent, endpoint),
        )

    async def _poll(self, op: Operation, agent: AgentSpec, spec: OperationSpec) -> None:
        """One durable poll of an accepted task; the next one is persisted as next_attempt_at."""
        core = self._core
        adapter = core.adapters.get(agent.adapter)
        poll = getattr(adapter, "poll", None)
        if poll is None:  # the adapter changed since: wait for the agent's completion
            await core.store.update_running(
                op.id,
                core.config.owner,
                work=None,
                next_attempt_at=None,
                event=None,
                now=core.now(),
            )
            return
        req = self.dispatch_request(op, agent, spec)
        try:
            with deadline(spec.attempt_timeout_s + 1.0):
                outcome: Outcome = await core.calls.follow(req, poll)
        except TimeoutError:
            outcome = Outcome(kind=OutcomeKind.RETRYABLE, error="poll timed out")
        if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.OPERATION_FAILED):
            await self.apply_outcome(op, spec, outcome)
            return
        if outcome.kind is OutcomeKind.ACCEPTED and outcome.input_prompt is not None:
            await park_outbound(  # the agent asks its caller: wait for the answer, no polls
                core,
                op,
                outcome.input_prompt,
                owner=core.config.owner,
                agent_token=outcome.agent_token or op.agent_token,
            )
            return
        # Still running (or the agent did not answer): poll again later; the schedule-to-close
        # timeout bounds how long. Polls are not state changes, so they write no event.
        await core.store.update_running(
            op.id,
            core.config.owner,
            work=Work.POLL,
            next_attempt_at=core.now() + timedelta(seconds=core.config.task_poll_s),
            last_error=outcome.error if outcome.kind is not OutcomeKind.ACCEPTED else None,
            event=None,
            now=core.now(),
        )

    async def apply_outcome(
        self,
        op: Operation,
        spec: OperationSpec,
        outcome: Outcome,
        elapsed_ms: float = 0.0,
        *,
        pollable: bool = False,
        where: Mapping[str, str] | None = None,
    ) -> None:
        core, closer = self._core, self._closer
        at: dict[str, Any] = dict(where or {})  # the pool endpoint the attempt went to
        owner = core.config.owner
        if outcome.kind is OutcomeKind.SUCCEEDED:
            errors = await check_payload_off_loop(
                spec.output_schema, outcome.result or b"", outcome.content_type, "result"
            )
            if errors:
                await closer.fail_output_schema(
                    op, errors, owner=owner, attempt=op.attempts, elapsed_ms=elapsed_ms, **at
                )
                return
            await closer.finish(
                op,
                OperationState.SUCCEEDED,
                result=outcome.result or b"",
                content_type=outcome.content_type,
                kind="operation.succeeded",
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
                links=outcome.links,
                **at,
            )
        elif outcome.kind is OutcomeKind.ACCEPTED and outcome.input_prompt is not None:
            await park_outbound(  # accepted, and the agent asks its caller: no polls
                core,
                op,
                outcome.input_prompt,
                owner=owner,
                agent_token=outcome.agent_token,
                event=core.event(op.id, "attempt.accepted", attempt=op.attempts, **at),
            )
            core.wake_work.set()
        elif outcome.kind is OutcomeKind.ACCEPTED:
            if outcome.links and op.id in core.sync_waiting:
                core.answer_links[op.id] = list(outcome.links)
            poll_at = core.now() + timedelta(seconds=core.config.task_poll_s)
            hb = spec.heartbeat_timeout_s
            await self._accepts.submit(
                RunningUpdate(
                    op_id=op.id,
                    owner=owner,
                    work=Work.POLL if pollable else None,
                    next_attempt_at=poll_at if pollable else None,
                    agent_token=outcome.agent_token,
                    # a heartbeating attempt owes its first heartbeat within the timeout
                    heartbeat_until=(
                        core.now() + timedelta(seconds=hb) if hb and not pollable else None
                    ),
                    event=core.event(
                        op.id,
                        "attempt.accepted",
                        attempt=op.attempts,
                        agent_token=bool(outcome.agent_token),
                        elapsed_ms=elapsed_ms,
                        **at,
                    ),
                )
            )
            core.wake_work.set()  # a cancel may have arrived meanwhile
        elif outcome.kind is OutcomeKind.OPERATION_FAILED:
            state = (
                OperationState.CANCELED if outcome.state == "canceled" else OperationState.FAILED
            )
            fail = outcome.failure or {"message": "operation failed"}
            if (fail.get("metadata") or {}).get("type") != "nexus.OperationError":
                fail = operation_error(
                    state, str(fail.get("message") or "operation failed"), cause=fail
                )
            await closer.finish(
                op,
                state,
                failure=fail,
                kind=f"operation.{state.value}",
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
                links=outcome.links,
                **at,
            )
        elif outcome.kind is OutcomeKind.RETRYABLE:
            limit = spec.retry.max_attempts
            exhausted = (  # answered questions are no failures: not counted (issue 15)
                limit is not None
                and op.attempts >= limit
                and await retry_attempts(core, op) >= limit
            )
            if exhausted:
                await closer.fail(
                    op,
                    f"gave up after {op.attempts} attempts: {outcome.error}",
                    cause=outcome.failure,
                    owner=owner,
                    attempt=op.attempts,
                    elapsed_ms=elapsed_ms,
                    **at,
                )
                return
            core.metrics.child(core.metrics.retries, op.service).inc()
            nxt = backoff.next_attempt_at(
                spec.retry, op.attempts, core.now(), outcome.retry_after_s
            )
            if op.deadline_at is not None and nxt > op.deadline_at:
                nxt = op.deadline_at
            await core.store.update_running(
                op.id,
                owner,
                work=Work.DISPATCH,
                next_attempt_at=nxt,
                last_error=outcome.error,
                event=core.event(
                    op.id,
                    "attempt.failed",
                    attempt=op.attempts,
                    retryable=True,
                    error=outcome.error,
                    status=outcome.status,
                    next_attempt_at=nxt.isoformat(),
                    elapsed_ms=elapsed_ms,
                    **at,
                ),
            )
        else:
            await closer.fail(
                op,
                f"agent request failed: {outcome.error}",
                cause=outcome.failure,
                owner=owner,
                attempt=op.attempts,
                elapsed_ms=elapsed_ms,
                status=outcome.status,
                **at,
            )


async def _update_one(core: EngineCore, update: RunningUpdate) -> bool:
    return (await core.store.update_running_many([update]))[0]
