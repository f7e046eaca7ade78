"""Credentials towards agents (issue 12 item 6): bearer, API key and OAuth2 client credentials
reach a real agent on loopback; secrets are named by env var and never shown or logged."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from adapters.credentials import EnvCredentials
from adapters.transport import HttpTransport
from gateway.domain.specs import AgentAuth, AgentSpec, AuthType
from gateway.security.netguard import OutboundPolicy
from gateway.testing import eventually
from tests.conftest import Running, make_settings, running_gateway, serving

BEARER = "bearer-secret-5f1e9a"
API_KEY = "apikey-secret-77c2d0"
CLIENT_SECRET = "client-secret-a91b3c"
FAST = {"initial_s": 0.05, "max_s": 0.1, "jitter_s": 0.0}


class Agent:
    """A plain webhook agent that answers 200 only to the expected credential."""

    def __init__(self, header: str, expected: list[str]) -> None:
        self.header = header
        self.expected = expected  # the accepted value (the OAuth2 one changes)
        self.seen: list[str | None] = []
        self.refuse_next = 0

    async def handle(self, request: web.Request) -> web.Response:
        got = request.headers.get(self.header)
        self.seen.append(got)
        if self.refuse_next > 0 or got != self.expected[0]:
            self.refuse_next = max(0, self.refuse_next - 1)
            return web.json_response({"message": "who are you"}, status=401)
        return web.json_response({"ok": True, "path": request.path})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{op}", self.handle)
        app.router.add_post("/{op}/cancel", self.handle)
        return app


class TokenEndpoint:
    """An OAuth2 token endpoint (client credentials, HTTP Basic client authentication)."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.forms: list[dict[str, list[str]]] = []

    async def token(self, request: web.Request) -> web.Response:
        basic = request.headers.get("Authorization", "")
        assert basic.startswith("Basic ")
        client, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
        self.forms.append(parse_qs((await request.read()).decode()))
        if client != "swarmgate" or secret != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"access-{len(self.issued) + 1}"
        self.issued.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/token", self.token)
        return app


def registration(name: str, endpoint: str, auth: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "endpoint": endpoint,
        "auth": auth,
        "operations": [{"name": "work", "retry": {**FAST, "max_attempts": 3}}],
    }


@asynccontextmanager
async def gateway(db_url: str) -> AsyncIterator[Running]:
    async with running_gateway(make_settings(db_url)) as gw:
        yield gw


async def everything_shown(gw: Running, op_ids: list[str]) -> str:
    """Every read a caller or operator has of agents and operations, as one text."""
    texts = []
    async with gw.http.get(f"{gw.url}/api/agents") as r:
        texts.append(await r.text())
    for name in ("bearer-agent", "key-agent", "oauth-agent"):
        async with gw.http.get(f"{gw.url}/api/agents/{name}") as r:
            texts.append(await r.text())
    for op_id in op_ids:
        async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
            texts.append(await r.text())
        async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
            texts.append(await r.text())
    async with gw.http.get(f"{gw.url}/metrics") as r:
        texts.append(await r.text())
    return "\n".join(texts)


async def start(gw: Running, service: str) -> tuple[int, str, Any]:
    async with gw.http.post(gw.nexus(service, "work"), json={"q": 1}) as r:
        return r.status, r.headers["Nexus-Operation-Token"], await r.json()


async def test_each_kind_of_credential_reaches_the_agent_and_no_secret_is_shown_or_logged(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SG_TEST_BEARER", BEARER)
    monkeypatch.setenv("SG_TEST_API_KEY", API_KEY)
    monkeypatch.setenv("SG_TEST_CLIENT_SECRET", CLIENT_SECRET)
    caplog.set_level(logging.DEBUG)
    bearer = Agent("Authorization", [f"Bearer {BEARER}"])
    keyed = Agent("X-Api-Key", [API_KEY])
    oauth = Agent("Authorization", ["Bearer access-1"])
    tokens = TokenEndpoint()
    async with (
        serving(bearer.app()) as bearer_url,
        serving(keyed.app()) as keyed_url,
        serving(oauth.app()) as oauth_url,
        serving(tokens.app()) as token_url,
        gateway(db_url) as gw,
    ):
        auths = {
            "bearer-agent": (bearer_url, {"type": "bearer", "token_env": "SG_TEST_BEARER"}),
            "key-agent": (
                keyed_url,
                {"type": "api_key", "header": "X-Api-Key", "value_env": "SG_TEST_API_KEY"},
            ),
            "oauth-agent": (
                oauth_url,
                {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{token_url}/oauth2/token",
                    "client_id": "swarmgate",
                    "client_secret_env": "SG_TEST_CLIENT_SECRET",
                    "scope": "agents.work",
                },
            ),
        }
        for name, (url, auth) in auths.items():
            async with gw.http.post(
                f"{gw.url}/api/agents", json=registration(name, url, auth)
            ) as r:
                assert r.status == 201, await r.text()
                shown = await r.json()
                assert shown["auth"] == auth  # references only

        op_ids = []
        for name in auths:
            status, op_id, body = await start(gw, name)
            assert (status, body) == (200, {"ok": True, "path": "/work"}), name
            op_ids.append(op_id)
        assert bearer.seen == [f"Bearer {BEARER}"]
        assert keyed.seen == [API_KEY]
        assert oauth.seen == ["Bearer access-1"]
        assert tokens.forms == [{"grant_type": ["client_credentials"], "scope": ["agents.work"]}]

        # the token is cached: a second operation fetches none
        status, op_id, _ = await start(gw, "oauth-agent")
        assert status == 200 and tokens.issued == ["access-1"]
        op_ids.append(op_id)

        # the agent refuses the token (revoked): one fresh token, one more try, success
        oauth.expected[0] = "Bearer access-2"
        status, op_id, body = await start(gw, "oauth-agent")
        assert (status, body["ok"]) == (200, True)
        assert tokens.issued == ["access-1", "access-2"]
        assert oauth.seen[-2:] == ["Bearer access-1", "Bearer access-2"]
        op_ids.append(op_id)

        shown_text = await everything_shown(gw, op_ids)
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for secret in (BEARER, API_KEY, CLIENT_SECRET, "access-1", "access-2"):
        assert secret not in shown_text
        assert secret not in logged


async def test_a_refused_credential_fails_the_attempt_without_echoing_the_secret(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_BEARER", "not-what-the-agent-wants-41d")
    agent = Agent("Authorization", [f"Bearer {BEARER}"])
    async with serving(agent.app()) as url, gateway(db_url) as gw:
        reg = registration("bearer-agent", url, {"type": "bearer", "token_env": "SG_TEST_BEARER"})
        async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
            assert r.status == 201
        async with gw.http.post(gw.nexus("bearer-agent", "work"), json={}) as r:
            op_id = r.headers["Nexus-Operation-Token"]
            text = await r.text()
        assert len(agent.seen) == 1  # 401 to a static bearer token: no second try
        async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
            text += await r.text()
        assert "not-what-the-agent-wants-41d" not in text
        assert "401" in text


async def test_a_registration_naming_an_unset_env_var_is_a_400_and_stores_nothing(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SG_TEST_NOT_SET", raising=False)
    async with gateway(db_url) as gw:
        bad = [
            {"type": "bearer", "token_env": "SG_TEST_NOT_SET"},
            {"type": "api_key", "header": "X-Api-Key", "value_env": "SG_TEST_NOT_SET"},
            {
                "type": "oauth2_client_credentials",
                "token_url": "http://127.0.0.1:9/token",
                "client_id": "c",
                "client_secret_env": "SG_TEST_NOT_SET",
            },
        ]
        for auth in bad:
            reg = registration("nobody", "http://127.0.0.1:9", auth)
            async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
                assert r.status == 400
                assert r.headers["Content-Type"].startswith("application/problem+json")
                assert "SG_TEST_NOT_SET" in (await r.json())["detail"]
        malformed: list[dict[str, Any]] = [
            {"type": "bearer"},
            {"type": "api_key", "value_env": "X"},
            {"type": "kerberos", "token_env": "X"},
            {"type": "bearer", "token_env": "X", "token": "inline secrets are refused"},
            {"type": "bearer", "token_env": "not a name"},
        ]
        for auth in malformed:
            reg = registration("nobody", "http://127.0.0.1:9", auth)
            async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
                assert r.status == 400, auth
                assert r.headers["Content-Type"].startswith("application/problem+json")
        async with gw.http.get(f"{gw.url}/api/agents/nobody") as r:
            assert r.status == 404


async def test_credentials_also_reach_the_agent_with_a_cancel(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_API_KEY", API_KEY)
    seen: list[tuple[str, str | None]] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-Api-Key")))
        return web.json_response({"token": "t-1"}, status=202)

    async def cancel(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-Api-Key")))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/work", accept)
    app.router.add_post("/work/cancel", cancel)
    async with serving(app) as url, gateway(db_url) as gw:
        auth = {"type": "api_key", "header": "X-Api-Key", "value_env": "SG_TEST_API_KEY"}
        async with gw.http.post(
            f"{gw.url}/api/agents", json=registration("key-agent", url, auth)
        ) as r:
            assert r.status == 201
        status, op_id, _ = await start(gw, "key-agent")
        assert status == 201
        async with gw.http.post(f"{gw.url}/api/operations/{op_id}/cancel") as r:
            assert r.status in (200, 202)

        async def kinds() -> list[str]:
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
                return [e["kind"] for e in (await r.json())["events"]]

        # The agent takes the cancel with 202: a request (issue 14), so the operation waits
        # for its completion; the delivery itself is what carries the credentials.
        await eventually(
            kinds, until=lambda k: "cancel.delivered" in k, what="the cancel reaches the agent"
        )
        assert seen == [("/work", API_KEY), ("/work/cancel", API_KEY)]


async def test_a_refused_oauth2_client_fails_the_attempt_before_the_agent_is_called(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_CLIENT_SECRET", "wrong-secret-0c7e")
    agent = Agent("Authorization", ["Bearer access-1"])
    tokens = TokenEndpoint()
    async with (
        serving(agent.app()) as url,
        serving(tokens.app()) as token_url,
        gateway(db_url) as gw,
    ):
        auth = {
            "type": "oauth2_client_credentials",
            "token_url": f"{token_url}/oauth2/token",
            "client_id": "swarmgate",
            "client_secret_env": "SG_TEST_CLIENT_SECRET",
        }
        reg = registration("oauth-agent", url, auth)
        reg["operations"][0]["retry"]["max_attempts"] = 2
        async with gw.http.post(f"{gw.url}/api/agents", json=reg) as r:
            assert r.status == 201
        async with gw.http.post(gw.nexus("oauth-agent", "work"), json={}) as r:
            op_id = r.headers["Nexus-Operation-Token"]

        async def history() -> list[dict[str, Any]]:
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
                return list((await r.json())["events"])

        events = await eventually(
            history, until=lambda evs: evs[-1]["kind"] == "operation.failed", what="gives up"
        )
        failed = [e for e in events if e["kind"] == "attempt.failed"]
        assert failed and "token endpoint" in failed[0]["data"]["error"]
        assert "HTTP 401" in failed[0]["data"]["error"]
        assert agent.seen == []  # never called without a token
        assert "wrong-secret-0c7e" not in repr(events)


async def test_an_oauth2_token_is_cached_until_its_expiry_minus_the_margin_and_fetched_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    tokens = TokenEndpoint()
    clock = Clock()
    transport = HttpTransport(OutboundPolicy.from_strings(["127.0.0.0/8"]))
    try:
        async with serving(tokens.app()) as token_url:
            creds = EnvCredentials(
                transport, {"SECRET": CLIENT_SECRET}, monotonic=clock
            )  # expires_in 3600: renewed 30 s before
            agent = AgentSpec(
                name="a",
                endpoint="http://127.0.0.1:9",
                auth=AgentAuth(
                    type=AuthType.OAUTH2_CLIENT_CREDENTIALS,
                    token_url=f"{token_url}/oauth2/token",
                    client_id="swarmgate",
                    client_secret_env="SECRET",
                ),
            )
            first = await asyncio.gather(*(creds.headers(agent) for _ in range(10)))
            assert {h["Authorization"] for h in first} == {"Bearer access-1"}
            assert creds.fetches == 1  # concurrent callers share one fetch
            clock.now += 3600 - 31
            assert (await creds.headers(agent))["Authorization"] == "Bearer access-1"
            clock.now += 2  # inside the margin: a new token
            assert (await creds.headers(agent))["Authorization"] == "Bearer access-2"
            assert (await creds.headers(agent, refresh=True))["Authorization"] == "Bearer access-3"
            assert tokens.issued == ["access-1", "access-2", "access-3"]
    finally:
        await transport.close()
