"""AgentApp's durable side against a real gateway (SQLite and PostgreSQL): steps, heartbeats
with details, and a cancel that reaches a heartbeating agent only through its heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving

FAST = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01)


def blocking_cancels(agent: AgentApp) -> web.Application:
    """The agent's app behind a middleware that answers 503 to every cancel request: the
    gateway's cancel cannot reach the agent, only its heartbeat answers can."""

    @web.middleware
    async def no_cancels(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.endswith("/cancel"):
            return web.Response(status=503)
        return await handler(request)

    outer = web.Application(middlewares=[no_cancels])
    outer.add_subapp("/agent", agent.app)
    return outer


async def test_a_cancel_reaches_a_heartbeating_agent_through_its_heartbeat_and_stops_it(
    db_url: str,
) -> None:
    agent = AgentApp("slowpoke")
    progress: list[str] = []

    @agent.operation("crawl", mode="async", heartbeat_timeout_s=0.6, retry=FAST)
    async def crawl(ctx: OpContext, payload: Any) -> Any:
        progress.append("started")
        await asyncio.sleep(3600)  # the work: ended only by the cancel
        progress.append("finished")
        return None

    async with serving(blocking_cancels(agent)) as url:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(agent.spec(url + "/agent"))
            async with gw.http.post(gw.nexus("slowpoke", "crawl"), json={}) as r:
                op_id = (await r.json())["token"]
            await eventually(lambda: progress == ["started"], what="the handler running")
            async with gw.http.post(gw.nexus("slowpoke", "crawl") + f"/{op_id}/cancel") as r:
                assert r.status == 202
            async with gw.http.get(
                gw.nexus("slowpoke", "crawl") + "/result", params={"token": op_id, "wait": "10s"}
            ) as r:
                assert r.headers["Nexus-Operation-State"] == "canceled"
            assert agent.canceled == [op_id] and progress == ["started"]


async def test_steps_run_once_a_failed_step_records_nothing_and_details_reach_the_gateway(
    db_url: str,
) -> None:
    agent = AgentApp("stepper")
    runs: dict[str, int] = {}

    def count(name: str) -> int:
        runs[name] = runs.get(name, 0) + 1
        return runs[name]

    async def flaky(name: str) -> int:
        n = count(name)
        if n == 1:
            raise RuntimeError("the tool call failed")
        return n

    @agent.operation("job", mode="async", heartbeat_timeout_s=5, retry=FAST)
    async def job(ctx: OpContext, payload: Any) -> Any:
        first = await ctx.step("sync-step", count, "sync-step")
        again = await ctx.step("sync-step", count, "sync-step")  # recorded: not run again
        try:
            await ctx.step("flaky", flaky, "flaky")
        except RuntimeError:
            pass
        second_try = await ctx.step("flaky", flaky, "flaky")
        ctx.heartbeat({"progress": 0.5})
        await eventually(lambda: agent_details_stored(), what="the details stored")
        return {"first": first, "again": again, "flaky": second_try}

    gw_ref: dict[str, Any] = {}

    async def agent_details_stored() -> bool:
        op = await gw_ref["gw"].gw.engine.store.get_operation(gw_ref["op"])
        return op is not None and op.heartbeat_details == {"progress": 0.5}

    async with serving(agent.app) as url:
        async with running_gateway(make_settings(db_url)) as gw:
            gw_ref["gw"] = gw
            await gw.gw.registry.register(agent.spec(url))
            async with gw.http.post(gw.nexus("stepper", "job"), json={}) as r:
                gw_ref["op"] = op_id = (await r.json())["token"]
            async with gw.http.get(
                gw.nexus("stepper", "job") + "/result", params={"token": op_id, "wait": "10s"}
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"first": 1, "again": 1, "flaky": 2}
            steps = await gw.gw.engine.store.list_steps(op_id)
            assert [(s.name, s.result) for s in steps if s.name != "$result"] == [
                ("sync-step", 1),
                ("flaky", 2),
            ]
            assert runs == {"sync-step": 1, "flaky": 2}


async def test_a_sync_handlers_checkpoint_reaches_the_gateway_while_it_runs(db_url: str) -> None:
    agent = AgentApp("quick")
    seen: dict[str, Any] = {}

    @agent.operation("peek", retry=FAST)
    async def peek(ctx: OpContext, payload: Any) -> Any:
        ctx.heartbeat({"halfway": True})
        store = seen["gw"].gw.engine.store

        async def stored() -> Any:
            op = await store.get_operation(ctx.key)
            return op.heartbeat_details if op else None

        return await eventually(stored, what="the checkpoint stored")

    async with serving(agent.app) as url:
        async with running_gateway(make_settings(db_url)) as gw:
            seen["gw"] = gw
            await gw.gw.registry.register(agent.spec(url))
            async with gw.http.post(gw.nexus("quick", "peek"), json={}) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"halfway": True}


class ReadCountingStore:
    """The real store, counting the operation reads and the heartbeats written per operation."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads: list[str] = []
        self.beats: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_operation(self, op_id: str) -> Any:
        self.reads.append(op_id)
        return await self._inner.get_operation(op_id)

    async def heartbeat_many(self, beats: Any) -> Any:
        self.beats += [b.operation_id for b in beats]
        return await self._inner.heartbeat_many(beats)

    async def heartbeat(self, op_id: str, *args: Any, **kwargs: Any) -> Any:
        self.beats.append(op_id)
        return await self._inner.heartbeat(op_id, *args, **kwargs)


async def test_the_first_heartbeat_after_a_dispatch_reads_nothing_from_the_store(
    db_url: str,
) -> None:
    agent = AgentApp("beater")
    release = asyncio.Event()

    @agent.operation("work", mode="async", heartbeat_timeout_s=0.3, retry=FAST)
    async def work(ctx: OpContext, payload: Any) -> Any:
        await release.wait()
        return {"ok": True}

    async with serving(agent.app) as url:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(agent.spec(url))
            counting = ReadCountingStore(gw.gw.engine.store)
            gw.gw.engine.store = counting  # type: ignore[assignment]
            async with gw.http.post(gw.nexus("beater", "work"), json={}) as r:
                assert r.status == 201, await r.text()
                op_id = (await r.json())["token"]
            counting.reads.clear()  # (the start's own answer read it)
            await eventually(
                lambda: counting.beats.count(op_id) >= 3, what="three heartbeats recorded"
            )
            # the gateway that dispatched it knew its names and its token: no heartbeat,
            # not even the first, read the operation
            assert op_id not in counting.reads
            release.set()
            async with gw.http.get(
                gw.nexus("beater", "work") + "/result", params={"token": op_id, "wait": "10s"}
            ) as r:
                assert r.status == 200 and await r.json() == {"ok": True}
