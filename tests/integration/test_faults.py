"""Faults at the store boundary: a write that commits but whose reply is lost."""

from __future__ import annotations

from typing import Any

from gateway.domain.errors import StoreUnavailable
from gateway.domain.ports import Store
from gateway.testing import eventually
from tests.conftest import make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent


class LostReplyStore:
    """The real store, except that chosen methods commit and then lose their reply once."""

    def __init__(self, inner: Store, *lose: str) -> None:
        self._inner = inner
        self._lose = set(lose)
        self.lost: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._inner, name)
        if name not in self._lose:
            return real

        async def committed_then_lost(*args: Any, **kwargs: Any) -> Any:
            result = await real(*args, **kwargs)  # the transaction commits...
            if name in self._lose:
                self._lose.discard(name)
                self.lost.append(name)
                raise StoreUnavailable("connection lost before the reply")  # ...the reply doesn't
            return result

        return committed_then_lost


async def test_a_start_whose_commit_reply_is_lost_is_retried_into_the_same_operation(
    db_url: str,
) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url, running_gateway(make_settings(db_url)) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        faulty = LostReplyStore(gw.gw.engine.store, "create_operation")
        gw.gw.engine.store = faulty  # type: ignore[assignment]
        headers = {"Nexus-Request-Id": "lost-1"}
        async with gw.http.post(gw.nexus("worker", "echo"), json={"x": 1}, headers=headers) as r:
            assert r.status == 503  # the caller sees a failure and retries
            assert r.headers["Retry-After"] == "1"
        assert faulty.lost == ["create_operation"]
        async with gw.http.post(gw.nexus("worker", "echo"), json={"x": 1}, headers=headers) as r:
            assert r.status in (200, 201)
            token = r.headers["Nexus-Operation-Token"]
        async with gw.http.get(
            gw.nexus("worker", "echo") + "/result", params={"token": token, "wait": "10s"}
        ) as r:
            assert r.status == 200
        ops = await gw.gw.store.list_operations()
        assert [o.id for o in ops] == [token]  # no duplicate operation
        assert agent.effects == {token: 1}


async def test_a_completion_whose_commit_reply_is_lost_does_not_close_the_operation_twice(
    db_url: str,
) -> None:
    agent = make_test_agent()
    receiver = Receiver()
    async with (
        serving_agent(agent) as agent_url,
        serving(receiver.app()) as cb_url,
        running_gateway(make_settings(db_url)) as gw,
    ):
        await gw.gw.registry.register(agent.spec(agent_url))
        faulty = LostReplyStore(gw.gw.engine.store, "complete")
        gw.gw.engine.store = faulty  # type: ignore[assignment]
        # The async agent completes through the gateway: the first completion commits but the
        # gateway answers 503; the agent retries; the retry finds the operation closed.
        async with gw.http.post(
            gw.nexus("worker", "later"), json={"sleep": 0.05}, params={"callback": cb_url}
        ) as r:
            token = r.headers["Nexus-Operation-Token"]
        await receiver.wait()
        async with gw.http.get(
            gw.nexus("worker", "later") + "/result", params={"token": token, "wait": "5s"}
        ) as r:
            assert r.status == 200
        assert faulty.lost == ["complete"]
        events = await gw.gw.store.list_events(token)
        closes = [
            e.kind
            for e in events
            if e.kind.startswith("operation.") and e.kind != "operation.started"
        ]
        assert closes == ["operation.succeeded"]
        callbacks = await gw.gw.store.list_callbacks(token)
        assert len(callbacks) == 1
        # the agent retries its completion after the 503
        await eventually(lambda: agent.completions_sent.get(token))
        assert agent.completions_sent[token] == 1
        events = await gw.gw.store.list_events(token)
        assert [e.kind for e in events].count("operation.succeeded") == 1
