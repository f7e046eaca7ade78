"""A caller that asked for it (``Swarmgate-Callback-Events: input.requested`` with its callback
URL) is called back when its operation starts waiting for input (issue 15 item 4): through
the durable outbox, signed, once per question, across a gateway restart between the question
and the delivery; never mistaken for a completion; absent when the caller did not ask."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.domain.specs import RetryPolicy
from gateway.sdk import AgentApp, Client, OpContext
from gateway.security.webhooks import verify
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving

FAST = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.01)
EVENTS = "Swarmgate-Callback-Events"


@dataclass
class Hook:
    """A callback receiver on loopback that refuses (503) until told to accept."""

    accept: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
                "ok": self.accept,
            }
        )
        return web.Response(status=200 if self.accept else 503)

    def taken(self, path: str, event: str | None) -> list[dict[str, Any]]:
        """The accepted deliveries to ``path`` of ``event`` (None: completions)."""
        return [
            r
            for r in self.requests
            if r["ok"] and r["path"] == path and r["headers"].get("Swarmgate-Event") == event
        ]


def asking_agent() -> AgentApp:
    agent = AgentApp("gate")

    @agent.operation("release", mode="async", retry=FAST)
    async def release(ctx: OpContext, payload: Any) -> Any:
        ok = await ctx.ask(f"release {payload['v']}?", {"type": "boolean"})
        return {"v": payload["v"], "released": ok}

    return agent


async def test_an_input_request_callback_is_delivered_once_signed_across_a_restart(
    db_url: str,
) -> None:
    agent = asking_agent()
    hook = Hook()
    settings = make_settings(db_url)  # the same port twice: the answer URL stays right
    async with serving(agent.app) as agent_url, serving(hook.app()) as hook_url:
        async with running_gateway(settings) as gw:
            await gw.gw.registry.register(agent.spec(agent_url))
            url = gw.nexus("gate", "release")
            # the opt-in is validated: unknown events and a missing callback URL are refused
            for params, value in (
                ({"callback": hook_url + "/a"}, "input.requested, completion"),
                ({}, "input.requested"),
            ):
                async with gw.http.post(
                    url, json={"v": 0}, params=params, headers={EVENTS: value}
                ) as r:
                    assert r.status == 400, await r.text()
                    assert EVENTS in (await r.json())["message"]  # a Nexus Failure on /nexus
            async with Client(gw.url) as client:  # the SDK's way to ask for it
                started = await client.start(
                    "gate",
                    "release",
                    {"v": 1},
                    callback=hook_url + "/a",
                    callback_events=["input.requested"],
                    headers={"Nexus-Callback-Authorization": "Bearer cb-1"},
                )
            assert started.state == "running"
            asked_id = started.token
            async with gw.http.post(url, json={"v": 2}, params={"callback": hook_url + "/b"}) as r:
                plain_id = (await r.json())["token"]
            async with gw.http.get(f"{gw.url}/api/operations/{asked_id}") as r:
                assert (await r.json())["callbackEvents"] == ["input.requested"]

            async def refused_once() -> bool:
                return any(r["path"] == "/a" for r in hook.requests)

            # the question is queued with its event; the receiver refuses it for now
            await eventually(refused_once, what="a first, refused, input.requested delivery")
            cbs = await gw.gw.store.list_callbacks(asked_id)
            assert [c.state.value for c in cbs] == ["pending"]

        hook.accept = True
        async with running_gateway(settings) as gw:  # a new gateway on the same database
            await eventually(
                lambda: hook.taken("/a", "input.requested"), what="the input.requested callback"
            )
            (got,) = hook.taken("/a", "input.requested")
            h = got["headers"]
            assert h["Authorization"] == "Bearer cb-1"  # the caller's Nexus-Callback-* headers
            assert h["Content-Type"] == "application/json"
            assert h["Swarmgate-Operation-Id"] == asked_id
            assert not [k for k in h if k.lower().startswith("nexus-operation-")]
            async with gw.http.get(f"{gw.url}/api/callback-secret") as r:
                secret = (await r.json())["secret"]
            assert verify([secret], h, got["body"]) == h["webhook-id"]
            # every attempt of it carried the same webhook-id: one message, sent at least once
            tries = [r for r in hook.requests if r["path"] == "/a"]
            assert {r["headers"]["webhook-id"] for r in tries} == {h["webhook-id"]}
            body = json.loads(got["body"])
            assert body["type"] == "input.requested" and body["timestamp"].endswith("Z")
            data = body["data"]
            assert data["operationId"] == data["operationToken"] == asked_id
            assert (data["service"], data["operation"]) == ("gate", "release")
            question = data["question"]
            assert question["name"] == "1" and question["prompt"] == "release 1?"
            assert question["schema"] == {"type": "boolean"}
            assert data["answer"] == {
                "method": "POST",
                "url": f"{gw.url}/api/operations/{asked_id}/input",
                "contentType": "application/json",
            }
            async with gw.http.post(data["answer"]["url"], json=True) as r:
                assert r.status == 202, await r.text()
            async with gw.http.post(f"{gw.url}/api/operations/{plain_id}/input", json=False) as r:
                assert r.status == 202, await r.text()
            await eventually(
                lambda: hook.taken("/a", None) and hook.taken("/b", None), what="completions"
            )
            (done,) = hook.taken("/a", None)
            assert done["headers"]["Nexus-Operation-State"] == "succeeded"
            assert EVENTS not in done["headers"]
            assert json.loads(done["body"]) == {"v": 1, "released": True}
            assert len(hook.taken("/a", "input.requested")) == 1  # once
            # the caller that did not ask got its completion only
            assert [
                r["headers"].get("Swarmgate-Event") for r in hook.requests if r["path"] == "/b"
            ] == [None]

            async def kinds() -> list[str] | None:
                got = [e.kind for e in await gw.gw.store.list_events(asked_id)]
                return got if got.count("callback.delivered") == 2 else None  # acks are batched

            assert (await eventually(kinds, what="both deliveries recorded")).count(
                "input.requested"
            ) == 1
