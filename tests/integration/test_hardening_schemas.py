"""Hardening (issue 13, items 5 and 7): agent schemas never fetch anything, and checking them
never stalls the event loop."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.service import MAX_OPERATIONS, schema_errors
from tests.conftest import Running, make_settings, running_gateway, serving


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback HTTP server that answers every path with a schema and records each hit."""
    hits: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"type": "integer"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with serving(app) as url:
        yield url, hits


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_gateway(make_settings(f"sqlite:///{tmp_path}/gw.db")) as gw:
        yield gw


def registration(name: str, **schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "endpoint": "http://127.0.0.1:9/",
        "operations": [{"name": op, "input_schema": s} for op, s in schemas.items()],
    }


@pytest.mark.parametrize("keyword", ["$ref", "$dynamicRef"])
async def test_a_ref_through_a_subschema_id_is_refused_with_its_pointer_and_never_fetched(
    tmp_path: Path, keyword: str
) -> None:
    async with recording_server() as (remote, hits), gateway(tmp_path) as gw:
        schema = {"properties": {"x": {"$id": f"{remote}/schemas/", keyword: "payload.json"}}}
        async with gw.http.post(f"{gw.url}/api/agents", json=registration("a", op=schema)) as r:
            assert r.status == 400
            assert r.content_type == "application/problem+json"
            detail = (await r.json())["detail"]
        assert f"'payload.json' at /properties/x/{keyword}" in detail
        assert "never fetched" in detail
        # the refused agent does not exist, so nothing can be validated against the schema
        async with gw.http.post(gw.nexus("a", "op"), json={"x": 1}) as r:
            assert r.status == 404
    assert hits == []


async def test_a_ref_under_a_file_base_is_refused_and_no_local_file_is_read(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"const": "the-file-content"}')
    schema = {"$id": tmp_path.as_uri() + "/", "$ref": "secret.json"}
    async with gateway(tmp_path) as gw:
        async with gw.http.post(f"{gw.url}/api/agents", json=registration("f", op=schema)) as r:
            assert r.status == 400
            text = await r.text()
    assert "'secret.json' at /$ref" in text
    assert "the-file-content" not in text


async def test_validation_of_a_stored_schema_with_a_remote_ref_never_reaches_the_network() -> None:
    async with recording_server() as (remote, hits):
        schema = {"properties": {"x": {"$id": f"{remote}/s/", "$ref": "other.json"}}}
        # in a thread, so a fetch would really reach the server on this loop
        errors = await asyncio.to_thread(schema_errors, schema, {"x": "not an integer"})
    assert hits == []
    assert errors and "cannot be applied" in errors[0]["message"]


# -- the event loop stays responsive ----------------------------------------------------------


class LoopProbe:
    """Asks /healthz every 20 ms and keeps the slowest answer."""

    def __init__(self, gw: Running) -> None:
        self.gw = gw
        self.worst = 0.0
        self.answers = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            async with self.gw.http.get(f"{self.gw.url}/healthz") as r:
                assert r.status == 200
            self.worst = max(self.worst, time.perf_counter() - started)
            self.answers += 1
            await asyncio.sleep(0.02)  # the probe's pace, not a wait for a state


@asynccontextmanager
async def probing(gw: Running) -> AsyncIterator[LoopProbe]:
    # What is measured is the gateway's own loop work: a full collection of the garbage that
    # earlier tests left in this process (it ran ~0.8 s late in the whole suite, never alone)
    # is not, so the objects alive now are frozen out of the collector for the probe's time.
    gc.collect()
    gc.freeze()
    probe, stop = LoopProbe(gw), asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    await asyncio.sleep(0.1)  # a few answers before the hostile request
    try:
        yield probe
    finally:
        stop.set()
        await task
        gc.unfreeze()


async def test_healthz_answers_within_200ms_while_hostile_schemas_are_checked(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw:
        hostile = registration(
            "hostile",
            redos={"type": "string", "pattern": "^(a+)+$"},
            uniq={"type": "array", "uniqueItems": True},
        )
        async with gw.http.post(f"{gw.url}/api/agents", json=hostile) as r:
            assert r.status == 201, await r.text()
        distinct = [{"id": i, "tags": [str(i), "x"], "n": {"v": i}} for i in range(1800)]
        async with probing(gw) as probe:
            started = time.perf_counter()
            async with gw.http.post(gw.nexus("hostile", "redos"), json="a" * 26 + "b") as r:
                assert r.status == 400
            async with gw.http.post(
                gw.nexus("hostile", "uniq"), json=[*distinct, {"id": 7}, {"id": 7}]
            ) as r:
                assert r.status == 400
                assert "non-unique" in await r.text()
            took = time.perf_counter() - started
        assert probe.answers >= 5
        assert probe.worst < 0.2, f"/healthz took {probe.worst:.3f}s"
        assert took < 2.0


async def test_a_large_registration_is_checked_off_the_loop_and_too_many_operations_are_refused(
    tmp_path: Path,
) -> None:
    def schema(op: int) -> dict[str, Any]:  # distinct per operation: nothing is cached
        props = {f"p{op}_{i}": {"type": "string", "pattern": f"^[a-z]{{{i}}}$"} for i in range(8)}
        return {"type": "object", "properties": props}

    async with gateway(tmp_path) as gw:
        big = registration("big", **{f"op{i}": schema(i) for i in range(MAX_OPERATIONS)})
        too_many = registration("many", **{f"op{i}": schema(0) for i in range(600)})
        async with probing(gw) as probe:
            async with gw.http.post(f"{gw.url}/api/agents", json=big) as r:
                assert r.status == 201, await r.text()
            async with gw.http.post(f"{gw.url}/api/agents", json=too_many) as r:
                assert r.status == 400
                assert f"at most {MAX_OPERATIONS} operations" in (await r.json())["detail"]
        assert probe.worst < 0.2, f"/healthz took {probe.worst:.3f}s"


async def test_a_pattern_re2_cannot_run_and_an_oversized_schema_are_refused_with_reasons(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw:
        lookbehind = registration("lb", op={"type": "string", "pattern": "(?<=a)b"})
        async with gw.http.post(f"{gw.url}/api/agents", json=lookbehind) as r:
            assert r.status == 400
            assert "RE2" in (await r.json())["detail"]
        huge = registration("huge", op={"enum": ["x" * 100] * 1000})
        async with gw.http.post(f"{gw.url}/api/agents", json=huge) as r:
            assert r.status == 400
            assert "bytes; at most" in (await r.json())["detail"]
        cyclic = registration(
            "cyc", op={"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
        )
        async with gw.http.post(f"{gw.url}/api/agents", json=cyclic) as r:
            assert r.status == 400
            assert "refers to itself" in (await r.json())["detail"]
