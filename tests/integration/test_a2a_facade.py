"""Every registered agent is an A2A 1.0 agent too: driven here with the real a2a-sdk client over
JSON-RPC, against a real gateway with a real AgentApp agent behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from a2a.client import Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from gateway.config import Settings
from gateway.testing import eventually
from tests.conftest import (
    Running,
    make_settings,
    running_gateway,
    serving,
    serving_agent,
)
from tests.helpers import Receiver, make_test_agent, spec_with

TERMINAL = (
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
)


@asynccontextmanager
async def a2a_client(gw: Running, agent: str = "worker") -> AsyncIterator[Client]:
    client = await create_client(
        f"{gw.url}/a2a/{agent}", client_config=ClientConfig(streaming=False)
    )
    try:
        yield client
    finally:
        await client.close()


def message(skill: str, data: Any, message_id: str) -> Message:
    meta = Struct()
    meta.update({"skill": skill})
    part = Part()
    part.data.struct_value.update(data)
    return Message(message_id=message_id, role=Role.ROLE_USER, parts=[part], metadata=meta)


async def send(
    client: Client, msg: Message, *, immediately: bool = True, push_url: str | None = None
) -> Task:
    req = SendMessageRequest(message=msg)
    req.configuration.return_immediately = immediately
    if push_url:
        req.configuration.task_push_notification_config.url = push_url
        req.configuration.task_push_notification_config.token = "tok-1"
    responses = [r async for r in client.send_message(req)]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


async def until_final(client: Client, task_id: str, timeout: float = 10.0) -> Task:
    return await eventually(
        lambda: client.get_task(GetTaskRequest(id=task_id)),
        until=lambda task: task.status.state in TERMINAL,
        timeout=timeout,
        interval=0.05,
    )


def artifact_data(task: Task) -> Any:
    return MessageToDict(task.artifacts[0].parts[0])["data"]


@asynccontextmanager
async def swarm(db_url: str, **settings: Any) -> AsyncIterator[tuple[Running, Settings]]:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        cfg = make_settings(db_url, **settings)
        async with running_gateway(cfg) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            yield gw, cfg


async def test_the_agent_card_lists_one_skill_per_operation_and_both_bindings(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _cfg):
        async with gw.http.get(f"{gw.url}/a2a/worker/.well-known/agent-card.json") as r:
            assert r.status == 200
            card = await r.json()
        assert card["supportedInterfaces"] == [
            {"url": f"{gw.url}/a2a/worker", "protocolBinding": b, "protocolVersion": "1.0"}
            for b in ("JSONRPC", "HTTP+JSON")
        ]
        assert card["capabilities"] == {"streaming": True, "pushNotifications": True}
        assert {s["id"] for s in card["skills"]} == {"echo", "later", "hang", "flaky", "broken"}
        async with gw.http.get(f"{gw.url}/a2a/nobody/.well-known/agent-card.json") as r:
            assert r.status == 404


async def test_a_message_becomes_a_durable_task_whose_artifact_is_the_result(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        task = await send(client, message("later", {"sleep": 0.3}, "m-1"))
        assert task.status.state == TaskState.TASK_STATE_WORKING
        done = await until_final(client, task.id)
        assert done.status.state == TaskState.TASK_STATE_COMPLETED
        assert artifact_data(done) == {"done": {"sleep": 0.3}}
        async with gw.http.get(f"{gw.url}/api/operations/{task.id}") as r:
            op = await r.json()  # the task id is the operation id
        assert op["state"] == "succeeded" and op["requestId"] == "m-1"


async def test_a_blocking_send_answers_with_the_completed_task(db_url: str) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        task = await send(client, message("echo", {"q": 1}, "m-echo"), immediately=False)
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert artifact_data(task) == {"echo": {"q": 1}}


async def test_resending_the_same_message_id_returns_the_same_task(db_url: str) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        first = await send(client, message("echo", {"q": 2}, "m-same"))
        second = await send(client, message("echo", {"q": 2}, "m-same"))
        assert first.id == second.id
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert len((await r.json())["operations"]) == 1


async def test_a_failing_operation_is_a_failed_task_with_the_reason(db_url: str) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        task = await send(client, message("broken", {"to": "LIS"}, "m-broken"))
        done = await until_final(client, task.id)
        assert done.status.state == TaskState.TASK_STATE_FAILED
        text = done.status.message.parts[0].text
        assert "no seats" in text


async def test_canceling_a_hanging_task_ends_it_canceled_and_a_finished_one_is_refused(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        task = await send(client, message("hang", {"x": 1}, "m-hang"))
        await client.cancel_task(CancelTaskRequest(id=task.id))
        done = await until_final(client, task.id)
        assert done.status.state == TaskState.TASK_STATE_CANCELED
        finished = await send(client, message("echo", {"x": 1}, "m-fin"), immediately=False)
        try:
            await client.cancel_task(CancelTaskRequest(id=finished.id))
        except TaskNotCancelableError:
            pass
        else:
            raise AssertionError("a completed task must not be cancelable")


async def test_list_tasks_shows_the_agent_tasks_and_an_unknown_task_is_not_found(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _cfg), a2a_client(gw) as client:
        a = await send(client, message("echo", {"n": 1}, "m-a"), immediately=False)
        b = await send(client, message("echo", {"n": 2}, "m-b"), immediately=False)
        listed = await client.list_tasks(ListTasksRequest())
        assert {t.id for t in listed.tasks} == {a.id, b.id}
        completed = await client.list_tasks(
            ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, include_artifacts=True)
        )
        assert all(t.artifacts for t in completed.tasks) and len(completed.tasks) == 2
        try:
            await client.get_task(GetTaskRequest(id="no-such-task"))
        except TaskNotFoundError:
            pass
        else:
            raise AssertionError("an unknown task must not be found")


async def test_a_push_config_is_stored_and_the_final_task_is_pushed_with_retries(
    db_url: str,
) -> None:
    receiver = Receiver(refuse_first=1)
    async with serving(receiver.app()) as hook, swarm(db_url) as (gw, _cfg):
        async with a2a_client(gw) as client:
            task = await send(
                client, message("later", {"sleep": 0.2}, "m-push"), push_url=hook + "/a2a"
            )
            cfg = TaskPushNotificationConfig(task_id=task.id, url=hook + "/second")
            created = await client.create_task_push_notification_config(cfg)
            assert created.id and created.task_id == task.id
            await until_final(client, task.id)
        # progress (status updates) comes first; the final task is the push with a "task"
        finals = lambda: [r for r in receiver.requests if b'"task"' in r["body"]]  # noqa: E731
        await eventually(lambda: len({r["path"] for r in finals()}) >= 2)
        refused = receiver.requests[0]  # answered 503: the same push comes again, after its
        # backoff: each push is an outbox row of its own, so it may come after the finals
        await eventually(
            lambda: any(r["body"] == refused["body"] for r in receiver.requests[1:]),
            what="the refused push, sent again",
        )
        delivered = {r["path"]: r for r in finals()}
        assert set(delivered) == {"/a2a", "/second"}
        assert delivered["/a2a"]["headers"]["X-A2A-Notification-Token"] == "tok-1"
        body = json.loads(delivered["/a2a"]["body"])
        assert body["task"]["id"] == task.id
        assert body["task"]["status"]["state"] == "TASK_STATE_COMPLETED"


async def test_a_task_survives_a_gateway_restart(db_url: str) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        cfg = make_settings(db_url)
        async with running_gateway(cfg) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            async with a2a_client(gw) as client:
                task = await send(client, message("later", {"sleep": 1.0}, "m-restart"))
                assert task.status.state == TaskState.TASK_STATE_WORKING
        # The first gateway is gone while the task runs; a new one on the same database
        # finishes it from the stored operation.
        async with running_gateway(replace(cfg)) as gw2:
            async with a2a_client(gw2) as client2:
                after = await until_final(client2, task.id)
                assert after.status.state == TaskState.TASK_STATE_COMPLETED
                assert artifact_data(after) == {"done": {"sleep": 1.0}}
                again = await send(client2, message("later", {"sleep": 1.0}, "m-restart"))
                assert again.id == task.id  # the message id still finds the same task
