"""A start's input validation does not stall the event loop (issue 13, follow-up of item 7):
a large input is validated on the validation pool, a small one inline (start latency)."""

from __future__ import annotations

import asyncio
import json
import time

from gateway.domain.specs import AgentSpec, OperationSpec
from tests.conftest import make_settings, running_gateway

# linear, but heavy: every item is tried against 100 alternatives before the last one matches
SCHEMA = {
    "type": "array",
    "items": {
        "anyOf": [{"type": "object", "required": [f"x{i}"]} for i in range(100)]
        + [{"type": "object"}]
    },
}
ITEMS = 800  # ~1 s of validation on this box, ~11 KB


async def test_validating_a_large_input_leaves_the_event_loop_free(db_url: str) -> None:
    op = OperationSpec(name="bulk", input_schema=SCHEMA)
    spec = AgentSpec(name="heavy", endpoint="http://127.0.0.1:1", operations={"bulk": op})
    async with running_gateway(make_settings(db_url, sync_wait_s=0)) as gw:
        await gw.gw.registry.register(spec)
        body = json.dumps([{"a": i} for i in range(ITEMS)])
        gaps: list[float] = []

        async def probe(stop: asyncio.Event) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                async with gw.http.get(f"{gw.url}/healthz") as r:
                    assert r.status == 200
                gaps.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)  # the probe's own pace, not a wait for a state

        stop = asyncio.Event()
        prober = asyncio.create_task(probe(stop))
        t0 = time.perf_counter()
        async with gw.http.post(
            gw.nexus("heavy", "bulk"), data=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 201, await r.text()
        took = time.perf_counter() - t0
        stop.set()
        await prober
        assert took > 0.3, took  # the validation really took a while
        assert max(gaps) < max(0.25, took / 3), (max(gaps), took)
