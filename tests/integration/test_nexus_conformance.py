"""Nexus wire conformance in both roles (issue 14), against strict peers on loopback.

Handler role: the gateway's ``/nexus`` surface, checked by a strict Nexus client
(``tests.nexus_strict.check_answer``) and a strict callback receiver. Caller role: the
gateway calling a strict Nexus handler through the ``nexus`` adapter, including a full async
round trip with the handler's completion callback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy
from gateway.sdk.agent import AgentApp, OpContext
from gateway.testing import eventually
from tests.conftest import Running, make_settings, running_gateway, serving, serving_agent
from tests.nexus_strict import StrictHandler, StrictReceiver, strict_links, strict_request

FAST = RetryPolicy(initial_s=0.05, max_s=0.2, jitter_s=0.02)
CALLER_LINK = '<https://caller.example/runs/1>; type="caller.v1.Run"'


def strict_agent() -> tuple[AgentApp, list[dict[str, Any]]]:
    """A gateway SDK agent whose handlers record what reached them."""
    agent = AgentApp("strict")
    seen: list[dict[str, Any]] = []

    @agent.operation("null", retry=FAST)
    async def null(ctx: OpContext, payload: Any) -> Any:
        seen.append({"headers": ctx.headers, "payload": payload})
        return None

    @agent.operation("echo", retry=FAST)
    async def echo(ctx: OpContext, payload: Any) -> Any:
        seen.append({"headers": ctx.headers, "payload": payload})
        return {"echo": payload}

    @agent.operation("later", mode="async", retry=FAST)
    async def later(ctx: OpContext, payload: Any) -> Any:
        seen.append({"headers": ctx.headers, "payload": payload})
        return {"done": True}

    return agent, seen


@asynccontextmanager
async def gateway_with_agent(db_url: str, **settings: Any) -> AsyncIterator[tuple[Running, Any]]:
    agent, seen = strict_agent()
    async with (
        serving_agent(agent) as url,
        running_gateway(make_settings(db_url, **settings)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))
        yield gw, seen


@asynccontextmanager
async def gateway_with_handler(
    db_url: str, **settings: Any
) -> AsyncIterator[tuple[Running, StrictHandler]]:
    handler = StrictHandler()
    async with (
        serving(handler.app()) as url,
        running_gateway(make_settings(db_url, **settings)) as gw,
    ):
        ops = {
            name: OperationSpec(name=name, retry=FAST)
            for name in ("sync", "sync-null", "async", "busy")
        }
        await gw.gw.registry.register(
            AgentSpec(
                name="temporal", endpoint=f"{url}/svc", adapter=AdapterKind.NEXUS, operations=ops
            )
        )
        yield gw, handler


async def events(gw: Running, op_id: str) -> list[dict[str, Any]]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
        return list((await r.json())["events"])


async def kinds(gw: Running, op_id: str) -> list[str]:
    return [e["kind"] for e in await events(gw, op_id)]


async def callbacks(gw: Running, op_id: str) -> list[dict[str, Any]]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/callbacks") as r:
        return list((await r.json())["callbacks"])


# -- 1. null content ----------------------------------------------------------------------


async def test_a_null_result_is_answered_with_no_content_type_and_an_empty_body(
    db_url: str,
) -> None:
    async with gateway_with_handler(db_url) as (gw, _handler):
        url = gw.nexus("temporal", "sync-null")
        status, headers, body = await strict_request(gw.http, "POST", url, json={"a": 1})
        assert status == 200 and body == b"" and "Content-Type" not in headers
        token = headers["Nexus-Operation-Token"]
        status, headers, body = await strict_request(
            gw.http, "GET", url + "/result", headers={"Nexus-Operation-Token": token}
        )
        assert status == 200 and body == b"" and "Content-Type" not in headers


async def test_a_start_without_content_reaches_the_agent_without_a_content_type(
    db_url: str,
) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        status, _, body = await strict_request(gw.http, "POST", gw.nexus("temporal", "sync"))
        assert status == 200, body
        assert json.loads(body) == {"echo": None}
        sent = handler.requests[-1]
        assert sent["body"] == b"" and "Content-Type" not in sent["headers"]
        assert handler.violations == []


# -- 2. no callback after a synchronous answer --------------------------------------------


async def test_a_start_answered_synchronously_gets_no_completion_callback(db_url: str) -> None:
    receiver = StrictReceiver()
    async with gateway_with_agent(db_url) as (gw, _seen), serving(receiver.app()) as cb:
        status, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("strict", "echo"), json={"q": 1}, params={"callback": cb}
        )
        assert status == 200
        sync_token = headers["Nexus-Operation-Token"]
        # an async start with a callback gets exactly one, so the receiver is known to work
        status, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("strict", "later"), json={}, params={"callback": cb}
        )
        assert status == 201
        await receiver.wait()
        assert [c["headers"]["Nexus-Operation-Token"] for c in receiver.callbacks] == [
            headers["Nexus-Operation-Token"]
        ]
        assert await callbacks(gw, sync_token) == []
        closing = (await events(gw, sync_token))[-1]
        assert closing["kind"] == "operation.succeeded"
        assert closing["data"]["answered"] == "sync"
        assert receiver.violations == []


# -- 3. callback replies are Nexus answers -------------------------------------------------


async def test_a_callback_refused_with_a_non_retryable_nexus_failure_ends_failed_and_redrivable(
    db_url: str,
) -> None:
    not_found = json.dumps(
        {
            "message": "operation already closed",
            "metadata": {"type": "nexus.HandlerError"},
            "details": {"type": "NOT_FOUND"},
        }
    ).encode()
    receiver = StrictReceiver(answer=(404, {"Content-Type": "application/json"}, not_found))
    async with gateway_with_agent(db_url) as (gw, _seen), serving(receiver.app()) as cb:
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("strict", "later"), json={}, params={"callback": cb}
        )
        token = headers["Nexus-Operation-Token"]
        found = await eventually(
            lambda: callbacks(gw, token), until=lambda c: c and c[0]["state"] == "disabled"
        )
        assert len(receiver.callbacks) == 1  # not retried
        assert "callback.rejected" in await kinds(gw, token)
        receiver.answer = (200, {}, b"")
        async with gw.http.post(
            f"{gw.url}/api/operations/{token}/callbacks/{found[0]['id']}/redrive"
        ) as r:
            assert r.status in (200, 202), await r.text()
        await eventually(lambda: callbacks(gw, token), until=lambda c: c[0]["state"] == "delivered")
        assert len(receiver.callbacks) == 2


async def test_a_callback_refused_with_retryable_false_is_not_retried(db_url: str) -> None:
    receiver = StrictReceiver(answer=(500, {"Nexus-Request-Retryable": "false"}, b""))
    async with gateway_with_agent(db_url) as (gw, _seen), serving(receiver.app()) as cb:
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("strict", "later"), json={}, params={"callback": cb}
        )
        token = headers["Nexus-Operation-Token"]
        await eventually(
            lambda: callbacks(gw, token), until=lambda c: c and c[0]["state"] == "disabled"
        )
        assert len(receiver.callbacks) == 1


async def test_a_plain_receiver_error_without_a_nexus_answer_is_still_retried(
    db_url: str,
) -> None:
    receiver = StrictReceiver(answer=(500, {}, b""))
    async with gateway_with_agent(db_url) as (gw, _seen), serving(receiver.app()) as cb:
        await strict_request(
            gw.http, "POST", gw.nexus("strict", "later"), json={}, params={"callback": cb}
        )
        await eventually(lambda: len(receiver.callbacks), until=lambda n: n >= 2)


# -- 4. links ------------------------------------------------------------------------------


async def test_malformed_nexus_links_are_refused_with_400(db_url: str) -> None:
    bad = [
        'https://x.example/1; type="t"',  # no angle brackets
        "<https://x.example/1>",  # no type
        '<https://x.example/1>; rel="x"',  # no type either
        '<not a url>; type="t"',
        '<https://x.example/1>; type="t", <https://x.example/2>',  # the second has no type
    ]
    async with gateway_with_agent(db_url) as (gw, seen):
        for value in bad:
            status, _, body = await strict_request(
                gw.http, "POST", gw.nexus("strict", "echo"), json={}, headers={"Nexus-Link": value}
            )
            assert status == 400, (value, body)
            assert json.loads(body)["details"]["type"] == "BAD_REQUEST"
        assert seen == []  # nothing was started


async def test_every_caller_link_reaches_the_agent_and_none_comes_back_in_its_callback(
    db_url: str,
) -> None:
    receiver = StrictReceiver()
    async with gateway_with_handler(db_url) as (gw, handler), serving(receiver.app()) as cb:
        status, headers, body = await strict_request(
            gw.http,
            "POST",
            gw.nexus("temporal", "async"),
            json={"x": 1},
            params={"callback": cb},
            headers=[
                ("Content-Type", "application/json"),
                ("Nexus-Link", CALLER_LINK),
                (
                    "Nexus-Link",
                    '<https://caller.example/a>; type="caller.v1.A", '
                    '<https://caller.example/b>; type="caller.v1.B"',
                ),
            ],
        )
        assert status == 201, body
        # the handler's links on its 201 come back to the caller
        assert [x["type"] for x in strict_links(headers.getall("Nexus-Link"))] == [
            "temporal.api.common.v1.Link.WorkflowEvent"
        ]
        (op,) = handler.ops.values()
        assert [x["url"] for x in op.links] == [
            "https://caller.example/runs/1",
            "https://caller.example/a",
            "https://caller.example/b",
        ]
        # stored with the operation, shown parsed
        async with gw.http.get(f"{gw.url}/api/operations/{headers['Nexus-Operation-Token']}") as r:
            shown = (await r.json())["links"]
        assert shown[0] == {"url": "https://caller.example/runs/1", "type": "caller.v1.Run"}
        assert [x["type"] for x in shown[1:]] == ["caller.v1.A", "caller.v1.B"]
        handler_link = '<https://handler.example/done>; type="handler.v1.Done"'
        assert await handler.complete(op.token, "succeeded", b'{"ok":1}', links=[handler_link])
        await receiver.wait()
        (callback,) = receiver.callbacks
        assert [x["url"] for x in callback["links"]] == ["https://handler.example/done"]
        assert handler.violations == [] and receiver.violations == []


# -- 5. cancel is a request ----------------------------------------------------------------


async def test_a_cancel_the_handler_accepts_leaves_the_operation_to_the_handler_to_close(
    db_url: str,
) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "async"), json={}
        )
        token = headers["Nexus-Operation-Token"]
        status, _, _ = await strict_request(
            gw.http,
            "POST",
            gw.nexus("temporal", "async") + "/cancel",
            headers={"Nexus-Operation-Token": token},
        )
        assert status == 202
        await eventually(lambda: kinds(gw, token), until=lambda k: "cancel.delivered" in k)
        (op,) = handler.ops.values()
        assert op.cancels == 1
        async with gw.http.get(gw.nexus("temporal", "async"), params={"token": token}) as r:
            assert (await r.json())["state"] == "running"  # a request, not an outcome
        # the handler finished the work anyway: its outcome is the operation's
        assert await handler.complete(op.token, "succeeded", b'{"late":true}') == 200
        status, _, body = await strict_request(
            gw.http,
            "GET",
            gw.nexus("temporal", "async") + "/result",
            params={"token": token, "wait": "5s"},
        )
        assert status == 200 and json.loads(body) == {"late": True}


async def test_a_cancel_the_handler_never_completes_is_closed_as_canceled_after_the_grace(
    db_url: str,
) -> None:
    async with gateway_with_handler(db_url, cancel_grace_s=0.3) as (gw, _handler):
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "async"), json={}
        )
        token = headers["Nexus-Operation-Token"]
        await strict_request(
            gw.http,
            "POST",
            gw.nexus("temporal", "async") + "/cancel",
            params={"token": token},
        )
        status, headers, _ = await strict_request(
            gw.http,
            "GET",
            gw.nexus("temporal", "async") + "/result",
            params={"token": token, "wait": "10s"},
        )
        assert status == 424 and headers["Nexus-Operation-State"] == "canceled"
        history = await events(gw, token)
        assert [e["kind"] for e in history][-2:] == ["cancel.delivered", "operation.canceled"]
        assert history[-1]["data"]["reason"] == "cancel grace ran out"


async def test_an_sdk_agent_that_stops_at_once_keeps_the_synchronous_cancel(db_url: str) -> None:
    agent = AgentApp("slow")

    @agent.operation("hang", mode="async", retry=FAST)
    async def hang(ctx: OpContext, payload: Any) -> Any:
        import asyncio

        await asyncio.sleep(3600)

    async with serving_agent(agent) as url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(url))
        _, headers, _ = await strict_request(gw.http, "POST", gw.nexus("slow", "hang"), json={})
        token = headers["Nexus-Operation-Token"]
        await strict_request(
            gw.http, "POST", gw.nexus("slow", "hang") + "/cancel", params={"token": token}
        )
        found = await eventually(
            lambda: kinds(gw, token), until=lambda k: k[-1] == "operation.canceled"
        )
        assert "cancel.delivered" not in found


# -- 6. caller headers and retry hints ------------------------------------------------------


async def test_the_callers_headers_for_the_handler_reach_the_agent_but_its_credentials_do_not(
    db_url: str,
) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        await strict_request(
            gw.http,
            "POST",
            gw.nexus("temporal", "async"),
            json={},
            headers={"X-Tenant": "acme", "nexus-header-k": "v", "Authorization": "Bearer caller"},
        )
        (op,) = handler.ops.values()
        assert op.headers["x-tenant"] == "acme" and op.headers["nexus-header-k"] == "v"
        assert "Authorization" not in op.headers


async def test_an_agent_error_marked_not_retryable_is_not_retried(db_url: str) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        status, _, body = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "busy"), json={}
        )
        assert status == 424, body  # 503 would be retried; the handler said not to
        busy = [r for r in handler.requests if r["path"].endswith("/busy")]
        assert len(busy) == 1


# -- 7. statuses only from the handler-error table -------------------------------------------


async def test_errors_on_nexus_use_only_the_specs_handler_error_statuses(db_url: str) -> None:
    async with gateway_with_agent(db_url, max_body_bytes=1024) as (gw, _seen):
        status, _, body = await strict_request(gw.http, "PUT", gw.nexus("strict", "echo"))
        assert status == 501 and json.loads(body)["details"]["type"] == "NOT_IMPLEMENTED"
        status, _, body = await strict_request(
            gw.http, "POST", gw.nexus("strict", "echo"), data=b"x" * 4096
        )
        assert status == 400
        headers = {"Idempotency-Key": "k-1", "Content-Type": "application/json"}
        await strict_request(
            gw.http, "POST", gw.nexus("strict", "echo"), data=b"{}", headers=headers
        )
        status, _, body = await strict_request(
            gw.http, "POST", gw.nexus("strict", "echo"), data=b"[1]", headers=headers
        )
        assert status == 400 and json.loads(body)["details"]["type"] == "BAD_REQUEST"
        # outside /nexus the answers stay RFC 9457 with their own statuses
        async with gw.http.put(f"{gw.url}/api/agents") as r:
            assert r.status == 405
            assert r.headers["Content-Type"].startswith("application/problem+json")


# -- 8. the token header -------------------------------------------------------------------


async def test_info_and_result_read_the_token_from_the_nexus_operation_token_header(
    db_url: str,
) -> None:
    async with gateway_with_agent(db_url) as (gw, _seen):
        _, headers, _ = await strict_request(gw.http, "POST", gw.nexus("strict", "echo"), json={})
        token = headers["Nexus-Operation-Token"]
        by_header = {"Nexus-Operation-Token": token}
        status, _, body = await strict_request(
            gw.http, "GET", gw.nexus("strict", "echo"), headers=by_header
        )
        assert status == 200 and json.loads(body)["state"] == "succeeded"
        status, _, body = await strict_request(
            gw.http, "GET", gw.nexus("strict", "echo") + "/result", headers=by_header
        )
        assert status == 200 and json.loads(body) == {"echo": {}}


# -- 9. the nexus adapter: a full async round trip ----------------------------------------


async def test_a_full_async_round_trip_through_the_nexus_adapter_and_the_handlers_callback(
    db_url: str,
) -> None:
    receiver = StrictReceiver()
    async with gateway_with_handler(db_url) as (gw, handler), serving(receiver.app()) as cb:
        status, headers, body = await strict_request(
            gw.http,
            "POST",
            gw.nexus("temporal", "async"),
            json={"order": 7},
            params={"callback": cb},
            headers={"Nexus-Request-Id": "caller-rid-1", "Nexus-Callback-Token": "caller-secret"},
        )
        assert status == 201, body
        token = headers["Nexus-Operation-Token"]
        (op,) = handler.ops.values()
        sent = op.headers
        assert sent["Nexus-Request-Id"] == token  # stable: the gateway's operation id
        assert op.callback == f"{gw.url}/api/completions/{token}"
        assert sent["Nexus-Callback-Token"] and "caller-secret" not in sent.values()
        assert json.loads(op.body) == {"order": 7}
        assert sent["Content-Type"] == "application/json"
        # a retried attempt would be deduplicated by the handler on the same request id
        assert handler.by_request_id == {token: op.token}
        # a callback without the gateway's token is refused
        async with gw.http.post(
            op.callback, headers={"Nexus-Operation-State": "succeeded", "Token": "forged"}
        ) as r:
            assert r.status == 401
        assert await handler.complete(op.token, "succeeded", b'{"shipped":7}') == 200
        await receiver.wait()
        (callback,) = receiver.callbacks
        assert callback["headers"]["Token"] == "caller-secret"  # the caller's own header
        assert callback["headers"]["Nexus-Operation-State"] == "succeeded"
        assert json.loads(callback["body"]) == {"shipped": 7}
        status, _, body = await strict_request(
            gw.http, "GET", gw.nexus("temporal", "async") + "/result", params={"token": token}
        )
        assert status == 200 and json.loads(body) == {"shipped": 7}
        assert handler.violations == [] and receiver.violations == []


async def test_a_failed_completion_from_the_handler_fails_the_operation(db_url: str) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "async"), json={}
        )
        token = headers["Nexus-Operation-Token"]
        (op,) = handler.ops.values()
        assert await handler.complete(op.token, "failed") == 200
        status, headers, body = await strict_request(
            gw.http,
            "GET",
            gw.nexus("temporal", "async") + "/result",
            params={"token": token, "wait": "5s"},
        )
        assert status == 424 and headers["Nexus-Operation-State"] == "failed"
        assert json.loads(body)["details"]["state"] == "failed"


async def test_a_sync_answer_from_a_nexus_handler_is_the_result(db_url: str) -> None:
    async with gateway_with_handler(db_url) as (gw, handler):
        status, headers, body = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "sync"), json={"n": 1}
        )
        assert status == 200 and json.loads(body) == {"echo": {"n": 1}}
        # the handler's link on its answer comes back to the caller
        assert strict_links(headers.getall("Nexus-Link"))[0]["type"].startswith("temporal.")
        assert handler.violations == []


async def test_extra_request_headers_of_a_dispatch_reach_the_handler_last(db_url: str) -> None:
    """Where agent credentials plug in: ``DispatchRequest.headers`` / ``CancelRequest.extra``
    are applied after everything else, through the real transport."""
    from dataclasses import replace

    from adapters.nexus import NexusAgentAdapter
    from gateway.domain.dispatch import CancelRequest, OutcomeKind

    async with gateway_with_handler(db_url) as (gw, handler):
        _, headers, _ = await strict_request(
            gw.http, "POST", gw.nexus("temporal", "async"), json={}, headers={"X-Key": "caller"}
        )
        op = await gw.gw.engine.store.get_operation(headers["Nexus-Operation-Token"])
        agent = await gw.gw.registry.get("temporal")
        assert op is not None and agent is not None
        adapter = NexusAgentAdapter(gw.gw.transport)
        req = gw.gw.engine.dispatch_request(op, agent, agent.operations["async"])
        creds = {"Authorization": "Bearer agent-secret", "X-KEY": "agent"}
        outcome = await adapter.start(replace(req, headers=creds))
        assert outcome.kind is OutcomeKind.ACCEPTED
        sent = handler.requests[-1]["headers"]
        assert sent["Authorization"] == "Bearer agent-secret"
        assert [v for k, v in sent.items() if k.lower() == "x-key"] == ["agent"]
        cancel = CancelRequest(
            operation=replace(op, agent_token=outcome.agent_token),
            agent=agent,
            timeout_s=5,
            extra={"Authorization": "Bearer agent-secret"},
        )
        assert (await adapter.cancel(cancel)).kind is OutcomeKind.ACCEPTED


async def test_a_retried_start_whose_synchronous_answer_was_lost_is_answered_synchronously(
    db_url: str,
) -> None:
    """The first start closed synchronously (no callback written) but its answer never reached
    the caller (here: the engine ran it without an HTTP answer, as a crash after the commit
    would leave it). The caller's retry with the same request id gets the outcome as a sync
    answer, not a 201 that no callback would ever follow."""
    from gateway.engine.engine import StartRequest

    receiver = StrictReceiver()
    async with gateway_with_agent(db_url) as (gw, _seen), serving(receiver.app()) as cb:
        engine = gw.gw.engine
        first = await engine.start(
            StartRequest(
                service="strict",
                operation="echo",
                caller="anonymous",
                input=b'{"n": 1}',
                content_type="application/json",
                request_id="rid-lost",
                callback_url=cb,
            )
        )
        done = await engine.wait_inline(first.operation.id, 5.0, answers_sync=True)
        assert done is not None and done.state.value == "succeeded"
        assert engine.sync_links(first.operation.id) is not None  # claimed: no callback
        status, headers, body = await strict_request(
            gw.http,
            "POST",
            gw.nexus("strict", "echo"),
            data=b'{"n": 1}',
            params={"callback": cb},
            headers={"Nexus-Request-Id": "rid-lost", "Content-Type": "application/json"},
        )
        assert status == 200 and json.loads(body) == {"echo": {"n": 1}}
        assert headers["Nexus-Operation-Token"] == first.operation.id
        assert await callbacks(gw, first.operation.id) == [] and receiver.callbacks == []
