"""Hardening (issue 13, items 6, 14 and 16): who may replace, delete and read agents, and who
may read agent cards."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.specs import SYSTEM_OWNER
from gateway.testing import ROOT
from registry.auth import AuthConfig, mint_token
from tests.conftest import Running, make_settings, running_gateway

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUTH = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="swarmgate")
ENDPOINT = "http://team-a:s3cr3t-pw@127.0.0.1:9/agent"


def bearer(sub: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(AUTH, sub, scopes)}"}


ADMIN = bearer("root", "admin")
ALICE = bearer("alice", "agents:register")
MALLORY = bearer("mallory", "agents:register")
READER = bearer("reader", "agents:read")
NOBODY = bearer("nobody")  # a valid token without scopes


def agent(name: str, endpoint: str = ENDPOINT, **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoint": endpoint, "operations": [{"name": "op"}], **extra}


@asynccontextmanager
async def gateway(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    settings = make_settings(
        f"sqlite:///{tmp_path}/gw.db", auth_mode="hs256", jwt_secret=SECRET, **overrides
    )
    async with running_gateway(settings) as gw:
        yield gw


async def test_only_the_owner_or_admin_may_replace_or_delete_an_agent(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        url = f"{gw.url}/api/agents"
        async with gw.http.post(url, json=agent("billing"), headers=ALICE) as r:
            assert r.status == 201
            assert (await r.json())["owner"] == "alice"
        takeover = agent("billing", "http://127.0.0.1:8/mallory", owner="mallory")
        async with gw.http.post(url, json=takeover, headers=MALLORY) as r:
            assert r.status == 403
            assert r.content_type == "application/problem+json"
            assert "only its owner or admin" in (await r.json())["detail"]
        async with gw.http.delete(f"{url}/billing", headers=MALLORY) as r:
            assert r.status == 403
        stored = await gw.gw.store.get_agent("billing")
        assert stored is not None and stored[0].endpoint == ENDPOINT  # untouched
        # the owner may replace it; an "owner" in the body is ignored
        async with gw.http.post(url, json=agent("billing", owner="mallory"), headers=ALICE) as r:
            assert r.status == 200
            assert (await r.json())["owner"] == "alice"
        # an admin may replace it and keeps the owner, and may delete it
        async with gw.http.post(url, json=agent("billing", description="x"), headers=ADMIN) as r:
            assert r.status == 200
            assert (await r.json())["owner"] == "alice"
        async with gw.http.delete(f"{url}/billing", headers=ALICE) as r:
            assert r.status == 204
        async with gw.http.post(url, json=agent("billing"), headers=MALLORY) as r:
            assert r.status == 201  # gone: a new registration, now Mallory's


async def test_concurrent_takeovers_never_replace_an_owned_agent(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        url = f"{gw.url}/api/agents"
        async with gw.http.post(url, json=agent("race"), headers=ALICE) as r:
            assert r.status == 201

        async def attempt(i: int) -> int:
            body = agent("race", f"http://127.0.0.1:8/m{i}")
            async with gw.http.post(url, json=body, headers=MALLORY) as r:
                return r.status

        statuses = await asyncio.gather(*(attempt(i) for i in range(20)))
        assert set(statuses) == {403}
        stored = await gw.gw.store.get_agent("race")
        assert stored is not None and stored[0].endpoint == ENDPOINT and stored[1] == 1


async def test_agents_from_the_agents_file_are_replaced_by_admin_only(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"agents": [agent("filed", "http://127.0.0.1:9/")]}))
    async with gateway(tmp_path, agents_file=str(path)) as gw:
        url = f"{gw.url}/api/agents"
        async with gw.http.get(f"{url}/filed", headers=READER) as r:
            assert (await r.json())["owner"] == SYSTEM_OWNER
        async with gw.http.post(url, json=agent("filed"), headers=ALICE) as r:
            assert r.status == 403
        posing = bearer(SYSTEM_OWNER, "agents:register")
        async with gw.http.post(url, json=agent("filed"), headers=posing) as r:
            assert r.status == 403
        async with gw.http.post(url, json=agent("filed"), headers=ADMIN) as r:
            assert r.status == 200


async def test_reading_agents_needs_a_scope_and_never_shows_endpoint_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway(tmp_path) as gw:
        url = f"{gw.url}/api/agents"
        with caplog.at_level(logging.DEBUG, logger="swarmgate"):
            async with gw.http.post(url, json=agent("billing"), headers=ALICE) as r:
                assert r.status == 201
                registered = await r.text()
            for who in (NOBODY, bearer("starter", "ops:start:*", "ops:read")):
                async with gw.http.get(url, headers=who) as r:
                    assert r.status == 403
                    assert "agents:read" in (await r.json())["detail"]
                async with gw.http.get(f"{url}/billing", headers=who) as r:
                    assert r.status == 403
            seen = [registered]
            for who in (READER, ALICE, ADMIN):
                async with gw.http.get(url, headers=who) as r:
                    assert r.status == 200
                    listed = await r.json()
                    seen.append(json.dumps(listed))
                async with gw.http.get(f"{url}/billing", headers=who) as r:
                    shown = await r.json()
                    seen.append(json.dumps(shown))
            async with gw.http.get(f"{gw.url}/a2a/billing/.well-known/agent-card.json") as r:
                seen.append(await r.text())
        assert shown["endpoint"] == "http://***@127.0.0.1:9/agent"
        assert listed["agents"][0]["endpoint"] == "http://***@127.0.0.1:9/agent"
        for text in [*seen, caplog.text]:
            assert "s3cr3t-pw" not in text and "team-a" not in text
        stored = await gw.gw.store.get_agent("billing")
        assert stored is not None and stored[0].endpoint == ENDPOINT  # the gateway still has it


@pytest.mark.parametrize("public", [True, False])
async def test_agent_cards_are_public_or_behind_auth_as_configured(
    tmp_path: Path, public: bool
) -> None:
    async with gateway(tmp_path, public_cards=public) as gw:
        async with gw.http.post(f"{gw.url}/api/agents", json=agent("billing"), headers=ALICE) as r:
            assert r.status == 201
        for path in ("/.well-known/agent-card.json", "/a2a/billing/.well-known/agent-card.json"):
            async with gw.http.get(gw.url + path) as r:
                assert r.status == (200 if public else 401), path
                if not public:
                    assert r.content_type == "application/problem+json"
            async with gw.http.get(gw.url + path, headers=NOBODY) as r:
                assert r.status == 200


def test_public_cards_is_a_documented_setting_read_from_the_environment() -> None:
    from gateway.config import Settings

    assert Settings.from_env({}).public_cards is True
    assert Settings.from_env({"SWARMGATE_PUBLIC_CARDS": "false"}).public_cards is False
    readme = (ROOT / "README.md").read_text()
    assert "SWARMGATE_PUBLIC_CARDS" in readme


async def test_the_owner_conditional_write_is_race_free_on_both_stores(db_url: str) -> None:
    from datetime import UTC, datetime

    from gateway.domain.specs import AgentSpec
    from gateway.store.sqlstore import SqlStore

    store = SqlStore(db_url)
    await store.migrate()
    replicas = [SqlStore(db_url) for _ in range(8)]  # as many gateway processes
    try:
        now = datetime.now(UTC)

        def spec(owner: str) -> AgentSpec:
            return AgentSpec.from_json({**agent("contended"), "owner": owner})

        # principals on eight replicas register the same new name at once: exactly one gets it
        outcomes = await asyncio.gather(
            *(
                r.write_agent_if_owner("contended", spec(f"p{i}"), now, owner=f"p{i}")
                for i, r in enumerate(replicas)
            )
        )
        assert sorted(o for o, _ in outcomes).count("created") == 1
        assert {o for o, _ in outcomes} <= {"created", "forbidden"}
        winner = next(i for i, (o, _) in enumerate(outcomes) if o == "created")
        stored = await store.get_agent("contended")
        assert stored is not None and stored[0].owner == f"p{winner}"
        assert await store.write_agent_if_owner("contended", None, now, owner="other") == (
            "forbidden",
            1,
        )
        assert (await store.write_agent_if_owner("contended", None, now, owner=None))[0] == (
            "deleted"
        )
        assert await store.write_agent_if_owner("contended", None, now, owner=None) == (
            "absent",
            0,
        )
    finally:
        for r in replicas:
            await r.close()
        await store.close()
