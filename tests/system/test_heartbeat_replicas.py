"""Heartbeats on two gateway processes sharing PostgreSQL: a heartbeat counts on any replica.

The replica that dispatched the operation is killed once its agent accepted; the agent keeps
heartbeating the other replica, which keeps the attempt alive past several timeouts (the
deadline is a store column, not one replica's memory). When the heartbeats stop, the
surviving replica dispatches the operation again with the checkpoint sent to it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.domain.dispatch import HEADER_ATTEMPT, HEADER_HEARTBEAT_URL, HEADER_JOURNAL
from gateway.testing import eventually
from tests.conftest import free_port, serving
from tests.procs import GatewayProcess, get_json


async def test_a_heartbeat_to_the_replica_that_did_not_dispatch_keeps_the_attempt_alive(
    pg_db: str, tmp_path: Path
) -> None:
    dispatches: list[dict[str, str]] = []

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        dispatches.append(dict(request.headers))
        return web.json_response({"token": request.headers["Idempotency-Key"]}, status=201)

    agent = web.Application()
    agent.router.add_post("/{op}", accept)
    a = GatewayProcess(pg_db, free_port(), log=tmp_path / "a.log", SWARMGATE_REPLICA_ID="a")
    b = GatewayProcess(pg_db, free_port(), log=tmp_path / "b.log", SWARMGATE_REPLICA_ID="b")
    async with serving(agent) as agent_url, aiohttp.ClientSession() as http:
        await a.start()
        await b.start()
        try:
            registration = {
                "name": "beater",
                "endpoint": agent_url,
                "operations": [
                    {
                        "name": "work",
                        "heartbeat_timeout_s": 1,
                        "retry": {"initial_s": 0.1, "max_s": 0.2, "jitter_s": 0.01},
                    }
                ],
            }
            async with http.post(f"{a.url}/api/agents", json=registration) as r:
                assert r.status == 201
            async with http.post(f"{a.url}/nexus/beater/work", json={}) as r:
                assert r.status == 201
                op_id = r.headers["Nexus-Operation-Token"]
            await eventually(lambda: dispatches, what="the dispatch")
            first = dispatches[0]
            dispatcher, other = (a, b) if first[HEADER_HEARTBEAT_URL].startswith(a.url) else (b, a)

            async def accepted() -> bool:
                events = await get_json(http, f"{other.url}/api/operations/{op_id}/events")
                return "attempt.accepted" in [e["kind"] for e in events["events"]]

            await eventually(accepted, what="the accept recorded")
            dispatcher.kill()
            beat_url = f"{other.url}/api/operations/{op_id}/heartbeat"
            auth = {"Authorization": first["Nexus-Callback-Authorization"]}
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.5  # three and a half heartbeat timeouts
            n = 0
            while loop.time() < end:
                n += 1
                body = {"attempt": 1, "details": {"beat": n}}
                async with http.post(beat_url, json=body, headers=auth) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["state"] == "running"
                await asyncio.sleep(0.25)  # the agent's heartbeat interval (pacing)
            assert len(dispatches) == 1  # still the first attempt: the heartbeats counted
            # the heartbeats stop: the surviving replica fails the attempt and dispatches again
            await eventually(lambda: len(dispatches) >= 2, timeout=20, what="a second dispatch")
            again = dispatches[1]
            assert again[HEADER_ATTEMPT] == "2"
            assert again[HEADER_HEARTBEAT_URL].startswith(other.url)
            assert json.loads(again[HEADER_JOURNAL])["details"] == {"beat": n}
            events = await get_json(http, f"{other.url}/api/operations/{op_id}/events")
            kinds = [e["kind"] for e in events["events"]]
            assert kinds.count("attempt.heartbeat_timeout") == 1
        finally:
            a.kill()
            b.kill()
