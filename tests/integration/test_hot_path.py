"""The hot path (gateway.http.hotpath) in front of aiohttp, on raw loopback sockets.

Every connection starts on the hot path; the first request that is not one of its routes
hands the connection over to aiohttp. So the same request, sent on a new connection and on a
connection that first asked for ``/healthz``, is answered by the two servers: the answers must
be the same (status, headers but Date, body), and the connection must go on working.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.app import HOT_HANDLERS, listen
from gateway.domain.dispatch import HEADER_HEARTBEAT_URL, HEADER_STEPS_URL
from gateway.http.hotpath import HotServer, hot_routes
from gateway.http.hotpath._connection import SERVING_TASK
from gateway.sdk.agent import OpContext
from gateway.testing import eventually, free_port
from tests.conftest import Running, make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent
from tests.integration.test_heartbeats import raw_swarm
from tests.integration.test_heartbeats import start as start_raw

HANDED = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def same_as(self, other: Answer) -> bool:
        def norm(a: Answer) -> tuple[int, dict[str, str], bytes]:
            return a.status, {k: v for k, v in a.headers.items() if k != "date"}, a.body

        return norm(self) == norm(other)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


class Conn:
    """A raw keep-alive connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, gw: Running, *, handed_over: bool = False) -> Conn:
        host, port = gw.gw.settings.host, gw.gw.settings.port
        conn = cls(*await asyncio.open_connection(host, port))
        if handed_over:  # the first request is not a hot route: aiohttp's from now on
            assert (await conn.ask(HANDED)).status == 200
        return conn

    async def ask(self, *requests: bytes) -> Answer:
        """Send ``requests`` in one write; the answer to the last (earlier ones: read())."""
        self.writer.write(b"".join(requests))
        await self.writer.drain()
        for _ in requests[:-1]:
            await read_answer(self.reader)
        return await read_answer(self.reader)

    async def read(self) -> Answer:
        return await read_answer(self.reader)

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


def request(
    method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def start_request(n: int, **headers: str) -> bytes:
    body = json.dumps({"n": n}).encode()
    hdrs = {"Content-Type": "application/json", "Nexus-Request-Id": f"rid-{n}", **headers}
    return request("POST", "/nexus/worker/echo", body, hdrs)


def counts(gw: Running) -> dict[str, int]:
    assert isinstance(gw.site, HotServer)
    return dict(gw.site.counts)


async def test_starts_and_their_refusals_are_answered_by_the_hot_path_as_aiohttp_answers_them(
    db_url: str,
) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url)
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        hot, handed = await Conn.open(gw), await Conn.open(gw, handed_over=True)
        assert counts(gw) == {"accepted": 2, "handed_over": 1, "refused": 0}
        # a synchronous start: 200 with the result, the same on both servers
        a, b = await hot.ask(start_request(1)), await handed.ask(start_request(1))
        assert a.status == 200 and a.json() == {"echo": {"n": 1}}
        assert b.headers.pop("idempotent-replayed") == "true"  # the same request id again
        assert a.same_as(b), (a, b)
        refusals = [
            start_request(2, **{"Operation-Timeout": "soon"}),  # 400, a Nexus Failure body
            start_request(3, **{"Idempotency-Key": "x" * 300}),
            start_request(4, **{"Swarmgate-Callback-Events": "input.requested"}),
            request("POST", "/nexus/nobody/echo", b"{}", {"Content-Type": "application/json"}),
            start_request(5, **{"Nexus-Link": "not a link"}),
        ]
        for raw in refusals:
            a, b = await hot.ask(raw), await handed.ask(raw)
            assert 400 <= a.status < 500, a
            assert a.same_as(b), (raw, a, b)
            assert "message" in a.json()  # the Nexus Failure shape on /nexus
        assert counts(gw)["handed_over"] == 1  # the hot connection stayed hot
        hot.close()
        handed.close()


async def test_heartbeats_steps_and_their_refusals_are_answered_as_aiohttp_answers_them(
    db_url: str,
) -> None:
    async with raw_swarm(db_url) as (gw, agent):
        op_id, d = await start_raw(gw, agent)
        auth = {"Authorization": d["Nexus-Callback-Authorization"]}
        hb = d[HEADER_HEARTBEAT_URL].removeprefix(gw.url)
        steps = d[HEADER_STEPS_URL].removeprefix(gw.url)
        hot, handed = await Conn.open(gw), await Conn.open(gw, handed_over=True)
        before = counts(gw)["handed_over"]
        js = {"Content-Type": "application/json", **auth}
        cases = [
            request("POST", hb, b'{"attempt": 1}', js),
            request("POST", hb, b"", auth),  # no body at all
            request("POST", hb, b"[1]", js),  # 400: not an object
            request("POST", hb, b"{}", {"Authorization": "Bearer wrong"}),  # refused
            request("GET", steps, b"", auth),
            request("PUT", steps + "/fetch", b'{"result": [1, 2]}', js),  # 201, then 200
            request("PUT", steps + "/other", b'{"nope": 1}', js),  # 400, a problem document
        ]
        for raw in cases:
            a = await hot.ask(raw)
            b = await handed.ask(raw)
            if raw.startswith(b"PUT") and b"fetch" in raw:
                assert (a.status, b.status) == (201, 200)
                assert a.json() == b.json()
                continue
            assert a.same_as(b), (raw, a, b)
        assert a.headers["content-type"] == "application/problem+json"
        assert a.json()["instance"] == f"/api/operations/{op_id}/steps/other"
        assert counts(gw)["handed_over"] == before  # the hot connection stayed hot
        hot.close()
        handed.close()


async def test_a_hot_connection_that_asks_for_another_route_is_handed_over_and_keeps_working(
    db_url: str,
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        conn = await Conn.open(gw)
        first = await conn.ask(start_request(10))
        assert first.status == 200
        again = await conn.ask(request("GET", "/healthz"))  # handed over, same socket
        assert again.status == 200
        assert (await conn.ask(start_request(11))).json() == {"echo": {"n": 11}}  # on aiohttp
        assert counts(gw) == {"accepted": 1, "handed_over": 1, "refused": 0}
        conn.close()


def serving_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == SERVING_TASK and not t.done())


async def test_a_keep_alive_connection_is_served_by_one_task_that_ends_with_it(
    db_url: str,
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        before = serving_tasks()
        conn = await Conn.open(gw)
        for n in range(6):
            assert (await conn.ask(start_request(40 + n))).json() == {"echo": {"n": 40 + n}}
            assert serving_tasks() == before + 1  # the same task, waiting for the next one
        conn.close()
        await eventually(lambda: serving_tasks() == before, what="the serving task ended")
        handed = await Conn.open(gw)
        assert (await handed.ask(start_request(50))).status == 200
        assert (await handed.ask(HANDED)).status == 200  # aiohttp's now: the task has ended
        await eventually(lambda: serving_tasks() == before, what="ended at the hand-over")
        assert (await handed.ask(start_request(51))).json() == {"echo": {"n": 51}}
        handed.close()


async def test_pipelined_hot_requests_are_answered_in_order_on_the_hot_path(db_url: str) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        conn = await Conn.open(gw)
        conn.writer.write(b"".join(start_request(20 + i) for i in range(5)))
        answers = [await conn.read() for _ in range(5)]
        assert [a.json() for a in answers] == [{"echo": {"n": 20 + i}} for i in range(5)]
        # a request pipelined behind a hot one for another route: the hot one is answered,
        # then the connection is closed (the second request's first byte is not known)
        conn.writer.write(start_request(30) + request("GET", "/healthz"))
        assert (await conn.read()).json() == {"echo": {"n": 30}}
        assert await conn.closed_by_server()
        assert counts(gw) == {"accepted": 1, "handed_over": 0, "refused": 1}


async def test_a_request_for_another_route_sent_while_a_hot_one_runs_waits_for_its_turn(
    db_url: str,
) -> None:
    agent = make_test_agent()

    @agent.operation("slow")
    async def slow(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.3)  # stimulus: the start is still running when the GET comes
        return {"slept": payload}

    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        conn = await Conn.open(gw)
        # "slow" takes 0.3 s: the start waits for it (sync_wait_s=1), and the GET, sent in a
        # packet of its own meanwhile, is handed to aiohttp once the start is answered
        conn.writer.write(request("POST", "/nexus/worker/slow", b"1", {"Nexus-Request-Id": "s"}))
        await conn.writer.drain()
        await asyncio.sleep(0.05)  # stimulus: the start is running when the GET arrives
        conn.writer.write(request("GET", "/healthz"))
        first, second = await conn.read(), await conn.read()
        assert first.json() == {"slept": 1}
        assert second.status == 200 and second.json() == {"status": "ok"}
        assert (await conn.ask(start_request(40))).status == 200
        assert counts(gw)["handed_over"] == 1
        conn.close()


@pytest.mark.parametrize(
    "extra",
    [
        {"Transfer-Encoding": "chunked"},  # chunked: aiohttp reads it
        {"Expect": "100-continue"},  # aiohttp sends the 100
    ],
)
async def test_starts_the_hot_path_does_not_take_are_served_by_aiohttp(
    db_url: str, extra: dict[str, str]
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        conn = await Conn.open(gw)
        body = b'{"n": 50}'
        head = "POST /nexus/worker/echo HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        if "Transfer-Encoding" in extra:
            raw = head.encode() + b"\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            answer = await conn.ask(raw)
        else:
            conn.writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body))
            assert (await conn.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
            answer = await conn.ask(body)
        assert answer.status == 200 and answer.json() == {"echo": {"n": 50}}
        assert counts(gw)["handed_over"] == 1
        conn.close()


async def test_what_the_hot_path_cannot_parse_or_must_refuse_is_answered_by_aiohttp(
    db_url: str,
) -> None:
    settings = make_settings(db_url, max_body_bytes=1024)
    async with running_gateway(settings) as gw:
        too_big = request("POST", "/nexus/worker/echo", b"x" * 2000)
        answers = []
        for raw in (
            b"POST /nexus/worker/echo HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
            too_big,
            request("POST", "/nexus/wor%6Ber/echo", b"{}"),  # escapes: aiohttp decodes them
            request("POST", "/nexus/../api/agents", b"{}"),
            request("POST", "/nexus/./worker/echo", b"{}"),  # dot segments: aiohttp's to resolve
            request("PUT", "/api/operations/./steps/s1", b"{}"),  # (would match a hot route)
            request("POST", "/nexus/worker/echo/", b"{}"),  # an empty segment
            b"POST /nexus/worker/echo HTTP/1.1\r\nHost: gw\r\nX: " + b"y" * 9000 + b"\r\n\r\n",
        ):
            conn = await Conn.open(gw)
            answers.append(await conn.ask(raw))
            conn.close()
        assert [a.status for a in answers][:2] == [400, 400], answers
        assert "too large" in answers[1].json()["message"].lower()  # 413 is 400 on /nexus
        assert answers[2].status == 404  # no agent "worker" here, as aiohttp found the route
        assert all(400 <= a.status < 500 for a in answers), answers
        assert counts(gw)["handed_over"] == 8


async def test_connection_close_and_http_1_0_are_honoured(db_url: str) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        for raw in (
            start_request(60, Connection="close"),
            start_request(61).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        ):
            conn = await Conn.open(gw)
            answer = await conn.ask(raw)
            assert answer.status == 200 and answer.headers["connection"] == "close"
            assert await conn.closed_by_server()
        assert counts(gw)["handed_over"] == 0


async def test_a_connection_is_closed_after_its_keepalive_requests_and_a_new_one_goes_on(
    db_url: str,
) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url, keepalive_requests=3)
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        conn = await Conn.open(gw)
        answers = [await conn.ask(start_request(70 + i)) for i in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert [a.headers.get("connection") for a in answers] == [None, None, "close"]
        assert await conn.closed_by_server()  # after the third answer, written whole
        # pipelined past the limit: the answers it may carry, then closed (the rest unread)
        conn = await Conn.open(gw)
        conn.writer.write(b"".join(start_request(80 + i) for i in range(5)))
        got = [await conn.read() for _ in range(3)]
        assert [a.headers.get("connection") for a in got] == [None, None, "close"]
        assert await conn.closed_by_server()
        assert counts(gw) == {"accepted": 2, "handed_over": 0, "refused": 0}


@pytest.mark.parametrize("hot_path", [True, False])
async def test_a_connection_aiohttp_serves_is_closed_after_its_keepalive_requests_too(
    db_url: str, hot_path: bool
) -> None:
    # handed over from the hot path by its first request, or served by aiohttp from the start
    settings = make_settings(db_url, keepalive_requests=3, hot_path=hot_path)
    async with running_gateway(settings) as gw:
        conn = await Conn.open(gw)
        answers = [await conn.ask(HANDED) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200]
        assert [a.headers.get("connection") for a in answers] == [None, None, "close"]
        assert await conn.closed_by_server()
        conn = await Conn.open(gw)  # the next connection starts its own count
        assert (await conn.ask(HANDED)).headers.get("connection") is None
        conn.close()
        if hot_path:
            assert counts(gw) == {"accepted": 2, "handed_over": 2, "refused": 0}


async def test_without_a_keepalive_limit_an_aiohttp_connection_stays_open(db_url: str) -> None:
    async with running_gateway(make_settings(db_url, keepalive_requests=0)) as gw:
        conn = await Conn.open(gw)
        answers = [await conn.ask(HANDED) for _ in range(5)]
        assert [a.headers.get("connection") for a in answers] == [None] * 5
        conn.close()


async def test_a_start_whose_body_does_not_arrive_is_answered_408_as_a_nexus_failure(
    db_url: str,
) -> None:
    async with running_gateway(make_settings(db_url, body_timeout_s=0.3)) as gw:
        conn = await Conn.open(gw)
        conn.writer.write(start_request(70)[:-3])  # the body's last bytes never come
        answer = await conn.read()
        assert answer.status == 408 and answer.headers["connection"] == "close"
        assert "did not arrive within 0.3s" in answer.json()["message"]
        assert await conn.closed_by_server()


async def test_an_idle_hot_connection_is_closed_after_the_keepalive_time(db_url: str) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        runner = web.AppRunner(gw.gw.app, access_log=None)
        await runner.setup()
        assert runner.server is not None
        server = HotServer(
            gw.gw.app, runner.server, (), max_body=1024, body_timeout_s=5, keepalive_s=0.2
        )
        settings = replace(gw.gw.settings, port=free_port())
        try:
            await server.start(settings.host, settings.port)
            reader, writer = await asyncio.open_connection(settings.host, settings.port)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the server, nothing sent
            writer.close()
        finally:
            await server.stop()
            await runner.cleanup()


async def test_the_access_log_has_a_line_for_each_hot_request(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_test_agent()
    settings = make_settings(db_url, access_log=True)
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        runner = web.AppRunner(gw.gw.app, access_log=None)
        await runner.setup()
        logger = logging.getLogger("swarmgate.access.test")
        port = free_port()
        site = await listen(
            replace(gw.gw, settings=replace(settings, port=port)),
            runner,
            access_log=logger,
        )
        try:
            with caplog.at_level(logging.INFO, logger=logger.name):
                reader, writer = await asyncio.open_connection(settings.host, port)
                writer.write(start_request(80, **{"User-Agent": "probe/1"}))
                assert (await read_answer(reader)).status == 200
                writer.close()
            lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
            assert len(lines) == 1
            assert '"POST /nexus/worker/echo HTTP/1.1" 200 19 ' in lines[0]
            assert lines[0].endswith('"probe/1"')
        finally:
            await site.stop()
            await runner.cleanup()


async def test_each_hot_route_is_the_route_aiohttp_resolves_for_its_paths(db_url: str) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        app = gw.gw.app
        routes = hot_routes(app, HOT_HANDLERS)
        assert {r.handler for r in routes} == set(HOT_HANDLERS)
        assert isinstance(gw.site, HotServer)
        for route in routes:
            segments = [p if p is not None else f"v{i}" for i, p in enumerate(route.parts)]
            path = "/" + "/".join(segments)
            found = await app.router.resolve(make_mocked_request(route.method, path, app=app))
            assert found.handler is route.handler, path
            assert gw.site.match(route.method, segments) == (
                route.handler,
                dict(found),  # the same parameters, as aiohttp names them
            )
        for refused in (["nexus", "a"], ["nexus", "a", "b", "c"], ["api", "operations"]):
            assert gw.site.match("POST", refused) is None


async def test_stopping_lets_a_running_hot_request_finish_then_closes_its_connection(
    db_url: str,
) -> None:
    agent = make_test_agent()

    @agent.operation("slow")
    async def slow(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.3)  # stimulus: the start is running when the gateway stops
        return {"slept": payload}

    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        idle, busy = await Conn.open(gw), await Conn.open(gw)
        busy.writer.write(request("POST", "/nexus/worker/slow", b"2", {"Nexus-Request-Id": "z"}))
        await busy.writer.drain()
        await asyncio.sleep(0.05)
        await gw.site.stop()
        assert await idle.closed_by_server()
        answer = await busy.read()
        assert answer.json() == {"slept": 2} and answer.headers["connection"] == "close"
        assert await busy.closed_by_server()
        with pytest.raises(OSError):  # no longer listening
            await Conn.open(gw)
