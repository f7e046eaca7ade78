"""Slow uploads cannot take every admission slot (issue 13, item 10): a start's body is read
(within SWARMGATE_BODY_TIMEOUT_S) before the start is admitted, so while one caller trickles
its bodies in, other callers' starts still succeed; the slow ones end with 408."""

from __future__ import annotations

import asyncio

from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent

SLOW = 8


async def slow_upload(host: str, port: int) -> bytes:
    """A start whose body never finishes arriving; returns what the gateway answered."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /nexus/worker/echo HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    try:
        return await reader.readline()  # the status line, once the gateway gives up
    finally:
        writer.close()


async def test_slow_uploads_do_not_take_the_admission_slots_of_other_starts(db_url: str) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url, max_pending_starts=4, body_timeout_s=1.5, sync_wait_s=0)
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        slow = [asyncio.create_task(slow_upload(settings.host, settings.port)) for _ in range(SLOW)]
        statuses: list[int] = []
        try:
            # Starts run for as long as the slow uploads are held (each is held until it is
            # answered 408 after the body timeout, so the two overlap for that long).
            async with asyncio.timeout(30):
                while not all(t.done() for t in slow):
                    for t in slow:  # a slow upload is refused only by the body timeout
                        if t.done():
                            assert t.result().startswith(b"HTTP/1.1 408"), t.result()
                    payload = {"n": len(statuses)}
                    async with gw.http.post(gw.nexus("worker", "echo"), json=payload) as r:
                        statuses.append(r.status)
                        assert r.status in (200, 201), (statuses, await r.text())
        finally:
            for t in slow:
                t.cancel()  # closes the connection: the gateway can shut down
        assert statuses
        answers = [t.result() for t in slow]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
