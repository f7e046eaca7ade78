"""Server-Sent Events of an operation's history, resumable with Last-Event-ID."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest

from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent


async def read_sse(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Read SSE frames until the server ends the stream."""
    frames: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in current:
                frames.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        current[field] = value
    return frames


async def test_the_stream_replays_history_and_ends_after_the_callback_is_delivered(
    db_url: str,
) -> None:
    agent = make_test_agent()
    receiver = Receiver()
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(
            gw.nexus("worker", "later"), json={"sleep": 0.3}, params={"callback": cb_url}
        ) as r:
            token = r.headers["Nexus-Operation-Token"]
        async with gw.http.get(f"{gw.url}/api/operations/{token}/stream") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            frames = await read_sse(r)
        kinds = [f["event"] for f in frames]
        assert kinds == [
            "operation.started",
            "attempt.started",
            "attempt.accepted",
            "step.completed",  # AgentApp records the answer in the journal ($result) first
            "operation.succeeded",
            "callback.delivered",
        ]
        ids = [int(f["id"]) for f in frames]
        assert ids == sorted(ids)
        assert json.loads(frames[0]["data"])["data"]["service"] == "worker"
        # Resume after the second event: exactly the rest, nothing twice.
        async with gw.http.get(
            f"{gw.url}/api/operations/{token}/stream", headers={"Last-Event-ID": str(ids[1])}
        ) as r:
            rest = await read_sse(r)
        assert [int(f["id"]) for f in rest] == ids[2:]


async def test_a_stream_resumed_on_a_restarted_gateway_loses_no_event(db_url: str) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url)
    async with serving_agent(agent) as agent_url:
        async with running_gateway(settings) as gw:
            await gw.gw.registry.register(agent.spec(agent_url))
            async with gw.http.post(gw.nexus("worker", "hang"), json={}) as r:
                token = r.headers["Nexus-Operation-Token"]
            async with gw.http.get(f"{gw.url}/api/operations/{token}/events") as r:
                seen = [e["id"] for e in (await r.json())["events"]]
            assert len(seen) == 3  # started, attempt.started, attempt.accepted
            completion_token = gw.gw.engine.completion_token(token)
        # The gateway is gone; a new one on the same database picks the stream up.
        async with running_gateway(make_settings(db_url)) as gw2:
            async with gw2.http.post(
                f"{gw2.url}/api/completions/{token}",
                headers={
                    "Authorization": f"Bearer {completion_token}",
                    "Nexus-Operation-State": "succeeded",
                    "Content-Type": "application/json",
                },
                data=b'{"late": true}',
            ) as r:
                assert r.status == 200
            async with gw2.http.get(
                f"{gw2.url}/api/operations/{token}/stream",
                headers={"Last-Event-ID": str(seen[-1])},
            ) as r:
                frames = await read_sse(r)
        assert [f["event"] for f in frames] == ["operation.succeeded"]
        assert int(frames[0]["id"]) > seen[-1]


async def test_a_client_that_leaves_mid_stream_ends_it_quietly(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_test_agent()
    async with (
        serving_agent(agent) as agent_url,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        with caplog.at_level(logging.DEBUG, logger="swarmgate"):
            async with gw.http.post(gw.nexus("worker", "later"), json={"sleep": 0.3}) as r:
                token = r.headers["Nexus-Operation-Token"]
            async with gw.http.get(f"{gw.url}/api/operations/{token}/stream") as r:
                while not (await r.content.readline()).startswith(b"event:"):
                    pass
                r.close()  # gone while the operation still runs
            # the next event (the operation closing) meets a closed connection
            await eventually(
                lambda: [x for x in caplog.records if x.getMessage() == "stream client gone"],
                what="the stream to notice its client left",
            )
        # a client leaving is no error (before: "unhandled error" with a traceback, each time)
        http_logs = [x for x in caplog.records if x.name == "swarmgate.http"]
        assert [x.getMessage() for x in http_logs if x.levelno >= logging.WARNING] == []
