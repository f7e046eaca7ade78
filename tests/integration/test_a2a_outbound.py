"""Agents that speak A2A 1.0 (JSON-RPC) behind the gateway: a real a2a-sdk server on loopback
(served by uvicorn), called through /nexus with the gateway's durability guarantees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import (
    TaskUpdater,
)
from a2a.types.a2a_pb2 import (
    AgentSkill,
    Part,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from examples.swarm.a2a_weather import json_rpc_card, serve_a2a
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from tests.conftest import Running, free_port, make_settings, running_gateway
from tests.helpers import FAST_RETRY

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Calculator(AgentExecutor):
    """double: works a little, then answers {"doubled": 2n}; hang: works until canceled."""

    started: list[str] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    seen_message_ids: list[str] = field(default_factory=list)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id and context.message
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        msg = MessageToDict(context.message)
        self.seen_message_ids.append(msg["messageId"])
        skill = msg.get("metadata", {}).get("skill")
        data = next(p["data"] for p in msg["parts"] if "data" in p)
        self.started.append(context.task_id)
        if context.current_task is None:
            await event_queue.enqueue_event(
                new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED)
            )
        await updater.start_work()
        if skill == "hang":
            await asyncio.sleep(3600)  # the stimulus: works until canceled
            return
        await asyncio.sleep(0.2)  # the stimulus: the task is "working" for a while
        part = Part()
        part.data.struct_value.update({"doubled": data["n"] * 2})
        await updater.add_artifact([part], name="answer")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        self.canceled.append(context.task_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


class Refuse503:
    """ASGI wrapper: the first ``n`` JSON-RPC posts get 503 (an overloaded agent)."""

    def __init__(self, app: Any, n: int) -> None:
        self.app, self.left, self.refused = app, n, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.left > 0:
            self.left -= 1
            self.refused += 1
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"busy"})
            return
        await self.app(scope, receive, send)


@dataclass
class A2AAgent:
    url: str
    executor: Calculator
    gate: Refuse503


@asynccontextmanager
async def a2a_agent(*, refuse_first: int = 0, push: bool = True) -> AsyncIterator[A2AAgent]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    skills = [
        AgentSkill(id="double", name="double", description="2n", tags=["math"]),
        AgentSkill(id="hang", name="hang", description="never ends", tags=["math"]),
    ]
    card = json_rpc_card("calculator", "doubles numbers", url, skills, push=push)
    executor = Calculator()
    gates: list[Refuse503] = []

    def gate(app: Any) -> Refuse503:
        gates.append(Refuse503(app, refuse_first))
        return gates[0]

    async with serve_a2a(card, executor, port, push=push, wrap=gate):
        yield A2AAgent(url=url, executor=executor, gate=gates[0])


def calculator_spec(url: str) -> AgentSpec:
    return AgentSpec(
        name="calculator",
        endpoint=url,
        adapter=AdapterKind.A2A,
        operations={
            "double": OperationSpec(
                name="double",
                retry=FAST_RETRY,
                output_schema={"type": "object", "required": ["doubled"]},
            ),
            "hang": OperationSpec(name="hang", retry=FAST_RETRY),
        },
    )


@asynccontextmanager
async def swarm(db_url: str, **agent_kw: Any) -> AsyncIterator[tuple[Running, A2AAgent]]:
    async with a2a_agent(**agent_kw) as agent:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(calculator_spec(agent.url))
            yield gw, agent


async def result_of(gw: Running, op: str, token: str) -> tuple[int, Any]:
    async with gw.http.get(
        gw.nexus("calculator", op) + "/result", params={"token": token, "wait": "10s"}
    ) as r:
        return r.status, await r.json()


async def kinds(gw: Running, op_id: str) -> list[str]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
        return [e["kind"] for e in (await r.json())["events"]]


async def test_an_a2a_agent_task_result_becomes_the_operation_result_via_push(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "double"), json={"n": 21}) as r:
            assert r.status == 201  # the agent accepted a task (returnImmediately)
            token = (await r.json())["token"]
        assert await result_of(gw, "double", token) == (200, {"doubled": 42})
        assert agent.executor.seen_message_ids == [token]  # messageId = operation id
        async with gw.http.get(f"{gw.url}/api/operations/{token}") as r:
            assert (await r.json())["state"] == "succeeded"
        history = await kinds(gw, token)
        assert history[:3] == ["operation.started", "attempt.started", "attempt.accepted"]
        assert history[-1] == "operation.succeeded"


async def test_without_push_the_gateway_polls_get_task_until_the_task_completes(
    db_url: str,
) -> None:
    async with swarm(db_url, push=False) as (gw, _agent):
        async with gw.http.post(gw.nexus("calculator", "double"), json={"n": 5}) as r:
            token = (await r.json())["token"]
        # The next poll is persisted on the operation (work "poll" + next_attempt_at), so a
        # restarted or another replica carries on polling.
        async with gw.http.get(f"{gw.url}/api/operations/{token}") as r:
            running = await r.json()
        assert running["work"] == "poll" and running["nextAttemptAt"]
        assert await result_of(gw, "double", token) == (200, {"doubled": 10})
        async with gw.http.get(f"{gw.url}/api/operations/{token}") as r:
            assert (await r.json())["attempts"] == 1  # polls are not dispatch attempts


async def test_canceling_the_operation_sends_cancel_task_to_the_a2a_agent(db_url: str) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "hang"), json={"n": 1}) as r:
            assert r.status == 201
            token = (await r.json())["token"]
        async with gw.http.post(
            gw.nexus("calculator", "hang") + "/cancel", headers={"Nexus-Operation-Token": token}
        ) as r:
            assert r.status == 202
        status, failure = await result_of(gw, "hang", token)
        assert status == 424
        assert failure["details"]["state"] == "canceled"
        assert len(agent.executor.canceled) == 1
        assert agent.executor.canceled == agent.executor.started


async def test_an_a2a_agent_answering_503_is_retried_with_the_same_message_id(
    db_url: str,
) -> None:
    async with swarm(db_url, refuse_first=2) as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "double"), json={"n": 4}) as r:
            token = (await r.json())["token"]
        assert await result_of(gw, "double", token) == (200, {"doubled": 8})
        assert agent.gate.refused == 2
        assert agent.executor.seen_message_ids == [token]
        history = await kinds(gw, token)
        assert history.count("attempt.failed") == 2
