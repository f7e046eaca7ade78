"""A delivered callback whose ack is still lingering takes no place among
``SWARMGATE_MAX_INFLIGHT``: the next operation's callback is leased at its close and sent at
once, not left for a claim round after the first ack commits."""

from __future__ import annotations

from gateway.domain.model import Event
from gateway.testing import eventually
from tests.conftest import Running, make_settings, running_gateway, serving, serving_agent
from tests.helpers import Receiver, make_test_agent


async def events(gw: Running, op_id: str) -> list[Event]:
    return await gw.gw.store.list_events(op_id)


async def test_a_callback_waiting_for_its_ack_leaves_room_for_the_next_delivery(
    db_url: str,
) -> None:
    agent = make_test_agent()
    receiver = Receiver()
    # one delivery at a time, and an ack that waits a second to fill its batch
    settings = make_settings(db_url, max_inflight=1, callback_ack_linger_s=1.0, sync_wait_s=0)
    async with (
        serving_agent(agent) as url,
        serving(receiver.app()) as cb,
        running_gateway(settings) as gw,
    ):
        await gw.gw.registry.register(agent.spec(url))
        ids = []
        for n in (1, 2):
            params = {"callback": f"{cb}/op{n}"}
            async with gw.http.post(gw.nexus("worker", "echo"), json={}, params=params) as r:
                assert r.status == 201
                ids.append(r.headers["Nexus-Operation-Token"])
            await eventually(lambda: len(receiver.requests) >= len(ids))
            # the first callback was delivered; its ack has not committed yet
            first = [e.kind for e in await events(gw, ids[0])]
            assert "callback.delivered" not in first, (n, first)
        assert [r["path"] for r in receiver.requests] == ["/op1", "/op2"]

        async def both_acked() -> bool:
            kinds = [[e.kind for e in await events(gw, op_id)] for op_id in ids]
            return all("callback.delivered" in k for k in kinds)

        await eventually(both_acked, timeout=5)
