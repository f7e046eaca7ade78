"""Graceful shutdown of a real gateway subprocess: SIGTERM releases the leases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import free_port, serving_agent
from tests.helpers import FAST_RETRY
from tests.procs import GatewayProcess, get_json


async def test_sigterm_releases_the_leases_so_a_restart_resumes_at_once(
    db_url: str, tmp_path: Path
) -> None:
    agent = AgentApp("slowpoke")
    in_flight = asyncio.Event()

    @agent.operation("work", retry=FAST_RETRY, attempt_timeout_s=30)
    async def work(ctx: OpContext, payload: Any) -> Any:
        if ctx.attempt == 1:
            in_flight.set()
            await asyncio.sleep(2.0)  # the stimulus: the first attempt is still running at SIGTERM
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
            await asyncio.wait_for(in_flight.wait(), 10)  # the first attempt is at the agent
            gw.terminate()  # SIGTERM: stop taking work, release the lease after the grace
            assert gw.proc is not None and gw.proc.returncode == 0
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await gw.start()
            op = await eventually(
                lambda: get_json(http, f"{gw.url}/api/operations/{token}"),
                until=lambda o: o["state"] != "running",
                timeout=20,
            )
            assert op["state"] == "succeeded"
            assert loop.time() - t0 < 20  # far below the 60 s lease
        finally:
            gw.kill()
