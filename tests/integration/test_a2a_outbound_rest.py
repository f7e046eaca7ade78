"""An A2A agent registered by its base URL: the adapter reads the agent's card and speaks the
binding it offers. Here a real a2a-sdk server that offers only HTTP+JSON (REST), under a path
of its own, so nothing works unless the adapter follows the card."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_rest_routes
from a2a.server.tasks import (
    BasePushNotificationSender,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
)
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
)
from starlette.applications import Starlette

from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec
from tests.conftest import Running, free_port, make_settings, running_gateway
from tests.helpers import FAST_RETRY
from tests.integration.test_a2a_outbound import Calculator, Receive, Scope, Send


@dataclass
class Recorder:
    """ASGI wrapper that notes every request's method and path."""

    app: Any
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@dataclass
class RestAgent:
    base_url: str
    executor: Calculator
    recorder: Recorder


@asynccontextmanager
async def rest_agent(version: str = "1.0") -> AsyncIterator[RestAgent]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    card = AgentCard(
        name="calculator",
        description="doubles numbers, over HTTP+JSON only",
        version="1",
        supported_interfaces=[
            AgentInterface(
                url=f"{base}/rest", protocol_binding="HTTP+JSON", protocol_version=version
            )
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=True),
        default_input_modes=["application/json"],
        default_output_modes=["application/json"],
        skills=[
            AgentSkill(id="double", name="double", description="2n", tags=["math"]),
            AgentSkill(id="hang", name="hang", description="never ends", tags=["math"]),
        ],
    )
    executor = Calculator()
    async with httpx.AsyncClient() as push_client:
        configs = InMemoryPushNotificationConfigStore()
        handler = DefaultRequestHandler(
            agent_executor=executor,
            task_store=InMemoryTaskStore(),
            agent_card=card,
            push_config_store=configs,
            push_sender=BasePushNotificationSender(push_client, configs),
        )
        app = Starlette(
            routes=[
                *create_agent_card_routes(card),
                *create_rest_routes(handler, path_prefix="/rest"),
            ]
        )
        recorder = Recorder(app)
        server = uvicorn.Server(
            uvicorn.Config(
                recorder, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield RestAgent(base_url=base, executor=executor, recorder=recorder)
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5)


def spec(url: str) -> AgentSpec:
    return AgentSpec(
        name="calculator",
        endpoint=url,
        adapter=AdapterKind.A2A,
        operations={
            "double": OperationSpec(name="double", retry=FAST_RETRY),
            "hang": OperationSpec(name="hang", retry=FAST_RETRY),
        },
    )


@asynccontextmanager
async def swarm(db_url: str, version: str = "1.0") -> AsyncIterator[tuple[Running, RestAgent]]:
    async with rest_agent(version) as agent:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(spec(agent.base_url))
            yield gw, agent


async def test_an_agent_registered_by_base_url_is_called_over_the_rest_binding_of_its_card(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "double"), json={"n": 21}) as r:
            assert r.status in (200, 201)
            token = r.headers["Nexus-Operation-Token"]
        async with gw.http.get(
            gw.nexus("calculator", "double") + "/result", params={"token": token, "wait": "10s"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"doubled": 42}
        assert agent.executor.seen_message_ids == [token]
        assert agent.recorder.seen[0] == "GET /.well-known/agent-card.json"
        assert "POST /rest/message:send" in agent.recorder.seen
        assert not any(s.startswith("POST /rest ") or s == "POST /" for s in agent.recorder.seen)


async def test_canceling_goes_to_the_rest_cancel_endpoint(db_url: str) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "hang"), json={"n": 1}) as r:
            token = r.headers["Nexus-Operation-Token"]
        async with gw.http.post(
            gw.nexus("calculator", "hang") + "/cancel", headers={"Nexus-Operation-Token": token}
        ) as r:
            assert r.status == 202
        async with gw.http.get(
            gw.nexus("calculator", "hang") + "/result", params={"token": token, "wait": "10s"}
        ) as r:
            assert r.status == 424
            assert (await r.json())["details"]["state"] == "canceled"
        assert agent.executor.canceled == agent.executor.started
        assert any(
            s.endswith(":cancel") and s.startswith("POST /rest/tasks/") for s in agent.recorder.seen
        )


async def test_an_agent_whose_card_offers_no_version_the_gateway_speaks_fails_clearly(
    db_url: str,
) -> None:
    async with swarm(db_url, version="0.3") as (gw, agent):
        async with gw.http.post(gw.nexus("calculator", "double"), json={"n": 2}) as r:
            token = r.headers.get("Nexus-Operation-Token")
            body = await r.json()
        if token is not None:
            async with gw.http.get(f"{gw.url}/api/operations/{token}") as r:
                body = await r.json()
        assert "no binding and version this gateway speaks" in str(body)
        assert agent.executor.started == []
