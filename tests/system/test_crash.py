"""Crash safety: a real gateway subprocess is SIGKILLed mid-dispatch and mid-callback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import free_port, serving, serving_agent
from tests.helpers import FAST_RETRY, Receiver
from tests.procs import GatewayProcess, get_json

N_OPS = 24


def crash_agent() -> tuple[AgentApp, set[str]]:
    """The agent, and the keys of the "book" calls it is working on right now."""
    agent = AgentApp("travel")
    booking: set[str] = set()

    @agent.operation("book", retry=FAST_RETRY, attempt_timeout_s=5)
    async def book(ctx: OpContext, payload: Any) -> Any:
        booking.add(ctx.key)
        try:
            await asyncio.sleep(0.4)  # the stimulus: long enough for the kill to land mid-dispatch
        finally:
            booking.discard(ctx.key)
        return {"booked": payload["n"]}

    @agent.operation("plan", mode="async", retry=FAST_RETRY)
    async def plan(ctx: OpContext, payload: Any) -> Any:
        await asyncio.sleep(0.3)  # the stimulus: async work that outlives the dispatch
        return {"planned": payload["n"]}

    return agent, booking


async def start_all(http: aiohttp.ClientSession, base: str, cb: str) -> dict[str, str]:
    """Start N_OPS operations; returns request id -> token. A start cut off by the crash is
    retried with the same request id later."""
    tokens: dict[str, str] = {}

    async def one(i: int) -> None:
        op = "book" if i % 2 == 0 else "plan"
        rid = f"req-{i}"
        try:
            async with http.post(
                f"{base}/nexus/travel/{op}",
                json={"n": i},
                params={"callback": f"{cb}/cb/{i}"},
                headers={"Nexus-Request-Id": rid},
            ) as r:
                if r.status in (200, 201):
                    tokens[rid] = r.headers["Nexus-Operation-Token"]
        except aiohttp.ClientError:
            pass

    await asyncio.gather(*(one(i) for i in range(N_OPS)))
    return tokens


async def retry_missing_starts(
    http: aiohttp.ClientSession, base: str, cb: str, tokens: dict[str, str]
) -> None:
    for i in range(N_OPS):
        rid = f"req-{i}"
        if rid in tokens:
            continue
        op = "book" if i % 2 == 0 else "plan"
        async with http.post(
            f"{base}/nexus/travel/{op}",
            json={"n": i},
            params={"callback": f"{cb}/cb/{i}"},
            headers={"Nexus-Request-Id": rid},
        ) as r:
            assert r.status in (200, 201), await r.text()
            tokens[rid] = r.headers["Nexus-Operation-Token"]


async def wait_all_terminal(http: aiohttp.ClientSession, base: str, timeout: float) -> None:
    await eventually(
        lambda: get_json(http, f"{base}/api/operations", params={"state": "running"}),
        until=lambda running: not running["operations"],
        timeout=timeout,
        interval=0.1,
        what="no operation running",
    )


async def wait_all_delivered(http: aiohttp.ClientSession, base: str, timeout: float) -> None:
    """Every operation's callback is recorded as delivered by the gateway itself."""
    ops = (await get_json(http, f"{base}/api/operations", params={"limit": 1000}))["operations"]
    pending = {o["id"] for o in ops}

    async def undelivered() -> set[str]:
        for op_id in list(pending):
            cbs = (await get_json(http, f"{base}/api/operations/{op_id}/callbacks"))["callbacks"]
            if len(cbs) == 1 and cbs[0]["state"] == "delivered":
                pending.discard(op_id)
        return pending

    await eventually(undelivered, until=lambda left: not left, timeout=timeout, interval=0.1)
    assert not pending, f"callbacks not delivered for {pending}"


async def test_sigkill_mid_dispatch_and_mid_callback_loses_nothing_and_repeats_no_effect(
    db_url: str, tmp_path: Path
) -> None:
    agent, booking = crash_agent()
    receiver = SlowReceiver()
    port = free_port()
    log = tmp_path / "gateway.log"
    async with serving_agent(agent) as agent_url, serving(receiver.app()) as cb_url:
        gw = GatewayProcess(db_url, port, log=log)
        await gw.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{gw.url}/api/agents", json=agent.spec(agent_url).to_json()
                ) as r:
                    assert r.status == 201, await r.text()
                tokens = await start_all(http, gw.url, cb_url)
                # "book" calls are in flight at the agent (was a fixed 0.2 s sleep, which only
                # hoped for it)
                await eventually(lambda: booking, what="a book call in flight")
                gw.kill()  # crash 1: mid-dispatch
                await gw.start()
                await retry_missing_starts(http, gw.url, cb_url, tokens)
                await asyncio.wait_for(receiver.first.wait(), 20)
                gw.kill()  # crash 2: mid-callback (the receiver holds each callback 0.3 s)
                await gw.start()
                await wait_all_terminal(http, gw.url, 40)
                await receiver.wait_for(N_OPS, 40)
                await wait_all_delivered(http, gw.url, 40)

                ops = (await get_json(http, f"{gw.url}/api/operations", params={"limit": 1000}))[
                    "operations"
                ]
                assert len(ops) == N_OPS  # retried starts were deduplicated
                assert {o["state"] for o in ops} == {"succeeded"}
                for o in ops:
                    events = (await get_json(http, f"{gw.url}/api/operations/{o['id']}/events"))[
                        "events"
                    ]
                    terminal = [e for e in events if e["kind"].startswith("operation.")]
                    assert [e["kind"] for e in terminal] == [
                        "operation.started",
                        "operation.succeeded",
                    ]
                    assert agent.effects.get(o["id"]) == 1, (o["id"], agent.effects)
                    ids = receiver.ids_for(o["id"])
                    assert len(ids) == 1, (o["id"], ids)  # redelivered with the same id
                assert len(agent.effects) == N_OPS
                # The crashes really hit work in flight: some dispatch was re-attempted after
                # the restart, and some callback was delivered again (same webhook-id).
                assert max(o["attempts"] for o in ops) >= 2
                assert max(receiver.count_for(o["id"]) for o in ops) >= 2
        finally:
            gw.kill()


class SlowReceiver(Receiver):
    """Holds each callback 0.3 s before answering, so a kill can land in the middle."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()
        self.by_op: dict[str, set[str]] = {}
        self.counts: dict[str, int] = {}

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        op = request.headers.get("Nexus-Operation-Token", "")
        self.by_op.setdefault(op, set()).add(request.headers.get("webhook-id", ""))
        self.counts[op] = self.counts.get(op, 0) + 1  # counted on arrival
        self.first.set()
        await asyncio.sleep(0.3)  # the stimulus: a kill can land while the callback is held
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        assert json.loads(body)
        return web.Response(status=200)

    def count_for(self, op_id: str) -> int:
        return self.counts.get(op_id, 0)

    def ids_for(self, op_id: str) -> set[str]:
        return self.by_op.get(op_id, set())

    async def wait_for(self, n_ops: int, timeout: float) -> None:
        await eventually(lambda: len(self.by_op) >= n_ops, timeout=timeout, interval=0.05)
        assert len(self.by_op) >= n_ops, f"callbacks for {len(self.by_op)} of {n_ops} operations"
