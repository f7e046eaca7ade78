"""Two gateway processes on one PostgreSQL: leases keep attempts apart; a dead replica's
work is taken over after its lease expires."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import free_port, make_settings, running_gateway, serving_agent
from tests.helpers import FAST_RETRY
from tests.procs import GatewayProcess, get_json


def counting_agent() -> tuple[AgentApp, dict[str, Any]]:
    agent = AgentApp("counter")
    seen: dict[str, Any] = {"inflight": set(), "overlaps": 0, "by_replica": {}}

    @agent.operation("slow", retry=FAST_RETRY, attempt_timeout_s=10)
    async def slow(ctx: OpContext, payload: Any) -> Any:
        if ctx.key in seen["inflight"]:
            seen["overlaps"] += 1
        seen["inflight"].add(ctx.key)
        try:
            await asyncio.sleep(float(payload["sleep"]))  # the stimulus: attempts take a while
        finally:
            seen["inflight"].discard(ctx.key)
        return {"n": payload["n"]}

    return agent, seen


async def test_two_replicas_never_run_one_attempt_twice_and_take_over_a_dead_ones_work(
    pg_db: str, tmp_path: Path
) -> None:
    agent, seen = counting_agent()
    async with serving_agent(agent) as agent_url, aiohttp.ClientSession() as http:
        a = GatewayProcess(pg_db, free_port(), log=tmp_path / "a.log", SWARMGATE_REPLICA_ID="a")
        b = GatewayProcess(pg_db, free_port(), log=tmp_path / "b.log", SWARMGATE_REPLICA_ID="b")
        await a.start()
        await b.start()
        try:
            async with http.post(f"{a.url}/api/agents", json=agent.spec(agent_url).to_json()) as r:
                assert r.status == 201
            # Both replicas take starts; B's dispatch loop also competes for A's due work.
            tokens: list[str] = []
            for i in range(30):
                base = a.url if i % 2 == 0 else b.url
                async with http.post(
                    f"{base}/nexus/counter/slow", json={"n": i, "sleep": 0.05}
                ) as r:
                    assert r.status in (200, 201)
                    tokens.append(r.headers["Nexus-Operation-Token"])
            # Now long ones on A only, and kill A while they are in flight.
            long_tokens = []
            for i in range(30, 40):
                async with http.post(
                    f"{a.url}/nexus/counter/slow", json={"n": i, "sleep": 1.0}
                ) as r:
                    long_tokens.append(r.headers["Nexus-Operation-Token"])
            # Kill A once a long attempt is in flight at the agent (was a fixed 0.3 s sleep,
            # which only hoped for it).
            await eventually(lambda: seen["inflight"] & set(long_tokens), what="a long attempt")
            a.kill()
            await eventually(
                lambda: get_json(http, f"{b.url}/api/operations", params={"state": "running"}),
                until=lambda running: not running["operations"],
                timeout=30,
                interval=0.1,
            )
            ops = (await get_json(http, f"{b.url}/api/operations", params={"limit": 100}))[
                "operations"
            ]
            assert len(ops) == 40
            assert {o["state"] for o in ops} == {"succeeded"}
            # no attempt ran on two replicas at once (the agent saw no overlapping dispatch)
            assert seen["overlaps"] == 0 and agent.overlapping_calls == 0
            assert all(agent.effects[t] == 1 for t in tokens + long_tokens)
            taken_over = 0
            for t in long_tokens:
                events = (await get_json(http, f"{b.url}/api/operations/{t}/events"))["events"]
                owners = [e["data"].get("owner") for e in events if e["kind"] == "attempt.started"]
                if owners[-1] == "b":
                    taken_over += 1
            assert taken_over == len(long_tokens)  # B finished every attempt A died in
        finally:
            a.kill()
            b.kill()


async def test_a_long_poll_wakes_when_another_replica_closes_the_operation(pg_db: str) -> None:
    agent = AgentApp("slowish")

    @agent.operation("work")
    async def work(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.5)  # the stimulus: the long-poll waits while the agent works
        return {"done": True}

    # The waiting replica re-reads the store only every 10 s: without the closure
    # notification its long-poll would answer after 10 s, not right after the close.
    waiting_settings = make_settings(pg_db, poll_interval_s=10.0, replica_id="waiter")
    async with (
        serving_agent(agent) as url,
        running_gateway(make_settings(pg_db, sync_wait_s=0.0, replica_id="worker")) as worker,
        running_gateway(waiting_settings) as waiter,
    ):
        await worker.gw.registry.register(agent.spec(url))
        async with worker.http.post(worker.nexus("slowish", "work"), json={}) as r:
            assert r.status == 201
            token = (await r.json())["token"]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with waiter.http.get(
            waiter.nexus("slowish", "work") + "/result", params={"token": token, "wait": "20s"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"done": True}
        waited = loop.time() - t0
    assert 0.3 < waited < 3.0  # the agent's 0.5 s, plus little; never the 10 s re-read
