"""Backpressure and observability: circuit breaker, concurrency limits, 429, graceful
shutdown, Prometheus metrics, traceparent propagation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.domain.specs import OperationSpec, RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext, RetryLater
from tests.conftest import free_port, make_settings, running_gateway, serving, serving_agent
from tests.helpers import FAST_RETRY, Receiver, make_test_agent, spec_with
from tests.procs import GatewayProcess, get_json


async def history(gw: Any, op_id: str) -> list[str]:
    return [e.kind for e in await gw.gw.store.list_events(op_id)]


async def test_an_open_circuit_defers_dispatch_without_calling_the_agent(db_url: str) -> None:
    agent = AgentApp("down")
    calls: list[str] = []

    @agent.operation("call", retry=RetryPolicy(initial_s=0.01, max_s=0.02, jitter_s=0.0))
    async def call(ctx: OpContext, payload: Any) -> Any:
        calls.append(ctx.key)
        raise RetryLater("the agent's database is down")

    settings = make_settings(db_url, breaker_threshold=3, breaker_cooldown_s=0.6)
    async with serving_agent(agent) as url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(url))
        async with gw.http.post(f"{gw.url}/nexus/down/call", json={}) as r:
            token = r.headers["Nexus-Operation-Token"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while "attempt.deferred" not in await history(gw, token) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        kinds = await history(gw, token)
        assert kinds.count("attempt.failed") == 3  # threshold reached...
        assert "attempt.deferred" in kinds  # ...then no call while open
        assert len(calls) == 3
        async with gw.http.get(f"{gw.url}/metrics") as r:
            text = await r.text()
        assert 'swarmgate_circuit_open{agent="down"} 1.0' in text
        # After the cool-down one trial goes through (half-open), fails, and reopens.
        deadline = loop.time() + 5
        while len(calls) < 4 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert len(calls) == 4
        op = await gw.gw.store.get_operation(token)
        assert op is not None and op.attempts == 4  # deferrals do not use up attempts


async def test_an_operation_concurrency_limit_caps_parallel_calls_to_the_agent(
    db_url: str,
) -> None:
    agent = AgentApp("narrow")
    state = {"now": 0, "max": 0}

    @agent.operation("work", mode="sync")
    async def work(ctx: OpContext, payload: Any) -> Any:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.1)
        state["now"] -= 1
        return {}

    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        spec = spec_with(agent, url, work=OperationSpec(name="work", concurrency=2))
        await gw.gw.registry.register(spec)
        tokens = []
        for _ in range(6):
            async with gw.http.post(
                f"{gw.url}/nexus/narrow/work", json={}, headers={"Request-Timeout": "100ms"}
            ) as r:
                tokens.append(r.headers["Nexus-Operation-Token"])
        for t in tokens:
            op = await gw.gw.engine.wait_terminal(t, 10)
            assert op is not None and op.state.value == "succeeded"
        assert state["max"] == 2


async def test_a_saturated_gateway_answers_429_with_retry_after(db_url: str) -> None:
    agent = AgentApp("slow")

    @agent.operation("work")
    async def work(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.5)
        return {}

    settings = make_settings(db_url, max_pending_starts=1, sync_wait_s=2.0)
    async with serving_agent(agent) as url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(url))
        first = asyncio.create_task(gw.http.post(f"{gw.url}/nexus/slow/work", json={}))
        while gw.gw.engine.pending_starts == 0:
            await asyncio.sleep(0.005)
        async with gw.http.post(f"{gw.url}/nexus/slow/work", json={}) as r:
            assert r.status == 429
            assert r.headers["Retry-After"] == "1"
            assert (await r.json())["details"]["type"] == "RESOURCE_EXHAUSTED"
        resp = await first
        assert resp.status == 200
        resp.release()
        assert len(await gw.gw.store.list_operations()) == 1  # the refused start stored nothing


async def test_metrics_count_operations_attempts_and_callbacks(db_url: str) -> None:
    agent = make_test_agent()
    receiver = Receiver()
    async with (
        serving_agent(agent) as url,
        serving(receiver.app()) as cb,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))
        for _ in range(3):
            async with gw.http.post(gw.nexus("worker", "echo"), json={}, params={"callback": cb}):
                pass
        async with gw.http.post(gw.nexus("worker", "broken"), json={}):
            pass
        while len(receiver.requests) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        async with gw.http.get(f"{gw.url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert 'swarmgate_operations{state="succeeded"} 3.0' in text
        assert 'swarmgate_operations{state="failed"} 1.0' in text
        assert 'swarmgate_dispatch_attempts_total{agent="worker",outcome="succeeded"} 3.0' in text
        assert 'swarmgate_callback_deliveries_total{outcome="delivered"} 3.0' in text
        assert "swarmgate_start_seconds_bucket" in text


async def test_traceparent_travels_from_the_caller_to_the_agent_and_the_callback(
    db_url: str,
) -> None:
    agent = AgentApp("traced")
    seen: dict[str, str] = {}

    @agent.operation("work")
    async def work(ctx: OpContext, payload: Any) -> Any:
        seen["traceparent"] = ctx.headers.get("traceparent", "")
        return {}

    receiver = Receiver()
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with (
        serving_agent(agent) as url,
        serving(receiver.app()) as cb,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))
        async with gw.http.post(
            f"{gw.url}/nexus/traced/work",
            json={},
            params={"callback": cb},
            headers={"traceparent": tp},
        ):
            pass
        await receiver.wait()
        assert seen["traceparent"] == tp
        assert receiver.requests[0]["headers"]["traceparent"] == tp


async def test_sigterm_releases_the_leases_so_a_restart_resumes_at_once(
    db_url: str, tmp_path: Path
) -> None:
    agent = AgentApp("slowpoke")

    @agent.operation("work", retry=FAST_RETRY, attempt_timeout_s=30)
    async def work(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(2.0 if ctx.attempt == 1 else 0.0)
        return {"attempt": ctx.attempt}

    port = free_port()
    env = {"SWARMGATE_LEASE_S": "60", "SWARMGATE_SHUTDOWN_GRACE_S": "0.2"}
    async with serving_agent(agent) as url, aiohttp.ClientSession() as http:
        gw = GatewayProcess(db_url, port, log=tmp_path / "gw.log", **env)
        await gw.start()
        try:
            async with http.post(f"{gw.url}/api/agents", json=agent.spec(url).to_json()) as r:
                assert r.status == 201
            async with http.post(f"{gw.url}/nexus/slowpoke/work", json={}) as r:
                token = r.headers["Nexus-Operation-Token"]
            await asyncio.sleep(0.3)  # the first attempt is in flight at the agent
            gw.terminate()  # SIGTERM: stop taking work, release the lease after the grace
            assert gw.proc is not None and gw.proc.returncode == 0
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await gw.start()
            while True:
                op = await get_json(http, f"{gw.url}/api/operations/{token}")
                if op["state"] != "running" or loop.time() - t0 > 20:
                    break
                await asyncio.sleep(0.05)
            assert op["state"] == "succeeded"
            assert loop.time() - t0 < 20  # far below the 60 s lease
        finally:
            gw.kill()
