"""Test agents and a callback receiver: real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.domain.specs import AgentSpec, OperationSpec, RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext, OperationFailed, RetryLater

FAST_RETRY = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.02)


def make_test_agent(name: str = "worker") -> AgentApp:
    agent = AgentApp(name, description="test agent")
    attempts: dict[str, int] = {}

    @agent.operation("echo", retry=FAST_RETRY)
    async def echo(ctx: OpContext, payload: Any) -> Any:
        return {"echo": payload}

    @agent.operation("later", mode="async", retry=FAST_RETRY)
    async def later(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(float((payload or {}).get("sleep", 0.05)))  # work that takes a while
        return {"done": payload}

    @agent.operation("hang", mode="async", retry=FAST_RETRY)
    async def hang(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(3600)  # never finishes by itself: ended by a cancel or a timeout
        return None

    @agent.operation("flaky", retry=FAST_RETRY)
    async def flaky(ctx: OpContext, payload: Any) -> Any:
        attempts[ctx.key] = attempts.get(ctx.key, 0) + 1
        if attempts[ctx.key] <= int((payload or {}).get("fail_times", 2)):
            raise RetryLater("not yet")
        return {"attempts": attempts[ctx.key]}

    @agent.operation("broken", retry=FAST_RETRY)
    async def broken(ctx: OpContext, payload: Any) -> Any:
        raise OperationFailed("the flights agent found no seats")

    return agent


def spec_with(agent: AgentApp, endpoint: str, **extra_ops: OperationSpec) -> AgentSpec:
    spec = agent.spec(endpoint)
    ops = dict(spec.operations)
    ops.update(extra_ops)
    return AgentSpec(
        name=spec.name,
        endpoint=spec.endpoint,
        description=spec.description,
        version=spec.version,
        operations=ops,
    )


@dataclass
class Receiver:
    """A callback receiver that records every request; can refuse the first N."""

    refuse_first: int = 0
    status_when_refusing: int = 503
    requests: list[dict[str, Any]] = field(default_factory=list)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if len(self.requests) <= self.refuse_first:
            return web.Response(status=self.status_when_refusing)
        self.got.set()
        return web.Response(status=200)

    async def wait(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.got.wait(), timeout)
