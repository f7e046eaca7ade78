"""A2A SendMessage with a push URL the gateway refuses: nothing is started (issue 13, item 13)."""

from __future__ import annotations

import pytest
from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import SendMessageRequest

from tests.conftest import make_settings, running_gateway, serving_agent
from tests.helpers import make_test_agent, spec_with
from tests.integration.test_a2a_facade import message


async def test_a_send_message_whose_push_url_is_refused_creates_no_task(db_url: str) -> None:
    agent = make_test_agent()
    async with serving_agent(agent) as agent_url:
        async with running_gateway(make_settings(db_url)) as gw:
            await gw.gw.registry.register(spec_with(agent, agent_url))
            client = await create_client(
                f"{gw.url}/a2a/worker", client_config=ClientConfig(streaming=False)
            )
            try:
                req = SendMessageRequest(message=message("echo", {"x": 1}, "m-refused"))
                req.configuration.return_immediately = True
                # link-local metadata address: refused by the outbound URL screen
                req.configuration.task_push_notification_config.url = (
                    "http://169.254.169.254/latest/meta-data"
                )
                with pytest.raises(Exception) as caught:
                    _ = [r async for r in client.send_message(req)]
                assert "push notification URL" in str(caught.value)
            finally:
                await client.close()
            ops = await gw.gw.engine.store.list_operations(
                caller=None, service="worker", state=None, limit=10
            )
            assert ops == []
            assert agent.effects == {}
