"""Bearer JWTs on the live HTTP surface: scopes, and callers seeing only their own operations."""

from __future__ import annotations

from registry.auth import AuthConfig, mint_token
from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUTH = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="swarmgate")


def bearer(sub: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(AUTH, sub, scopes)}"}


async def test_scopes_guard_every_action_and_callers_see_only_their_own_operations(
    db_url: str,
) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET)
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        admin = bearer("root", "admin")
        alice = bearer("alice", "ops:start:worker/echo", "ops:read")
        bob = bearer("bob", "ops:start:worker/*", "ops:read")
        spec = agent.spec(agent_url).to_json()

        async with gw.http.post(f"{gw.url}/api/agents", json=spec, headers=alice) as r:
            assert r.status == 403
            assert r.headers["Content-Type"].startswith("application/problem+json")
        async with gw.http.post(f"{gw.url}/api/agents", json=spec, headers=admin) as r:
            assert r.status == 201

        async with gw.http.post(gw.nexus("worker", "echo"), json={}) as r:
            assert r.status == 401
            assert (await r.json())["details"]["type"] == "UNAUTHENTICATED"
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert r.status == 401
            assert (await r.json())["type"].endswith("/unauthenticated")

        async with gw.http.post(gw.nexus("worker", "echo"), json={"a": 1}, headers=alice) as r:
            assert r.status == 200
            token = r.headers["Nexus-Operation-Token"]
        async with gw.http.post(gw.nexus("worker", "flaky"), json={}, headers=alice) as r:
            assert r.status == 403
            assert (await r.json())["details"]["type"] == "UNAUTHORIZED"
        async with gw.http.post(gw.nexus("worker", "flaky"), json={}, headers=bob) as r:
            assert r.status in (200, 201)  # wildcard grant

        # Bob cannot see, poll or cancel Alice's operation; an admin can.
        async with gw.http.get(
            gw.nexus("worker", "echo"), params={"token": token}, headers=bob
        ) as r:
            assert r.status == 404
        async with gw.http.get(f"{gw.url}/api/operations/{token}", headers=bob) as r:
            assert r.status == 404
        async with gw.http.post(
            gw.nexus("worker", "echo") + "/cancel", params={"token": token}, headers=bob
        ) as r:
            assert r.status == 404
        async with gw.http.get(f"{gw.url}/api/operations", headers=bob) as r:
            assert {o["caller"] for o in (await r.json())["operations"]} == {"bob"}
        async with gw.http.get(f"{gw.url}/api/operations/{token}", headers=admin) as r:
            assert r.status == 200 and (await r.json())["caller"] == "alice"
        async with gw.http.get(f"{gw.url}/api/operations", headers=admin) as r:
            assert {o["caller"] for o in (await r.json())["operations"]} == {"alice", "bob"}

        # Idempotency keys are scoped per caller: the same key from Bob is a new operation.
        key = {"Idempotency-Key": '"same"'}
        async with gw.http.post(
            gw.nexus("worker", "echo"), json={"k": 1}, headers={**alice, **key}
        ) as r:
            first = r.headers["Nexus-Operation-Token"]
        async with gw.http.post(
            gw.nexus("worker", "echo"), json={"k": 1}, headers={**bob, **key}
        ) as r:
            assert r.headers["Nexus-Operation-Token"] != first


async def test_a_token_with_a_wrong_audience_or_expired_is_refused(db_url: str) -> None:
    settings = make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET)
    async with running_gateway(settings) as gw:
        other = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="elsewhere")
        wrong_aud = {"Authorization": f"Bearer {mint_token(other, 'eve', ['admin'])}"}
        expired = {
            "Authorization": f"Bearer {mint_token(AUTH, 'eve', ['admin'], ttl_s=1, now=1_000_000)}"
        }
        for headers in (wrong_aud, expired, {"Authorization": "Bearer not-a-jwt"}):
            async with gw.http.get(f"{gw.url}/api/operations", headers=headers) as r:
                assert r.status == 401
