"""What the web console needs from the gateway: the list filters and counts, the operation's
input, an agent's health, and the console's files served with a strict CSP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.http import ui
from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent
from tests.integration.test_contract import checked

JSON = {"Content-Type": "application/json"}


async def test_operations_are_filtered_by_caller_time_and_request_id_text_with_counts(
    db_url: str,
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        ids = []
        for rid, op in (("Order-1", "echo"), ("order-2", "broken"), ("other", "echo")):
            async with gw.http.post(
                gw.nexus("worker", op), json={}, headers={"Nexus-Request-Id": rid}
            ) as r:
                ids.append(r.headers["Nexus-Operation-Token"])
        url = f"{gw.url}/api/operations"
        async with gw.http.get(url, params={"q": "ORDER", "counts": "true"}) as r:
            body = await checked(r, "GET", "/api/operations", 200)
        assert [o["id"] for o in body["operations"]] == [ids[1], ids[0]]
        assert body["counts"] == {"succeeded": 1, "failed": 1}
        async with gw.http.get(url, params={"q": "order", "state": "failed"}) as r:
            body = await checked(r, "GET", "/api/operations", 200)
        assert [o["id"] for o in body["operations"]] == [ids[1]]
        assert "counts" not in body
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        async with gw.http.get(url, params={"since": future, "counts": "1"}) as r:
            assert await checked(r, "GET", "/api/operations", 200) == {
                "operations": [],
                "counts": {},
            }
        async with gw.http.get(url, params={"until": future, "caller": "anonymous"}) as r:
            assert len((await checked(r, "GET", "/api/operations", 200))["operations"]) == 3
        async with gw.http.get(url, params={"caller": "nobody"}) as r:
            assert (await checked(r, "GET", "/api/operations", 200))["operations"] == []
        async with gw.http.get(url, params={"since": "yesterday"}) as r:
            problem = await checked(r, "GET", "/api/operations", 400)
        assert "since must be an RFC 3339 time" in problem["detail"]
        async with gw.http.get(url, params={"q": "x" * 201}) as r:
            await checked(r, "GET", "/api/operations", 400)


async def test_an_operation_shows_its_input_and_an_agent_its_breaker_and_counts(
    db_url: str,
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(gw.nexus("worker", "echo"), json={"city": "<b>Porto</b>"}) as r:
            op_id = r.headers["Nexus-Operation-Token"]
        async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
            op = await checked(r, "GET", "/api/operations/{op_id}", 200)
        assert op["input"] == {"city": "<b>Porto</b>"}
        assert op["inputContentType"] == "application/json"
        async with gw.http.get(f"{gw.url}/api/agents/worker/status") as r:
            status = await checked(r, "GET", "/api/agents/{name}/status", 200)
        assert status["breaker"] == {"state": "closed", "failures": 0, "openUntil": None}
        assert status["operations"] == {"succeeded": 1}
        assert status["replica"] == gw.gw.settings.replica_id
        for _ in range(gw.gw.settings.breaker_threshold):
            gw.gw.engine.breaker.failure("worker", gw.gw.engine.clock.now())
        async with gw.http.get(f"{gw.url}/api/agents/worker/status") as r:
            status = await checked(r, "GET", "/api/agents/{name}/status", 200)
        assert status["breaker"]["state"] == "open"
        assert status["breaker"]["failures"] == gw.gw.settings.breaker_threshold
        assert status["breaker"]["openUntil"] is not None
        async with gw.http.get(f"{gw.url}/api/agents/nobody/status") as r:
            await checked(r, "GET", "/api/agents/{name}/status", 404)


async def test_the_console_is_served_with_a_csp_that_allows_no_inline_script(
    db_url: str,
) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        async with gw.http.get(f"{gw.url}/ui") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert '<meta name="swarmgate-auth" content="none">' in page
        assert '<meta name="swarmgate-features" content="input">' in page
        assert "<script>" not in page  # the only script is the module file
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with gw.http.get(f"{gw.url}/ui/{name}") as r:
                assert (r.status, r.content_type) == (200, ctype)
                assert r.headers["Content-Security-Policy"] == ui.CSP
        for bad in ("index.html", "nope.js", "..%2fapi.py", "API.JS"):
            async with gw.http.get(f"{gw.url}/ui/{bad}") as r:
                assert r.status == 404, bad
        async with gw.http.get(f"{gw.url}/ui/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/ui")


async def test_the_console_page_names_the_auth_mode_so_a_token_is_asked_for(
    tmp_path: object,
) -> None:
    settings = make_settings(f"sqlite:///{tmp_path}/ui.db", auth_mode="hs256", jwt_secret="s" * 32)
    async with running_gateway(settings) as gw:
        async with gw.http.get(f"{gw.url}/ui") as r:
            assert '<meta name="swarmgate-auth" content="hs256">' in await r.text()
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert r.status == 401  # the console's files are public; the API is not
