"""Agent registry: validated, versioned, discoverable; payloads checked against schemas."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from gateway.domain.clock import SystemClock
from gateway.sdk.agent import AgentApp, OpContext
from gateway.store.sqlstore import SqlStore
from gateway.testing import eventually
from registry.service import Registry
from tests.conftest import make_settings, running_gateway, serving_agent

SCHEMA = {
    "type": "object",
    "required": ["city"],
    "properties": {"city": {"type": "string"}, "nights": {"type": "integer", "minimum": 1}},
    "additionalProperties": False,
}


def typed_agent() -> AgentApp:
    agent = AgentApp("typed", description="schema-checked agent")

    @agent.operation(
        "book", input_schema=SCHEMA, output_schema={"type": "object", "required": ["ok"]}
    )
    async def book(ctx: OpContext, payload: Any) -> Any:
        return {"ok": True} if payload["city"] != "Nowhere" else {"oops": 1}

    return agent


async def test_registration_is_versioned_listed_and_rejects_bad_schemas(db_url: str) -> None:
    agent = typed_agent()
    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        spec = agent.spec(url).to_json()
        async with gw.http.post(f"{gw.url}/api/agents", json=spec) as r:
            assert r.status == 201
            assert (await r.json())["registryVersion"] == 1
        async with gw.http.post(f"{gw.url}/api/agents", json=spec) as r:
            assert r.status == 200  # unchanged: same version
            assert (await r.json())["registryVersion"] == 1
        spec["description"] = "now with a new description"
        async with gw.http.post(f"{gw.url}/api/agents", json=spec) as r:
            assert (await r.json())["registryVersion"] == 2
        async with gw.http.get(f"{gw.url}/api/agents") as r:
            listed = (await r.json())["agents"]
        assert [a["name"] for a in listed] == ["typed"]
        async with gw.http.get(f"{gw.url}/api/agents/typed") as r:
            detail = await r.json()
        assert detail["operations"][0]["input_schema"] == SCHEMA
        async with gw.http.get(f"{gw.url}/api/agents/nobody") as r:
            assert r.status == 404

        bad = json.loads(json.dumps(spec))
        bad["name"] = "broken"
        bad["operations"][0]["input_schema"] = {"type": "no-such-type"}
        async with gw.http.post(f"{gw.url}/api/agents", json=bad) as r:
            assert r.status == 400
            assert r.headers["Content-Type"].startswith("application/problem+json")
        async with gw.http.get(f"{gw.url}/api/agents/broken") as r:
            assert r.status == 404  # nothing stored


async def test_an_agent_endpoint_on_a_private_address_is_refused_unless_allowed(
    db_url: str,
) -> None:
    agent = typed_agent()
    async with running_gateway(make_settings(db_url, allow_cidrs=())) as gw:
        for endpoint in ("http://169.254.169.254/agent", "http://127.0.0.1:9/agent"):
            async with gw.http.post(
                f"{gw.url}/api/agents", json=agent.spec(endpoint).to_json()
            ) as r:
                assert r.status == 400
                assert "refused" in (await r.json())["detail"]
        async with gw.http.get(f"{gw.url}/api/agents") as r:
            assert (await r.json())["agents"] == []


async def test_inputs_and_results_are_checked_against_the_operation_schemas(
    db_url: str,
) -> None:
    agent = typed_agent()
    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(url))
        async with gw.http.post(gw.nexus("typed", "book"), json={"city": 3, "extra": 1}) as r:
            assert r.status == 400
            failure = await r.json()
        assert failure["details"]["type"] == "BAD_REQUEST"
        paths = {e["path"] for e in failure["details"]["errors"]}
        assert paths == {"/", "/city"}
        async with gw.http.post(
            gw.nexus("typed", "book"),
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
        assert await gw.gw.store.list_operations() == []
        async with gw.http.post(gw.nexus("typed", "book"), json={"city": "Lisbon"}) as r:
            assert r.status == 200
        async with gw.http.post(gw.nexus("typed", "book"), json={"city": "Nowhere"}) as r:
            assert r.status == 424
            assert "output schema" in (await r.json())["message"]


async def test_agents_listed_in_the_agents_file_are_registered_at_start(
    db_url: str, tmp_path: Path
) -> None:
    agent = typed_agent()
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": [agent.spec("http://127.0.0.1:1").to_json()]}))
    async with running_gateway(make_settings(db_url, agents_file=str(path))) as gw:
        found = await gw.gw.registry.get("typed")
        assert found is not None and set(found.operations) == {"book"}


async def test_an_idempotency_key_in_flight_is_409_and_expired_keys_are_purged(
    db_url: str,
) -> None:
    agent = AgentApp("slow")

    @agent.operation("work")
    async def work(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.4)  # the stimulus: the key stays in flight meanwhile
        return {"done": True}

    async with (
        serving_agent(agent) as url,
        running_gateway(make_settings(db_url, sync_wait_s=2.0)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))
        headers = {"Idempotency-Key": '"k-slow"'}
        first = asyncio.create_task(
            gw.http.post(f"{gw.url}/nexus/slow/work", json={}, headers=headers)
        )
        await eventually(gw.gw.store.list_operations)  # the first start holds the key
        async with gw.http.post(f"{gw.url}/nexus/slow/work", json={}, headers=headers) as r:
            assert r.status == 409
        resp = await first
        assert resp.status == 200
        token = resp.headers["Nexus-Operation-Token"]
        resp.release()
        async with gw.http.post(f"{gw.url}/nexus/slow/work", json={}, headers=headers) as r:
            assert r.status == 200 and r.headers["Nexus-Operation-Token"] == token
        # After the retention period the cleanup job forgets the key.
        far = gw.gw.engine.now().replace(year=2100)
        assert await gw.gw.store.purge_idempotency(far) == 1
        async with gw.http.post(f"{gw.url}/nexus/slow/work", json={}, headers=headers) as r:
            assert r.headers["Nexus-Operation-Token"] != token


class CountingStore:
    """The real store, with its agent reads counted."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.agent_reads = 0

    async def get_agent(self, name: str) -> Any:
        self.agent_reads += 1
        await asyncio.sleep(0.05)  # a read that takes a while, so lookups pile up behind it
        return await self.store.get_agent(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_lookups_of_an_expired_agent_share_one_store_read(db_url: str) -> None:
    store = SqlStore(db_url)
    await store.migrate()
    counting = CountingStore(store)
    registry = Registry(counting, SystemClock(), ttl_s=0.0)  # type: ignore[arg-type]
    try:
        await registry.register(typed_agent().spec("http://127.0.0.1:1"))
        found = await asyncio.gather(*(registry.get("typed") for _ in range(20)))
        assert [a.name if a else None for a in found] == ["typed"] * 20
        assert counting.agent_reads == 1
        # a caller that gives up does not take the shared read down with it
        first = asyncio.ensure_future(registry.get("typed"))
        second = asyncio.ensure_future(registry.get("typed"))
        await eventually(lambda: counting.agent_reads == 2)  # the shared read is under way
        first.cancel()
        assert (await second) is not None
        assert counting.agent_reads == 2
        assert await registry.get("nobody") is None
    finally:
        await store.close()
