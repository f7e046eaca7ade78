"""The engine's in-memory maps stay bounded however many operations and callers go through it.

Each test drives the real engine on the in-memory store to quiescence and reads
``Engine.memory_census()``: what a process keeps per operation is released when the operation
closes, what it keeps per caller is an LRU with a cap (issue 17 item 5: a gateway's RSS stays
flat over a long run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.domain.clock import ManualClock
from gateway.domain.dispatch import DispatchRequest, HttpResponse, Outcome, OutcomeKind
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from gateway.engine import Engine, EngineConfig, StartRequest
from gateway.engine.signing import CallbackSigner
from gateway.store import MemoryStore
from gateway.testing import eventually
from registry.service import Registry

pytestmark = pytest.mark.asyncio

N = 120
A, B = "http://a.invalid", "http://b.invalid"


class Echo:
    async def start(self, req: DispatchRequest) -> Outcome:
        return Outcome(kind=OutcomeKind.SUCCEEDED, result=b"1", content_type="application/json")

    async def cancel(self, req: object) -> Outcome:
        return Outcome(kind=OutcomeKind.SUCCEEDED)


class Receiver:
    def __init__(self) -> None:
        self.delivered = 0

    async def request(
        self, method: str, url: str, *, headers: object, body: bytes | None, timeout_s: float
    ) -> HttpResponse:
        self.delivered += 1
        return HttpResponse(status=200, headers={}, body=b"")


class Rig:
    def __init__(self, max_cached: int) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore()
        self.registry = Registry(self.store, self.clock)
        self.receiver = Receiver()
        self.signer = CallbackSigner(self.store, self.clock, max_cached=max_cached)
        self.engine = Engine(
            store=self.store,
            registry=self.registry,
            adapters={AdapterKind.HTTP: Echo()},
            transport=self.receiver,
            clock=self.clock,
            config=EngineConfig(owner="unit", lease_s=30.0, sync_wait_s=0.0),
            secret=b"unit-test-secret",
            signer=self.signer,
        )

    async def run(self, service: str, callers: int) -> None:
        """N operations of ``service`` from ``callers`` distinct callers, each with a callback,
        until every callback is delivered."""
        for i in range(N):
            await self.engine.start(
                StartRequest(
                    service=service,
                    operation="op",
                    caller=f"caller-{i % callers}",
                    input=b"{}",
                    content_type="application/json",
                    callback_url=f"http://caller.invalid/cb/{i}",
                )
            )
        await eventually(lambda: self.receiver.delivered, until=lambda n: n >= N)
        await eventually(
            lambda: self.engine.memory_census(),
            until=lambda c: c["inflight"] == 0 and c["callbacks_inflight"] == 0,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(max_cached=16)
    await r.store.migrate()
    op = {"op": OperationSpec(name="op")}
    await r.registry.register(AgentSpec(name="one", endpoint=A, operations=op))
    await r.registry.register(AgentSpec(name="pool", endpoint=A, endpoints=(A, B), operations=op))
    await r.engine.run()
    yield r
    await r.engine.stop(grace_s=0.1)
    await r.store.close()


@pytest.mark.parametrize("service", ["one", "pool"])
async def test_closed_operations_leave_nothing_behind_in_the_engine(rig: Rig, service: str) -> None:
    await rig.run(service, callers=1)
    census = rig.engine.memory_census()
    # the endpoint each attempt used (a pool's retries avoid it) is dropped at the close
    assert census["endpoints_remembered"] == 0, census
    assert {k: v for k, v in census.items() if v and k != "caller_secrets_cached"} == {}
    assert census["caller_secrets_cached"] == 1


async def test_the_callback_signer_remembers_a_bounded_number_of_callers(rig: Rig) -> None:
    await rig.run("one", callers=N)
    # every caller's callbacks were signed with its own secret (one stored row each) ...
    now = rig.clock.now()
    stored = [await rig.store.caller_secrets(f"caller-{i}", now, "unused") for i in range(N)]
    assert len({s.secret for s in stored}) == N
    # ... but only the most recent callers' secrets stay in memory
    assert rig.engine.memory_census()["caller_secrets_cached"] == 16
