"""The contract in spec/: a valid OpenAPI 3.1 document that matches the routes the app serves,
valid JSON Schemas, and real responses that match what the document promises."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway.app import build
from gateway.http import contract
from gateway.http.errors import PROBLEM_BASE, PROBLEM_TYPES
from tests.conftest import Running, make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PROBLEM_JSON = "application/problem+json"


# -- helpers ------------------------------------------------------------------------------------


def spec() -> dict[str, Any]:
    return contract.load_openapi()


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec()["paths"].items()
        for method in item
        if method in HTTP_METHODS and method != "head"
    }


def app_routes(app: web.Application, prefix: str = "") -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, sub-applications included; HEAD ignored."""
    out: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        sub = getattr(resource, "_app", None)
        if isinstance(sub, web.Application):
            out |= app_routes(sub, prefix + resource.canonical)
            continue
        for route in resource:
            if route.method not in ("HEAD", "*"):
                out.add((route.method, prefix + resource.canonical))
    return out


def _deref(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local $ref (components/responses) inside the OpenAPI document."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        pointer = ref[1:]
        node = spec()
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def assert_documented(method: str, template: str, status: int, ctype: str, body: Any) -> None:
    """The response (status, content type, JSON body) is what spec/openapi.yaml documents."""
    responses = spec()["paths"][template][method.lower()]["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"{method} {template} does not document {status}"
    pointer = f"/paths/{_escape(template)}/{method.lower()}/responses/{key}"
    response, pointer = _deref(responses[key], pointer)
    content = response.get("content", {})
    media = ctype if ctype in content else "*/*"
    assert media in content, f"{method} {template} {status}: {ctype} is not documented"
    validator = contract.openapi_validator(f"{pointer}/content/{_escape(media)}/schema")
    errors = sorted(validator.iter_errors(body), key=lambda e: e.json_path)
    assert not errors, [f"{e.json_path}: {e.message}" for e in errors]


async def checked(
    r: aiohttp.ClientResponse, method: str, template: str, status: int
) -> dict[str, Any]:
    assert r.status == status, await r.text()
    body = await r.json(content_type=None)
    assert_documented(method, template, status, r.content_type, body)
    assert isinstance(body, dict)
    return body


@asynccontextmanager
async def gateway_with_agent(db_url: str) -> AsyncIterator[tuple[Running, str]]:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url)) as gw:
            yield gw, agent_url


# -- the document -------------------------------------------------------------------------------


def test_the_openapi_document_is_valid_openapi_3_1_with_its_schema_files_resolved() -> None:
    assert spec()["openapi"].startswith("3.1")
    validate(spec(), base_uri=contract.OPENAPI_PATH.as_uri(), cls=OpenAPIV31SpecValidator)


@pytest.mark.parametrize("name", contract.schema_names())
def test_every_schema_file_is_a_valid_draft_2020_12_schema_and_accepts_its_examples(
    name: str,
) -> None:
    schema = contract.load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith("/" + name)
    for example in schema.get("examples", []):
        assert contract.schema_errors(name, example) == []


def test_the_documented_schema_files_are_the_ones_the_spec_names() -> None:
    expected = {"failure.json", "operation-info.json", "agent-registration.json", "problem.json"}
    assert expected <= set(contract.schema_names())
    refs = {s["$ref"] for s in spec()["components"]["schemas"].values() if "$ref" in s}
    assert {f"./schemas/{n}" for n in expected} <= refs


def test_every_problem_type_uri_the_gateway_emits_is_listed_in_the_spec() -> None:
    emitted = {str(status): PROBLEM_BASE + slug for status, (slug, _t) in PROBLEM_TYPES.items()}
    listed = dict(spec()["x-problem-types"])
    assert listed.pop("other") == PROBLEM_BASE + "error"
    assert listed == emitted
    enum = contract.load_schema("problem.json")["properties"]["type"]["enum"]
    assert set(enum) == {*emitted.values(), PROBLEM_BASE + "error"}


async def test_every_route_the_app_serves_is_in_the_spec_and_every_spec_path_is_served(
    tmp_path: Path,
) -> None:
    gw = await build(make_settings(f"sqlite:///{tmp_path}/routes.db"))
    try:
        served = app_routes(gw.app)
    finally:
        await gw.close()
    documented = documented_routes()
    assert sorted(served - documented) == [], "served but not documented in spec/openapi.yaml"
    assert sorted(documented - served) == [], "documented in spec/openapi.yaml but not served"


# -- real responses -----------------------------------------------------------------------------


async def test_a_registration_round_trips_and_matches_the_documented_schemas(db_url: str) -> None:
    async with gateway_with_agent(db_url) as (gw, agent_url):
        registration = make_test_agent().spec(agent_url).to_json()
        assert contract.registration_errors(registration) == []
        async with gw.http.post(f"{gw.url}/api/agents", json=registration) as r:
            created = await checked(r, "POST", "/api/agents", 201)
        gateway_set = ("registryVersion", "owner")
        assert {k: v for k, v in created.items() if k not in gateway_set} == registration
        assert created["owner"] == "anonymous"  # the registering principal's sub
        async with gw.http.post(f"{gw.url}/api/agents", json=registration) as r:
            same = await checked(r, "POST", "/api/agents", 200)
        assert same == created
        changed = {**registration, "description": "a changed description"}
        async with gw.http.post(f"{gw.url}/api/agents", json=changed) as r:
            replaced = await checked(r, "POST", "/api/agents", 200)
        assert replaced["registryVersion"] == created["registryVersion"] + 1
        async with gw.http.get(f"{gw.url}/api/agents/worker") as r:
            shown = await checked(r, "GET", "/api/agents/{name}", 200)
        assert shown == replaced
        async with gw.http.get(f"{gw.url}/api/agents") as r:
            listed = await checked(r, "GET", "/api/agents", 200)
        assert [a["name"] for a in listed["agents"]] == ["worker"]


async def test_an_operation_start_info_and_records_match_the_documented_schemas(
    db_url: str,
) -> None:
    async with gateway_with_agent(db_url) as (gw, agent_url):
        await gw.gw.registry.register(make_test_agent().spec(agent_url))
        async with gw.http.post(gw.nexus("worker", "hang"), json={"x": 1}) as r:
            started = await checked(r, "POST", "/nexus/{service}/{operation}", 201)
        token = started["token"]
        async with gw.http.get(gw.nexus("worker", "hang"), params={"token": token}) as r:
            info = await checked(r, "GET", "/nexus/{service}/{operation}", 200)
        assert contract.schema_errors(contract.OPERATION_INFO, info) == []
        assert info == {"id": token, "token": token, "state": "running"}
        async with gw.http.get(
            gw.nexus("worker", "hang") + "/result", params={"token": token}
        ) as r:
            await checked(r, "GET", "/nexus/{service}/{operation}/result", 412)
        async with gw.http.get(f"{gw.url}/api/operations/{token}") as r:
            await checked(r, "GET", "/api/operations/{op_id}", 200)
        async with gw.http.get(f"{gw.url}/api/operations/{token}/events") as r:
            await checked(r, "GET", "/api/operations/{op_id}/events", 200)
        async with gw.http.post(gw.nexus("worker", "hang") + "/cancel", params={"token": token}):
            pass
        async with gw.http.get(
            gw.nexus("worker", "hang") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            canceled = await checked(r, "GET", "/nexus/{service}/{operation}/result", 424)
        assert contract.schema_errors(contract.FAILURE, canceled) == []
        assert canceled["metadata"]["type"] == "nexus.OperationError"
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            await checked(r, "GET", "/api/operations", 200)


async def test_an_unknown_agent_on_the_nexus_surface_is_a_404_nexus_failure(db_url: str) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        async with gw.http.post(gw.nexus("nobody", "nothing"), json={}) as r:
            assert r.content_type == "application/json"
            failure = await checked(r, "POST", "/nexus/{service}/{operation}", 404)
        assert contract.schema_errors(contract.FAILURE, failure) == []
        assert failure["metadata"] == {"type": "nexus.HandlerError"}
        assert failure["details"]["type"] == "NOT_FOUND"


async def test_an_unknown_agent_on_the_api_is_a_404_problem_with_a_stable_type(
    db_url: str,
) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        async with gw.http.get(f"{gw.url}/api/agents/nobody") as r:
            assert r.content_type == PROBLEM_JSON
            problem = await checked(r, "GET", "/api/agents/{name}", 404)
        assert contract.schema_errors(contract.PROBLEM, problem) == []
        assert problem["type"] == "https://swarmgate.dev/problems/not-found"
        assert problem["status"] == 404
        assert problem["instance"] == "/api/agents/nobody"


async def test_a_registration_that_violates_the_schema_is_a_400_problem_listing_every_error(
    db_url: str,
) -> None:
    bad = {
        "name": "bad name",
        "endpoint": "ftp://127.0.0.1/agent",
        "operations": [{"name": "go", "timeout_s": -5, "retry": {"multiplier": 0}}],
        "colour": "blue",
    }
    async with running_gateway(make_settings(db_url)) as gw:
        async with gw.http.post(f"{gw.url}/api/agents", json=bad) as r:
            assert r.content_type == PROBLEM_JSON
            problem = await checked(r, "POST", "/api/agents", 400)
        assert problem["type"] == "https://swarmgate.dev/problems/bad-request"
        assert problem["detail"] == "registration does not match the schema"
        paths = sorted(e["path"] for e in problem["errors"])
        assert paths == [
            "",
            "/endpoint",
            "/name",
            "/operations/0/retry/multiplier",
            "/operations/0/timeout_s",
        ]
        assert all(e["message"] for e in problem["errors"])
        assert problem["errors"] == contract.registration_errors(bad)
        async with gw.http.get(f"{gw.url}/api/agents") as r:
            assert (await checked(r, "GET", "/api/agents", 200))["agents"] == []
        assert await gw.gw.registry.get_versioned("bad name") is None


async def test_a_registration_without_operations_is_refused_by_the_schema_and_not_stored(
    db_url: str,
) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        body = {"name": "lonely", "endpoint": "http://127.0.0.1:9/", "operations": []}
        async with gw.http.post(f"{gw.url}/api/agents", data=json.dumps(body)) as r:
            problem = await checked(r, "POST", "/api/agents", 400)
        assert problem["errors"] == [{"path": "/operations", "message": "[] should be non-empty"}]
        async with gw.http.get(f"{gw.url}/api/agents/lonely") as r:
            await checked(r, "GET", "/api/agents/{name}", 404)


def test_the_registration_schema_accepts_the_map_form_of_operations() -> None:
    data = {
        "name": "hotels",
        "endpoint": "https://hotels.example/nexus",
        "adapter": "http",
        "operations": {"book": {"timeout_s": 60, "retry": {"max_attempts": 3}}, "search": None},
    }
    assert contract.registration_errors(data) == []
