"""A generic A2A 1.0 client can use the gateway with no help: the real a2a-sdk client discovers
it from the host's root card, over both bindings (JSON-RPC and HTTP+JSON), blocking and
streaming, with resumable subscriptions, paged task lists and the auth the card declares."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientCallContext, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotCancelableError
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from gateway.testing import eventually
from registry.auth import AuthConfig, mint_token
from tests.conftest import Running, make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent, spec_with

BINDINGS = ["JSONRPC", "HTTP+JSON"]
SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUTH = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="swarmgate")


@asynccontextmanager
async def gateway(db_url: str, **settings: Any) -> AsyncIterator[Running]:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url, **settings)) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            yield gw


@asynccontextmanager
async def client_for(
    url: str, binding: str, *, streaming: bool = False, headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    http = httpx.AsyncClient(timeout=30.0, headers=headers or {})
    config = ClientConfig(
        streaming=streaming, supported_protocol_bindings=[binding], httpx_client=http
    )
    client = await create_client(
        url, client_config=config, resolver_http_kwargs={"headers": headers or {}}
    )
    try:
        yield client
    finally:
        await client.close()
        await http.aclose()


def message(skill: str, data: Any, message_id: str) -> Message:
    meta = Struct()
    meta.update({"skill": skill})
    part = Part()
    part.data.struct_value.update(data)
    return Message(message_id=message_id, role=Role.ROLE_USER, parts=[part], metadata=meta)


def request(msg: Message, *, immediately: bool = False) -> SendMessageRequest:
    req = SendMessageRequest(message=msg)
    req.configuration.return_immediately = immediately
    return req


async def send(client: Client, msg: Message, *, immediately: bool = False) -> Task:
    responses = [r async for r in client.send_message(request(msg, immediately=immediately))]
    assert len(responses) == 1 and responses[0].HasField("task")
    return responses[0].task


def states(updates: list[StreamResponse]) -> list[str]:
    out = []
    for u in updates:
        if u.HasField("task"):
            out.append("task:" + TaskState.Name(u.task.status.state))
        elif u.HasField("status_update"):
            out.append(TaskState.Name(u.status_update.status.state))
        elif u.HasField("artifact_update"):
            out.append("artifact")
    return out


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_client_discovers_the_gateway_from_the_root_card_and_sends_by_skill(
    db_url: str, binding: str
) -> None:
    async with gateway(db_url) as gw, client_for(gw.url, binding) as client:
        task = await send(client, message("worker/echo", {"q": 1}, f"root-{binding}"))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert MessageToDict(task.artifacts[0].parts[0])["data"] == {"echo": {"q": 1}}
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.id == task.id and got.metadata["agent"] == "worker"
        assert [m.role for m in got.history] == [Role.ROLE_USER]
        with pytest.raises(InvalidParamsError, match="worker/echo"):
            await send(client, message("echo", {}, f"bad-{binding}"))


@pytest.mark.parametrize("binding", BINDINGS)
async def test_per_agent_urls_work_with_and_without_a_trailing_slash(
    db_url: str, binding: str
) -> None:
    async with gateway(db_url) as gw:
        for n, url in enumerate((f"{gw.url}/a2a/worker", f"{gw.url}/a2a/worker/")):
            async with client_for(url, binding) as client:
                task = await send(client, message("echo", {"n": n}, f"slash-{binding}-{n}"))
                assert task.status.state == TaskState.TASK_STATE_COMPLETED


async def test_cards_are_cacheable_and_answer_304_to_their_etag(db_url: str) -> None:
    async with gateway(db_url) as gw:
        for path in ("/.well-known/agent-card.json", "/a2a/worker/.well-known/agent-card.json"):
            async with gw.http.get(gw.url + path) as r:
                assert r.status == 200
                etag = r.headers["ETag"]
                assert "max-age" in r.headers["Cache-Control"]
            async with gw.http.get(gw.url + path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304 and r.headers["ETag"] == etag
                assert await r.read() == b""
        async with gw.http.get(gw.url + "/.well-known/agent-card.json") as r:
            root = await r.json()
        assert [i["url"] for i in root["supportedInterfaces"]] == [f"{gw.url}/a2a"] * 2
        assert "worker/echo" in {s["id"] for s in root["skills"]}
        assert "securitySchemes" not in root  # auth_mode none: nothing to declare


async def test_the_card_declares_the_jwt_bearer_and_a_client_that_follows_it_gets_in(
    db_url: str,
) -> None:
    async with gateway(db_url, auth_mode="hs256", jwt_secret=SECRET) as gw:
        async with gw.http.get(gw.url + "/a2a/worker/.well-known/agent-card.json") as r:
            card = await r.json()
        ((name, scheme),) = card["securitySchemes"].items()
        assert scheme["httpAuthSecurityScheme"] == {
            "scheme": "Bearer",
            "bearerFormat": "JWT",
            "description": scheme["httpAuthSecurityScheme"]["description"],
        }
        assert card["securityRequirements"] == [{"schemes": {name: {"list": []}}}]
        token = mint_token(AUTH, "alice", ["ops:start:worker/*", "ops:read"])
        auth = {"Authorization": f"Bearer {token}"}
        async with client_for(gw.url + "/a2a/worker", "HTTP+JSON", headers=auth) as client:
            task = await send(client, message("echo", {"a": 1}, "auth-1"))
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
        async with client_for(gw.url + "/a2a/worker", "HTTP+JSON") as anonymous:
            with pytest.raises(Exception, match="401"):
                await send(anonymous, message("echo", {"a": 1}, "auth-2"))


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_blocking_send_waits_past_the_sync_wait_for_the_final_task(
    db_url: str, binding: str
) -> None:
    # sync_wait_s is 1 s in the test settings; the work takes 1.5 s
    async with gateway(db_url) as gw, client_for(gw.url + "/a2a/worker", binding) as client:
        task = await send(client, message("later", {"sleep": 1.5}, f"block-{binding}"))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        ctx = ClientCallContext(service_parameters={"Request-Timeout": "200ms"})
        req = request(message("later", {"sleep": 2.0}, f"bounded-{binding}"))
        answers = [r async for r in client.send_message(req, context=ctx)]
        assert answers[0].task.status.state == TaskState.TASK_STATE_WORKING


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_streaming_send_reports_progress_the_artifact_and_the_final_state(
    db_url: str, binding: str
) -> None:
    async with gateway(db_url) as gw:
        async with client_for(gw.url + "/a2a/worker", binding, streaming=True) as client:
            msg = message("later", {"sleep": 0.3}, f"stream-{binding}")
            updates = [u async for u in client.send_message(request(msg))]
        seen = states(updates)
        assert seen[0].startswith("task:")
        assert seen[-2:] == ["artifact", "TASK_STATE_COMPLETED"]
        artifact = next(u.artifact_update for u in updates if u.HasField("artifact_update"))
        assert MessageToDict(artifact.artifact.parts[0])["data"] == {"done": {"sleep": 0.3}}


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_subscription_resumes_after_the_last_event_it_saw(
    db_url: str, binding: str
) -> None:
    async with gateway(db_url) as gw:
        url = gw.url + "/a2a/worker"
        async with (
            client_for(url, binding) as starter,
            client_for(url, binding, streaming=True) as client,
        ):
            task = await send(
                starter, message("later", {"sleep": 0.8}, f"sub-{binding}"), immediately=True
            )
            first = [u async for u in client.subscribe(SubscribeToTaskRequest(id=task.id))]
            assert states(first)[0].startswith("task:")
            # ends with the final state (in the snapshot, if the task finished meanwhile)
            assert states(first)[-1].removeprefix("task:") == "TASK_STATE_COMPLETED"
            # a client that lost its stream resumes after the last event id it saw
            replay = await resume(client, task.id, 0)
            assert not replay[0].HasField("task")  # a resumed stream replays, no snapshot
            assert states(replay)[0] == "TASK_STATE_WORKING"
            assert states(replay)[-2:] == ["artifact", "TASK_STATE_COMPLETED"]
            ids = event_ids(replay)
            assert ids == sorted(ids) and len(ids) >= 2
            rest = await resume(client, task.id, ids[0])
            assert event_ids(rest) == ids[1:]


async def resume(client: Client, task_id: str, after: int) -> list[StreamResponse]:
    ctx = ClientCallContext(service_parameters={"Last-Event-ID": str(after)})
    sub = SubscribeToTaskRequest(id=task_id)
    return [u async for u in client.subscribe(sub, context=ctx)]


def event_ids(updates: list[StreamResponse]) -> list[int]:
    return [
        int(u.status_update.metadata["eventId"]) for u in updates if u.HasField("status_update")
    ]


@pytest.mark.parametrize("binding", BINDINGS)
async def test_list_tasks_pages_with_a_token_and_counts_them_all(db_url: str, binding: str) -> None:
    async with gateway(db_url) as gw, client_for(gw.url + "/a2a/worker", binding) as client:
        ids = {(await send(client, message("echo", {"n": n}, f"list-{n}"))).id for n in range(5)}
        seen: set[str] = set()
        token = ""
        pages = []
        while True:
            page = await client.list_tasks(
                ListTasksRequest(page_size=2, page_token=token, history_length=1)
            )
            assert page.total_size == 5 and page.page_size == 2
            assert all(len(t.history) == 1 for t in page.tasks)
            pages.append(len(page.tasks))
            seen |= {t.id for t in page.tasks}
            token = page.next_page_token
            if not token:
                break
        assert pages == [2, 2, 1] and seen == ids
        default = await client.list_tasks(ListTasksRequest())
        assert default.page_size == 50 and len(default.tasks) == 5
        for bad in (ListTasksRequest(page_size=101), ListTasksRequest(page_token="bogus")):
            with pytest.raises(InvalidParamsError):
                await client.list_tasks(bad)


@pytest.mark.parametrize("binding", BINDINGS)
async def test_cancel_ends_a_task_and_a_canceled_task_is_not_cancelable(
    db_url: str, binding: str
) -> None:
    async with gateway(db_url) as gw, client_for(gw.url + "/a2a/worker", binding) as client:
        task = await send(client, message("hang", {"x": 1}, f"cancel-{binding}"), immediately=True)
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=task.id))


async def test_push_configs_get_the_progress_of_a_running_task_and_then_the_final_task(
    db_url: str,
) -> None:
    receiver = Receiver()
    async with serving(receiver.app()) as hook, gateway(db_url) as gw:
        async with client_for(gw.url + "/a2a/worker", "HTTP+JSON") as client:
            req = request(message("later", {"sleep": 0.5}, "progress-1"), immediately=True)
            req.configuration.task_push_notification_config.url = hook + "/progress"
            req.configuration.task_push_notification_config.token = "tok-p"
            answers = [r async for r in client.send_message(req)]
            task = answers[0].task

            def pushed() -> list[dict[str, Any]]:
                return [json.loads(r["body"]) for r in receiver.requests]

            await eventually(lambda: any("task" in b for b in pushed()), timeout=10)
        bodies = pushed()
        assert all(
            r["headers"]["Content-Type"] == "application/a2a+json" for r in receiver.requests
        )
        assert all(r["headers"]["X-A2A-Notification-Token"] == "tok-p" for r in receiver.requests)
        progress = [b["statusUpdate"] for b in bodies if "statusUpdate" in b]
        assert progress and {p["taskId"] for p in progress} == {task.id}
        assert {p["status"]["state"] for p in progress} == {"TASK_STATE_WORKING"}
        final = [b["task"] for b in bodies if "task" in b]
        assert len(final) == 1 and final[0]["status"]["state"] == "TASK_STATE_COMPLETED"


async def rpc(gw: Running, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    hdrs = {"A2A-Version": "1.0"} if headers is None else headers
    async with gw.http.post(f"{gw.url}/a2a/worker", json=body, headers=hdrs) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json()
        return answer


async def test_the_jsonrpc_envelope_rules_that_clients_rely_on(db_url: str) -> None:
    # Malformed requests no SDK sends, so they are written by hand here.
    send_params = {
        "message": {"message_id": "m-snake", "role": "ROLE_USER", "parts": [{"data": {"a": 1}}]},
        "metadata": {"skill": "echo"},
        "configuration": {"return_immediately": False},
    }
    async with gateway(db_url) as gw:
        ok = await rpc(
            gw, {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": send_params}
        )
        task_id = ok["result"]["task"]["id"]
        assert ok["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        snake = {"task_id": task_id, "url": "http://127.0.0.1:9/hook"}
        created = await rpc(
            gw,
            {
                "jsonrpc": "2.0",
                "id": "c",
                "method": "CreateTaskPushNotificationConfig",
                "params": snake,
            },
        )
        assert created["result"]["taskId"] == task_id
        for bad_id in ({"x": 1}, [1], True, 1.5):
            answer = await rpc(
                gw, {"jsonrpc": "2.0", "id": bad_id, "method": "GetTask", "params": {}}
            )
            assert answer["error"]["code"] == -32600 and answer["id"] is None
        no_role = {"message": {"messageId": "m-norole", "parts": [{"text": "hi"}]}}
        answer = await rpc(
            gw, {"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": no_role}
        )
        assert answer["error"]["code"] == -32602 and "role" in answer["error"]["message"]
        get = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": task_id}}
        legacy = await rpc(gw, get, headers={})
        assert legacy["error"]["code"] == -32009
        assert "0.3" in legacy["error"]["message"]
        assert legacy["error"]["data"] == {"supportedVersions": ["1.0"]}
        assert (await rpc(gw, get))["result"]["id"] == task_id
