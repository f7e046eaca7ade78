"""The Nexus-style operation lifecycle, end to end, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gateway.domain.specs import OperationSpec, RetryPolicy
from gateway.security.webhooks import verify
from gateway.testing import ManualClock, eventually
from tests.conftest import Running, make_settings, running_gateway, serving, serving_agent
from tests.helpers import FAST_RETRY, Receiver, make_test_agent, spec_with

JSON = {"Content-Type": "application/json"}


@asynccontextmanager
async def swarm(
    db_url: str, *, clock: ManualClock | None = None, **settings: Any
) -> AsyncIterator[tuple[Running, Any]]:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url, **settings), clock=clock) as gw:
            await gw.gw.registry.register(
                spec_with(
                    agent,
                    agent_url,
                    missing=OperationSpec(name="missing", retry=FAST_RETRY),
                    short=OperationSpec(name="short", timeout_s=0.3, retry=FAST_RETRY),
                )
            )
            yield gw, agent


async def history(gw: Running, op_id: str) -> list[dict[str, Any]]:
    async with gw.http.get(f"{gw.url}/api/operations/{op_id}/events") as r:
        assert r.status == 200
        return list((await r.json())["events"])


async def history_kinds(gw: Running, op_id: str) -> list[str]:
    return [e["kind"] for e in await history(gw, op_id)]


async def test_a_sync_agent_answer_comes_back_as_200_within_the_start_request(db_url: str) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("worker", "echo"), json={"q": 1}) as r:
            assert r.status == 200
            assert r.headers["Nexus-Operation-State"] == "succeeded"
            assert await r.json() == {"echo": {"q": 1}}
            op_id = r.headers["Nexus-Operation-Token"]
        kinds = [e["kind"] for e in await history(gw, op_id)]
        assert kinds == ["operation.started", "attempt.started", "operation.succeeded"]
        assert sum(agent.effects.values()) == 1


async def test_an_async_agent_gets_201_and_the_result_arrives_through_the_completion(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _agent):
        async with gw.http.post(gw.nexus("worker", "later"), json={"sleep": 0.2}) as r:
            assert r.status == 201
            body = await r.json()
            assert body["state"] == "running" and body["token"] == body["id"]
        token = body["token"]
        async with gw.http.get(gw.nexus("worker", "later"), params={"token": token}) as r:
            assert r.status == 200
            assert (await r.json())["state"] == "running"
        async with gw.http.get(
            gw.nexus("worker", "later") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"done": {"sleep": 0.2}}
        kinds = [e["kind"] for e in await history(gw, token)]
        assert kinds == [
            "operation.started",
            "attempt.started",
            "attempt.accepted",
            "step.completed",  # AgentApp records the answer in the journal ($result) first
            "operation.succeeded",
        ]


async def test_the_same_request_id_returns_the_same_operation_and_the_same_response(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        headers = {**JSON, "Nexus-Request-Id": "req-1"}
        async with gw.http.post(gw.nexus("worker", "echo"), json={"a": 1}, headers=headers) as r:
            first = (r.status, await r.read(), r.headers["Nexus-Operation-Token"])
        async with gw.http.post(gw.nexus("worker", "echo"), json={"a": 1}, headers=headers) as r:
            second = (r.status, await r.read(), r.headers["Nexus-Operation-Token"])
            assert r.headers.get("Idempotent-Replayed") == "true"
        assert first == second
        assert sum(agent.effects.values()) == 1
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert len((await r.json())["operations"]) == 1


async def test_an_idempotency_key_reused_with_another_body_is_refused_as_a_bad_request(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _agent):
        headers = {**JSON, "Idempotency-Key": '"k-1"'}
        async with gw.http.post(gw.nexus("worker", "echo"), json={"a": 1}, headers=headers) as r:
            assert r.status == 200
        async with gw.http.post(gw.nexus("worker", "echo"), json={"a": 2}, headers=headers) as r:
            assert r.status == 400  # 422 is not in the Nexus handler-error table
            failure = await r.json()
            assert failure["metadata"]["type"] == "nexus.HandlerError"
            assert failure["details"]["type"] == "BAD_REQUEST"


async def test_a_flaky_agent_is_retried_with_backoff_and_every_attempt_is_in_the_history(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("worker", "flaky"), json={"fail_times": 2}) as r:
            assert r.status == 201  # first attempt failed: the caller is not kept waiting
            token = (await r.json())["token"]
        async with gw.http.get(
            gw.nexus("worker", "flaky") + "/result", params={"token": token, "wait": "10s"}
        ) as r:
            assert r.status == 200
            assert await r.json() == {"attempts": 3}
        events = await history(gw, token)
        kinds = [e["kind"] for e in events]
        assert kinds.count("attempt.started") == 3
        assert kinds.count("attempt.failed") == 2
        assert kinds[-1] == "operation.succeeded"
        failed = [e for e in events if e["kind"] == "attempt.failed"]
        assert all(e["data"]["retryable"] and e["data"]["status"] == 503 for e in failed)
        assert agent.effects == {token: 1}


async def test_an_operation_failure_reported_by_the_agent_is_a_424_with_an_operation_error(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, _agent):
        async with gw.http.post(gw.nexus("worker", "broken"), json={}) as r:
            assert r.status == 424
            failure = await r.json()
        assert failure["metadata"]["type"] == "nexus.OperationError"
        assert failure["details"]["state"] == "failed"
        assert "no seats" in failure["message"]


async def test_a_non_retryable_agent_error_fails_the_operation_without_retrying(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("worker", "missing"), json={}) as r:
            assert r.status == 424
            failure = await r.json()
            token = r.headers["Nexus-Operation-Token"]
        assert failure["details"]["state"] == "failed"
        assert failure["cause"]["details"]["type"] == "NOT_FOUND"
        kinds = [e["kind"] for e in await history(gw, token)]
        assert kinds.count("attempt.started") == 1
        assert agent.calls == 1


async def test_cancel_is_idempotent_and_reaches_the_agent(db_url: str) -> None:
    async with swarm(db_url) as (gw, agent):
        async with gw.http.post(gw.nexus("worker", "hang"), json={}) as r:
            assert r.status == 201
            token = (await r.json())["token"]
        url = gw.nexus("worker", "hang") + "/cancel"
        for _ in range(3):
            async with gw.http.post(url, headers={"Nexus-Operation-Token": token}) as r:
                assert r.status == 202
        async with gw.http.post(url, params={"token": token}) as r:
            assert r.status == 202
        async with gw.http.get(
            gw.nexus("worker", "hang") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            assert r.status == 424
            assert (await r.json())["details"]["state"] == "canceled"
            assert r.headers["Nexus-Operation-State"] == "canceled"
        kinds = [e["kind"] for e in await history(gw, token)]
        assert kinds.count("cancel.requested") == 1
        assert kinds[-1] == "operation.canceled"
        assert agent.effects == {}


async def test_the_callback_gets_the_nexus_completion_signed_with_stripped_headers(
    db_url: str,
) -> None:
    receiver = Receiver()
    async with swarm(db_url) as (gw, _agent), serving(receiver.app()) as cb_url:
        headers = {**JSON, "Nexus-Callback-Token": "abc", "Nexus-Callback-X-Trace": "t1"}
        async with gw.http.post(
            gw.nexus("worker", "later"),
            json={"sleep": 0.05},
            params={"callback": cb_url + "/done"},
            headers=headers,
        ) as r:
            token = r.headers["Nexus-Operation-Token"]
        await receiver.wait()
        req = receiver.requests[0]
        h = req["headers"]
        assert req["path"] == "/done"
        assert h["Token"] == "abc" and h["X-Trace"] == "t1"
        assert h["Nexus-Operation-Token"] == token
        assert h["Nexus-Operation-State"] == "succeeded"
        assert h["Nexus-Operation-Start-Time"].endswith("GMT")
        assert h["Nexus-Operation-Close-Time"].endswith("Z")
        assert json.loads(req["body"]) == {"done": {"sleep": 0.05}}
        async with gw.http.get(f"{gw.url}/api/callback-secret") as r:
            secret = (await r.json())["secret"]
        assert secret.startswith("whsec_")
        assert verify([secret], h, req["body"]) == h["webhook-id"]


async def test_during_a_secret_rotation_callbacks_carry_both_signatures(db_url: str) -> None:
    receiver = Receiver()
    async with swarm(db_url) as (gw, _agent), serving(receiver.app()) as cb_url:
        async with gw.http.get(f"{gw.url}/api/callback-secret") as r:
            old = (await r.json())["secret"]
        async with gw.http.post(
            f"{gw.url}/api/callback-secret/rotate", json={"graceSeconds": 3600}
        ) as r:
            assert r.status == 200
            rotated = await r.json()
        new = rotated["secret"]
        assert new != old and rotated["previousSecretValidUntil"]
        async with gw.http.post(  # async: a sync (200) answer gets no callback
            gw.nexus("worker", "later"), json={}, params={"callback": cb_url}
        ):
            pass
        await receiver.wait()
        req = receiver.requests[0]
        assert len(req["headers"]["webhook-signature"].split(" ")) == 2
        assert verify([old], req["headers"], req["body"])
        assert verify([new], req["headers"], req["body"])
        async with gw.http.post(
            f"{gw.url}/api/callback-secret/rotate", json={"graceSeconds": -1}
        ) as r:
            assert r.status == 400
            assert r.headers["Content-Type"].startswith("application/problem+json")


async def test_a_refused_callback_is_retried_with_the_same_delivery_id(db_url: str) -> None:
    receiver = Receiver(refuse_first=2)
    async with swarm(db_url) as (gw, _agent), serving(receiver.app()) as cb_url:
        async with gw.http.post(  # async: a sync (200) answer gets no callback
            gw.nexus("worker", "later"), json={}, params={"callback": cb_url}
        ) as r:
            token = r.headers["Nexus-Operation-Token"]
        await receiver.wait()
        ids = {req["headers"]["webhook-id"] for req in receiver.requests}
        assert len(receiver.requests) == 3 and len(ids) == 1
        kinds = await eventually(  # the delivered event is written right after the 200
            lambda: history_kinds(gw, token), until=lambda k: "callback.delivered" in k
        )
        assert kinds.count("callback.failed") == 2
        assert kinds[-1] == "callback.delivered"


async def test_a_schedule_to_close_timeout_fails_the_operation_with_a_timeout_failure(
    db_url: str,
) -> None:
    clock = ManualClock()  # the deadline is computed from the engine's clock: moved by hand
    async with swarm(db_url, clock=clock) as (gw, _agent):
        await gw.gw.registry.register(
            spec_with(
                _agent,
                gw.gw.registry and (await gw.gw.registry.get("worker")).endpoint,  # type: ignore[union-attr]
                hang=OperationSpec(name="hang", timeout_s=30, retry=FAST_RETRY),
            )
        )
        async with gw.http.post(
            gw.nexus("worker", "hang"), json={}, headers={"Operation-Timeout": "300ms"}
        ) as r:
            assert r.status == 201
            token = (await r.json())["token"]
        # On the real clock the 300 ms deadline raced the agent's acceptance; here the
        # deadline passes only once the agent holds the work.
        await eventually(lambda: history_kinds(gw, token), until=lambda k: "attempt.accepted" in k)
        clock.advance(0.5)
        async with gw.http.get(
            gw.nexus("worker", "hang") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            assert r.status == 424
            failure = await r.json()
        assert "timed out" in failure["message"]
        assert failure["cause"]["metadata"]["type"] == "TimeoutError"
        # The agent had accepted the work: it is told to stop, so it spends nothing more.
        kinds = await eventually(
            lambda: history_kinds(gw, token), until=lambda k: "cancel.sent" in k
        )
        assert kinds[-2:] == ["operation.timed_out", "cancel.sent"]
        assert _agent.canceled == [token]
        op = await gw.gw.store.get_operation(token)
        assert op is not None and op.work is None and op.state.value == "failed"


async def test_result_without_wait_is_412_and_with_an_expired_wait_is_408(db_url: str) -> None:
    async with swarm(db_url) as (gw, _agent):
        async with gw.http.post(gw.nexus("worker", "hang"), json={}) as r:
            token = (await r.json())["token"]
        result = gw.nexus("worker", "hang") + "/result"
        async with gw.http.get(result, params={"token": token}) as r:
            assert r.status == 412
        async with gw.http.get(result, params={"token": token, "wait": "100ms"}) as r:
            assert r.status == 408
        async with gw.http.get(result, params={"token": "nope"}) as r:
            assert r.status == 404


async def test_bad_input_gets_a_handler_error_with_the_right_status(db_url: str) -> None:
    async with swarm(db_url) as (gw, _agent):
        cases = [
            ("POST", gw.nexus("nobody", "echo"), {}, 404),
            ("POST", gw.nexus("worker", "nothing"), {}, 404),
            ("POST", gw.nexus("worker", "echo"), {"Operation-Timeout": "soon"}, 400),
            ("POST", gw.nexus("worker", "hang") + "/cancel", {}, 400),
            ("GET", gw.nexus("worker", "echo"), {}, 400),
        ]
        for method, url, headers, status in cases:
            async with gw.http.request(method, url, headers=headers, json={}) as r:
                assert r.status == status, (url, headers)
                body = await r.json()
                assert body["metadata"]["type"] == "nexus.HandlerError"
        async with gw.http.post(
            f"{gw.url}/api/completions/x", headers={"Authorization": "Bearer no"}
        ) as r:
            assert r.status == 401
            assert r.headers["Content-Type"].startswith("application/problem+json")
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert (await r.json())["operations"] == []


async def test_a_callback_url_pointing_at_a_private_address_is_refused(db_url: str) -> None:
    async with swarm(db_url, allow_cidrs=()) as (gw, _agent):
        async with gw.http.post(
            gw.nexus("worker", "echo"),
            json={},
            params={"callback": "http://169.254.169.254/latest"},
        ) as r:
            assert r.status == 400
        async with gw.http.get(f"{gw.url}/api/operations") as r:
            assert (await r.json())["operations"] == []


async def test_a_completion_with_a_forged_token_changes_nothing(db_url: str) -> None:
    async with swarm(db_url) as (gw, _agent):
        async with gw.http.post(gw.nexus("worker", "hang"), json={}) as r:
            token = (await r.json())["token"]
        forged = gw.gw.engine.completion_token("another-operation")
        async with gw.http.post(
            f"{gw.url}/api/completions/{token}",
            headers={"Authorization": f"Bearer {forged}", "Nexus-Operation-State": "succeeded"},
            data=b"{}",
        ) as r:
            assert r.status == 401
        op = await gw.gw.store.get_operation(token)
        assert op is not None and op.state.value == "running"


async def test_retry_policy_max_attempts_fails_the_operation_after_the_last_attempt(
    db_url: str,
) -> None:
    async with swarm(db_url) as (gw, agent):
        found = await gw.gw.registry.get("worker")
        assert found is not None
        policy = RetryPolicy(initial_s=0.02, max_s=0.05, jitter_s=0.0, max_attempts=2)
        await gw.gw.registry.register(
            spec_with(agent, found.endpoint, flaky=OperationSpec(name="flaky", retry=policy))
        )
        async with gw.http.post(gw.nexus("worker", "flaky"), json={"fail_times": 5}) as r:
            token = (await r.json())["token"]
        async with gw.http.get(
            gw.nexus("worker", "flaky") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            assert r.status == 424
            assert "gave up after 2 attempts" in (await r.json())["message"]
