"""Agents that are MCP servers behind the gateway: a real ``mcp`` SDK server (MCPServer over
Streamable HTTP, served by uvicorn on loopback) registered by URL, and the gateway's own
/mcp endpoint as an MCP server that offers tasks."""

from __future__ import annotations

from typing import Any

from examples.swarm.mcp_currency import currency_server, currency_spec, serve_mcp
from gateway.domain.model import OperationState
from gateway.testing import eventually
from tests.conftest import Running, free_port, make_settings, running_gateway, serving_agent
from tests.integration.test_mcp_endpoint import mcp_agent

FAST = {"initial_s": 0.05, "max_s": 0.2, "jitter_s": 0.02}


async def register(gw: Running, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with gw.http.post(gw.url + "/api/agents", json=body) as resp:
        return resp.status, await resp.json()


async def test_an_mcp_server_registered_by_url_offers_its_tools_as_operations(
    db_url: str,
) -> None:
    calls: list[dict[str, Any]] = []
    async with (
        serve_mcp(currency_server(calls), free_port()) as endpoint,
        running_gateway(make_settings(db_url)) as gw,
    ):
        status, agent = await register(gw, currency_spec("currency", endpoint))
        assert status == 201, agent
        ops = {o["name"]: o for o in agent["operations"]}
        assert set(ops) == {"convert", "currencies"}
        assert ops["convert"]["description"] == "Convert an amount in EUR into another currency"
        assert ops["convert"]["input_schema"]["required"] == ["eur", "currency"]
        assert ops["convert"]["output_schema"]["properties"]["amount"]["type"] == "number"
        async with gw.http.post(
            gw.nexus("currency", "convert"), json={"eur": 10, "currency": "usd"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"amount": 10.8, "currency": "USD", "rate": 1.08}
        assert calls == [{"tool": "convert", "eur": 10.0, "currency": "usd"}]
        # the input schema from the tool is enforced before the agent is asked
        async with gw.http.post(gw.nexus("currency", "convert"), json={"eur": "ten"}) as resp:
            assert resp.status == 400
        # a tool error is a failed operation (424), not retried
        async with gw.http.post(
            gw.nexus("currency", "convert"), json={"eur": 1, "currency": "XXX"}
        ) as resp:
            assert resp.status == 424
            assert "unknown currency" in (await resp.json())["message"]
        assert len(calls) == 2


async def test_a_start_waits_out_an_mcp_server_that_is_down_for_a_moment(tmp_path: Any) -> None:
    port = free_port()
    calls: list[dict[str, Any]] = []
    settings = make_settings(f"sqlite:///{tmp_path}/swarmgate.db")
    async with running_gateway(settings) as gw:
        async with serve_mcp(currency_server(calls), port) as endpoint:
            body = {
                **currency_spec("currency", endpoint),
                "operations": {"convert": {"retry": FAST}},
            }
            status, agent = await register(gw, body)
            assert status == 201, agent
            assert [o["name"] for o in agent["operations"]] == ["convert"]  # limited to it
        # the server is down now: the start is persisted and retried
        async with gw.http.post(
            gw.nexus("currency", "convert"), json={"eur": 2, "currency": "NOK"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            token = (await resp.json())["token"]

        async def retried() -> bool:
            op = await gw.gw.store.get_operation(token)
            return op is not None and op.attempts >= 2 and op.last_error is not None

        await eventually(retried, timeout=10)
        async with serve_mcp(currency_server(calls), port):
            async with gw.http.get(
                gw.nexus("currency", "convert") + "/result",
                params={"token": token, "wait": "20s"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["amount"] == 23.2
        assert len(calls) == 1  # nothing reached the tool while the server was down


async def test_an_mcp_server_with_tasks_is_called_with_a_task_polled_and_cancelled(
    tmp_path: Any,
) -> None:
    """The gateway's own /mcp advertises tasks: registered as an MCP agent of itself, its
    tools are called task-augmented, polled with tasks/get and cancelled with tasks/cancel."""
    agent = mcp_agent()
    settings = make_settings(f"sqlite:///{tmp_path}/swarmgate.db")
    async with serving_agent(agent) as agent_url, running_gateway(settings) as gw:
        await gw.gw.registry.register(agent.spec(agent_url))
        body = {
            "name": "loop",
            "endpoint": gw.url + "/mcp",
            "adapter": "mcp",
            "operations": {"worker__later": {"retry": FAST}, "worker__hang": {"retry": FAST}},
        }
        status, registered = await register(gw, body)
        assert status == 201, registered
        async with gw.http.post(gw.nexus("loop", "worker__later"), json={"sleep": 0.3}) as resp:
            assert resp.status in (200, 201), await resp.text()
            token = resp.headers["Nexus-Operation-Token"]
        async with gw.http.get(
            gw.nexus("loop", "worker__later") + "/result", params={"token": token, "wait": "20s"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"done": {"sleep": 0.3}}
        outer = await gw.gw.store.get_operation(token)
        assert outer is not None and outer.agent_token  # the inner task's id
        inner = await gw.gw.store.get_operation(outer.agent_token)
        assert inner is not None and (inner.service, inner.operation) == ("worker", "later")
        assert inner.request_id == token  # the outer operation id deduplicates retried calls

        async with gw.http.post(gw.nexus("loop", "worker__hang"), json={}) as resp:
            hang = resp.headers["Nexus-Operation-Token"]

        async def accepted() -> str | None:
            op = await gw.gw.store.get_operation(hang)
            return op.agent_token if op is not None else None

        inner_id = await eventually(accepted, timeout=10)
        async with gw.http.post(
            gw.nexus("loop", "worker__hang") + "/cancel", headers={"Nexus-Operation-Token": hang}
        ) as resp:
            assert resp.status == 202

        async def inner_cancelled() -> bool:
            op = await gw.gw.store.get_operation(inner_id)
            return op is not None and op.state is OperationState.CANCELED

        await eventually(inner_cancelled, timeout=10)

        async def outer_cancelled() -> bool:
            op = await gw.gw.store.get_operation(hang)
            return op is not None and op.state is OperationState.CANCELED

        await eventually(outer_cancelled, timeout=10)
