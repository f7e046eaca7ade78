"""/mcp on the wire (plain HTTP): sessions, SSE answers, the bounded wait, idempotent retries,
pagination and the transport's refusals."""

from __future__ import annotations

import json
from typing import Any

from gateway.http.mcp import MCP
from tests.conftest import Running
from tests.integration.test_mcp_endpoint import gateway_with_agent, sqlite

JSON_AND_SSE = {"Accept": "application/json, text/event-stream"}


async def rpc(
    gw: Running,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    rpc_id: int | str | None = 1,
) -> tuple[int, dict[str, str], Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if rpc_id is not None:
        message["id"] = rpc_id
    async with gw.http.post(
        gw.url + "/mcp", json=message, headers={**JSON_AND_SSE, **(headers or {})}
    ) as resp:
        text = await resp.text()
        body = json.loads(text) if text and "json" in resp.content_type else text
        return resp.status, dict(resp.headers), body


async def initialize(gw: Running) -> str:
    status, headers, body = await rpc(
        gw,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}},
    )
    assert status == 200 and body["result"]["protocolVersion"] == "2025-11-25"
    return headers["Mcp-Session-Id"]


async def test_a_session_ends_with_delete_and_a_forged_or_ended_session_is_404(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw:
        sid = await initialize(gw)
        assert (await rpc(gw, "notifications/initialized", rpc_id=None, headers={}))[0] == 202
        status, _h, body = await rpc(gw, "ping", headers={"Mcp-Session-Id": sid})
        assert (status, body["result"]) == (200, {})
        forged = sid[:-2] + ("AA" if not sid.endswith("AA") else "BB")
        assert (await rpc(gw, "ping", headers={"Mcp-Session-Id": forged}))[0] == 404
        async with gw.http.get(gw.url + "/mcp", headers=JSON_AND_SSE) as resp:
            assert resp.status == 405  # no server stream
        async with gw.http.delete(gw.url + "/mcp", headers={"Mcp-Session-Id": sid}) as resp:
            assert resp.status == 204
        status, _h, body = await rpc(gw, "ping", headers={"Mcp-Session-Id": sid})
        assert status == 404 and body["error"]["code"] == -32600


async def test_malformed_messages_and_unknown_versions_are_refused(tmp_path: Any) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw:
        async with gw.http.post(gw.url + "/mcp", data=b"{not json", headers=JSON_AND_SSE) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == -32700
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
        async with gw.http.post(gw.url + "/mcp", json=batch, headers=JSON_AND_SSE) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == -32600
        status, _h, body = await rpc(gw, "ping", headers={"MCP-Protocol-Version": "1999-01-01"})
        assert status == 400 and "1999-01-01" in body["error"]["message"]
        status, _h, body = await rpc(gw, "resources/list")
        assert status == 200 and body["error"]["code"] == -32601
        status, _h, body = await rpc(gw, "tools/call", {"name": "worker__nope"})
        assert body["error"]["code"] == -32602
        status, _h, body = await rpc(gw, "tasks/get", {"taskId": "no-such-task"})
        assert body["error"]["code"] == -32602
        status, _h, _b = await rpc(gw, "ping", headers={"Origin": "http://evil.example"})
        assert status == 403  # DNS-rebinding defence


async def test_a_client_that_accepts_only_sse_gets_its_answer_as_one_event(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw:
        message = {
            "jsonrpc": "2.0",
            "id": "c1",
            "method": "tools/call",
            "params": {"name": "worker__echo", "arguments": {"msg": "sse"}},
        }
        async with gw.http.post(
            gw.url + "/mcp", json=message, headers={"Accept": "text/event-stream"}
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            text = await resp.text()
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        answer = json.loads(data[0])
        assert answer["id"] == "c1"
        assert answer["result"]["structuredContent"] == {"echo": {"msg": "sse"}}


async def test_a_call_that_outlasts_the_wait_names_its_task_which_then_completes(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path), mcp_wait_s=0.3) as gw:
        status, _h, body = await rpc(
            gw, "tools/call", {"name": "worker__later", "arguments": {"sleep": 1.5}}
        )
        assert status == 200
        assert body["error"]["code"] == -32000
        assert "task" in body["error"]["message"]
        task_id = body["error"]["data"]["taskId"]
        gw.gw.app[MCP].wait_s = 20.0  # now wait for it: tasks/result blocks until it is done
        status, _h, body = await rpc(gw, "tasks/result", {"taskId": task_id})
        assert body["result"]["structuredContent"] == {"done": {"sleep": 1.5}}
        assert body["result"]["_meta"]["io.modelcontextprotocol/related-task"] == {
            "taskId": task_id
        }


async def test_a_retried_task_call_with_the_same_idempotency_key_is_the_same_task(
    tmp_path: Any,
) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw:
        params: dict[str, Any] = {
            "name": "worker__later",
            "arguments": {"sleep": 0.1},
            "task": {"ttl": 60000},
            "_meta": {"io.swarmgate/idempotency-key": "retry-1"},
        }
        first = (await rpc(gw, "tools/call", params, rpc_id=1))[2]["result"]["task"]
        again = (await rpc(gw, "tools/call", params, rpc_id=2))[2]["result"]["task"]
        assert again["taskId"] == first["taskId"]
        header = (await rpc(gw, "tools/call", {**params, "_meta": {}}, rpc_id=3))[2]
        assert header["result"]["task"]["taskId"] != first["taskId"]  # no key: a new task
        changed = {**params, "arguments": {"sleep": 0.2}}
        _status, _h, body = await rpc(gw, "tools/call", changed, rpc_id=4)
        assert body["error"]["code"] == -32602  # same key, other arguments
        keyed = {k: v for k, v in params.items() if k != "_meta"}
        by_header = [
            (await rpc(gw, "tools/call", keyed, headers={"Idempotency-Key": "h-1"}))[2]
            for _ in range(2)
        ]
        ids = {b["result"]["task"]["taskId"] for b in by_header}
        assert len(ids) == 1


async def test_tasks_list_pages_through_the_callers_tasks_with_a_cursor(tmp_path: Any) -> None:
    async with gateway_with_agent(sqlite(tmp_path)) as gw:
        gw.gw.app[MCP].page_size = 2
        made = set()
        for n in range(5):
            params = {"name": "worker__echo", "arguments": {"msg": str(n)}, "task": {}}
            made.add((await rpc(gw, "tools/call", params))[2]["result"]["task"]["taskId"])
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            _status, _h, body = await rpc(gw, "tasks/list", {"cursor": cursor} if cursor else {})
            pages += 1
            seen += [t["taskId"] for t in body["result"]["tasks"]]
            cursor = body["result"].get("nextCursor")
            if not cursor:
                break
        assert pages == 3
        assert set(seen) == made and len(seen) == 5
        _status, _h, body = await rpc(gw, "tasks/list", {"cursor": "x"})
        assert body["error"]["code"] == -32602
