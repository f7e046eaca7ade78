"""A weather agent that speaks A2A 1.0 (JSON-RPC), built with the a2a-sdk server and served by
uvicorn. The gateway calls it through its A2A adapter. A2A has no idempotency of its own, so
the agent dedupes on ``messageId`` (the gateway sends the operation id there, stable across
retries and restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import (
    BasePushNotificationSender,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
    TaskUpdater,
)
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Part,
    TaskState,
)
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette

from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy

CONDITIONS = ["sunny", "cloudy", "light rain", "windy", "clear skies"]


@dataclass
class WeatherExecutor(AgentExecutor):
    effects: dict[str, int] = field(default_factory=dict)  # messageId -> forecasts made
    _answers: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id and context.message
        msg = MessageToDict(context.message)
        key = msg["messageId"]
        data: dict[str, Any] = next((p["data"] for p in msg.get("parts", []) if "data" in p), {})
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        if context.current_task is None:
            await event_queue.enqueue_event(
                new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED)
            )
        await updater.start_work()
        answer = self._answers.get(key)
        if answer is None:  # first time for this messageId: do the work once
            await asyncio.sleep(0.3)
            h = int(hashlib.sha256(str(data.get("city")).encode()).hexdigest()[:6], 16)
            answer = {
                "city": data.get("city"),
                "forecast": CONDITIONS[h % len(CONDITIONS)],
                "high_c": 12 + h % 18,
            }
            self._answers[key] = answer
            self.effects[key] = self.effects.get(key, 0) + 1
        part = Part()
        part.data.struct_value.update(answer)
        await updater.add_artifact([part], name="forecast")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id and context.context_id
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def weather_spec(url: str, retry: RetryPolicy) -> AgentSpec:
    return AgentSpec(
        name="weather",
        endpoint=url,
        adapter=AdapterKind.A2A,
        description="Forecasts (an A2A agent)",
        operations={"forecast": OperationSpec(name="forecast", retry=retry)},
    )


def json_rpc_card(
    name: str, description: str, url: str, skills: list[AgentSkill], *, push: bool = True
) -> AgentCard:
    return AgentCard(
        name=name,
        description=description,
        version="1",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=push),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=skills,
    )


@asynccontextmanager
async def serve_a2a(
    card: AgentCard,
    executor: AgentExecutor,
    port: int,
    *,
    push: bool = True,
    wrap: Callable[[Any], Any] = lambda app: app,
) -> AsyncIterator[None]:
    """Host an a2a-sdk agent (JSON-RPC at ``/``, card at the well-known path) with uvicorn on
    a loopback port; ``wrap`` may put an ASGI middleware in front (tests inject faults)."""
    async with httpx.AsyncClient() as push_client:
        configs = InMemoryPushNotificationConfigStore()
        handler = DefaultRequestHandler(
            agent_executor=executor,
            task_store=InMemoryTaskStore(),
            agent_card=card,
            push_config_store=configs if push else None,
            push_sender=BasePushNotificationSender(push_client, configs) if push else None,
        )
        app = Starlette(
            routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")]
        )
        server = uvicorn.Server(
            uvicorn.Config(
                wrap(app), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)


@asynccontextmanager
async def serve_weather(port: int) -> AsyncIterator[tuple[str, WeatherExecutor]]:
    url = f"http://127.0.0.1:{port}/"
    skill = AgentSkill(
        id="forecast", name="forecast", description="3-day forecast", tags=["weather"]
    )
    executor = WeatherExecutor()
    card = json_rpc_card("weather", "Forecasts for a city", url, [skill])
    async with serve_a2a(card, executor, port):
        yield url, executor
