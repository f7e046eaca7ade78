"""Poison values from an agent cannot make an operation impossible to close (issue 13, item 11).

Before: on PostgreSQL a 320-character Content-Type or a failure JSON with a NUL character was
refused at every close (a data error, SQLSTATE class 22), the lease ran out and the operation
was dispatched again, until its deadline. Now values are bounded before they are written and a
refused write closes the operation as failed."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.domain.specs import AgentSpec, OperationSpec, RetryPolicy
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving

LONG_CT = "application/json; " + "; ".join(f"p{i}=v" for i in range(60))  # > 320 chars


def poison_agent(calls: dict[str, int]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["op"]
        calls[name] = calls.get(name, 0) + 1
        if name == "long_type":
            return web.Response(status=200, body=b'{"ok": true}', headers={"Content-Type": LONG_CT})
        if name == "nul_failure":
            body = json.dumps({"message": "bad\u0000value", "details": {"x": "\u0000"}})
            return web.Response(status=424, body=body, content_type="application/json")
        # nul_error: a retryable failure whose message holds a NUL (stored as last_error)
        if calls[name] == 1:
            body = json.dumps({"message": "busy\u0000now"})
            return web.Response(status=503, body=body, content_type="application/json")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{op}", handle)
    return app


def spec(url: str) -> AgentSpec:
    retry = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.0, max_attempts=3)
    ops = {
        n: OperationSpec(name=n, retry=retry, attempt_timeout_s=2)
        for n in ("long_type", "nul_failure", "nul_error")
    }
    return AgentSpec(name="poison", endpoint=url, operations=ops)


async def test_poison_answers_close_the_operation_once_instead_of_a_dispatch_loop(
    db_url: str,
) -> None:
    calls: dict[str, int] = {}
    async with serving(poison_agent(calls)) as url:
        async with running_gateway(make_settings(db_url, lease_s=1.0, sync_wait_s=0)) as gw:
            await gw.gw.registry.register(spec(url))
            tokens: dict[str, str] = {}
            for name in ("long_type", "nul_failure", "nul_error"):
                async with gw.http.post(f"{gw.url}/nexus/poison/{name}", json={}) as r:
                    assert r.status == 201, await r.text()
                    tokens[name] = r.headers["Nexus-Operation-Token"]

            async def closed(name: str) -> Any:
                op = await gw.gw.store.get_operation(tokens[name])
                return op if op is not None and op.state.terminal else None

            long_type = await eventually(lambda: closed("long_type"), timeout=10)
            assert long_type.state.value == "succeeded"
            assert long_type.result == b'{"ok": true}'
            assert long_type.result_content_type is not None
            assert long_type.result_content_type.startswith("application/json; p0=v")
            assert len(long_type.result_content_type) <= 200

            nul_failure = await eventually(lambda: closed("nul_failure"), timeout=10)
            assert nul_failure.state.value == "failed"
            assert nul_failure.failure is not None
            assert "could not be stored" in json.dumps(nul_failure.failure)

            nul_error = await eventually(lambda: closed("nul_error"), timeout=10)
            if db_url.startswith("postgresql"):  # NUL in text: a data error there
                assert nul_error.state.value == "failed"
                assert "could not be stored" in json.dumps(nul_error.failure)
            else:  # SQLite stores it: retried as usual
                assert nul_error.state.value == "succeeded"
            # each answered once per attempt, never re-dispatched at lease expiry
            assert calls["long_type"] == 1 and calls["nul_failure"] == 1
            assert calls["nul_error"] <= 2
