"""The engine on the in-memory store with a manual clock: no network, no database, no sleeps.

The agent is an in-process ``AgentAdapter`` whose answers each test scripts, and callbacks go to
an in-process ``Transport`` that records them; the background loops are not started, so each
test drives the engine step by step (start, claim, expire) and moves the clock by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from gateway.domain.clock import ManualClock
from gateway.domain.dispatch import (
    CancelRequest,
    DispatchRequest,
    HttpResponse,
    Outcome,
    OutcomeKind,
)
from gateway.domain.model import OperationState
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy
from gateway.engine import Engine, EngineConfig, StartRequest
from gateway.engine.signing import CallbackSigner
from gateway.security import webhooks
from gateway.store import MemoryStore
from gateway.testing import eventually
from registry.service import Registry

pytestmark = pytest.mark.asyncio

NO_JITTER = RetryPolicy(initial_s=10.0, max_s=10.0, multiplier=1.0, jitter_s=0.0)


class ScriptedAgent:
    """An agent adapter that answers each attempt with the next scripted outcome."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[DispatchRequest] = []
        self.cancels: list[CancelRequest] = []

    async def start(self, req: DispatchRequest) -> Outcome:
        self.calls.append(req)
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]

    async def cancel(self, req: CancelRequest) -> Outcome:
        self.cancels.append(req)
        return Outcome(kind=OutcomeKind.SUCCEEDED)


class RecordingTransport:
    """Outbound HTTP that records each request and answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes | None]] = []

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> HttpResponse:
        self.requests.append((method, url, dict(headers), body))
        return HttpResponse(status=200, headers={}, body=b"")


class Rig:
    def __init__(self, agent: ScriptedAgent, spec: OperationSpec) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore()
        self.agent = agent
        self.transport = RecordingTransport()
        self.registry = Registry(self.store, self.clock)
        self.spec = spec
        self.engine = Engine(
            store=self.store,
            registry=self.registry,
            adapters={AdapterKind.HTTP: agent},
            transport=self.transport,
            clock=self.clock,
            config=EngineConfig(owner="unit", lease_s=30.0, sync_wait_s=1.0),
            secret=b"unit-test-secret",
            signer=CallbackSigner(self.store, self.clock),
        )

    async def start(self, callback_url: str | None = None) -> str:
        result = await self.engine.start(
            StartRequest(
                service="echo",
                operation=self.spec.name,
                caller="alice",
                input=b'{"n": 1}',
                content_type="application/json",
                callback_url=callback_url,
            )
        )
        await self.engine.wait_inline(result.operation.id)
        return result.operation.id

    async def kinds(self, op_id: str) -> list[str]:
        return [e.kind for e in await self.store.list_events(op_id)]


@pytest.fixture
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    agent, spec = request.param
    r = Rig(agent, spec)
    await r.store.migrate()
    await r.registry.register(
        AgentSpec(name="echo", endpoint="http://agent.invalid", operations={spec.name: spec})
    )
    yield r
    await r.engine.stop(grace_s=0.1)
    await r.store.close()


def scripted(*outcomes: Outcome, **spec: Any) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        "rig", [(ScriptedAgent(*outcomes), OperationSpec(name="op", **spec))], indirect=True
    )


@scripted(
    Outcome(kind=OutcomeKind.SUCCEEDED, result=b'{"ok":true}', content_type="application/json")
)
async def test_a_start_is_stored_then_answered_by_its_first_attempt(rig: Rig) -> None:
    op_id = await rig.start()
    op = await rig.store.get_operation(op_id)
    assert op is not None and op.state is OperationState.SUCCEEDED
    assert op.result == b'{"ok":true}'
    assert await rig.kinds(op_id) == [
        "operation.started",
        "attempt.started",
        "operation.succeeded",
    ]
    assert [c.operation.id for c in rig.agent.calls] == [op_id]


@scripted(
    Outcome(kind=OutcomeKind.RETRYABLE, error="agent busy"),
    Outcome(kind=OutcomeKind.SUCCEEDED, result=b"done", content_type="text/plain"),
    retry=NO_JITTER,
)
async def test_a_retryable_failure_waits_for_the_engine_clock_before_the_next_attempt(
    rig: Rig,
) -> None:
    op_id = await rig.start()
    op = await rig.store.get_operation(op_id)
    assert op is not None and op.state is OperationState.RUNNING
    assert op.next_attempt_at == rig.clock.now() + timedelta(seconds=10)
    assert op.last_error == "agent busy"

    rig.clock.advance(9.9)
    assert await rig.engine.claim_and_run_work() == 0  # not due yet on the engine's clock
    assert len(rig.agent.calls) == 1

    rig.clock.advance(0.2)
    assert await rig.engine.claim_and_run_work() == 1

    async def closed() -> OperationState | None:
        got = await rig.store.get_operation(op_id)
        return got.state if got else None

    await eventually(closed, until=lambda s: s is OperationState.SUCCEEDED)
    op = await rig.store.get_operation(op_id)
    assert op is not None and op.attempts == 2 and op.result == b"done"
    assert [c.attempt for c in rig.agent.calls] == [1, 2]


@scripted(Outcome(kind=OutcomeKind.ACCEPTED, agent_token="t-1"), timeout_s=60.0)
async def test_an_accepted_operation_times_out_on_the_engine_clock_and_the_agent_is_told(
    rig: Rig,
) -> None:
    op_id = await rig.start()
    op = await rig.store.get_operation(op_id)
    assert op is not None and op.state is OperationState.RUNNING and op.agent_token == "t-1"

    rig.clock.advance(59)
    assert await rig.engine.expire_timeouts() == 0
    rig.clock.advance(2)
    assert await rig.engine.expire_timeouts() == 1

    op = await rig.store.get_operation(op_id)
    assert op is not None and op.state.terminal and op.state is not OperationState.SUCCEEDED
    assert "operation.timed_out" in await rig.kinds(op_id)
    assert await rig.engine.claim_and_run_work() == 1  # the cancel towards the agent
    await eventually(lambda: len(rig.agent.cancels), until=lambda n: n == 1)
    assert rig.agent.cancels[0].operation.id == op_id


@scripted(Outcome(kind=OutcomeKind.SUCCEEDED, result=b"[1]", content_type="application/json"))
async def test_a_completion_callback_is_signed_and_sent_once_the_operation_closes(
    rig: Rig,
) -> None:
    op_id = await rig.start(callback_url="http://caller.invalid/done")
    await eventually(lambda: len(rig.transport.requests), until=lambda n: n >= 1)
    method, url, headers, body = rig.transport.requests[0]
    assert (method, url, body) == ("POST", "http://caller.invalid/done", b"[1]")
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["nexus-operation-state"] == "succeeded"
    assert lowered["nexus-operation-token"] == op_id
    secrets = await rig.store.caller_secrets("alice", rig.clock.now(), "unused")
    now = int(rig.clock.now().timestamp())
    assert webhooks.verify([secrets.secret], lowered, body or b"", now=now) == lowered["webhook-id"]
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify([webhooks.generate_secret()], lowered, body or b"", now=now)
