"""Heartbeats and the step journal over HTTP, against a raw agent (SQLite and PostgreSQL).

The agent here is a plain aiohttp app that records what each dispatch carried and answers 201,
so the tests drive the agent's side (heartbeats, steps) by hand and see exactly what the
gateway stores and sends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEADER_HEARTBEAT_TIMEOUT,
    HEADER_HEARTBEAT_URL,
    HEADER_JOURNAL,
    HEADER_JOURNAL_OMITTED,
    HEADER_STEPS_URL,
    JOURNAL_HEADER_MAX,
)
from gateway.domain.model import OperationState
from gateway.domain.specs import AgentSpec, OperationSpec, RetryPolicy
from gateway.sdk._durable import Attempt
from gateway.testing import eventually
from tests.conftest import Running, make_settings, running_gateway, serving

FAST = RetryPolicy(initial_s=0.05, max_s=0.1, jitter_s=0.01)


@dataclass
class RawAgent:
    """Accepts every dispatch (201) and remembers its headers; never completes by itself."""

    dispatches: list[dict[str, str]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    refuse_cancels: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{op}/cancel", self.cancel)
        app.router.add_post("/{op}", self.start)
        return app

    async def start(self, request: web.Request) -> web.Response:
        await request.read()
        self.dispatches.append(dict(request.headers))
        return web.json_response({"token": request.headers["Idempotency-Key"]}, status=201)

    async def cancel(self, request: web.Request) -> web.Response:
        self.cancels.append(request.headers.get("Nexus-Operation-Token", ""))
        return web.Response(status=503 if self.refuse_cancels else 202)


@asynccontextmanager
async def raw_swarm(db_url: str, hb_s: float = 30.0) -> AsyncIterator[tuple[Running, RawAgent]]:
    agent = RawAgent()
    async with serving(agent.app()) as url:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(
                AgentSpec(
                    name="raw",
                    endpoint=url,
                    operations={
                        "work": OperationSpec(name="work", retry=FAST, heartbeat_timeout_s=hb_s),
                        "plain": OperationSpec(name="plain", retry=FAST),
                    },
                )
            )
            yield gw, agent


def bearer(dispatch: dict[str, str]) -> dict[str, str]:
    return {"Authorization": dispatch["Nexus-Callback-Authorization"]}


async def start(
    gw: Running, agent: RawAgent, operation: str = "work"
) -> tuple[str, dict[str, str]]:
    async with gw.http.post(gw.nexus("raw", operation), json={"n": 1}) as r:
        assert r.status == 201
        op_id = (await r.json())["token"]
    await eventually(lambda: len(agent.dispatches) >= 1, what="the dispatch")
    await eventually(lambda: history_kinds(gw, op_id), until=lambda k: "attempt.accepted" in k)
    return op_id, agent.dispatches[-1]


async def history(gw: Running, op_id: str) -> list[dict[str, Any]]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
        return list((await r.json())["events"])


async def history_kinds(gw: Running, op_id: str) -> list[str]:
    return [e["kind"] for e in await history(gw, op_id)]


async def test_a_dispatch_tells_the_agent_its_attempt_and_where_to_heartbeat_and_record_steps(
    db_url: str,
) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        op_id, d = await start(gw, agent)
        assert d[HEADER_ATTEMPT] == "1"
        assert d[HEADER_HEARTBEAT_URL] == f"{gw.url}/api/operations/{op_id}/heartbeat"
        assert d[HEADER_STEPS_URL] == f"{gw.url}/api/operations/{op_id}/steps"
        assert d[HEADER_HEARTBEAT_TIMEOUT] == "30"
        assert HEADER_JOURNAL not in d  # a first attempt has nothing recorded
        async with gw.http.post(d[HEADER_HEARTBEAT_URL], headers=bearer(d), json={}) as r:
            assert r.status == 200
            assert await r.json() == {
                "state": "running",
                "cancelRequested": False,
                "heartbeatTimeoutS": 30.0,
                "attempt": 1,
            }


async def test_steps_are_recorded_once_and_every_answer_carries_the_first_result(
    db_url: str,
) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        op_id, d = await start(gw, agent)
        url = d[HEADER_STEPS_URL]
        async with gw.http.put(url + "/fetch", headers=bearer(d), json={"result": [1, 2]}) as r:
            assert r.status == 201
            first = await r.json()
            assert first["name"] == "fetch" and first["result"] == [1, 2]
            assert first["attempt"] == 1
        async with gw.http.put(url + "/fetch", headers=bearer(d), json={"result": "other"}) as r:
            assert r.status == 200
            assert (await r.json())["result"] == [1, 2]
        async with gw.http.get(url, headers=bearer(d)) as r:
            assert r.status == 200
            body = await r.json()
        assert [s["name"] for s in body["steps"]] == ["fetch"]
        assert body["steps"][0]["result"] == [1, 2] and body["details"] is None
        events = await history(gw, op_id)
        steps = [e for e in events if e["kind"] == "step.completed"]
        assert len(steps) == 1 and steps[0]["data"]["name"] == "fetch"


async def test_a_step_result_comes_back_exactly_with_long_integers_and_any_text(
    db_url: str,
) -> None:
    result = {"big": 2**70, "neg": -(2**63) - 1, "f": 0.1, "text": "\u00e9\U0001f600\u2028"}
    raw = json.dumps({"result": result}, ensure_ascii=False).encode()
    async with raw_swarm(db_url) as (gw, agent):
        _, d = await start(gw, agent)
        headers = {**bearer(d), "Content-Type": "application/json"}
        for status in (201, 200):  # recorded, then the first result again
            async with gw.http.put(d[HEADER_STEPS_URL] + "/s", headers=headers, data=raw) as r:
                assert r.status == status
                assert r.headers["Content-Type"] == "application/json; charset=utf-8"
                assert json.loads(await r.read())["result"] == result


async def test_a_missed_heartbeat_dispatches_again_with_the_journal_and_last_details(
    db_url: str,
) -> None:
    async with raw_swarm(db_url, hb_s=0.6) as (gw, agent):
        op_id, d = await start(gw, agent)
        async with gw.http.put(
            d[HEADER_STEPS_URL] + "/a", headers=bearer(d), json={"result": {"a": 1}}
        ) as r:
            assert r.status == 201
        beat = {"details": {"page": 7}, "attempt": 1}
        async with gw.http.post(d[HEADER_HEARTBEAT_URL], headers=bearer(d), json=beat) as r:
            assert r.status == 200
        # ... and then the agent goes silent: the attempt fails and a new one is dispatched.
        await eventually(lambda: len(agent.dispatches) >= 2, timeout=15, what="a second dispatch")
        again = agent.dispatches[1]
        assert again["Idempotency-Key"] == op_id and again[HEADER_ATTEMPT] == "2"
        journal = json.loads(again[HEADER_JOURNAL])
        assert journal["details"] == {"page": 7}
        assert [(s["name"], s["result"]) for s in journal["steps"]] == [("a", {"a": 1})]
        kinds = await history_kinds(gw, op_id)
        assert kinds.count("attempt.heartbeat_timeout") >= 1
        timeout_event = next(
            e for e in await history(gw, op_id) if e["kind"] == "attempt.heartbeat_timeout"
        )
        assert timeout_event["data"]["details"] == {"page": 7}
        # the old attempt's heartbeat is fenced out now
        async with gw.http.post(d[HEADER_HEARTBEAT_URL], headers=bearer(d), json=beat) as r:
            assert r.status == 409
            assert r.content_type == "application/problem+json"


async def test_heartbeats_keep_an_attempt_alive_past_its_timeout(db_url: str) -> None:
    # A timeout 8x the pacing and a run of 2.5 timeouts: with 0.6 s against 0.15 s, one stall
    # of the loaded CI box (two test processes and the database on two cores) timed it out.
    async with raw_swarm(db_url, hb_s=1.2) as (gw, agent):
        op_id, d = await start(gw, agent)
        clock = gw.gw.engine.clock
        end = clock.now().timestamp() + 3.0
        while clock.now().timestamp() < end:
            async with gw.http.post(d[HEADER_HEARTBEAT_URL], headers=bearer(d)) as r:
                assert r.status == 200
            await asyncio.sleep(0.15)  # the agent's heartbeat interval (pacing, not waiting)
        assert len(agent.dispatches) == 1
        assert "attempt.heartbeat_timeout" not in await history_kinds(gw, op_id)


async def test_the_heartbeat_answer_says_when_the_caller_asked_to_cancel(db_url: str) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        agent.refuse_cancels = True  # the cancel cannot reach the agent: only heartbeats do
        op_id, d = await start(gw, agent, "work")
        await gw.gw.engine.cancel(op_id, by="test")
        await eventually(lambda: len(agent.cancels) >= 1, what="a cancel attempt")
        async with gw.http.post(d[HEADER_HEARTBEAT_URL], headers=bearer(d)) as r:
            assert r.status == 200
            body = await r.json()
        assert body["state"] == "running" and body["cancelRequested"] is True


async def test_bad_heartbeats_and_steps_get_a_problem_and_change_nothing(db_url: str) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        op_id, d = await start(gw, agent)
        hb, steps = d[HEADER_HEARTBEAT_URL], d[HEADER_STEPS_URL]
        ok = bearer(d)
        async with gw.http.post(hb, headers=ok, json={"details": {"v": 1}}) as r:
            assert r.status == 200
        before = await gw.gw.engine.store.get_operation(op_id)
        cases: list[tuple[str, str, dict[str, str], Any, int]] = [
            ("POST", hb, {"Authorization": "Bearer nope"}, {"details": 2}, 401),
            ("POST", hb, {}, {"details": 2}, 401),
            ("PUT", steps + "/x", {"Authorization": "Bearer nope"}, {"result": 1}, 401),
            ("GET", steps, {"Authorization": "Bearer nope"}, None, 401),
            ("POST", hb, ok, {"details": "x" * (65 * 1024)}, 400),
            ("POST", hb, ok, {"details": 2, "attempt": 5}, 409),
            ("POST", hb, ok, {"details": 2, "attempt": "one"}, 400),
            ("POST", hb, ok, [1, 2], 400),
            ("PUT", steps + "/" + "n" * 201, ok, {"result": 1}, 400),
            ("PUT", steps + "/x", ok, {"nothing": 1}, 400),
            ("PUT", steps + "/x", ok, {"result": "y" * (300 * 1024)}, 400),
        ]
        for method, url, headers, body, status in cases:
            async with gw.http.request(method, url, headers=headers, json=body) as r:
                assert r.status == status, (
                    method,
                    url[-20:],
                    body if body is None else str(body)[:40],
                )
                assert r.content_type == "application/problem+json"
        raw = b'{"details": NaN}'
        async with gw.http.post(
            hb, headers={**ok, "Content-Type": "application/json"}, data=raw
        ) as r:
            assert r.status == 400 and r.content_type == "application/problem+json"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            yield b'{"details": "'
            for _ in range(70):
                yield b"x" * 1024
            yield b'"}'

        async with gw.http.post(
            hb, headers={**ok, "Content-Type": "application/json"}, data=chunks()
        ) as r:
            assert r.status == 400 and r.content_type == "application/problem+json"
        # an unknown operation (its own valid token: tokens are per operation id)
        other = gw.gw.engine.completion_token("no-such-op")
        unknown = hb.replace(op_id, "no-such-op")
        async with gw.http.post(unknown, headers={"Authorization": f"Bearer {other}"}) as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
        after = await gw.gw.engine.store.get_operation(op_id)
        assert after == before
        assert after is not None and after.heartbeat_details == {"v": 1}
        assert await gw.gw.engine.store.list_steps(op_id) == []
        # a closed operation: heartbeats and steps are refused, its journal stays readable
        await gw.gw.engine.complete_from_agent(
            op_id, OperationState.SUCCEEDED, result=b"{}", content_type="application/json"
        )
        async with gw.http.post(hb, headers=ok) as r:
            assert r.status == 409 and r.content_type == "application/problem+json"
        async with gw.http.put(steps + "/late", headers=ok, json={"result": 1}) as r:
            assert r.status == 409
        assert await gw.gw.engine.store.list_steps(op_id) == []
        kinds = await history_kinds(gw, op_id)
        assert "step.completed" not in kinds


async def test_an_agent_fetches_a_journal_too_big_for_the_dispatch_header(db_url: str) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        _op_id, d = await start(gw, agent)
        big = "x" * (2 * JOURNAL_HEADER_MAX)
        async with gw.http.put(
            d[HEADER_STEPS_URL] + "/big", headers=bearer(d), json={"result": big}
        ) as r:
            assert r.status == 201
        link = Attempt({**d, HEADER_JOURNAL_OMITTED: "1"}, lambda: gw.http)
        await link.load()
        assert link.steps == {"big": big}
