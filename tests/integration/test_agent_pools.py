"""Agent pools (issue 12 item 5): one agent, several endpoints; dispatch moves to the healthy
endpoint when one is down, records the endpoint in the attempt's events and shows each
endpoint's health in GET /api/agents/{name} and /metrics."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.http.contract import component_errors
from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually, free_port
from tests.conftest import Running, make_settings, running_gateway, serving, serving_agent

FAST = {"initial_s": 0.05, "max_s": 0.1, "jitter_s": 0.0}


def instance(name: str, calls: list[str]) -> web.Application:
    async def work(request: web.Request) -> web.Response:
        calls.append(request.headers["Idempotency-Key"])
        return web.json_response({"served_by": name})

    app = web.Application()
    app.router.add_post("/work", work)
    return app


async def events(gw: Running, op_id: str) -> list[dict[str, Any]]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
        return list((await r.json())["events"])


async def test_a_pool_moves_to_the_healthy_endpoint_when_one_is_down(db_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    calls: list[str] = []
    async with (
        serving(instance("live", calls)) as live,
        running_gateway(make_settings(db_url)) as gw,
    ):
        reg = {
            "name": "pool",
            "endpoints": [dead, live],
            "operations": [{"name": "work", "retry": FAST}],
        }
        async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
            assert r.status == 201, await r.text()
            shown = await r.json()
        assert shown["endpoint"] == dead and shown["endpoints"] == [dead, live]

        op_ids = []
        for i in range(6):
            async with gw.http.post(gw.nexus("pool", "work"), json={"i": i}) as r:
                op_ids.append(r.headers["Nexus-Operation-Token"])

        async def all_served() -> bool:
            for op_id in op_ids:
                async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
                    if (await r.json())["state"] != "succeeded":
                        return False
            return True

        await eventually(all_served, timeout=10, what="every operation served")
        assert sorted(calls) == sorted(op_ids)  # every operation once, all on the live one

        attempts = [e for op_id in op_ids for e in await events(gw, op_id)]
        failed = [e["data"] for e in attempts if e["kind"] == "attempt.failed"]
        succeeded = [e["data"] for e in attempts if e["kind"] == "operation.succeeded"]
        assert failed and all(d["endpoint"] == dead for d in failed)
        assert len(failed) < len(op_ids)  # once down, the dead endpoint is skipped
        assert [d["endpoint"] for d in succeeded] == [live] * len(op_ids)

        async with gw.http.get(f"{gw.url}/api/agents/pool") as r:
            shown = await r.json()
        assert component_errors("AgentRecord", shown) == []
        health = {h["endpoint"]: h for h in shown["endpoint_health"]}
        assert health[dead]["up"] is False and health[dead]["failures"] == len(failed)
        assert health[dead]["last_error"]
        assert health[live]["up"] is True and health[live]["successes"] == len(op_ids)
        assert health[live]["failures"] == 0
        async with gw.http.get(f"{gw.url}/metrics") as r:
            metrics = await r.text()
        assert f'swarmgate_agent_endpoint_up{{agent="pool",endpoint="{dead}"}} 0.0' in metrics
        assert f'swarmgate_agent_endpoint_up{{agent="pool",endpoint="{live}"}} 1.0' in metrics


async def test_a_pool_spreads_attempts_over_its_endpoints(db_url: str) -> None:
    a_calls: list[str] = []
    b_calls: list[str] = []
    async with (
        serving(instance("a", a_calls)) as a,
        serving(instance("b", b_calls)) as b,
        running_gateway(make_settings(db_url)) as gw,
    ):
        reg = {"name": "pool", "endpoint": a, "endpoints": [b], "operations": [{"name": "work"}]}
        async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["endpoints"] == [a, b]  # endpoint joins the pool first
        served = []
        for i in range(8):
            async with gw.http.post(gw.nexus("pool", "work"), json={"i": i}) as r:
                assert r.status == 200
                served.append((await r.json())["served_by"])
        assert served.count("a") == 4 and served.count("b") == 4


async def test_bad_pools_are_refused_with_a_problem(db_url: str) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        for endpoints in (
            [],
            ["ftp://127.0.0.1:1"],
            ["http://127.0.0.1:1", "http://127.0.0.1:1"],
            [f"http://127.0.0.1:{1000 + i}" for i in range(33)],
        ):
            reg = {"name": "pool", "endpoints": endpoints, "operations": [{"name": "work"}]}
            async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
                assert r.status == 400, endpoints
                assert r.headers["Content-Type"].startswith("application/problem+json")
        reg = {"name": "pool", "operations": [{"name": "work"}]}  # no endpoint at all
        async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
            assert r.status == 400
        async with gw.http.get(f"{gw.url}/api/agents/pool") as r:
            assert r.status == 404


async def test_a_pool_moves_to_another_endpoint_when_an_instance_stops_heartbeating(
    db_url: str,
) -> None:
    def instance_app(name: str) -> AgentApp:
        agent = AgentApp("pool")

        @agent.operation(
            "work",
            mode="async",
            heartbeat_timeout_s=0.5,
            retry=RetryPolicy(initial_s=0.05, max_s=0.1, jitter_s=0.0),
        )
        async def work(ctx: OpContext, payload: Any) -> Any:
            await asyncio.sleep(float(payload["sleep"]))
            return {"served_by": name, "attempt": ctx.attempt}

        return agent

    first, second = instance_app("first"), instance_app("second")
    async with AsyncExitStack() as stack, running_gateway(make_settings(db_url)) as gw:
        first_url = await stack.enter_async_context(serving_agent(first))
        async with serving_agent(second) as second_url:
            spec = replace(first.spec(first_url), endpoints=(first_url, second_url))
            await gw.gw.registry.register(spec)
            async with gw.http.post(gw.nexus("pool", "work"), json={"sleep": 1.5}) as r:
                assert r.status == 201
                op_id = (await r.json())["token"]
            accepted = await eventually(
                lambda: events(gw, op_id),
                until=lambda evs: any(e["kind"] == "attempt.accepted" for e in evs),
            )
            took = next(e["data"]["endpoint"] for e in accepted if e["kind"] == "attempt.accepted")
            assert took == first_url  # round-robin starts with the first
            await stack.aclose()  # the first instance goes away mid-task: no more heartbeats
            done = await eventually(
                lambda: events(gw, op_id),
                until=lambda evs: evs[-1]["kind"] == "operation.succeeded",
                what="the operation finishes on the other instance",
            )
            kinds = [e["kind"] for e in done]
            assert "attempt.heartbeat_timeout" in kinds
            accepts = [e["data"]["endpoint"] for e in done if e["kind"] == "attempt.accepted"]
            assert accepts == [first_url, second_url]
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
                assert (await r.json())["result"] == {"served_by": "second", "attempt": 2}
            async with gw.http.get(f"{gw.url}/api/agents/pool") as r:
                health = {h["endpoint"]: h for h in (await r.json())["endpoint_health"]}
            assert health[first_url]["last_error"] == "heartbeat timed out"
            assert health[first_url]["up"] is False
