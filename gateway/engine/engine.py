"""The durable engine: start, dispatch with retries, cancel, timeouts, completions, callbacks.

Every state change is one store transaction with its event (and its callback outbox row).
Work is claimed with leases, so any replica may die at any instant and another one (or a
restart) resumes the work once the lease has expired.

:class:`Engine` is a thin facade: it builds the shared :class:`~gateway.engine.core.EngineCore`
and one object per concern, and forwards each public method to its room:

- :mod:`gateway.engine.starts`: admission, ``start``, the inline wait;
- :mod:`gateway.engine.dispatch`: the work claim, one attempt, polling, ``apply_outcome``;
- :mod:`gateway.engine.closing`: every terminal transition, agent completions;
- :mod:`gateway.engine.cancel`: caller cancels, cancel propagation, timeouts;
- :mod:`gateway.engine.outbox`: completion callbacks (build, claim, sign, send, record);
- :mod:`gateway.engine.waiters`: long-poll waiters and the closures listener;
- :mod:`gateway.engine.loops`: the background loops, graceful stop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from gateway.domain.clock import Clock
from gateway.domain.dispatch import (
    AgentAdapter,
    CredentialSource,
    DispatchRequest,
    Journal,
    Outcome,
    Transport,
)
from gateway.domain.model import Operation, OperationState, StepRecord
from gateway.domain.ports import Store
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from gateway.domain.tracing import NO_TRACER, Tracer
from gateway.engine.breaker import CircuitBreaker, Limits
from gateway.engine.cancel import Cancels
from gateway.engine.closing import Closer
from gateway.engine.config import EngineConfig
from gateway.engine.core import EngineCore
from gateway.engine.dispatch import Dispatcher
from gateway.engine.heartbeats import HeartbeatAnswer, Heartbeats
from gateway.engine.inputs import Inputs, WaitingForInput, park_outbound
from gateway.engine.loops import Loops
from gateway.engine.metrics import Metrics
from gateway.engine.outbox import Outbox
from gateway.engine.pull import PullQueues, WorkerInfo
from gateway.engine.signing import CallbackSigner
from gateway.engine.starts import StartRequest, StartResult, Starts, fingerprint
from gateway.engine.waiters import Waiters
from gateway.engine.wire import http_date, rfc3339_ms
from registry.service import Registry

__all__ = [
    "Engine",
    "EngineConfig",
    "StartRequest",
    "StartResult",
    "fingerprint",
    "http_date",
    "rfc3339_ms",
]


class Engine:
    """One replica's engine: the public face of the rooms below it (see the module doc)."""

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
        tracer: Tracer | None = None,
        credentials: CredentialSource | None = None,
    ) -> None:
        self._core = core = EngineCore(
            store=store,
            registry=registry,
            adapters=adapters,
            transport=transport,
            clock=clock,
            config=config,
            signer=signer,
            metrics=metrics or Metrics(),
            tracer=tracer or NO_TRACER,
            credentials=credentials,
        )
        self._waiters = Waiters(core)
        self._outbox = Outbox(core)
        self._closer = Closer(core, self._outbox, self._waiters)
        self._cancels = Cancels(core, self._closer)
        self._pull = PullQueues(core)
        self._dispatcher = Dispatcher(core, self._closer, self._cancels, secret, self._pull)
        self._starts = Starts(core, self._dispatcher)
        self._heartbeats = Heartbeats(
            core, self._closer, self._dispatcher.check_completion_token, self._waiters.notify
        )
        core.on_closed += [core.calls.pool.forget, self._heartbeats.forget]
        core.on_dispatch.append(self._heartbeats.prime)
        self._inputs = Inputs(core, self._dispatcher.check_completion_token)
        self._loops = Loops(
            core, self._dispatcher, self._outbox, self._cancels, self._waiters, self._heartbeats
        )

    # -- shared state -----------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._core.store

    @store.setter
    def store(self, store: Store) -> None:  # a wrapped store (fault injection) for every room
        self._core.store = store

    @property
    def registry(self) -> Registry:
        return self._core.registry

    @property
    def adapters(self) -> Mapping[AdapterKind, AgentAdapter]:
        return self._core.adapters

    @property
    def transport(self) -> Transport:
        return self._core.transport

    @property
    def clock(self) -> Clock:
        return self._core.clock

    @property
    def config(self) -> EngineConfig:
        return self._core.config

    @property
    def signer(self) -> CallbackSigner | None:
        return self._core.signer

    @property
    def metrics(self) -> Metrics:
        return self._core.metrics

    @property
    def breaker(self) -> CircuitBreaker:
        return self._core.breaker

    @property
    def limits(self) -> Limits:
        return self._core.limits

    def endpoint_health(self, agent: AgentSpec) -> list[dict[str, Any]]:
        """Each endpoint of the agent's pool as this replica sees it."""
        return self._core.calls.pool.health(agent)

    @property
    def pending_starts(self) -> int:
        """Start requests in progress (bounded by ``max_pending_starts``)."""
        return self._starts.pending

    def memory_census(self) -> dict[str, int]:
        """Entries in this process's per-operation and per-caller maps. Each is bounded (by
        the work in flight, or an LRU cap) and released when its operation closes; the
        memory tests and ``bench`` leak hunts read it."""
        core = self._core
        return {
            "inflight": len(core.inflight),
            "callbacks_inflight": len(core.cb_inflight),
            "sync_waiting": len(core.sync_waiting),
            "sync_claimed": len(core.sync_claimed),
            "answer_links": len(core.answer_links),
            "answering": len(self._starts.answering),
            "waiters": self._waiters.watched,
            "endpoints_remembered": core.calls.pool.remembered,
            "heartbeat_names": self._heartbeats.names_cached,
            "caller_secrets_cached": core.signer.cached if core.signer is not None else 0,
        }

    def now(self) -> datetime:
        return self._core.now()

    # -- what an agent is given -------------------------------------------------------------

    def completion_token(self, op_id: str) -> str:
        return self._dispatcher.completion_token(op_id)

    def check_completion_token(self, op_id: str, token: str) -> bool:
        return self._dispatcher.check_completion_token(op_id, token)

    def completion_url(self, op_id: str) -> str:
        return self._dispatcher.completion_url(op_id)

    def dispatch_request(
        self, op: Operation, agent: AgentSpec, spec: OperationSpec, timeout_s: float | None = None
    ) -> DispatchRequest:
        """What an adapter needs to call (or poll) the agent for this operation."""
        return self._dispatcher.dispatch_request(op, agent, spec, timeout_s)

    # -- start ------------------------------------------------------------------------------

    def admit(self) -> AbstractContextManager[None]:
        """Bound the start requests in progress; beyond it the caller gets 429 + Retry-After."""
        return self._starts.admit()

    async def start(self, req: StartRequest) -> StartResult:
        return await self._starts.start(req)

    def answering(self, keys: tuple[tuple[str, str], ...]) -> AbstractContextManager[None]:
        """Hold idempotency keys while their first request is answered (see
        :meth:`Starts.answer`)."""
        return self._starts.answer(keys)

    def is_answering(self, scope: str, key: str) -> bool:
        """Whether this process is answering the first request of this idempotency key."""
        return (scope, key) in self._starts.answering

    async def wait_inline(
        self, op_id: str, timeout_s: float | None = None, *, answers_sync: bool = False
    ) -> Operation | None:
        """Wait (bounded) for the in-process first attempt (see :meth:`Starts.wait_inline`)."""
        return await self._starts.wait_inline(op_id, timeout_s, answers_sync=answers_sync)

    def sync_links(self, op_id: str) -> list[str] | None:
        """The agent's links for a synchronous answer (see :meth:`Starts.sync_links`)."""
        return self._starts.sync_links(op_id)

    async def replay_answer_state(self, op: Operation) -> Operation | None:
        """For a retried start (same request id) with no stored answer: the operation if it
        is to be answered synchronously (closed, and no callback was written for it), else
        None (answer 201; a first start still waiting inline here now owes a callback)."""
        self._core.sync_waiting.discard(op.id)
        if not op.state.terminal:
            return None
        if op.callback_url and await self._core.store.list_callbacks(op.id):
            return None
        return op

    def accepted_links(self, op_id: str) -> list[str]:
        """The links of the agent's async answer, for the start's 201 (in-process only)."""
        return self._core.answer_links.pop(op_id, [])

    # -- background loops -------------------------------------------------------------------

    async def run(self) -> None:
        """Start the background loops (returns at once)."""
        await self._loops.run()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work, let in-flight work finish for ``grace_s``, then cancel what is
        left and release its leases so another replica takes it over at once."""
        self._pull.close()  # waiting pull workers get their (empty) answer now
        await self._loops.stop(grace_s)

    def wake(self) -> None:
        self._loops.wake()

    async def claim_and_run_work(self) -> int:
        return await self._dispatcher.claim_and_run()

    async def claim_and_deliver_callbacks(self) -> int:
        return await self._outbox.claim_and_deliver()

    async def expire_timeouts(self) -> int:
        return await self._cancels.expire_timeouts()

    async def apply_outcome(
        self,
        op: Operation,
        spec: OperationSpec,
        outcome: Outcome,
        elapsed_ms: float = 0.0,
        *,
        pollable: bool = False,
    ) -> None:
        await self._dispatcher.apply_outcome(op, spec, outcome, elapsed_ms, pollable=pollable)

    # -- long-polls -------------------------------------------------------------------------

    async def wait_terminal(self, op_id: str, wait_s: float) -> Operation | None:
        """Long-poll: the operation once terminal, or as it stands when ``wait_s`` runs out."""
        return await self._waiters.wait_terminal(op_id, wait_s)

    async def wait_change(self, op_id: str, timeout_s: float) -> None:
        """Sleep until this replica closes the operation or ``timeout_s`` passes."""
        await self._waiters.wait_change(op_id, timeout_s)

    # -- caller-facing actions --------------------------------------------------------------

    async def cancel(self, op_id: str, by: str) -> Operation:
        return await self._cancels.cancel(op_id, by)

    async def complete_from_agent(
        self,
        op_id: str,
        state: OperationState,
        *,
        result: bytes | None = None,
        content_type: str | None = None,
        fail: dict[str, Any] | None = None,
        links: Sequence[str] = (),
    ) -> tuple[Operation, bool]:
        return await self._closer.complete_from_agent(
            op_id, state, result=result, content_type=content_type, fail=fail, links=links
        )

    async def redrive(self, op_id: str, by: str) -> bool:
        return await self._dispatcher.redrive(op_id, by)

    # -- heartbeats and the step journal (agent-facing) ---------------------------------------

    async def heartbeat(
        self, op_id: str, token: str, *, attempt: int | None, details: Any, has_details: bool
    ) -> HeartbeatAnswer:
        return await self._heartbeats.beat(
            op_id, token, attempt=attempt, details=details, has_details=has_details
        )

    async def journal(self, op_id: str, token: str) -> Journal:
        return await self._heartbeats.journal(op_id, token)

    async def record_step(
        self, op_id: str, token: str, name: str, result: Any, *, attempt: int | None = None
    ) -> tuple[StepRecord, bool]:
        return await self._heartbeats.record_step(op_id, token, name, result, attempt=attempt)

    async def expire_heartbeats(self) -> int:
        return await self._heartbeats.expire()

    # -- input-required (issue 15 item 4) -------------------------------------------------------

    async def ask_input(
        self,
        op_id: str,
        token: str,
        *,
        name: str,
        prompt: str,
        schema: dict[str, Any] | None,
        attempt: int | None,
    ) -> tuple[WaitingForInput | None, Any]:
        """The agent asks its caller (see :mod:`gateway.engine.inputs`)."""
        return await self._inputs.ask(
            op_id, token, name=name, prompt=prompt, schema=schema, attempt=attempt
        )

    async def provide_input(
        self, op: Operation, value: Any, *, by: str, via: str = "api"
    ) -> StepRecord:
        """The caller answers the operation's open question; it is dispatched again."""
        return await self._inputs.answer(op, value, by=by, via=via)

    async def agent_asks(self, op: Operation, prompt: str, agent_token: str | None) -> None:
        """An agent's pushed task asks its caller (A2A input-required): wait for the answer."""
        if op.work is None and not op.state.terminal:
            await park_outbound(
                self._core, op, prompt, owner=None, agent_token=agent_token or op.agent_token
            )

    async def waiting_for_input(self, op: Operation) -> WaitingForInput | None:
        """The operation's open question, if it waits for input."""
        return await self._inputs.waiting(op)

    # -- pull workers (agent-facing) -------------------------------------------------------------

    async def poll_tasks(
        self,
        agent: AgentSpec,
        worker_id: str,
        max_tasks: int,
        wait_s: float,
        gone: Callable[[], bool] = lambda: False,
    ) -> list[DispatchRequest]:
        """Lease up to ``max_tasks`` queued tasks of pull agent ``agent`` to ``worker_id``,
        waiting up to ``wait_s`` for one; each as the request a pushed agent would get."""
        ops = await self._pull.poll(agent, worker_id, max_tasks, wait_s, gone)
        out = []
        for op in ops:
            spec = agent.operations.get(op.operation) or OperationSpec(name=op.operation)
            journal = await self._dispatcher.journal(op)
            out.append(self._dispatcher.dispatch_request(op, agent, spec, journal=journal))
        return out

    async def pull_status(self, agent: AgentSpec) -> tuple[int, list[WorkerInfo]]:
        """A pull agent's queue depth and live workers."""
        return await self._pull.status(agent)

    async def redrive_callback(self, delivery_id: str, op_id: str, by: str) -> bool:
        return await self._outbox.redrive(delivery_id, op_id, by)
