"""How long a SIGKILLed replica's work and callbacks wait before another replica takes them
over (issue 13, item 4): at most the lease plus a small margin (one poll interval and some
slack), on PostgreSQL with two replicas. A callback in flight used to be leased for the
callback timeout plus the lease (20 s with the defaults: the 22 s p99 of the chaos run)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import free_port, serving, serving_agent
from tests.helpers import FAST_RETRY
from tests.procs import GatewayProcess, get_json

LEASE_S = 2.0
POLL_S = 0.5
MARGIN_S = POLL_S + 1.0  # one claim poll, plus slack for a loaded 2-core box
N_OPS = 4


class HoldingReceiver:
    """Holds every callback from replica A until the test ends; answers B's at once."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        op = request.headers.get("Nexus-Operation-Token", "")
        self.arrivals.setdefault(op, []).append(time.time())
        if len(self.arrivals[op]) == 1:
            await self.release.wait()  # the stimulus: A's delivery is in flight at the kill
        return web.Response(status=200)


async def test_a_killed_replicas_work_and_callbacks_are_taken_over_within_lease_and_margin(
    pg_db: str, tmp_path: Path
) -> None:
    agent = AgentApp("slowpoke")
    inflight: set[str] = set()

    @agent.operation("slow", retry=FAST_RETRY, attempt_timeout_s=30)
    async def slow(ctx: OpContext, payload: Any) -> Any:
        inflight.add(ctx.key)
        await asyncio.sleep(float(payload["sleep"]))  # the stimulus: in flight at the kill
        return {"n": payload["n"]}

    receiver = HoldingReceiver()
    env = {
        "SWARMGATE_LEASE_S": str(LEASE_S),
        "SWARMGATE_POLL_S": str(POLL_S),
        "SWARMGATE_CALLBACK_TIMEOUT_S": "15",  # the default: longer than the lease
    }
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        aiohttp.ClientSession() as http,
    ):
        a = GatewayProcess(
            pg_db, free_port(), log=tmp_path / "a.log", SWARMGATE_REPLICA_ID="a", **env
        )
        b = GatewayProcess(
            pg_db, free_port(), log=tmp_path / "b.log", SWARMGATE_REPLICA_ID="b", **env
        )
        await a.start()
        try:
            async with http.post(f"{a.url}/api/agents", json=agent.spec(agent_url).to_json()) as r:
                assert r.status == 201
            # Callbacks in flight on A: quick operations whose callbacks the receiver holds.
            cb_tokens = []
            for i in range(N_OPS):
                async with http.post(
                    f"{a.url}/nexus/slowpoke/slow",
                    json={"n": i, "sleep": 0},
                    params={"callback": f"{cb_url}/cb/{i}"},
                ) as r:
                    cb_tokens.append(r.headers["Nexus-Operation-Token"])
            await eventually(
                lambda: all(t in receiver.arrivals for t in cb_tokens),
                what="A's callbacks in flight",
            )
            # Work in flight on A: attempts that outlive the kill.
            work_tokens = []
            for i in range(N_OPS):
                async with http.post(
                    f"{a.url}/nexus/slowpoke/slow", json={"n": i, "sleep": 0.5 + 3 * LEASE_S}
                ) as r:
                    work_tokens.append(r.headers["Nexus-Operation-Token"])
            await eventually(lambda: set(work_tokens) <= inflight, what="A's attempts in flight")
            await b.start()
            killed_at = time.time()
            a.kill()

            async def b_attempt_times() -> dict[str, float]:
                found = {}
                for t in work_tokens:
                    events = (await get_json(http, f"{b.url}/api/operations/{t}/events"))["events"]
                    for e in events:
                        if e["kind"] == "attempt.started" and e["data"].get("owner") == "b":
                            found[t] = datetime.fromisoformat(e["at"]).timestamp()
                return found

            work = await eventually(
                b_attempt_times, until=lambda f: len(f) == N_OPS, timeout=30, interval=0.1
            )
            await eventually(
                lambda: all(len(receiver.arrivals[t]) >= 2 for t in cb_tokens),
                timeout=30,
                interval=0.1,
                what="A's callbacks delivered again by B",
            )
            work_takeover = max(work.values()) - killed_at
            cb_takeover = max(receiver.arrivals[t][1] for t in cb_tokens) - killed_at
            bound = LEASE_S + MARGIN_S
            assert work_takeover < bound, (work_takeover, bound)
            assert cb_takeover < bound, (cb_takeover, bound)
        finally:
            receiver.release.set()
            a.kill()
            b.kill()
