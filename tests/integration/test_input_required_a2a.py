"""Input-required through the A2A facade (issue 15 item 4), with the real a2a-sdk client over
both bindings: a task whose agent asks shows TASK_STATE_INPUT_REQUIRED with the prompt as its
status message, and a follow-up message with the taskId (and contextId) answers it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
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


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_streaming_follow_up_answers_and_streams_the_task_to_its_end(
    db_url: str, binding: str
) -> None:
    """SendStreamingMessage with the taskId: the answer is recorded and the stream follows
    the task from there (working, the next question or the artifact and the final state)."""
    agent = AgentApp("greeter")

    @agent.operation("greet", mode="async", retry=FAST)
    async def greet(ctx: OpContext, payload: Any) -> Any:
        who = await ctx.ask("who is there?", NAME)
        where = await ctx.ask("where?", {"type": "object"}, name="where")
        return {"greeting": f"hello {who['name']}", "where": where}

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with streaming_client(gw.url, binding) as client:
            first = [
                u
                async for u in client.send_message(
                    SendMessageRequest(message=message({"lang": "en"}, f"s1-{binding}"))
                )
            ]
            # the stream ends at the question: as a status update, or, when the agent asked
            # before the stream opened, in the opening Task snapshot (both are A2A)
            assert TaskState.Name(last_status(first).state) == "TASK_STATE_INPUT_REQUIRED"
            task_id = first[0].task.id
            # subscribing to the waiting task: its snapshot shows the question, and the stream
            # ends there (an interrupted task), it does not hang waiting for events
            sub = client.subscribe(SubscribeToTaskRequest(id=task_id))
            waiting = await asyncio.wait_for(collect(sub), 10)
            assert stream_states(waiting) == ["task:TASK_STATE_INPUT_REQUIRED"]
            prompt = waiting[0].task.status.message.parts[0]
            assert MessageToDict(prompt)["text"] == "who is there?"
            # ListTasks shows it interrupted, and filters by it
            listed = await client.list_tasks(ListTasksRequest())
            assert [TaskState.Name(t.status.state) for t in listed.tasks] == [
                "TASK_STATE_INPUT_REQUIRED"
            ]
            only = ListTasksRequest(status=TaskState.TASK_STATE_INPUT_REQUIRED)
            assert (await client.list_tasks(only)).total_size == 1
            working = ListTasksRequest(status=TaskState.TASK_STATE_WORKING)
            assert (await client.list_tasks(working)).total_size == 0
            answer = message({"name": "Ada"}, f"s2-{binding}", task_id=task_id)
            second = [u async for u in client.send_message(SendMessageRequest(message=answer))]
            # the snapshot after the answer, then up to the next question (the stream ends)
            assert second[0].HasField("task") and second[0].task.id == task_id
            assert TaskState.Name(last_status(second).state) == "TASK_STATE_INPUT_REQUIRED"
            asked = last_status(second).message
            assert MessageToDict(asked.parts[0])["text"] == "where?"
            last = message({"city": "Paris"}, f"s3-{binding}", task_id=task_id)
            third = [u async for u in client.send_message(SendMessageRequest(message=last))]
            assert stream_states(third)[-2:] == ["artifact", "TASK_STATE_COMPLETED"]
            artifact = next(u.artifact_update for u in third if u.HasField("artifact_update"))
            assert MessageToDict(artifact.artifact.parts[0])["data"] == {
                "greeting": "hello Ada",
                "where": {"city": "Paris"},
            }
            # a streaming follow-up to a task that does not wait is refused like a blocking one
            with pytest.raises(Exception, match="does not wait for input"):
                again = message({"x": 1}, f"s4-{binding}", task_id=task_id)
                [u async for u in client.send_message(SendMessageRequest(message=again))]


@asynccontextmanager
async def streaming_client(url: str, binding: str) -> AsyncIterator[Client]:
    http = httpx.AsyncClient(timeout=30.0)
    config = ClientConfig(streaming=True, supported_protocol_bindings=[binding], httpx_client=http)
    client = await create_client(url, client_config=config)
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [u async for u in stream]


def last_status(updates: list[Any]) -> Any:
    """The TaskStatus a stream ended with: its last status update, or its Task snapshot."""
    for u in reversed(updates):
        if u.HasField("status_update"):
            return u.status_update.status
        if u.HasField("task"):
            return u.task.status
    raise AssertionError(f"no status in {stream_states(updates)}")


def stream_states(updates: list[Any]) -> list[str]:
    out = []
    for u in updates:
        if u.HasField("task"):
            out.append("task:" + TaskState.Name(u.task.status.state))
        elif u.HasField("status_update"):
            out.append(TaskState.Name(u.status_update.status.state))
        elif u.HasField("artifact_update"):
            out.append("artifact")
    return out
