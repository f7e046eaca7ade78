"""The HTTP agent adapter over the real transport, against a real agent on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web

from adapters.http import HttpAgentAdapter
from adapters.transport import HttpTransport
from gateway.domain.dispatch import DispatchRequest, OutcomeKind
from gateway.domain.model import Operation, OperationState, Work
from gateway.domain.specs import AgentSpec, OperationSpec
from gateway.security.netguard import OutboundPolicy
from tests.conftest import serving


def request(endpoint: str, timeout_s: float = 5.0) -> DispatchRequest:
    now = datetime.now(UTC)
    op = Operation(
        id="op-1",
        service="agent",
        operation="work",
        state=OperationState.RUNNING,
        caller="alice",
        created_at=now,
        input=b"{}",
        input_content_type="application/json",
        work=Work.DISPATCH,
    )
    spec = OperationSpec(name="work")
    return DispatchRequest(
        operation=op,
        agent=AgentSpec(name="agent", endpoint=endpoint, operations={"work": spec}),
        spec=spec,
        attempt=1,
        completion_url="http://127.0.0.1:1/api/completions/op-1",
        completion_token="t",
        timeout_s=timeout_s,
    )


@pytest.fixture
async def adapter() -> AsyncIterator[HttpAgentAdapter]:
    transport = HttpTransport(OutboundPolicy.from_strings(["127.0.0.0/8"]))
    yield HttpAgentAdapter(transport)
    await transport.close()


async def test_retry_after_and_content_type_from_the_agent_reach_the_outcome_in_any_case(
    adapter: HttpAgentAdapter,
) -> None:
    async def busy(_: web.Request) -> web.Response:
        return web.Response(status=503, headers={"retry-after": "7"})

    async def done(_: web.Request) -> web.Response:
        return web.Response(body=b"<ok/>", headers={"content-type": "application/xml"})

    app = web.Application()
    app.router.add_post("/busy/work", busy)
    app.router.add_post("/done/work", done)
    async with serving(app) as url:
        refused = await adapter.start(request(url + "/busy"))
        answered = await adapter.start(request(url + "/done"))
    assert (refused.kind, refused.retry_after_s) == (OutcomeKind.RETRYABLE, 7.0)
    assert (answered.kind, answered.result, answered.content_type) == (
        OutcomeKind.SUCCEEDED,
        b"<ok/>",
        "application/xml",
    )


async def test_an_agent_slower_than_the_attempt_timeout_is_a_retryable_timeout(
    adapter: HttpAgentAdapter,
) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)  # the stimulus: slower than the 0.3 s attempt timeout
        return web.Response(body=b"{}")

    app = web.Application()
    app.router.add_post("/slow/work", slow)
    async with serving(app) as url:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outcome = await adapter.start(request(url + "/slow", timeout_s=0.3))
        took = loop.time() - t0
    assert outcome.kind is OutcomeKind.RETRYABLE
    assert outcome.error == "timed out after 0.3s (waiting for the answer on a new connection)"
    assert took < 2.0
