"""A start whose body is not JSON, for an operation with an input JSON Schema, is refused at the
gateway with 400 and a Nexus Failure body: nothing is stored, the agent is never called."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.http import contract
from gateway.sdk.agent import AgentApp, OpContext
from tests.conftest import make_settings, running_gateway, serving_agent

NOT_JSON = [
    pytest.param(b"hello", "text/plain", id="plain-text"),
    pytest.param(b"hello", "application/json", id="text-labelled-json"),
    pytest.param(b"NaN", "application/json", id="NaN"),
    pytest.param(b"[Infinity]", "application/json", id="Infinity"),
    pytest.param(b"\xff\xfe{}", "application/json", id="not-utf8"),
    pytest.param(b'{"city": "Lisbon"}\n{"city": "Porto"}', "application/jsonl", id="json-lines"),
    pytest.param(b"city=Lisbon", "application/x-www-form-urlencoded", id="form"),
]


def schema_agent() -> AgentApp:
    agent = AgentApp("typed")

    @agent.operation("any", input_schema={})  # a schema that takes every JSON value
    async def any_value(ctx: OpContext, payload: Any) -> Any:
        return {"got": payload}

    @agent.operation("free")  # no schema: the gateway passes any body on
    async def free(ctx: OpContext, payload: Any) -> Any:
        return {"ok": True}

    return agent


@pytest.mark.parametrize(("body", "content_type"), NOT_JSON)
async def test_a_body_that_is_not_json_is_a_400_failure_and_no_operation(
    db_url: str, body: bytes, content_type: str
) -> None:
    agent = schema_agent()
    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(url))
        async with gw.http.post(
            gw.nexus("typed", "any"), data=body, headers={"Content-Type": content_type}
        ) as r:
            assert r.status == 400
            assert r.content_type == "application/json"
            failure = await r.json()
        assert contract.schema_errors(contract.FAILURE, failure) == []
        assert failure["metadata"]["type"] == "nexus.HandlerError"
        assert failure["details"]["type"] == "BAD_REQUEST"
        assert failure["details"]["errors"][0]["path"] == "/"
        assert await gw.gw.store.list_operations() == []
        assert agent.calls == 0


async def test_json_bodies_and_schemaless_operations_still_start(db_url: str) -> None:
    agent = schema_agent()
    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(url))
        for content_type in ("application/json; charset=utf-8", "application/vnd.trip+json"):
            async with gw.http.post(
                gw.nexus("typed", "any"), data=b"[1, 2]", headers={"Content-Type": content_type}
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"got": [1, 2]}
        async with gw.http.post(
            gw.nexus("typed", "free"), data=b"hello", headers={"Content-Type": "text/plain"}
        ) as r:
            assert r.status != 400, await r.text()  # (AgentApp itself then refuses non-JSON)
        ops = await gw.gw.store.list_operations()
        assert len(ops) == 3
        free = [op for op in ops if op.operation == "free"]
        assert [(op.input, op.input_content_type) for op in free] == [(b"hello", "text/plain")]
