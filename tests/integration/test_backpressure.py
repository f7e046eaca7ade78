"""Backpressure and observability: circuit breaker, concurrency limits, 429, graceful
shutdown, Prometheus metrics, traceparent propagation."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.domain.specs import OperationSpec, RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext, RetryLater
from gateway.testing import ManualClock, eventually
from tests.conftest import make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent, spec_with


async def history(gw: Any, op_id: str) -> list[str]:
    return [e.kind for e in await gw.gw.store.list_events(op_id)]


async def metrics_text(gw: Any) -> str:
    async with gw.http.get(f"{gw.url}/metrics") as r:
        return await r.text()


async def test_an_open_circuit_defers_dispatch_without_calling_the_agent(db_url: str) -> None:
    agent = AgentApp("down")
    calls: list[str] = []

    @agent.operation("call", retry=RetryPolicy(initial_s=0.01, max_s=0.02, jitter_s=0.0))
    async def call(ctx: OpContext, payload: Any) -> Any:
        calls.append(ctx.key)
        raise RetryLater("the agent's database is down")

    # The retry schedule and the breaker's cool-down are taken from the engine's clock; a manual
    # clock makes them happen when the test says. (On the real clock the 0.6 s cool-down raced
    # the checks below: on a slow box the trial call could land before "no call while open"
    # was asserted.)
    clock = ManualClock()
    settings = make_settings(db_url, breaker_threshold=3, breaker_cooldown_s=0.6)
    async with serving_agent(agent) as url, running_gateway(settings, clock=clock) as gw:
        await gw.gw.registry.register(agent.spec(url))
        async with gw.http.post(f"{gw.url}/nexus/down/call", json={}) as r:
            token = r.headers["Nexus-Operation-Token"]
        for failed in (1, 2, 3):  # each retry is due 0.01-0.02 s after the last failure
            await eventually(
                lambda: history(gw, token), until=lambda k, n=failed: k.count("attempt.failed") == n
            )
            clock.advance(0.05)
        await eventually(lambda: history(gw, token), until=lambda k: "attempt.deferred" in k)
        kinds = await history(gw, token)
        assert kinds.count("attempt.failed") == 3  # threshold reached...
        assert "attempt.deferred" in kinds  # ...then no call while open
        assert len(calls) == 3
        async with gw.http.get(f"{gw.url}/metrics") as r:
            text = await r.text()
        assert 'swarmgate_circuit_open{agent="down"} 1.0' in text
        # After the cool-down one trial goes through (half-open), fails, and reopens.
        clock.advance(1.0)
        await eventually(lambda: len(calls) >= 4)
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
        await asyncio.sleep(0.1)  # the stimulus: calls overlap only if each one takes a while
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
        await asyncio.sleep(0.5)  # the stimulus: the first start stays pending meanwhile
        return {}

    settings = make_settings(db_url, max_pending_starts=1, sync_wait_s=2.0)
    async with serving_agent(agent) as url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(url))
        first = asyncio.create_task(gw.http.post(f"{gw.url}/nexus/slow/work", json={}))
        await eventually(lambda: gw.gw.engine.pending_starts > 0, interval=0.005)
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
        for _ in range(3):  # async: a sync (200) answer gets no callback
            async with gw.http.post(gw.nexus("worker", "later"), json={}, params={"callback": cb}):
                pass
        async with gw.http.post(gw.nexus("worker", "broken"), json={}):
            pass
        # The delivery is counted after the receiver's 200: the old fixed 0.1 s sleep after the
        # third request raced that; wait for the count itself.
        delivered = 'swarmgate_callback_deliveries_total{outcome="delivered"} 3.0'
        await eventually(lambda: len(receiver.requests) >= 3)
        await eventually(lambda: metrics_text(gw), until=lambda t: delivered in t)
        async with gw.http.get(f"{gw.url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert 'swarmgate_operations{state="succeeded"} 3.0' in text
        assert 'swarmgate_operations{state="failed"} 1.0' in text
        assert 'swarmgate_dispatch_attempts_total{agent="worker",outcome="accepted"} 3.0' in text
        assert 'swarmgate_callback_deliveries_total{outcome="delivered"} 3.0' in text
        assert "swarmgate_start_seconds_bucket" in text


async def test_traceparent_travels_from_the_caller_to_the_agent_and_the_callback(
    db_url: str,
) -> None:
    agent = AgentApp("traced")
    seen: dict[str, str] = {}

    @agent.operation("work", mode="async")  # async: a sync (200) answer gets no callback
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
