"""The state every engine room shares, in one small object handed to each of them.

This room owns what is common to all concerns: the ports (store, registry, adapters,
transport, clock), the settings, the metrics, the per-replica breaker and limits, the two
wake-up events of the claim loops, the two maps of in-flight tasks, and the few helpers
that only read that state (the clock, event construction, tracked tasks, one claim round).
No room reaches into the :class:`~gateway.engine.engine.Engine` facade; they all receive
this object instead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from gateway.domain.clock import Clock
from gateway.domain.dispatch import AgentAdapter, CredentialSource, Transport
from gateway.domain.model import Event, Operation
from gateway.domain.ports import Store
from gateway.domain.specs import AdapterKind
from gateway.domain.tracing import NO_TRACER, Tracer
from gateway.engine.breaker import CircuitBreaker, Limits
from gateway.engine.config import EngineConfig
from gateway.engine.metrics import Metrics
from gateway.engine.pool import AgentCalls, EndpointPool
from gateway.engine.signing import CallbackSigner
from registry.service import Registry

T = TypeVar("T")
Tasks = dict[str, asyncio.Task[None]]


def _forget(tasks: Tasks, key: str, _task: asyncio.Task[None]) -> None:
    tasks.pop(key, None)


@dataclass(kw_only=True, eq=False)
class EngineCore:
    """Shared engine state. Every field is set once at construction, except ``store``, which
    may be swapped for a wrapper (fault injection); the rooms read it at call time."""

    store: Store
    registry: Registry
    adapters: Mapping[AdapterKind, AgentAdapter]
    transport: Transport
    clock: Clock
    config: EngineConfig
    metrics: Metrics
    signer: CallbackSigner | None = None
    tracer: Tracer = NO_TRACER
    credentials: CredentialSource | None = None
    breaker: CircuitBreaker = field(init=False)
    calls: AgentCalls = field(init=False)  # endpoint choice and credentials of every call
    limits: Limits = field(default_factory=Limits)
    wake_work: asyncio.Event = field(default_factory=asyncio.Event)
    wake_callbacks: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: Tasks = field(default_factory=dict)  # operation id -> its task
    cb_inflight: Tasks = field(default_factory=dict)  # delivery id (or recheck-<op>) -> task
    # ... of which delivered and only waiting for their ack to commit (it lingers to fill its
    # batch): they keep their lease and their task, not their place among max_inflight
    cb_acking: int = 0
    # Starts waiting inline for their first attempt (they answer 200/424 if it closes), and
    # the closes that first attempt claimed for such an answer, with the agent's links: a
    # start answered synchronously gets no completion callback.
    sync_waiting: set[str] = field(default_factory=set)
    sync_claimed: dict[str, list[str]] = field(default_factory=dict)
    answer_links: dict[str, list[str]] = field(default_factory=dict)  # of an async answer
    # Called with the id of each operation this replica closes: the rooms drop what they
    # kept per operation (the endpoint it used, its heartbeat names).
    on_closed: list[Callable[[str], None]] = field(default_factory=list)
    # Called with each operation this replica hands to an agent and the completion token it
    # carries: the heartbeat room remembers both, so the agent's first heartbeat here reads
    # nothing and computes no HMAC (10,000 operations dispatched at once heartbeat at once).
    on_dispatch: list[Callable[[Operation, str], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker(
            threshold=self.config.breaker_threshold, cooldown_s=self.config.breaker_cooldown_s
        )
        pool = EndpointPool(self.clock, self.metrics, down_s=self.config.endpoint_down_s)
        self.calls = AgentCalls(pool, self.credentials)

    def now(self) -> datetime:
        return self.clock.now()

    def event(self, op_id: str, kind: str, **data: Any) -> Event:
        return Event(operation_id=op_id, kind=kind, at=self.now(), data=data)


def spawn(tasks: Tasks, key: str, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``coro`` as a task kept in ``tasks`` under ``key`` until it ends."""
    task = asyncio.create_task(coro, name=name)
    tasks[key] = task
    task.add_done_callback(functools.partial(_forget, tasks, key))


async def claim_round(
    core: EngineCore,
    busy: int,
    wake: asyncio.Event,
    lease_s: float,
    claim: Callable[[str, datetime, datetime, int], Awaitable[Sequence[T]]],
    start: Callable[[T], None],
) -> int:
    """Lease as much due work as there is room for beside the ``busy`` places of
    ``max_inflight`` taken, and start it; a full batch means more may be due, so the loop
    goes round again at once."""
    limit = min(core.config.max_inflight - busy, core.config.claim_batch)
    if limit <= 0:
        return 0
    now = core.now()
    items = await claim(core.config.owner, now, now + timedelta(seconds=lease_s), limit)
    for item in items:
        start(item)
    if len(items) == limit:
        wake.set()
    return len(items)
