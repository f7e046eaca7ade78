"""Agent pools and credentials: which endpoint an attempt goes to, and with which headers.

This room owns every outbound call to an agent as the engine makes it (``AgentCalls``): it
picks the endpoint of the agent's pool (round-robin over the endpoints that are up, the
least recently failed one when none is), resolves the agent's credentials into headers
(``CredentialSource``) and hands both to the adapter with the request, so every adapter gets
them the same way. An agent answering 401 gets one more try with refreshed credentials. Each
call's outcome feeds the endpoint's health (``EndpointPool``): successes, failures, the last
error, up or down. A connection error (no HTTP status) marks the endpoint down for the
cool-down; the next attempt of the same operation avoids the endpoint the last one used.
Health is per replica, like the circuit breaker.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from gateway.domain.clock import Clock
from gateway.domain.dispatch import (
    CancelRequest,
    CredentialError,
    CredentialSource,
    DispatchRequest,
    Outcome,
    OutcomeKind,
)
from gateway.domain.specs import AgentSpec, AuthType
from gateway.engine.metrics import Metrics
from gateway.security.netguard import redact_userinfo

R = TypeVar("R", DispatchRequest, CancelRequest)
_MAX_REMEMBERED = 100_000  # operation -> endpoint of its last attempt


@dataclass
class EndpointHealth:
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_failure_at: datetime | None = None
    last_failure_mono: float = 0.0
    down_until: float = 0.0  # monotonic

    def up(self, now: float) -> bool:
        return now >= self.down_until


class EndpointPool:
    """Per-endpoint health of every agent pool this replica called."""

    def __init__(
        self,
        clock: Clock,
        metrics: Metrics,
        *,
        down_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._down_s = down_s
        self._monotonic = monotonic
        self._health: dict[tuple[str, str], EndpointHealth] = {}
        self._turn: dict[str, int] = {}
        self._last: OrderedDict[str, str] = OrderedDict()  # operation id -> endpoint

    def _get(self, agent: str, endpoint: str) -> EndpointHealth:
        key = (agent, endpoint)
        found = self._health.get(key)
        if found is None:
            found = self._health[key] = EndpointHealth()
        return found

    def choose(self, agent: AgentSpec, op_id: str | None = None, *, retry: bool = False) -> str:
        """The endpoint for the next call: ``retry`` avoids the one the operation last used."""
        pool = agent.pool()
        if len(pool) <= 1:
            return pool[0] if pool else agent.endpoint
        now = self._monotonic()
        avoid = self._last.get(op_id) if retry and op_id else None
        up = [e for e in pool if self._get(agent.name, e).up(now)]
        candidates = [e for e in up if e != avoid] or up
        if not candidates:  # all down: the one that failed longest ago
            others = [e for e in pool if e != avoid] or list(pool)
            return min(others, key=lambda e: self._get(agent.name, e).last_failure_mono)
        turn = self._turn.get(agent.name, 0)
        self._turn[agent.name] = turn + 1
        return candidates[turn % len(candidates)]

    def sticky(self, agent: AgentSpec, op_id: str) -> str:
        """The endpoint that took the operation (for polls and cancels), if still in the pool."""
        last = self._last.get(op_id)
        if last is not None and last in agent.pool():
            return last
        return self.choose(agent)

    def used(self, op_id: str, endpoint: str) -> None:
        self._last[op_id] = endpoint
        self._last.move_to_end(op_id)
        while len(self._last) > _MAX_REMEMBERED:
            self._last.popitem(last=False)

    def last_endpoint(self, op_id: str) -> str | None:
        return self._last.get(op_id)

    def forget(self, op_id: str) -> None:
        """The operation closed: no retry, poll or cancel will ask for its endpoint again."""
        self._last.pop(op_id, None)

    @property
    def remembered(self) -> int:
        """Operations whose last endpoint this replica remembers."""
        return len(self._last)

    def record(self, agent: str, endpoint: str, outcome: Outcome) -> None:
        health = self._get(agent, endpoint)
        label = redact_userinfo(endpoint)
        if outcome.kind is OutcomeKind.RETRYABLE:
            self.failure(agent, endpoint, outcome.error or "retryable failure")
            if outcome.status is not None:  # the endpoint answered: it is not down
                health.down_until = 0.0
                self._metrics.child(self._metrics.endpoint_up, agent, label).set(1)
            return
        health.successes += 1
        health.down_until = 0.0
        self._metrics.child(self._metrics.endpoint_calls, agent, label, "success").inc()
        self._metrics.child(self._metrics.endpoint_up, agent, label).set(1)

    def failure(self, agent: str, endpoint: str, error: str) -> None:
        """The endpoint failed (connection error, or a heartbeat lost): down for a while."""
        health = self._get(agent, endpoint)
        health.failures += 1
        health.last_error = error[:500]
        health.last_failure_at = self._clock.now()
        health.last_failure_mono = self._monotonic()
        health.down_until = health.last_failure_mono + self._down_s
        label = redact_userinfo(endpoint)
        self._metrics.child(self._metrics.endpoint_calls, agent, label, "failure").inc()
        self._metrics.child(self._metrics.endpoint_up, agent, label).set(0)

    def lost(self, agent: str, op_id: str, error: str) -> None:
        """The operation's agent instance stopped heartbeating: count it against its endpoint."""
        endpoint = self._last.get(op_id)
        if endpoint is not None:
            self.failure(agent, endpoint, error)

    def health(self, agent: AgentSpec) -> list[dict[str, Any]]:
        """Each endpoint's health as ``GET /api/agents/{name}`` shows it (this replica's view)."""
        now = self._monotonic()
        out = []
        for endpoint in agent.pool():
            h = self._health.get((agent.name, endpoint)) or EndpointHealth()
            out.append(
                {
                    "endpoint": redact_userinfo(endpoint),
                    "up": h.up(now),
                    "successes": h.successes,
                    "failures": h.failures,
                    "last_error": h.last_error,
                    "last_failure_at": h.last_failure_at.isoformat() if h.last_failure_at else None,
                }
            )
        return out


class AgentCalls:
    """Every call the engine makes to an agent: endpoint chosen, credentials attached."""

    def __init__(self, pool: EndpointPool, credentials: CredentialSource | None) -> None:
        self.pool = pool
        self._credentials = credentials

    async def _headers(self, agent: AgentSpec, refresh: bool) -> dict[str, str]:
        if agent.auth is None or self._credentials is None:
            return {}
        return await self._credentials.headers(agent, refresh=refresh)

    async def call(
        self,
        req: R,
        endpoint: str,
        send: Callable[[R], Awaitable[Outcome]],
        *,
        record: bool = True,
    ) -> Outcome:
        """Send ``req`` to ``endpoint`` with the agent's credentials; once more with fresh
        ones when the agent answers 401 to an OAuth2 token."""
        agent = req.agent
        routed = replace(agent, endpoint=endpoint) if endpoint != agent.endpoint else agent
        outcome: Outcome | None = None
        for refresh in (False, True):
            try:
                headers = await self._headers(agent, refresh)
            except CredentialError as exc:
                kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
                return Outcome(kind=kind, error=f"credentials: {exc}")
            if routed is agent and headers == req.auth_headers:
                outcome = await send(req)  # nothing to change (a replace() is ~10 us)
            else:
                outcome = await send(replace(req, agent=routed, auth_headers=headers))
            if outcome.status != 401 or agent.auth is None or refresh:
                break
            if agent.auth.type is not AuthType.OAUTH2_CLIENT_CREDENTIALS:
                break  # a static secret is not fetched again: the 401 stands
        assert outcome is not None
        if record and len(agent.pool()) > 1:
            self.pool.record(agent.name, endpoint, outcome)
        return outcome

    async def start(
        self, req: DispatchRequest, send: Callable[[DispatchRequest], Awaitable[Outcome]]
    ) -> tuple[Outcome, str]:
        """A dispatch: the pool's choice (another endpoint than the last attempt's)."""
        endpoint = self.pool.choose(req.agent, req.operation.id, retry=req.attempt > 1)
        if len(req.agent.pool()) > 1:  # one endpoint: nothing to avoid, stick to or blame
            self.pool.used(req.operation.id, endpoint)
        return await self.call(req, endpoint, send), endpoint

    async def follow(self, req: R, send: Callable[[R], Awaitable[Outcome]]) -> Outcome:
        """A poll or a cancel: to the endpoint that took the operation when known."""
        return await self.call(req, self.pool.sticky(req.agent, req.operation.id), send)


def endpoint_data(agent: AgentSpec, endpoint: str) -> Mapping[str, str]:
    """What an attempt's event says about the endpoint (pools only)."""
    if len(agent.pool()) <= 1:
        return {}
    return {"endpoint": redact_userinfo(endpoint)}
