"""The gateway's /mcp endpoint driven by the real ``mcp`` Python SDK client (Streamable HTTP).

mcp 2.3 types the 2025-11-25 task requests but its client has no task methods, so tasks are
sent as the SDK's own request types through ``ClientSession.send_request`` (the SDK's
transport, session and validation, just no convenience method).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import mcp.types as types
import pytest
from mcp import Client

from gateway.sdk.agent import AgentApp, OpContext, OperationFailed
from registry.auth import AuthConfig, mint_token
from tests.conftest import Running, make_settings, running_gateway, serving_agent
from tests.helpers import FAST_RETRY

ECHO_IN = {"type": "object", "properties": {"msg": {"type": "string"}}, "required": ["msg"]}
ECHO_OUT = {"type": "object", "properties": {"echo": {"type": "object"}}, "required": ["echo"]}
SECRET = "s" * 40


def mcp_agent() -> AgentApp:
    agent = AgentApp("worker", description="test agent")

    @agent.operation("echo", input_schema=ECHO_IN, output_schema=ECHO_OUT, retry=FAST_RETRY)
    async def echo(ctx: OpContext, payload: Any) -> Any:
        return {"echo": payload}

    @agent.operation("double", input_schema={"type": "integer"}, output_schema={"type": "integer"})
    async def double(ctx: OpContext, payload: Any) -> Any:
        return payload * 2

    @agent.operation("later", mode="async", retry=FAST_RETRY)
    async def later(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(float((payload or {}).get("sleep", 0.05)))  # work that takes a while
        return {"done": payload}

    @agent.operation("hang", mode="async", retry=FAST_RETRY)
    async def hang(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(3600)  # never finishes by itself: ended by a cancel
        return None

    @agent.operation("broken", retry=FAST_RETRY)
    async def broken(ctx: OpContext, payload: Any) -> Any:
        raise OperationFailed("no seats left")

    return agent


@asynccontextmanager
async def gateway_with_agent(db_url: str, **overrides: Any) -> AsyncIterator[Running]:
    agent = mcp_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url, **overrides)) as gw:
            await gw.gw.registry.register(agent.spec(agent_url))
            yield gw


@asynccontextmanager
async def mcp_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        from mcp.client.streamable_http import streamable_http_client

        async with Client(streamable_http_client(url + "/mcp", http_client=http)) as client:
            yield client


async def call_as_task(
    client: Client, name: str, arguments: dict[str, Any], **meta: Any
) -> types.CreateTaskResult:
    """A task-augmented tools/call. The SDK's typed send_request checks a tools/call answer
    against CallToolResult, so this one goes through the session's raw dispatcher (the same
    transport and session) and the answer is checked against the SDK's CreateTaskResult."""
    params = types.CallToolRequestParams(
        name=name, arguments=arguments, task=types.TaskMetadata(ttl=60_000), _meta=meta or None
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    raw = await client.session._dispatcher.send_raw_request("tools/call", params, {})
    return types.CreateTaskResult.model_validate(raw, by_name=False)


def sqlite(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/swarmgate.db"


async def test_the_sdk_client_sees_every_operation_as_a_tool_with_its_schemas(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw, mcp_client(gw.url) as client:
        assert client.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps.tasks is not None and caps.tasks.requests is not None
        assert caps.tasks.requests.tools is not None and caps.tasks.requests.tools.call is not None
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {f"worker__{n}" for n in ("echo", "double", "later", "hang", "broken")}
        echo = tools["worker__echo"]
        assert echo.input_schema == ECHO_IN
        assert echo.output_schema == ECHO_OUT
        assert echo.execution is not None and echo.execution.task_support == "optional"
        # a non-object input is wrapped as arguments.input (MCP tools take objects)
        assert tools["worker__double"].input_schema == {
            "type": "object",
            "properties": {"input": {"type": "integer"}},
            "required": ["input"],
        }


async def test_a_call_without_a_task_answers_with_the_result_or_an_error_result(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw, mcp_client(gw.url) as client:
        res = await client.call_tool("worker__echo", {"msg": "hi"})
        assert not res.is_error
        assert res.structured_content == {"echo": {"msg": "hi"}}
        doubled = await client.call_tool("worker__double", {"input": 21})
        assert doubled.structured_content == {"result": 42}
        failed = await client.call_tool("worker__broken", {})
        assert failed.is_error
        assert any("no seats left" in getattr(c, "text", "") for c in failed.content)
        invalid = await client.call_tool("worker__echo", {"msg": 5})
        assert invalid.is_error  # schema violations come back as tool errors the model can fix
        ops = await gw.gw.store.list_operations(service="worker")
        assert {o.operation for o in ops} >= {"echo", "double", "broken"}  # durable operations


async def test_a_task_call_becomes_a_durable_operation_polled_with_tasks_get_and_result(
    db_url: str,
) -> None:
    async with gateway_with_agent(db_url) as gw, mcp_client(gw.url) as client:
        session = client.session
        created = await call_as_task(client, "worker__later", {"sleep": 0.3})
        task_id = created.task.task_id
        assert created.task.status == "working"
        assert created.task.poll_interval and created.task.poll_interval > 0
        op = await gw.gw.store.get_operation(task_id)
        assert op is not None and op.service == "worker" and op.operation == "later"
        got = await session.send_request(
            types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)),
            types.GetTaskResult,
        )
        assert got.task_id == task_id
        result = await session.send_request(
            types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)),
            types.CallToolResult,
        )
        assert not result.is_error
        assert result.structured_content == {"done": {"sleep": 0.3}}
        done = await session.send_request(
            types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)),
            types.GetTaskResult,
        )
        assert done.status == "completed"
        listed = await session.send_request(types.ListTasksRequest(), types.ListTasksResult)
        assert task_id in {t.task_id for t in listed.tasks}


async def test_tasks_cancel_cancels_the_operation_and_a_second_cancel_is_refused(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw, mcp_client(gw.url) as client:
        session = client.session
        created = await call_as_task(client, "worker__hang", {})
        task_id = created.task.task_id
        cancelled = await session.send_request(
            types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id)),
            types.CancelTaskResult,
        )
        assert cancelled.status == "cancelled"
        op = await gw.gw.store.get_operation(task_id)
        assert op is not None and op.state.value == "canceled"
        result = await session.send_request(
            types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id)),
            types.CallToolResult,
        )
        assert result.is_error
        from mcp.shared.exceptions import MCPError

        with pytest.raises(MCPError) as refused:
            await session.send_request(
                types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task_id)),
                types.CancelTaskResult,
            )
        assert refused.value.error.code == -32602


async def test_with_auth_on_a_call_without_a_token_is_401_pointing_at_the_resource_metadata(
    tmp_path: Any,
) -> None:
    settings = dict(auth_mode="hs256", jwt_secret=SECRET)
    async with gateway_with_agent(sqlite(tmp_path), **settings) as gw:
        async with gw.http.post(
            gw.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        ) as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
        metadata_url = f"{gw.url}/.well-known/oauth-protected-resource/mcp"
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{metadata_url}"' in challenge
        async with gw.http.get(metadata_url) as resp:
            assert resp.status == 200
            meta = await resp.json()
        assert meta["resource"] == gw.url + "/mcp"
        assert meta["bearer_methods_supported"] == ["header"]
        auth = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="swarmgate")
        token = mint_token(auth, "alice", ["ops:start:worker/echo", "ops:read"])
        async with mcp_client(gw.url, token) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            assert tools == ["worker__echo"]  # only what alice may start
            res = await client.call_tool("worker__echo", {"msg": "from alice"})
            assert res.structured_content == {"echo": {"msg": "from alice"}}
        # tasks/* need ops:read: a token without it gets 403 naming the missing scope
        starter = mint_token(auth, "bob", ["ops:start:worker/echo"])
        async with gw.http.post(
            gw.url + "/mcp",
            json={"jsonrpc": "2.0", "id": 2, "method": "tasks/list"},
            headers={"Authorization": f"Bearer {starter}"},
        ) as resp:
            assert resp.status == 403
            assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
