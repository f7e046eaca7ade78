"""Pull workers (issue 12 item 4), in process: a pull agent's starts wait in its queue, a
worker (``AgentApp.run_worker_async``) leases them by long poll, heartbeats and completes
through the gateway; with no worker they stay queued until they time out; bad polls are 4xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.http.contract import component_errors
from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from registry.auth import mint_token
from tests.conftest import Running, make_settings, running_gateway
from tests.integration.test_auth_http import AUTH, SECRET, bearer

OWNER = "team-batch"


def pull_agent(name: str = "batch", **op: Any) -> AgentApp:
    agent = AgentApp(name)

    @agent.operation("score", mode="async", **op)
    async def score(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(float(payload.get("sleep", 0)))
        return {"score": payload["n"] * 2, "attempt": ctx.attempt}

    return agent


@asynccontextmanager
async def gateway(db_url: str, **settings: Any) -> AsyncIterator[Running]:
    s = make_settings(db_url, auth_mode="hs256", jwt_secret=SECRET, pull_recheck_s=0.2, **settings)
    async with running_gateway(s) as gw:
        yield gw


@asynccontextmanager
async def worker(gw: Running, agent: AgentApp, worker_id: str, **kw: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    token = mint_token(AUTH, OWNER, ["agents:work"])
    task = asyncio.create_task(
        agent.run_worker_async(gw.url, token, worker_id=worker_id, wait_s=2.0, stop=stop, **kw)
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def register(gw: Running, agent: AgentApp) -> None:
    async with gw.http.post(
        f"{gw.url}/api/agents",
        json=agent.pull_spec().to_json(),
        headers=bearer(OWNER, "agents:register"),
    ) as r:
        assert r.status == 201, await r.text()
        shown = await r.json()
    assert shown["adapter"] == "pull" and "endpoint" not in shown


async def start(gw: Running, n: int, service: str = "batch", **extra: Any) -> str:
    async with gw.http.post(
        gw.nexus(service, "score"),
        json={"n": n, **extra},
        headers=bearer("caller", "ops:start:*", "ops:read"),
    ) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def show(gw: Running, name: str = "batch") -> dict[str, Any]:
    async with gw.http.get(
        f"{gw.url}/api/agents/{name}", headers=bearer("ops", "agents:read")
    ) as r:
        assert r.status == 200
        return dict(await r.json())


async def operation(gw: Running, op_id: str) -> dict[str, Any]:
    async with gw.http.get(
        f"{gw.url}/api/operations/{op_id}", headers=bearer("root", "admin")
    ) as r:
        return dict(await r.json())


async def kinds(gw: Running, op_id: str) -> list[str]:
    async with gw.http.get(
        f"{gw.url}/api/operations/{op_id}/events", headers=bearer("root", "admin")
    ) as r:
        return [e["kind"] for e in (await r.json())["events"]]


async def test_a_worker_leases_queued_starts_and_completes_them_through_the_gateway(
    db_url: str,
) -> None:
    agent = pull_agent(heartbeat_timeout_s=1.0)
    async with gateway(db_url) as gw:
        await register(gw, agent)
        ops = [await start(gw, n) for n in range(3)]
        status = await show(gw)
        assert status["queue_depth"] == 3 and status["workers"] == []
        async with worker(gw, agent, "w-1", concurrency=2):
            for n, op_id in enumerate(ops):
                done = await eventually(
                    lambda op_id=op_id: operation(gw, op_id),
                    until=lambda o: o["state"] == "succeeded",
                    what="the task is completed by the worker",
                )
                assert done["result"] == {"score": n * 2, "attempt": 1}
            status = await show(gw)
            assert status["queue_depth"] == 0
            assert [w["worker_id"] for w in status["workers"]] == ["w-1"]
            assert status["workers"][0]["last_poll_at"]
            # a start while the worker waits in its long poll is leased at once
            late = await start(gw, 10, sleep=1.5)  # longer than the heartbeat timeout
            done = await eventually(
                lambda: operation(gw, late), until=lambda o: o["state"] == "succeeded"
            )
            assert done["result"]["attempt"] == 1  # heartbeats kept the lease
        assert agent.effects == {op_id: 1 for op_id in [*ops, late]}
        history = await kinds(gw, ops[0])
        assert history[:4] == [
            "operation.started",
            "attempt.started",
            "task.queued",
            "attempt.leased",
        ]
        assert history[-1] == "operation.succeeded"


async def test_starts_with_no_worker_stay_queued_until_their_timeout(db_url: str) -> None:
    agent = pull_agent(timeout_s=1.5)
    async with gateway(db_url) as gw:
        await register(gw, agent)
        ops = [await start(gw, n) for n in range(2)]
        await asyncio.sleep(0)  # nothing to wait for: no worker exists
        for op_id in ops:
            assert (await operation(gw, op_id))["state"] == "running"
        assert (await show(gw))["queue_depth"] == 2
        for op_id in ops:
            closed = await eventually(
                lambda op_id=op_id: operation(gw, op_id),
                until=lambda o: o["state"] != "running",
                what="the queued start times out",
            )
            assert closed["state"] == "failed"
            assert "timed out" in str(closed["failure"]).lower()
        assert (await show(gw))["queue_depth"] == 0
        assert "attempt.leased" not in await kinds(gw, ops[0])


async def test_bad_polls_are_problems_and_lease_nothing(db_url: str) -> None:
    agent = pull_agent()
    async with gateway(db_url) as gw:
        await register(gw, agent)
        op_id = await start(gw, 1)
        url = f"{gw.url}/api/agents/batch/tasks:poll"
        good = {"max_tasks": 1, "wait_s": 0, "worker_id": "w"}
        cases: list[tuple[int, str, dict[str, str], Any]] = [
            (401, url, {}, good),
            (403, url, bearer(OWNER, "agents:read"), good),  # wrong scope
            (403, url, bearer("someone-else", "agents:work"), good),  # not the owner
            (404, f"{gw.url}/api/agents/nobody/tasks:poll", bearer(OWNER, "agents:work"), good),
        ]
        work = bearer(OWNER, "agents:work")
        for body in (
            {**good, "max_tasks": 0},
            {**good, "max_tasks": 101},
            {**good, "max_tasks": "3"},
            {**good, "wait_s": -1},
            {**good, "wait_s": 61},
            {**good, "wait_s": True},
            {**good, "worker_id": ""},
            {**good, "worker_id": "a b"},
            {"max_tasks": 1},
            {**good, "lease_s": 5},
            [good],
        ):
            cases.append((400, url, work, body))
        for status, where, headers, body in cases:
            async with gw.http.post(where, json=body, headers=headers) as r:
                assert r.status == status, (status, body, await r.text())
                assert r.headers["Content-Type"].startswith("application/problem+json")
        assert (await show(gw))["queue_depth"] == 1
        assert (await operation(gw, op_id))["state"] == "running"

        # an http agent cannot be polled; a pull agent cannot have an endpoint
        pushed = {"name": "pushed", "endpoint": "http://127.0.0.1:9", "operations": ["x"]}
        pushed["operations"] = [{"name": "x"}]
        async with gw.http.post(
            f"{gw.url}/api/agents", json=pushed, headers=bearer(OWNER, "agents:register")
        ) as r:
            assert r.status == 201
        async with gw.http.post(
            f"{gw.url}/api/agents/pushed/tasks:poll", json=good, headers=work
        ) as r:
            assert r.status == 409
        bad = {**agent.pull_spec().to_json(), "name": "x", "endpoint": "http://127.0.0.1:9"}
        async with gw.http.post(
            f"{gw.url}/api/agents", json=bad, headers=bearer(OWNER, "agents:register")
        ) as r:
            assert r.status == 400
            assert "pull agent has no endpoint" in (await r.json())["detail"]
        # the owner's (or an admin's) good poll leases the task
        async with gw.http.post(url, json=good, headers=bearer("root", "admin")) as r:
            assert r.status == 200
            tasks = (await r.json())["tasks"]
        assert [t["operationId"] for t in tasks] == [op_id]
        assert tasks[0]["input"] == {"n": 1} and tasks[0]["attempt"] == 1
        assert tasks[0]["heartbeatUrl"].endswith(f"/api/operations/{op_id}/heartbeat")
        assert component_errors("LeasedTask", tasks[0]) == []
        shown = await show(gw)
        assert shown["workers"][0]["leased"] == 1
        assert component_errors("AgentRecord", shown) == []


async def test_a_canceled_leased_task_stops_its_worker_and_is_not_completed(db_url: str) -> None:
    agent = pull_agent(heartbeat_timeout_s=1.0)
    async with gateway(db_url) as gw:
        await register(gw, agent)
        op_id = await start(gw, 1, sleep=30)
        async with worker(gw, agent, "w-1"):
            await eventually(
                lambda: kinds(gw, op_id),
                until=lambda ks: "attempt.leased" in ks,
                what="the worker leases the task",
            )
            async with gw.http.post(
                f"{gw.url}/api/operations/{op_id}/cancel", headers=bearer("caller", "ops:read")
            ) as r:
                assert r.status in (200, 202), await r.text()
            closed = await eventually(
                lambda: operation(gw, op_id), until=lambda o: o["state"] != "running"
            )
            assert closed["state"] == "canceled"
            await eventually(
                lambda: agent._jobs.get(op_id),
                until=lambda job: job is None,
                what="the worker stops the handler (its heartbeat says the operation closed)",
            )
        assert op_id not in agent.effects and agent.completions_sent == {}


async def test_a_poll_on_one_replica_gets_work_started_on_another(pg_db: str) -> None:
    agent = pull_agent()
    async with gateway(pg_db) as gw_a, gateway(pg_db) as gw_b:
        await register(gw_a, agent)
        got: asyncio.Task[Any] = asyncio.create_task(
            gw_b.http.post(
                f"{gw_b.url}/api/agents/batch/tasks:poll",
                json={"max_tasks": 5, "wait_s": 10, "worker_id": "w-b"},
                headers=bearer(OWNER, "agents:work"),
            )
        )
        await eventually(
            lambda: show(gw_a), until=lambda s: [w["worker_id"] for w in s["workers"]] == ["w-b"]
        )
        op_id = await start(gw_a, 7)
        async with await got as r:
            assert r.status == 200
            tasks = (await r.json())["tasks"]
        assert [t["operationId"] for t in tasks] == [op_id]
        assert tasks[0]["completionUrl"].startswith(gw_b.url)  # the answering replica's URL


async def test_a_waiting_poll_answers_at_once_when_the_gateway_stops(db_url: str) -> None:
    agent = pull_agent()
    async with gateway(db_url) as gw:
        await register(gw, agent)
        poll = asyncio.create_task(
            gw.http.post(
                f"{gw.url}/api/agents/batch/tasks:poll",
                json={"max_tasks": 1, "wait_s": 60, "worker_id": "w"},
                headers=bearer(OWNER, "agents:work"),
            )
        )
        await eventually(lambda: show(gw), until=lambda s: len(s["workers"]) == 1)
        await gw.gw.engine.stop(grace_s=0.1)
        async with await asyncio.wait_for(poll, 10) as r:  # not the 60 s wait
            assert r.status == 200
            assert (await r.json())["tasks"] == []


async def test_without_heartbeats_a_lease_is_lost_after_the_attempt_timeout(db_url: str) -> None:
    agent = pull_agent(attempt_timeout_s=1.0)
    async with gateway(db_url) as gw:
        await register(gw, agent)
        op_id = await start(gw, 3)
        url = f"{gw.url}/api/agents/batch/tasks:poll"
        work = bearer(OWNER, "agents:work")

        async def poll(worker_id: str) -> list[dict[str, Any]]:
            body = {"max_tasks": 5, "wait_s": 5, "worker_id": worker_id}
            async with gw.http.post(url, json=body, headers=work) as r:
                assert r.status == 200
                return list((await r.json())["tasks"])

        first = await poll("silent")  # leases it and never answers
        assert [(t["operationId"], t["attempt"]) for t in first] == [(op_id, 1)]
        assert first[0]["heartbeatTimeoutS"] is None and first[0]["attemptTimeoutS"] == 1.0
        second = await eventually(lambda: poll("rescuer"), until=bool, timeout=15)
        assert [(t["operationId"], t["attempt"]) for t in second] == [(op_id, 2)]
        history = await kinds(gw, op_id)
        assert history.count("attempt.leased") == 2
        assert history.index("attempt.heartbeat_timeout") > history.index("attempt.leased")
        async with gw.http.post(
            second[0]["completionUrl"],
            data=b'{"score": 6}',
            headers={
                "Authorization": f"Bearer {second[0]['token']}",
                "Nexus-Operation-State": "succeeded",
                "Content-Type": "application/json",
            },
        ) as r:
            assert r.status == 200
        assert (await operation(gw, op_id))["result"] == {"score": 6}


async def test_a_pulled_task_can_ask_its_caller_and_goes_on_with_the_answer(db_url: str) -> None:
    """``ctx.ask`` from a pull worker: the attempt parks (no lease, no heartbeat owed), the
    caller's answer queues the task again, and a worker's next attempt goes on from the ask
    without re-running the step before it."""
    agent = AgentApp("asking")
    runs: dict[str, int] = {}

    def count(name: str) -> int:
        runs[name] = runs.get(name, 0) + 1
        return runs[name]

    @agent.operation("score", mode="async", heartbeat_timeout_s=1.0)
    async def score(ctx: OpContext, payload: Any) -> Any:
        before = await ctx.step("before", count, "before")
        factor = await ctx.ask("factor?", {"type": "integer"})
        return {"score": payload["n"] * factor, "before": before, "attempt": ctx.attempt}

    caller = bearer("caller", "ops:start:*", "ops:read")
    async with gateway(db_url) as gw:
        await register(gw, agent)
        async with worker(gw, agent, "w-ask"):
            op_id = await start(gw, 7, service="asking")
            op_url = f"{gw.url}/api/operations/{op_id}"

            async def parked() -> bool:
                op = await gw.gw.store.get_operation(op_id)
                shown = await operation(gw, op_id)
                return (
                    op is not None
                    and shown.get("waitingForInput") is not None
                    and op.work is None
                    and op.heartbeat_until is None
                )

            await eventually(parked, what="the pulled task parked on its question")
            shown = await operation(gw, op_id)
            assert shown["waitingForInput"]["prompt"] == "factor?"
            async with gw.http.post(op_url + "/input", json=3, headers=caller) as r:
                assert r.status == 202, await r.text()
            async with gw.http.get(
                gw.nexus("asking", "score") + "/result",
                params={"token": op_id, "wait": "15s"},
                headers=caller,
            ) as r:
                assert r.status == 200, await r.text()
                assert await r.json() == {"score": 21, "before": 1, "attempt": 2}
        assert runs == {"before": 1}
        got = await kinds(gw, op_id)
        assert got.count("input.requested") == 1 and got.count("input.provided") == 1
