"""Hardening (issue 13, item 12 and the JSON part of 11): poison values in requests are 400s.

Deep JSON, ``NaN``/``Infinity``, numbers beyond a float, cyclic schemas and huge integers in
``?after=`` / ``Last-Event-ID`` used to answer 500 (or a 200 stream that then broke)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.domain import jsonio
from tests.conftest import Running, make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent, spec_with

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = "9" * 30


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Running, str]]:
    """A gateway with the test agent registered and one finished operation (its id)."""
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(f"sqlite:///{tmp_path}/gw.db")) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            async with gw.http.post(gw.nexus("worker", "echo"), json={"q": 1}) as r:
                assert r.status == 200
            ops = await gw.gw.engine.store.list_operations(
                caller=None, service="worker", state=None, limit=1
            )
            op_id = ops[0].id
            yield gw, op_id


async def problem(resp: Any, status: int = 400) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    return str((await resp.json())["detail"])


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (DEEP, "deeper than"),
        (b'{"name": "x", "endpoint": "http://127.0.0.1:9/", "version": NaN}', "NaN"),
        (b'{"name": "x", "endpoint": "http://127.0.0.1:9/", "n": -Infinity}', "Infinity"),
        (b'{"name": "x", "endpoint": "http://127.0.0.1:9/", "n": 1e999}', "out of range"),
    ],
)
async def test_a_poisoned_registration_body_is_a_400_naming_why(
    tmp_path: Path, body: bytes, why: str
) -> None:
    async with gateway(tmp_path) as (gw, _):
        async with gw.http.post(
            f"{gw.url}/api/agents", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert why in await problem(r)


async def test_deep_json_is_a_400_on_every_json_endpoint(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gw, op_id):
        ct = {"Content-Type": "application/json"}
        async with gw.http.post(f"{gw.url}/api/callback-secret/rotate", data=DEEP, headers=ct) as r:
            assert "deeper than" in await problem(r)
        token = gw.gw.engine.completion_token(op_id)
        headers = {**ct, "Authorization": f"Bearer {token}", "Nexus-Operation-State": "failed"}
        async with gw.http.post(
            f"{gw.url}/api/completions/{op_id}", data=DEEP, headers=headers
        ) as r:
            assert "deeper than" in await problem(r)
        async with gw.http.post(f"{gw.url}/api/a2a/push/{op_id}", data=DEEP, headers=headers) as r:
            assert "deeper than" in await problem(r)
        async with gw.http.post(f"{gw.url}/a2a/worker", data=DEEP, headers=ct) as r:
            assert r.status == 200  # JSON-RPC: the error is in the body
            answer = await r.json()
        assert answer["error"]["code"] == -32700
        assert "deeper than" in answer["error"]["message"]


async def test_nan_in_a_completion_failure_is_refused_not_stored(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (gw, op_id):
        token = gw.gw.engine.completion_token(op_id)
        headers = {"Authorization": f"Bearer {token}", "Nexus-Operation-State": "failed"}
        async with gw.http.post(
            f"{gw.url}/api/completions/{op_id}",
            data=b'{"message": "x", "code": NaN}',
            headers=headers,
        ) as r:
            assert "NaN" in await problem(r)


async def test_nan_in_a_schema_checked_input_is_a_400_with_the_reason(tmp_path: Path) -> None:
    typed = {
        "name": "typed",
        "endpoint": "http://127.0.0.1:9/",
        "operations": [{"name": "op", "input_schema": {"type": "object"}}],
    }
    async with gateway(tmp_path) as (gw, _):
        async with gw.http.post(f"{gw.url}/api/agents", json=typed) as r:
            assert r.status == 201
        async with gw.http.post(
            gw.nexus("typed", "op"),
            data=b'{"a": NaN}',
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            assert "NaN" in await r.text()


@pytest.mark.parametrize("value", [HUGE, "-1", "1e3", " ", "0x10", "٣"])
async def test_a_bad_or_huge_event_cursor_is_a_400_before_any_stream_starts(
    tmp_path: Path, value: str
) -> None:
    async with gateway(tmp_path) as (gw, op_id):
        base = f"{gw.url}/api/operations/{op_id}"
        async with gw.http.get(f"{base}/events", params={"after": value}) as r:
            assert "after must be an integer" in await problem(r)
        async with gw.http.get(f"{base}/stream", params={"after": value}) as r:
            assert "after must be an integer" in await problem(r)
        if value.strip():
            async with gw.http.get(f"{base}/stream", headers={"Last-Event-ID": value}) as r:
                assert "Last-Event-ID must be an integer" in await problem(r)
        async with gw.http.get(f"{gw.url}/api/operations", params={"limit": HUGE}) as r:
            assert "limit must be an integer" in await problem(r)


async def test_a_duration_of_hundreds_of_digits_is_a_400_on_the_nexus_surface(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as (gw, _):
        headers = {"Operation-Timeout": "9" * 400 + "s"}
        async with gw.http.post(gw.nexus("worker", "echo"), json={}, headers=headers) as r:
            assert r.status == 400
            assert "Operation-Timeout" in await r.text()


def test_the_loader_checks_depth_outside_strings_only_and_accepts_the_limit() -> None:
    at_limit = "[" * jsonio.MAX_JSON_DEPTH + "]" * jsonio.MAX_JSON_DEPTH
    assert jsonio.loads(at_limit) is not None
    assert jsonio.loads('{"s": "' + "[" * 1000 + '"}') == {"s": "[" * 1000}
    with pytest.raises(jsonio.JsonRejected):
        jsonio.loads("[" + at_limit + "]")


async def test_a_result_with_nan_is_shown_as_text_so_the_answer_stays_valid_json(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as (gw, _):
        async with gw.http.post(gw.nexus("worker", "hang"), json={}) as r:
            assert r.status == 201
            op_id = (await r.json())["id"]
        headers = {
            "Authorization": f"Bearer {gw.gw.engine.completion_token(op_id)}",
            "Nexus-Operation-State": "succeeded",
            "Content-Type": "application/json",
        }
        async with gw.http.post(
            f"{gw.url}/api/completions/{op_id}", data=b'{"v": NaN}', headers=headers
        ) as r:
            assert r.status == 200
        async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
            assert r.status == 200
            shown = jsonio.loads(await r.read())  # strict: would refuse a bare NaN
        assert shown["state"] == "succeeded"
        assert shown["result"] == '{"v": NaN}'
