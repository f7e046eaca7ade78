"""Input-required through the A2A facade (issue 15 item 4), with the real a2a-sdk client over
both bindings: a task whose agent asks shows TASK_STATE_INPUT_REQUIRED with the prompt as its
status message, and a follow-up message with the taskId (and contextId) answers it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import GetTaskRequest, Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving
from tests.helpers import Receiver

BINDINGS = ["JSONRPC", "HTTP+JSON"]
FAST = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01)
NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@asynccontextmanager
async def client_for(url: str, binding: str) -> AsyncIterator[Client]:
    http = httpx.AsyncClient(timeout=30.0)
    config = ClientConfig(streaming=False, supported_protocol_bindings=[binding], httpx_client=http)
    client = await create_client(url, client_config=config)
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


def message(data: Any, message_id: str, **ids: str) -> Message:
    meta = Struct()
    meta.update({"skill": "greeter/greet"})
    part = Part()
    part.data.struct_value.update(data)
    return Message(message_id=message_id, role=Role.ROLE_USER, parts=[part], metadata=meta, **ids)


async def send(client: Client, msg: Message) -> Any:
    return await send_request(client, SendMessageRequest(message=msg))


async def send_request(client: Client, req: SendMessageRequest) -> Any:
    responses = [r async for r in client.send_message(req)]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


@pytest.mark.parametrize("binding", BINDINGS)
async def test_an_a2a_client_sees_input_required_and_answers_with_a_follow_up_message(
    db_url: str, binding: str
) -> None:
    agent = AgentApp("greeter")
    runs: list[str] = []

    @agent.operation("greet", mode="async", retry=FAST)
    async def greet(ctx: OpContext, payload: Any) -> Any:
        runs.append("run")
        who = await ctx.ask("who is there?", NAME)
        return {"greeting": f"hello {who['name']}", "lang": payload["lang"]}

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with client_for(gw.url, binding) as client:
            task = await send(client, message({"lang": "en"}, f"m1-{binding}"))
            assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert MessageToDict(task.status.message.parts[0])["text"] == "who is there?"
            got = await client.get_task(GetTaskRequest(id=task.id))
            assert got.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            answer = message(
                {"name": "Ada"}, f"m2-{binding}", task_id=task.id, context_id=task.context_id
            )
            done = await send(client, answer)
            assert done.id == task.id
            assert done.status.state == TaskState.TASK_STATE_COMPLETED
            result = MessageToDict(done.artifacts[0].parts[0])["data"]
            assert result == {"greeting": "hello Ada", "lang": "en"}
            assert runs == ["run", "run"]
        events = await gw.gw.store.list_events(task.id)
        provided = [e for e in events if e.kind == "input.provided"]
        assert [(e.data["by"], e.data["via"]) for e in provided] == [("anonymous", "a2a")]


async def test_a_follow_up_to_a_task_that_does_not_wait_is_refused(db_url: str) -> None:
    agent = AgentApp("greeter")

    @agent.operation("greet", mode="sync", retry=FAST)
    async def greet(ctx: OpContext, payload: Any) -> Any:
        return "hi"

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with client_for(gw.url, "JSONRPC") as client:
            task = await send(client, message({"x": 1}, "m1"))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            with pytest.raises(Exception, match="does not wait for input"):
                await send(client, message({"x": 2}, "m2", task_id=task.id))


async def test_push_configs_get_the_input_required_status_update_once(db_url: str) -> None:
    """Item 5's progress pushes carry the question: one TASK_STATE_INPUT_REQUIRED update with
    the prompt, before the final task."""
    agent = AgentApp("greeter")

    @agent.operation("greet", mode="async", retry=FAST)
    async def greet(ctx: OpContext, payload: Any) -> Any:
        who = await ctx.ask("who is there?", NAME)
        return {"greeting": f"hello {who['name']}"}

    receiver = Receiver()
    async with (
        serving(agent.app) as agent_url,
        serving(receiver.app()) as hook,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        async with client_for(gw.url, "JSONRPC") as client:
            req = SendMessageRequest(message=message({"lang": "en"}, "m-push"))
            req.configuration.return_immediately = True
            req.configuration.task_push_notification_config.url = hook + "/push"
            req.configuration.task_push_notification_config.token = "tok-i"
            task = await send_request(client, req)

            def pushed() -> list[dict[str, Any]]:
                return [json.loads(r["body"]) for r in receiver.requests]

            def asked() -> list[dict[str, Any]]:
                return [
                    b["statusUpdate"]
                    for b in pushed()
                    if b.get("statusUpdate", {}).get("status", {}).get("state")
                    == "TASK_STATE_INPUT_REQUIRED"
                ]

            await eventually(asked, what="the INPUT_REQUIRED push")
            (update,) = asked()
            assert update["taskId"] == task.id
            assert update["status"]["message"]["parts"] == [{"text": "who is there?"}]
            answer = message({"name": "Ada"}, "m-push-2", task_id=task.id)
            await send(client, answer)
            await eventually(lambda: any("task" in b for b in pushed()), what="the final push")
        assert len(asked()) == 1
        final = [b["task"] for b in pushed() if "task" in b]
        assert [t["status"]["state"] for t in final] == ["TASK_STATE_COMPLETED"]
        kinds = [
            b.get("statusUpdate", {}).get("status", {}).get("state") or "task" for b in pushed()
        ]
        assert kinds.index("TASK_STATE_INPUT_REQUIRED") < kinds.index("task")
