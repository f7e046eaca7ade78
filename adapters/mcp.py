"""Outbound adapter for agents that are MCP servers (Streamable HTTP, spec 2025-11-25).

An MCP agent is registered by URL: its tools become its operations (``tools/list`` at
registration or refresh, see :func:`operations_from_tools`), each tool's ``inputSchema`` and
``outputSchema`` the operation's schemas (checked by the registry like any other).

Session: ``initialize`` (then ``notifications/initialized``) once per endpoint and process;
the ``Mcp-Session-Id`` and the negotiated ``MCP-Protocol-Version`` go on every later request.
A 404 on a request that carried a session id means the server forgot it: the adapter opens
a new session and sends the request once more.

Start: ``tools/call`` with the operation input as ``arguments`` (a JSON object), the
operation id as ``Idempotency-Key`` header and as ``_meta["io.swarmgate/idempotency-key"]``
(MCP itself has no idempotency key; servers that know neither ignore them).

- The server advertises ``tasks.requests.tools.call`` and the tool ``execution.taskSupport``
  is ``optional`` or ``required``: the call carries ``task`` (``ttl`` = the time left to the
  operation's deadline) and the answer is a task -> ACCEPTED with ``agent_token`` = taskId;
  the engine then polls durably (``poll``: ``tasks/get``, and ``tasks/result`` once the task
  is terminal); cancel is ``tasks/cancel``.
- Otherwise a plain ``tools/call`` bounded by the attempt timeout: ``isError`` -> the
  operation failed; ``structuredContent`` (else the text content) -> the result.

JSON-RPC errors: parse error, invalid request, method not found and invalid params are
permanent; others (internal, server errors) are retried. HTTP errors are classified like
``adapters.http.classify_error``; transport errors are retried. All HTTP goes through the
gateway's screened transport.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from adapters.http import classify_error
from adapters.jsonrpc import JSONRPC_PERMANENT_CODES, JsonRpcError
from adapters.mcp_facade import IDEMPOTENCY_META, LATEST_VERSION, SUPPORTED_VERSIONS
from gateway.domain import jsonio
from gateway.domain.dispatch import (
    CancelRequest,
    DispatchRequest,
    HttpResponse,
    Outcome,
    OutcomeKind,
    Transport,
    TransportError,
)
from gateway.domain.model import failure
from gateway.domain.specs import OperationSpec

JSON_CT = "application/json"
ACCEPT = "application/json, text/event-stream"
PERMANENT_CODES = JSONRPC_PERMANENT_CODES
MAX_TOOL_PAGES = 20
OPERATION_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
DISCOVERED_ATTEMPT_TIMEOUT_S = 60.0  # a plain tools/call answers when the tool is done


class McpRpcError(JsonRpcError):
    """A JSON-RPC error answer of an MCP server."""

    label = "MCP JSON-RPC"
    failure_type = "mcp.JSONRPCError"
    permanent_codes = PERMANENT_CODES


class McpTrouble(Exception):
    """The request got no usable JSON-RPC answer; ``outcome`` says what to do."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or "MCP request failed")
        self.outcome = outcome


class SessionGone(Exception):
    """The server answered 404 to a request with a session id: open a new session."""


@dataclass
class Session:
    session_id: str | None
    version: str
    tasks_call: bool  # the server takes task-augmented tools/call
    task_support: dict[str, str] | None = None  # tool -> forbidden|optional|required


@dataclass
class _Clock:
    deadline: float

    def left(self) -> float:
        return max(0.05, self.deadline - asyncio.get_running_loop().time())


def sse_messages(body: bytes) -> list[Any]:
    """The JSON ``data`` of each event of a ``text/event-stream`` body."""
    out: list[Any] = []
    text = body.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    for block in text.split("\n\n"):
        lines = block.split("\n")
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if not data:
            continue
        try:
            out.append(jsonio.loads("\n".join(data)))
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def _answer_for(resp: HttpResponse, rpc_id: str) -> Any:
    ct = resp.headers.get("Content-Type", "").lower()
    if ct.startswith("text/event-stream"):
        messages = sse_messages(resp.body)
    else:
        try:
            messages = [jsonio.loads(resp.body)]
        except (ValueError, UnicodeDecodeError):
            raise McpTrouble(
                Outcome(kind=OutcomeKind.RETRYABLE, error="MCP server answered non-JSON")
            ) from None
    for msg in messages:
        if isinstance(msg, dict) and msg.get("id") == rpc_id:
            err = msg.get("error")
            if isinstance(err, dict):
                code = err.get("code")
                raise McpRpcError(
                    code if isinstance(code, int) and not isinstance(code, bool) else -32603,
                    str(err.get("message") or "error"),
                    err.get("data"),
                )
            if "result" in msg:
                return msg["result"]
    raise McpTrouble(
        Outcome(kind=OutcomeKind.RETRYABLE, error="MCP server sent no answer to the request")
    )


def _dig(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``data[k1][k2]...`` where each is an object; {} where one is missing."""
    for key in keys:
        value = data.get(key)
        data = value if isinstance(value, dict) else {}
    return data


def outcome_from_call_result(res: Any, task_id: str | None = None) -> Outcome:
    """Map a CallToolResult: isError -> failed; else structuredContent (or the text)."""
    if not isinstance(res, dict):
        return Outcome(kind=OutcomeKind.RETRYABLE, error="MCP server sent no CallToolResult")
    raw_content = res.get("content")
    content: list[Any] = raw_content if isinstance(raw_content, list) else []
    texts = [str(c.get("text")) for c in content if isinstance(c, dict) and c.get("type") == "text"]
    if res.get("isError"):
        message = " ".join(texts) or "the MCP tool reported an error"
        return Outcome(
            kind=OutcomeKind.OPERATION_FAILED,
            state="failed",
            agent_token=task_id,
            failure=failure(message, type="mcp.ToolError", details={"content": content}),
        )
    if isinstance(res.get("structuredContent"), dict):
        value: Any = res["structuredContent"]
    elif len(texts) == 1 and len(content) == 1:
        value = texts[0]
    else:
        value = content
    return Outcome(
        kind=OutcomeKind.SUCCEEDED,
        result=json.dumps(value).encode(),
        content_type=JSON_CT,
        agent_token=task_id,
        status=200,
    )


def operations_from_tools(
    tools: list[Any], given: dict[str, OperationSpec]
) -> dict[str, OperationSpec]:
    """Operations made from ``tools/list`` entries. Operations the registration names keep
    their settings (timeouts, retries, concurrency; schemas only when it gives them) and
    limit the agent to those tools; tools whose names are no operation names are left out."""
    found: dict[str, OperationSpec] = {}
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name or len(name) > 200:
            continue
        if not set(name) <= OPERATION_NAME_CHARS or (given and name not in given):
            continue
        in_schema = tool.get("inputSchema")
        out_schema = tool.get("outputSchema")
        description = str(tool.get("description") or tool.get("title") or "")
        base = given.get(name) or OperationSpec(
            name=name, attempt_timeout_s=DISCOVERED_ATTEMPT_TIMEOUT_S
        )
        found[name] = replace(
            base,
            description=base.description or description,
            input_schema=base.input_schema
            if base.input_schema is not None
            else (in_schema if isinstance(in_schema, dict) else None),
            output_schema=base.output_schema
            if base.output_schema is not None
            else (out_schema if isinstance(out_schema, dict) else None),
        )
    missing = sorted(set(given) - set(found))
    if missing:
        raise ValueError(f"the MCP server lists no tool named {', '.join(missing)}")
    return found


@dataclass
class McpAgentAdapter:
    transport: Transport
    client_version: str = "0.1.0"
    sessions: dict[str, Session] = field(default_factory=dict)
    # the agent's credentials per endpoint (from the latest DispatchRequest/CancelRequest), sent
    # with every request to it, the session's initialize included; never logged
    auth: dict[str, dict[str, str]] = field(default_factory=dict)

    # -- JSON-RPC over Streamable HTTP ------------------------------------------------------

    def _headers(
        self, endpoint: str, session: Session | None, extra: dict[str, str] | None
    ) -> dict[str, str]:
        headers = {"Content-Type": JSON_CT, "Accept": ACCEPT, **self.auth.get(endpoint, {})}
        if session is not None:
            headers["MCP-Protocol-Version"] = session.version
            if session.session_id:
                headers["Mcp-Session-Id"] = session.session_id
        headers.update(extra or {})
        return headers

    async def _post(
        self,
        endpoint: str,
        message: dict[str, Any],
        session: Session | None,
        timeout_s: float,
        extra: dict[str, str] | None = None,
    ) -> HttpResponse:
        try:
            resp = await self.transport.request(
                "POST",
                endpoint,
                headers=self._headers(endpoint, session, extra),
                body=json.dumps(message).encode(),
                timeout_s=timeout_s,
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            raise McpTrouble(Outcome(kind=kind, error=str(exc))) from None
        if resp.status == 404 and session is not None and session.session_id:
            raise SessionGone()
        if resp.status >= 400 and "json" in resp.headers.get("Content-Type", "").lower():
            body = jsonio.loads(resp.body) if resp.body else None
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                return resp  # a JSON-RPC error at an HTTP error status
        if resp.status >= 300:
            raise McpTrouble(classify_error(resp))
        return resp

    async def _open(self, endpoint: str, clock: _Clock) -> Session:
        init = {
            "jsonrpc": "2.0",
            "id": "swarmgate-init",
            "method": "initialize",
            "params": {
                "protocolVersion": LATEST_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "swarmgate", "version": self.client_version},
            },
        }
        resp = await self._post(endpoint, init, None, clock.left())
        result = _answer_for(resp, "swarmgate-init")
        if not isinstance(result, dict):
            raise McpTrouble(Outcome(kind=OutcomeKind.RETRYABLE, error="bad initialize answer"))
        version = str(result.get("protocolVersion") or "")
        if version not in SUPPORTED_VERSIONS:
            raise McpTrouble(
                Outcome(kind=OutcomeKind.PERMANENT, error=f"unsupported MCP version {version!r}")
            )
        tools = _dig(result, "capabilities", "tasks", "requests", "tools")
        session = Session(
            session_id=resp.headers.get("Mcp-Session-Id") or None,
            version=version,
            tasks_call="call" in tools,
        )
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self._post(endpoint, note, session, clock.left())
        self.sessions[endpoint] = session
        return session

    async def _session(self, endpoint: str, clock: _Clock) -> Session:
        return self.sessions.get(endpoint) or await self._open(endpoint, clock)

    async def rpc(
        self,
        endpoint: str,
        method: str,
        params: dict[str, Any],
        *,
        rpc_id: str,
        clock: _Clock,
        extra: dict[str, str] | None = None,
    ) -> tuple[Any, Session]:
        """One request (a new session and one more try when the server lost ours)."""
        message = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}
        for again in (False, True):
            session = await self._session(endpoint, clock)
            try:
                resp = await self._post(endpoint, message, session, clock.left(), extra)
            except SessionGone:
                self.sessions.pop(endpoint, None)
                if again:
                    raise McpTrouble(
                        Outcome(kind=OutcomeKind.RETRYABLE, error="MCP session lost twice")
                    ) from None
                continue
            return _answer_for(resp, rpc_id), session
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember_auth(self, endpoint: str, headers: Mapping[str, str]) -> None:
        if headers:
            self.auth[endpoint] = dict(headers)
        else:
            self.auth.pop(endpoint, None)

    @staticmethod
    def _clock(timeout_s: float) -> _Clock:
        return _Clock(asyncio.get_running_loop().time() + timeout_s)

    # -- discovery --------------------------------------------------------------------------

    async def list_tools(self, endpoint: str, timeout_s: float) -> list[Any]:
        """Every tool the server lists (a fresh session; pages followed)."""
        self.sessions.pop(endpoint, None)
        clock = self._clock(timeout_s)
        tools: list[Any] = []
        cursor: str | None = None
        for page in range(MAX_TOOL_PAGES):
            params = {"cursor": cursor} if cursor else {}
            result, session = await self.rpc(
                endpoint, "tools/list", params, rpc_id=f"tools-{page}", clock=clock
            )
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise McpTrouble(Outcome(kind=OutcomeKind.PERMANENT, error="bad tools/list"))
            tools.extend(result["tools"])
            cursor = result.get("nextCursor") if isinstance(result.get("nextCursor"), str) else None
            if not cursor:
                break
        session.task_support = {
            str(t.get("name")): str((t.get("execution") or {}).get("taskSupport") or "forbidden")
            for t in tools
            if isinstance(t, dict) and isinstance(t.get("execution") or {}, dict)
        }
        return tools

    async def _task_support(self, endpoint: str, tool: str, clock: _Clock) -> str:
        session = await self._session(endpoint, clock)
        if not session.tasks_call:
            return "forbidden"
        if session.task_support is None:
            await self.list_tools(endpoint, clock.left())
            session = self.sessions.get(endpoint) or session
        return (session.task_support or {}).get(tool, "forbidden")

    # -- AgentAdapter -----------------------------------------------------------------------

    async def start(self, req: DispatchRequest) -> Outcome:
        op = req.operation
        self._remember_auth(req.agent.endpoint, req.auth_headers)
        try:
            arguments = jsonio.loads(op.input) if op.input else {}
        except (ValueError, UnicodeDecodeError):
            arguments = None
        if not isinstance(arguments, dict):
            return Outcome(
                kind=OutcomeKind.PERMANENT, error="MCP tool arguments must be a JSON object"
            )
        clock = self._clock(req.timeout_s)
        params: dict[str, Any] = {
            "name": op.operation,
            "arguments": arguments,
            "_meta": {IDEMPOTENCY_META: op.id},
        }
        extra = {"Idempotency-Key": op.id}
        if op.traceparent:
            extra["traceparent"] = op.traceparent
        try:
            support = await self._task_support(req.agent.endpoint, op.operation, clock)
            if support in ("optional", "required"):
                ttl_s = req.spec.timeout_s
                if req.deadline is not None:
                    ttl_s = max(1.0, (req.deadline - op.created_at).total_seconds())
                params["task"] = {"ttl": int(ttl_s * 1000)}
            result, _ = await self.rpc(
                req.agent.endpoint,
                "tools/call",
                params,
                rpc_id=f"call-{op.id}",
                clock=clock,
                extra=extra,
            )
            if isinstance(result, dict) and isinstance(result.get("task"), dict):
                return await self._task_outcome(req.agent.endpoint, result["task"], op.id, clock)
            return outcome_from_call_result(result)
        except McpRpcError as exc:
            return exc.outcome()
        except McpTrouble as trouble:
            return trouble.outcome

    async def _task_outcome(
        self, endpoint: str, task: dict[str, Any], op_id: str, clock: _Clock
    ) -> Outcome:
        task_id = str(task.get("taskId") or "") or None
        status = str(task.get("status") or "")
        if task_id is None:
            return Outcome(kind=OutcomeKind.RETRYABLE, error="MCP task without a taskId")
        if status in ("working", "input_required"):
            return Outcome(kind=OutcomeKind.ACCEPTED, agent_token=task_id, status=200)
        if status == "cancelled":
            message = str(task.get("statusMessage") or "the MCP task was cancelled")
            return Outcome(
                kind=OutcomeKind.OPERATION_FAILED,
                state="canceled",
                agent_token=task_id,
                failure=failure(message, type="mcp.TaskStatus", details={"taskId": task_id}),
            )
        if status not in ("completed", "failed"):
            return Outcome(kind=OutcomeKind.PERMANENT, error=f"unknown MCP task status {status!r}")
        try:
            result, _ = await self.rpc(
                endpoint, "tasks/result", {"taskId": task_id}, rpc_id=f"result-{op_id}", clock=clock
            )
        except McpRpcError as exc:
            if status == "failed":
                message = str(task.get("statusMessage") or exc.rpc_message)
                return Outcome(
                    kind=OutcomeKind.OPERATION_FAILED,
                    state="failed",
                    agent_token=task_id,
                    failure=failure(message, type="mcp.TaskStatus", details={"taskId": task_id}),
                )
            raise
        return outcome_from_call_result(result, task_id)

    async def poll(self, req: DispatchRequest) -> Outcome:
        """``tasks/get`` for an accepted task: ACCEPTED while it works, else its outcome."""
        op = req.operation
        self._remember_auth(req.agent.endpoint, req.auth_headers)
        if not op.agent_token:
            return Outcome(kind=OutcomeKind.PERMANENT, error="no MCP task id to poll")
        clock = self._clock(req.timeout_s)
        try:
            task, _ = await self.rpc(
                req.agent.endpoint,
                "tasks/get",
                {"taskId": op.agent_token},
                rpc_id=f"get-{op.id}",
                clock=clock,
            )
            if not isinstance(task, dict):
                return Outcome(kind=OutcomeKind.RETRYABLE, error="tasks/get answered no task")
            return await self._task_outcome(req.agent.endpoint, task, op.id, clock)
        except McpRpcError as exc:
            return exc.outcome()
        except McpTrouble as trouble:
            return trouble.outcome

    async def cancel(self, req: CancelRequest) -> Outcome:
        op = req.operation
        self._remember_auth(req.agent.endpoint, req.auth_headers)
        if not op.agent_token:
            # a plain tools/call: nothing runs at the server that a later request could stop
            return Outcome(kind=OutcomeKind.SUCCEEDED, error="no MCP task to cancel")
        try:
            await self.rpc(
                req.agent.endpoint,
                "tasks/cancel",
                {"taskId": op.agent_token},
                rpc_id=f"cancel-{op.id}",
                clock=self._clock(req.timeout_s),
            )
        except McpRpcError as exc:
            if exc.code == -32602:  # already terminal (or unknown): nothing left to stop
                return Outcome(kind=OutcomeKind.PERMANENT, error=str(exc))
            return exc.outcome()
        except McpTrouble as trouble:
            return trouble.outcome
        return Outcome(kind=OutcomeKind.SUCCEEDED, status=200)


__all__ = [
    "McpAgentAdapter",
    "McpRpcError",
    "McpTrouble",
    "operations_from_tools",
    "outcome_from_call_result",
    "sse_messages",
]
