"""A crash between a start's commit and its answer: a retry with the same Idempotency-Key gets
the operation, not 409 "still in progress" until the key expires (issue 13, item 1)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.engine.faults import AFTER_START_COMMIT
from gateway.testing import eventually_sync
from tests.conftest import free_port, serving_agent
from tests.helpers import make_test_agent
from tests.procs import GatewayProcess, get_json


async def test_a_retry_after_a_kill_between_commit_and_answer_gets_the_operation(
    db_url: str, tmp_path: Path
) -> None:
    agent = make_test_agent()
    port = free_port()
    async with serving_agent(agent) as agent_url:
        gw = GatewayProcess(
            db_url, port, log=tmp_path / "gateway.log", SWARMGATE_TEST_FAULT=AFTER_START_COMMIT
        )
        await gw.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{gw.url}/api/agents", json=agent.spec(agent_url).to_json()
                ) as r:
                    assert r.status == 201, await r.text()
                headers = {"Idempotency-Key": "k-crash"}
                url = f"{gw.url}/nexus/worker/echo"
                with pytest.raises(aiohttp.ClientError):
                    async with http.post(url, json={"n": 1}, headers=headers) as r:
                        await r.read()  # the process dies after the commit, before answering
                assert gw.proc is not None
                eventually_sync(lambda: gw.proc is not None and gw.proc.poll() is not None)
                del gw.env["SWARMGATE_TEST_FAULT"]
                await gw.start()
                async with http.post(url, json={"n": 1}, headers=headers) as r:
                    assert r.status in (200, 201), await r.text()
                    assert r.headers["Idempotent-Replayed"] == "true"
                    token = r.headers["Nexus-Operation-Token"]
                ops = (await get_json(http, f"{gw.url}/api/operations"))["operations"]
                assert [o["id"] for o in ops] == [token]  # the committed one, no second
                async with http.get(f"{url}/result", params={"token": token, "wait": "20s"}) as r:
                    assert r.status == 200, await r.text()
                    assert await r.json() == {"echo": {"n": 1}}
                async with http.post(url, json={"n": 1}, headers=headers) as r:
                    assert r.status in (200, 201)
                    assert r.headers["Nexus-Operation-Token"] == token
        finally:
            gw.kill()
