"""An A2A agent behind the gateway (a real a2a-sdk server on loopback) that answers
TASK_STATE_INPUT_REQUIRED makes the operation wait for its caller's input (issue 15 item 4);
the caller's answer goes to the agent as a follow-up message on the same task."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import AgentSkill, Message, Part, Role, TaskState
from google.protobuf.json_format import MessageToDict

from examples.swarm.a2a_weather import json_rpc_card, serve_a2a
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from gateway.testing import eventually
from tests.conftest import free_port, make_settings, running_gateway, serving
from tests.helpers import FAST_RETRY, Receiver


@dataclass
class Confirmer(AgentExecutor):
    """confirm: asks "really?" (input-required), then completes with the answer it got."""

    messages: list[dict[str, Any]] = field(default_factory=list)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id and context.message
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        msg = MessageToDict(context.message)
        self.messages.append(msg)
        data = next(p["data"] for p in msg["parts"] if "data" in p)
        if context.current_task is None:
            await event_queue.enqueue_event(
                new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED)
            )
            await updater.start_work()
            question = Part(text="really?")
            await updater.requires_input(
                Message(
                    message_id=f"{context.task_id}-q",
                    role=Role.ROLE_AGENT,
                    parts=[question],
                    task_id=context.task_id,
                    context_id=context.context_id,
                )
            )
            return
        await updater.start_work()  # the follow-up: the caller's answer
        part = Part()
        part.data.struct_value.update({"confirmed": data})
        await updater.add_artifact([part], name="answer")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


@asynccontextmanager
async def confirmer(push: bool) -> AsyncIterator[tuple[str, Confirmer]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    skills = [AgentSkill(id="confirm", name="confirm", description="asks", tags=["x"])]
    card = json_rpc_card("confirmer", "asks before it acts", url, skills, push=push)
    executor = Confirmer()
    async with serve_a2a(card, executor, port, push=push):
        yield url, executor


@pytest.mark.parametrize("push", [True, False], ids=["push", "poll"])
async def test_an_a2a_agent_asking_for_input_gets_the_callers_answer_as_a_follow_up(
    db_url: str, push: bool
) -> None:
    receiver = Receiver()
    async with confirmer(push) as (url, executor), serving(receiver.app()) as hook:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(
                AgentSpec(
                    name="confirmer",
                    endpoint=url,
                    adapter=AdapterKind.A2A,
                    operations={"confirm": OperationSpec(name="confirm", retry=FAST_RETRY)},
                )
            )
            async with gw.http.post(
                gw.nexus("confirmer", "confirm"),
                json={"n": 1},
                params={"callback": hook + "/cb"},
                headers={"Swarmgate-Callback-Events": "input.requested"},
            ) as r:
                assert r.status == 201, await r.text()
                op_id = (await r.json())["token"]
            op_url = f"{gw.url}/api/operations/{op_id}"

            async def waiting() -> dict[str, Any] | None:
                async with gw.http.get(op_url) as r:
                    return (await r.json()).get("waitingForInput")

            question = await eventually(waiting, what="the operation waiting for input")
            assert question["prompt"] == "really?"
            # the caller asked to be told: the question's callback (not a completion)
            await receiver.wait()
            told = json.loads(receiver.requests[0]["body"])
            assert receiver.requests[0]["headers"]["Swarmgate-Event"] == "input.requested"
            assert told["data"]["question"]["prompt"] == "really?"
            async with gw.http.post(op_url + "/input", json={"yes": True}) as r:
                assert r.status == 202, await r.text()
            async with gw.http.get(
                gw.nexus("confirmer", "confirm") + "/result",
                params={"token": op_id, "wait": "15s"},
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"confirmed": {"yes": True}}
            first, follow_up = executor.messages
            assert first["messageId"] == op_id
            assert follow_up["taskId"] and follow_up["messageId"] == f"{op_id}-input-1"
            kinds = [e.kind for e in await gw.gw.store.list_events(op_id)]
            assert kinds.index("input.requested") < kinds.index("input.provided")
            assert kinds.count("input.requested") == 1  # once, beside the accept it came with
            assert "attempt.accepted" in kinds

            def states() -> list[str | None]:
                return [r["headers"].get("Nexus-Operation-State") for r in receiver.requests]

            await eventually(lambda: len(states()) == 2, what="the completion callback")
            assert states() == [None, "succeeded"]
