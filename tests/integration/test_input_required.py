"""Input-required (issue 15 item 4) on a real gateway (SQLite and PostgreSQL): an AgentApp asks
its caller with ``ctx.ask``, the attempt parks (no connection, no heartbeat), the operation
shows it in its JSON, history and SSE stream, survives a gateway restart, and the caller's
answer dispatches it again so the handler goes on from the ask without re-running its steps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, OpContext, RetryLater
from gateway.testing import eventually
from registry.auth import AuthConfig, mint_token
from tests.conftest import make_settings, running_gateway, serving

FAST = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01)
SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUTH = AuthConfig(mode="hs256", secret=SECRET, issuer="swarmgate", audience="swarmgate")
APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}},
    "required": ["approved"],
}


def bearer(sub: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(AUTH, sub, scopes)}"}


def approval_agent(runs: dict[str, int]) -> AgentApp:
    agent = AgentApp("approver")

    def count(name: str) -> int:
        runs[name] = runs.get(name, 0) + 1
        return runs[name]

    @agent.operation("deploy", mode="async", heartbeat_timeout_s=0.6, retry=FAST)
    async def deploy(ctx: OpContext, payload: Any) -> Any:
        runs["handler"] = runs.get("handler", 0) + 1
        plan = await ctx.step("plan", count, "plan")
        answer = await ctx.ask(f"deploy {payload['service']}?", APPROVAL)
        done = await ctx.step("apply", count, "apply") if answer["approved"] else None
        return {"plan": plan, "approved": answer["approved"], "applied": done}

    return agent


async def sse_kinds(
    http: aiohttp.ClientSession, url: str, until: str, headers: dict[str, str]
) -> list[str]:
    """The event kinds of the operation's SSE stream, read until ``until`` shows."""
    kinds: list[str] = []
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=20)) as r:
        assert r.status == 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                kinds.append(json.loads(line[5:])["kind"])
                if kinds[-1] == until:
                    return kinds
    return kinds


async def test_an_agent_asks_waits_across_a_gateway_restart_and_goes_on_with_the_answer(
    db_url: str,
) -> None:
    runs: dict[str, int] = {}
    agent = approval_agent(runs)
    settings = make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET)
    alice = bearer("alice", "ops:start:approver/*", "ops:read")
    bob = bearer("bob", "ops:start:approver/*", "ops:read")
    async with serving(agent.app) as agent_url:
        async with running_gateway(settings) as gw:
            await gw.gw.registry.register(agent.spec(agent_url))
            async with gw.http.post(
                gw.nexus("approver", "deploy"), json={"service": "api"}, headers=alice
            ) as r:
                assert r.status == 201, await r.text()
                op_id = (await r.json())["token"]
            op_url = f"{gw.url}/api/operations/{op_id}"

            async def waiting() -> dict[str, Any] | None:
                async with gw.http.get(op_url, headers=alice) as r:
                    body = await r.json()
                return body if body.get("waitingForInput") else None

            op = await eventually(waiting, what="the operation waiting for input")
            assert op["state"] == "running"
            assert op["waitingForInput"]["prompt"] == "deploy api?"
            assert op["waitingForInput"]["schema"] == APPROVAL
            assert op["waitingForInput"]["askedAt"]

            # parked: no heartbeat owed, nothing dispatched while the caller takes its time
            # (the attempt's accept may land just after the question: the sweep then clears
            # the heartbeat deadline it set instead of timing the attempt out)
            async def parked() -> bool:
                await gw.gw.engine.expire_heartbeats()
                op = await gw.gw.engine.store.get_operation(op_id)
                return op is not None and op.heartbeat_until is None and op.work is None

            await eventually(parked, what="the attempt parked with no heartbeat owed")
            stored = await gw.gw.engine.store.get_operation(op_id)
            assert stored is not None and stored.attempts == 1

        # a new gateway process state on the same database: still waiting
        async with running_gateway(
            make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET)
        ) as gw:
            op_url = f"{gw.url}/api/operations/{op_id}"
            async with gw.http.get(op_url, headers=alice) as r:
                assert (await r.json())["waitingForInput"]["prompt"] == "deploy api?"
            async with gw.http.post(op_url + "/input", json={"approved": True}, headers=bob) as r:
                assert r.status == 404  # not bob's operation
            async with gw.http.post(
                op_url + "/input", json={"approved": "yes"}, headers=alice
            ) as r:
                assert r.status == 400
                assert r.headers["Content-Type"].startswith("application/problem+json")
                assert "schema" in (await r.json())["detail"]
            async with gw.http.post(op_url + "/input", json={"approved": True}, headers=alice) as r:
                assert r.status == 202, await r.text()
                assert (await r.json())["by"] == "alice"
            async with gw.http.get(
                gw.nexus("approver", "deploy") + "/result",
                params={"token": op_id, "wait": "15s"},
                headers=alice,
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"plan": 1, "approved": True, "applied": 1}
            assert runs == {"handler": 2, "plan": 1, "apply": 1}  # plan not run again
            async with gw.http.get(op_url + "/events", headers=alice) as r:
                events = (await r.json())["events"]
            provided = [e for e in events if e["kind"] == "input.provided"]
            assert len(provided) == 1 and provided[0]["data"]["by"] == "alice"
            kinds = [e["kind"] for e in events]
            assert kinds.index("input.requested") < kinds.index("input.provided")
            async with gw.http.get(op_url, headers=alice) as r:
                assert (await r.json())["waitingForInput"] is None
            # the SSE stream (replayed from the durable history) shows both, in order
            streamed = await sse_kinds(
                gw.http, op_url + "/stream", until="operation.succeeded", headers=alice
            )
            assert streamed.index("input.requested") < streamed.index("input.provided")
            async with gw.http.post(op_url + "/input", json={"approved": True}, headers=alice) as r:
                assert r.status == 409  # closed: nothing to answer


async def test_a_waiting_operation_can_be_canceled(db_url: str) -> None:
    agent = AgentApp("waiter")

    @agent.operation("wait", mode="async", retry=FAST)
    async def wait(ctx: OpContext, payload: Any) -> Any:
        return await ctx.ask("anyone?")

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(gw.nexus("waiter", "wait"), json={}) as r:
            op_id = (await r.json())["token"]

        async def asked() -> bool:
            async with gw.http.get(f"{gw.url}/api/operations/{op_id}") as r:
                return bool((await r.json()).get("waitingForInput"))

        await eventually(asked, what="the question recorded")
        async with gw.http.post(gw.nexus("waiter", "wait") + f"/{op_id}/cancel") as r:
            assert r.status == 202
        async with gw.http.get(
            gw.nexus("waiter", "wait") + "/result", params={"token": op_id, "wait": "10s"}
        ) as r:
            assert r.headers["Nexus-Operation-State"] == "canceled"
        async with gw.http.post(f"{gw.url}/api/operations/{op_id}/input", json=1) as r:
            assert r.status == 409


async def test_answering_an_operation_that_is_not_waiting_is_a_conflict(db_url: str) -> None:
    agent = AgentApp("busy")
    release = asyncio.Event()

    @agent.operation("work", mode="async", retry=FAST)
    async def work(ctx: OpContext, payload: Any) -> Any:
        await release.wait()
        return "done"

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(gw.nexus("busy", "work"), json={}) as r:
            op_id = (await r.json())["token"]
        async with gw.http.post(f"{gw.url}/api/operations/{op_id}/input", json={}) as r:
            assert r.status == 409
            assert "not waiting" in (await r.json())["detail"]
        async with gw.http.post(f"{gw.url}/api/operations/nope/input", json={}) as r:
            assert r.status == 404
        release.set()


async def test_a_plain_http_agent_asks_with_its_token_and_reads_the_answer_from_the_journal(
    db_url: str,
) -> None:
    """No SDK: the agent accepts, posts its question, and on the next dispatch reads the
    answer (``$input:1``) from the journal header it is given."""
    from aiohttp import web

    seen: list[dict[str, Any]] = []
    gw_url: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        op_id = request.headers["Idempotency-Key"]
        auth = request.headers["Nexus-Callback-Authorization"]
        journal = json.loads(request.headers.get("Swarmgate-Journal") or '{"steps": []}')
        steps = {s["name"]: s["result"] for s in journal["steps"]}
        seen.append(steps)
        if "$input:1" in steps:
            return web.json_response({"answer": steps["$input:1"]["value"]})
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{gw_url['url']}/api/operations/{op_id}/input-request",
                json={"prompt": "your name?", "schema": {"type": "string"}},
                headers={"Authorization": auth},
            ) as r,
        ):
            assert r.status == 202, await r.text()
            body = await r.json()
            assert body["state"] == "waiting"
        return web.json_response({"token": op_id, "state": "running"}, status=201)

    app = web.Application()
    app.router.add_post("/hello", handler)
    async with serving(app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        gw_url["url"] = gw.url
        spec = {
            "name": "plain",
            "endpoint": agent_url,
            "operations": {"hello": {"retry": {"initial_s": 0.05, "max_s": 0.2}}},
        }
        async with gw.http.post(f"{gw.url}/api/agents", json=spec) as r:
            assert r.status in (200, 201), await r.text()
        async with gw.http.post(gw.nexus("plain", "hello"), json={}) as r:
            op_id = (await r.json())["token"]
        op_url = f"{gw.url}/api/operations/{op_id}"

        async def asked() -> bool:
            async with gw.http.get(op_url) as r:
                return bool((await r.json()).get("waitingForInput"))

        await eventually(asked, what="the question recorded")
        async with gw.http.post(op_url + "/input", json=7) as r:
            assert r.status == 400  # not a string
        async with gw.http.post(op_url + "/input", json="Ada") as r:
            assert r.status == 202
        async with gw.http.get(
            gw.nexus("plain", "hello") + "/result", params={"token": op_id, "wait": "15s"}
        ) as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"answer": "Ada"}
        assert len(seen) == 2


async def test_a_sync_handler_can_ask_too_and_a_waiting_operation_still_times_out(
    db_url: str,
) -> None:
    agent = AgentApp("syncasker")

    @agent.operation("ask", mode="sync", retry=FAST)
    async def ask(ctx: OpContext, payload: Any) -> Any:
        return {"got": await ctx.ask("number?", {"type": "integer"})}

    @agent.operation("slow", mode="sync", retry=FAST, timeout_s=1.0)
    async def slow(ctx: OpContext, payload: Any) -> Any:
        return await ctx.ask("nobody answers this")

    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        async with gw.http.post(gw.nexus("syncasker", "ask"), json={}) as r:
            assert r.status == 201, await r.text()  # parked, not answered: running
            op_id = (await r.json())["token"]
        async with gw.http.post(gw.nexus("syncasker", "slow"), json={}) as r:
            slow_id = (await r.json())["token"]
        op_url = f"{gw.url}/api/operations/{op_id}"

        async def asked() -> bool:
            async with gw.http.get(op_url) as r:
                return bool((await r.json()).get("waitingForInput"))

        await eventually(asked, what="the sync handler's question")
        async with gw.http.post(op_url + "/input", json=42) as r:
            assert r.status == 202
        async with gw.http.get(
            gw.nexus("syncasker", "ask") + "/result", params={"token": op_id, "wait": "15s"}
        ) as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"got": 42}
        # the schedule-to-close timeout applies while an operation waits for input
        async with gw.http.get(
            gw.nexus("syncasker", "slow") + "/result", params={"token": slow_id, "wait": "15s"}
        ) as r:
            assert r.headers.get("Nexus-Operation-State") in ("failed", "canceled"), await r.text()
        slow_op = await gw.gw.store.get_operation(slow_id)
        assert slow_op is not None and slow_op.state.terminal
        kinds = [e.kind for e in await gw.gw.store.list_events(slow_id)]
        assert "input.requested" in kinds and "input.provided" not in kinds


async def test_answered_questions_do_not_use_up_the_retry_budget(db_url: str) -> None:
    """The dispatch after an answer is not a retry: an operation with ``max_attempts=1`` asks
    twice and completes; with ``max_attempts=2`` it still has its one retry after two answers;
    and the budget still ends an operation that keeps failing."""
    agent = AgentApp("budget")
    failures: dict[str, int] = {}

    def policy(n: int) -> RetryPolicy:
        return RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01, max_attempts=n)

    async def two_answers(ctx: OpContext, payload: Any) -> Any:
        a = await ctx.ask("first?", {"type": "integer"}, name="a")
        b = await ctx.ask("second?", {"type": "integer"}, name="b")
        failures[ctx.key] = failures.get(ctx.key, 0) + 1
        if failures[ctx.key] <= int(payload.get("fail", 0)):
            raise RetryLater("not yet")
        return a + b

    agent.operation("one", mode="sync", retry=policy(1))(two_answers)
    agent.operation("two", mode="sync", retry=policy(2))(two_answers)
    async with serving(agent.app) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))

        async def run(operation: str, fail: int) -> tuple[int, Any, int]:
            async with gw.http.post(gw.nexus("budget", operation), json={"fail": fail}) as r:
                assert r.status == 201, await r.text()
                op_id = (await r.json())["token"]
            op_url = f"{gw.url}/api/operations/{op_id}"
            for name, value in (("a", 1), ("b", 2)):

                async def asked(name: str = name) -> bool:
                    async with gw.http.get(op_url) as r:
                        waiting = (await r.json()).get("waitingForInput")
                    return bool(waiting) and waiting["name"] == name

                await eventually(asked, what=f"question {name}")
                async with gw.http.post(op_url + "/input", json=value) as r:
                    assert r.status == 202, await r.text()
            async with gw.http.get(
                gw.nexus("budget", operation) + "/result",
                params={"token": op_id, "wait": "15s"},
            ) as r:
                body = await r.json()
                status = r.status
            op = await gw.gw.store.get_operation(op_id)
            assert op is not None
            return status, body, op.attempts

        assert await run("one", 0) == (200, 3, 3)  # two questions, one attempt's budget
        assert await run("two", 1) == (200, 3, 4)  # after two answers: one retry left
        status, failure, attempts = await run("one", 9)
        assert (status, attempts) == (424, 3)  # no retry left: the budget still holds
        assert "gave up after" in failure["message"]
