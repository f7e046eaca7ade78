"""Progress notifications on /mcp from an AgentApp's heartbeats, seen by the real ``mcp``
Python SDK client (its ``progress_callback`` sets ``_meta.progressToken``).

The agent reports ``{"progress": n, "total": 3, "message": ...}`` in its heartbeat details
and goes on to the next page only once the client's callback has seen the last one: so each
notification provably arrives while the call is still open, before its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as types

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import Running, make_settings, running_gateway, serving_agent
from tests.helpers import FAST_RETRY
from tests.integration.test_mcp_endpoint import call_as_task, mcp_client

PAGES = 3


class Pages:
    """The agent's side of the handshake: page n waits until the client saw progress n-1."""

    def __init__(self) -> None:
        self.seen = {n: asyncio.Event() for n in range(1, PAGES + 1)}
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.reports.append((progress, total, message))
        if int(progress) in self.seen:
            self.seen[int(progress)].set()


def progress_agent(pages: Pages) -> AgentApp:
    agent = AgentApp("crawler", description="reports progress in its heartbeats")

    @agent.operation("crawl", mode="async", heartbeat_timeout_s=30, retry=FAST_RETRY)
    async def crawl(ctx: OpContext, payload: Any) -> Any:
        for n in range(1, PAGES + 1):
            ctx.heartbeat({"progress": n, "total": PAGES, "message": f"page {n} of {PAGES}"})
            await asyncio.wait_for(pages.seen[n].wait(), 30)
        return {"pages": PAGES}

    @agent.operation("tick", mode="async", heartbeat_timeout_s=30, retry=FAST_RETRY)
    async def tick(ctx: OpContext, payload: Any) -> Any:
        ctx.heartbeat({"fetched": 1})  # a checkpoint without a progress number
        await asyncio.wait_for(pages.seen[1].wait(), 30)
        return {"ticked": True}

    return agent


@asynccontextmanager
async def gateway_with(db_url: str, pages: Pages) -> AsyncIterator[Running]:
    agent = progress_agent(pages)
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(agent.spec(agent_url))
            yield gw


async def test_a_tool_call_with_a_progress_callback_gets_increasing_progress_before_its_result(
    db_url: str,
) -> None:
    pages = Pages()
    async with gateway_with(db_url, pages) as gw, mcp_client(gw.url) as client:
        res = await client.call_tool("crawler__crawl", {}, progress_callback=pages.on_progress)
    assert not res.is_error
    assert res.structured_content == {"pages": PAGES}
    assert pages.reports == [(n, PAGES, f"page {n} of {PAGES}") for n in range(1, PAGES + 1)]


async def test_tasks_result_with_a_progress_callback_streams_the_tasks_progress(
    db_url: str,
) -> None:
    pages = Pages()
    async with gateway_with(db_url, pages) as gw, mcp_client(gw.url) as client:
        created = await call_as_task(client, "crawler__crawl", {})
        result = await client.session.send_request(
            types.GetTaskPayloadRequest(
                params=types.GetTaskPayloadRequestParams(task_id=created.task.task_id)
            ),
            types.CallToolResult,
            progress_callback=pages.on_progress,
        )
    assert result.structured_content == {"pages": PAGES}
    assert [p for p, _, _ in pages.reports] == [1, 2, 3]


async def test_heartbeats_without_a_progress_number_still_count_up_with_each_heartbeat(
    db_url: str,
) -> None:
    pages = Pages()
    async with gateway_with(db_url, pages) as gw, mcp_client(gw.url) as client:
        res = await client.call_tool("crawler__tick", {}, progress_callback=pages.on_progress)
    assert res.structured_content == {"ticked": True}
    assert pages.reports[0] == (1, None, None)
    assert [p for p, _, _ in pages.reports] == list(range(1, len(pages.reports) + 1))


async def test_a_client_that_accepts_only_json_gets_a_plain_json_answer_and_no_progress(
    db_url: str,
) -> None:
    pages = Pages()
    async with gateway_with(db_url, pages) as gw:
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "crawler__crawl", "_meta": {"progressToken": "p-1"}},
        }

        async def call() -> tuple[str, dict[str, Any]]:
            async with gw.http.post(
                gw.url + "/mcp", json=body, headers={"Accept": "application/json"}
            ) as resp:
                assert resp.status == 200
                return resp.content_type, await resp.json()

        async def reported() -> Any:
            ops = await gw.gw.store.list_operations(service="crawler")
            return ops[0].heartbeat_details if ops else None

        answering = asyncio.create_task(call())
        for n in range(1, PAGES + 1):  # the test lets the agent on once its heartbeat landed
            await eventually(reported, until=lambda d, n=n: (d or {}).get("progress") == n)
            pages.seen[n].set()
        content_type, answer = await answering
    assert content_type == "application/json"
    assert answer["id"] == 7, answer
    assert answer["result"]["structuredContent"] == {"pages": PAGES}
