"""`swarmgate_write_cycles_total`: the PostgreSQL store's merged-write counters on /metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from gateway.engine.metrics import Metrics
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent


def samples(text: str) -> dict[str, float]:
    found = re.findall(r'^swarmgate_write_cycles_total\{counted="(\w+)"\} (\S+)$', text, re.M)
    return {key: float(value) for key, value in found}


def test_read_counters_are_read_again_at_every_scrape() -> None:
    metrics = Metrics()
    counts = {"statements": 1, "writes": 2}
    metrics.add_read_counters("swarmgate_write_cycles", "doc", "counted", lambda: dict(counts))
    assert samples(metrics.render().decode()) == {"statements": 1.0, "writes": 2.0}
    counts.update(statements=5, writes=12)
    assert samples(metrics.render().decode()) == {"statements": 5.0, "writes": 12.0}


async def test_metrics_show_the_stores_write_cycle_counters(db_url: str) -> None:
    agent = make_test_agent()
    receiver = Receiver()
    async with (
        serving_agent(agent) as url,
        serving(receiver.app()) as cb,
        running_gateway(make_settings(db_url, write_cycles=1, sync_wait_s=0)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))

        async def caller() -> None:  # a closed loop: the next start once the last answered
            for _ in range(10):
                params = {"callback": cb}
                async with gw.http.post(gw.nexus("worker", "echo"), json={}, params=params) as r:
                    assert r.status == 201  # sync_wait_s=0: every start answers at once

        # starts, completions and acks at once, one statement in flight: on PostgreSQL the
        # writes waiting behind it share cycles
        await asyncio.gather(*(caller() for _ in range(30)))
        await eventually(lambda: len(receiver.requests) >= 300)
        # the last callbacks' acks may still be landing: the scrape falls between two reads
        counts: dict[str, Any] = gw.gw.store.write_cycle_counts()
        async with gw.http.get(f"{gw.url}/metrics") as r:
            text = await r.text()
        after: dict[str, Any] = gw.gw.store.write_cycle_counts()
        assert "# TYPE swarmgate_write_cycles_total counter" in text
        if db_url.startswith("sqlite"):
            assert counts == {} and samples(text) == {}  # SQLite has no write cycles
            return
        scraped = samples(text)
        assert scraped.keys() == counts.keys() == after.keys()
        assert all(counts[key] <= scraped[key] <= after[key] for key in scraped)
        assert scraped["writes"] >= 2 * scraped["statements"]  # a cycle merges two or more
        assert scraped["alone"] > 0  # the first write, at least, found nothing in flight
