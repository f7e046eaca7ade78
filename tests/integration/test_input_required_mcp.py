"""Input-required through the MCP facade (issue 15 item 4): a task whose agent asks its caller
reports ``input_required`` (with the prompt) in ``tasks/get``, read with the real mcp SDK."""

from __future__ import annotations

from typing import Any

import mcp.types as types

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import FAST_RETRY
from tests.integration.test_mcp_endpoint import call_as_task, mcp_client


async def test_a_task_waiting_for_input_reports_input_required_and_works_again_once_answered(
    db_url: str,
) -> None:
    agent = AgentApp("asker")

    @agent.operation("confirm", mode="async", retry=FAST_RETRY)
    async def confirm(ctx: OpContext, payload: Any) -> Any:
        return {"ok": await ctx.ask("go ahead?", {"type": "boolean"})}

    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url)) as gw, mcp_client(gw.url) as client:
            await gw.gw.registry.register(agent.spec(agent_url))
            created = await call_as_task(client, "asker__confirm", {})
            task_id = created.task.task_id

            async def status() -> types.GetTaskResult | None:
                got = await client.session.send_request(
                    types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)),
                    types.GetTaskResult,
                )
                return got if got.status == "input_required" else None

            got = await eventually(status, what="the task waiting for input")
            assert got.status_message == "go ahead?"
            async with gw.http.post(f"{gw.url}/api/operations/{task_id}/input", json=True) as r:
                assert r.status == 202
            result = await client.session.send_request(
                types.GetTaskPayloadRequest(
                    params=types.GetTaskPayloadRequestParams(task_id=task_id)
                ),
                types.CallToolResult,
            )
            assert result.structured_content == {"ok": True}
