"""MCP protocol logic without I/O: session ids, tool names and schemas, results and tasks
(``adapters.mcp_facade``) and what the outbound adapter makes of MCP answers
(``adapters.mcp``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from adapters import mcp_facade as proto
from adapters.mcp import operations_from_tools, outcome_from_call_result, sse_messages
from gateway.domain.dispatch import OutcomeKind
from gateway.domain.model import Operation, OperationState
from gateway.domain.specs import OperationSpec

KEY = b"k" * 32


def op(state: OperationState, **kw: object) -> Operation:
    return Operation(
        id="op-1",
        service="a",
        operation="b",
        state=state,
        caller="alice",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        **kw,  # type: ignore[arg-type]
    )


def test_a_session_id_reads_back_only_with_its_key_and_unaltered() -> None:
    sid = proto.new_session_id(KEY, "alice", "2025-11-25", now=1000)
    assert proto.read_session_id(KEY, sid) == {"s": "alice", "v": "2025-11-25", "t": 1000}
    assert proto.read_session_id(b"x" * 32, sid) is None
    _body, sig = sid.split(".")
    other = proto.new_session_id(KEY, "mallory", "2025-11-25", now=1000).split(".")[0]
    assert proto.read_session_id(KEY, f"{other}.{sig}") is None
    assert proto.read_session_id(KEY, "garbage") is None
    assert proto.read_session_id(KEY, "a.b.c") is None


def test_tool_names_follow_mcps_rules_or_the_operation_is_not_a_tool() -> None:
    assert proto.tool_name("weather", "forecast") == "weather__forecast"
    assert proto.tool_name("a" * 100, "b" * 30) is None  # over 128 characters


def test_non_object_schemas_are_wrapped_and_the_input_unwrapped() -> None:
    plain = OperationSpec(name="x")
    assert proto.input_schema(plain) == {"type": "object"}
    assert proto.output_schema(plain) is None
    assert json.loads(proto.tool_input(plain, {"a": 1})) == {"a": 1}
    number = OperationSpec(
        name="x", input_schema={"type": "integer"}, output_schema={"type": "integer"}
    )
    assert proto.input_schema(number)["properties"] == {"input": {"type": "integer"}}
    assert proto.output_schema(number) == {
        "type": "object",
        "properties": {"result": {"type": "integer"}},
        "required": ["result"],
    }
    assert proto.tool_input(number, {"input": 3}) == b"3"
    with pytest.raises(proto.McpFault):
        proto.tool_input(number, {"value": 3})
    with pytest.raises(proto.McpFault):
        proto.tool_input(plain, [1, 2])


def test_messages_that_are_not_single_json_rpc_objects_are_faults() -> None:
    for raw, code in [
        (b"[]", proto.INVALID_REQUEST),
        (b"{", proto.PARSE_ERROR),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', proto.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', proto.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]}', proto.INVALID_PARAMS),
    ]:
        with pytest.raises(proto.McpFault) as fault:
            proto.parse_message(raw)
        assert fault.value.code == code, raw
    note = proto.parse_message(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    assert not note.is_request
    reply = proto.parse_message(b'{"jsonrpc": "2.0", "id": 7, "result": {}}')
    assert reply.method is None and not reply.is_request


def test_operations_become_tasks_and_call_results() -> None:
    running = proto.task_json(op(OperationState.RUNNING), 500)
    assert running["status"] == "working" and running["pollInterval"] == 500
    assert running["createdAt"] == "2026-01-01T00:00:00Z"
    failed = op(OperationState.FAILED, failure={"message": "boom"})
    assert proto.task_json(failed, 500)["status"] == "failed"
    assert proto.call_result(failed, None)["isError"] is True
    canceled = proto.task_json(op(OperationState.CANCELED), 500)
    assert canceled["status"] == "cancelled"
    done = op(OperationState.SUCCEEDED, result=b"[1, 2]", result_content_type="application/json")
    res = proto.call_result(done, None)
    assert res["structuredContent"] == {"result": [1, 2]}
    assert json.loads(res["content"][0]["text"]) == [1, 2]


def test_sse_bodies_yield_each_events_json() -> None:
    body = (
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
        b": a comment\n\n"
        b'event: message\r\ndata: {"jsonrpc":"2.0","id":"x","result":{}}\r\n\r\n'
    )
    assert [m.get("id") for m in sse_messages(body)] == [None, "x"]


def test_call_results_map_to_outcomes() -> None:
    ok = outcome_from_call_result({"content": [], "structuredContent": {"a": 1}})
    assert ok.kind is OutcomeKind.SUCCEEDED and json.loads(ok.result or b"") == {"a": 1}
    text = outcome_from_call_result({"content": [{"type": "text", "text": "hi"}]})
    assert json.loads(text.result or b"") == "hi"
    err = outcome_from_call_result({"content": [{"type": "text", "text": "no"}], "isError": True})
    assert err.kind is OutcomeKind.OPERATION_FAILED and err.failure
    assert err.failure["message"] == "no"
    assert outcome_from_call_result("nonsense").kind is OutcomeKind.RETRYABLE


def test_tools_become_operations_limited_and_configured_by_the_registration() -> None:
    tools = [
        {"name": "add", "description": "adds", "inputSchema": {"type": "object"}},
        {"name": "bad name", "inputSchema": {"type": "object"}},
        {"name": "sub", "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}},
    ]
    ops = operations_from_tools(tools, {})
    assert set(ops) == {"add", "sub"}
    assert ops["add"].description == "adds" and ops["sub"].output_schema == {"type": "object"}
    given = {"sub": OperationSpec(name="sub", attempt_timeout_s=3.0)}
    limited = operations_from_tools(tools, given)
    assert set(limited) == {"sub"} and limited["sub"].attempt_timeout_s == 3.0
    assert limited["sub"].input_schema == {"type": "object"}
    with pytest.raises(ValueError, match="mul"):
        operations_from_tools(tools, {"mul": OperationSpec(name="mul")})
