"""Outbound adapter for agents that speak A2A 1.0 (JSON-RPC or HTTP+JSON binding).

The binding is the first one the agent's card offers that the adapter speaks (see
``adapters.a2a_card``; a registered URL without a card is a JSON-RPC endpoint).

Start: ``SendMessage`` to the agent's endpoint with ``returnImmediately: true``, the
operation id as ``messageId`` and ``Idempotency-Key`` (stable across every attempt and restart),
the input as a data part (and a text part when the input is a JSON string), the operation name
as ``metadata.skill``, and a push-notification config pointing at the gateway
(``/api/a2a/push/{op id}``, ``Authorization: Bearer <completion token>``).

  task COMPLETED -> SUCCEEDED (artifacts -> JSON result); FAILED/REJECTED -> operation failed;
  CANCELED -> operation canceled; SUBMITTED/WORKING/INPUT_REQUIRED/AUTH_REQUIRED -> ACCEPTED
  with ``agent_token`` = the A2A task id; a direct Message answer -> SUCCEEDED.
  HTTP errors -> like ``adapters.http.classify_error``; JSON-RPC errors -> PERMANENT, except
  internal (-32603) and non-standard server errors which are RETRYABLE.

Poll: JSON-RPC ``GetTask`` with ``agent_token`` -> the same mapping (ACCEPTED: still running).
Cancel: JSON-RPC ``CancelTask`` with ``agent_token``; an already final task counts as canceled.

The final result reaches the gateway by push (the agent POSTs a StreamResponse to the gateway,
see ``gateway.http.a2a``) or by ``GetTask`` polling (``poll``, scheduled durably per
operation by the engine as ``Work.POLL``); both end in a compare-and-set of the terminal state
(exactly one).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from adapters.a2a_card import CardCache, rest_error_code
from adapters.http import classify_error
from adapters.jsonrpc import JsonRpcError
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
from gateway.domain.model import Operation, OperationState, failure

A2A_VERSION = "1.0"
JSON_CT = "application/json"

RUNNING_STATES = frozenset(
    {
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "TASK_STATE_INPUT_REQUIRED",
        "TASK_STATE_AUTH_REQUIRED",
        "TASK_STATE_UNSPECIFIED",
        "",
    }
)
FAILED_STATES = frozenset({"TASK_STATE_FAILED", "TASK_STATE_REJECTED"})
# JSON-RPC codes that say "this request will never work" (A2A 1.0 + JSON-RPC 2.0).
PERMANENT_RPC_CODES = frozenset(
    {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004, -32005, -32007, -32008, -32009}
)
TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002


class RpcError(JsonRpcError):
    """A JSON-RPC error answer of an A2A agent."""

    failure_type = "a2a.JSONRPCError"
    permanent_codes = PERMANENT_RPC_CODES


# -- A2A JSON <-> swarmgate payloads ----------------------------------------------------------


def part_value(part: dict[str, Any]) -> Any:
    """The JSON value a Part carries (data as is; text parsed when it is JSON)."""
    if "data" in part:
        return part["data"]
    if "text" in part:
        return part["text"]
    if "url" in part:
        return {"url": part["url"], "mediaType": part.get("mediaType")}
    if "raw" in part:
        return {"raw": part["raw"], "mediaType": part.get("mediaType")}
    return None


def parts_value(parts: Iterable[dict[str, Any]]) -> Any:
    """One part -> its value; several -> a list of values; none -> null."""
    values = [part_value(p) for p in parts if isinstance(p, dict)]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def task_result(task: dict[str, Any]) -> Any:
    """The result of a completed task: its artifacts' parts, else its status message's parts."""
    parts: list[dict[str, Any]] = []
    for artifact in task.get("artifacts") or []:
        if isinstance(artifact, dict):
            parts.extend(p for p in artifact.get("parts") or [] if isinstance(p, dict))
    if not parts:
        message = (task.get("status") or {}).get("message") or {}
        parts = [p for p in message.get("parts") or [] if isinstance(p, dict)]
    return parts_value(parts)


def status_text(task: dict[str, Any]) -> str:
    message = (task.get("status") or {}).get("message") or {}
    texts = [str(p["text"]) for p in message.get("parts") or [] if "text" in p]
    return " ".join(texts)


def input_parts(op: Operation) -> list[dict[str, Any]]:
    body = op.input or b""
    ct = (op.input_content_type or JSON_CT).lower()
    if "json" in ct or not ct:
        try:
            value = jsonio.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            return [{"text": body.decode(errors="replace"), "mediaType": ct}]
        parts: list[dict[str, Any]] = [{"data": value, "mediaType": JSON_CT}]
        if isinstance(value, str):
            parts.append({"text": value, "mediaType": "text/plain"})
        return parts
    if ct.startswith("text/"):
        return [{"text": body.decode(errors="replace"), "mediaType": ct}]
    import base64

    return [{"raw": base64.b64encode(body).decode(), "mediaType": ct}]


def outcome_from_task(task: dict[str, Any]) -> Outcome:
    state = str((task.get("status") or {}).get("state") or "")
    task_id = str(task.get("id") or "") or None
    if state == "TASK_STATE_COMPLETED":
        return Outcome(
            kind=OutcomeKind.SUCCEEDED,
            result=json.dumps(task_result(task)).encode(),
            content_type=JSON_CT,
            agent_token=task_id,
            status=200,
        )
    if state in FAILED_STATES or state == "TASK_STATE_CANCELED":
        canceled = state == "TASK_STATE_CANCELED"
        word = "canceled" if canceled else "failed"
        text = status_text(task) or f"the A2A agent reported {state}"
        return Outcome(
            kind=OutcomeKind.OPERATION_FAILED,
            state=word,
            agent_token=task_id,
            failure=failure(
                text, type="a2a.TaskState", details={"state": state, "taskId": task_id}
            ),
        )
    if state == "TASK_STATE_INPUT_REQUIRED":  # the agent asks: the operation waits for input
        return Outcome(
            kind=OutcomeKind.ACCEPTED,
            agent_token=task_id,
            status=200,
            input_prompt=status_text(task) or "input required",
        )
    if state in RUNNING_STATES:
        return Outcome(kind=OutcomeKind.ACCEPTED, agent_token=task_id, status=200)
    return Outcome(kind=OutcomeKind.PERMANENT, error=f"unknown A2A task state {state!r}")


def outcome_from_send_result(result: Any) -> Outcome:
    """Map a SendMessageResponse (``{"task": ...}`` or ``{"message": ...}``)."""
    if isinstance(result, dict) and isinstance(result.get("task"), dict):
        return outcome_from_task(result["task"])
    if isinstance(result, dict) and isinstance(result.get("message"), dict):
        value = parts_value(result["message"].get("parts") or [])
        return Outcome(
            kind=OutcomeKind.SUCCEEDED,
            result=json.dumps(value).encode(),
            content_type=JSON_CT,
            status=200,
        )
    if isinstance(result, dict) and isinstance(result.get("status"), dict):
        return outcome_from_task(result)  # a bare Task (lenient)
    return Outcome(kind=OutcomeKind.RETRYABLE, error="A2A agent sent neither task nor message")


def latest_answer(req: DispatchRequest) -> tuple[str, Any] | None:
    """The caller's answer to the agent's last question (journal ``$input:<name>``), if any."""
    if req.journal is None:
        return None
    answers = [s for s in req.journal.steps if s.name.startswith("$input:")]
    if not answers or not isinstance(answers[-1].result, dict):
        return None
    return answers[-1].name.split(":", 1)[1], answers[-1].result.get("value")


def push_url(public_url: str, op_id: str) -> str:
    return f"{public_url.rstrip('/')}/api/a2a/push/{op_id}"


def _public_url(completion_url: str) -> str:
    marker = "/api/completions/"
    return completion_url.split(marker, 1)[0] if marker in completion_url else completion_url


# -- the adapter ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rpc:
    result: Any = None
    outcome: Outcome | None = None  # set when the call did not produce a result


class A2AAgentAdapter:
    def __init__(self, transport: Transport, *, push: bool = True) -> None:
        self.transport = transport
        self.push = push
        self.cards = CardCache(transport)

    async def _invoke(
        self,
        endpoint: str,
        method: str,
        params: dict[str, Any],
        *,
        rpc_id: str,
        timeout_s: float,
        extra_headers: dict[str, str] | None = None,
    ) -> _Rpc:
        """Call ``method`` on the agent, over the binding its card offers (JSON-RPC when the
        registered URL serves no card)."""
        iface = await self.cards.interface(endpoint, timeout_s)
        if isinstance(iface, Outcome):
            return _Rpc(outcome=iface)
        if iface.binding == "HTTP+JSON":
            return await self._rest(
                iface.url, method, params, timeout_s=timeout_s, extra_headers=extra_headers
            )
        return await self._call(
            iface.url,
            method,
            params,
            rpc_id=rpc_id,
            timeout_s=timeout_s,
            extra_headers=extra_headers,
        )

    async def _rest(
        self,
        base: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        extra_headers: dict[str, str] | None = None,
    ) -> _Rpc:
        """The HTTP+JSON binding: SendMessage, GetTask and CancelTask."""
        body: bytes | None
        if method == "SendMessage":
            verb, path, body = "POST", "/message:send", json.dumps(params).encode()
        else:
            task = quote(str(params.get("id") or ""), safe="")
            verb, path, body = (
                ("GET", f"/tasks/{task}", None)
                if method == "GetTask"
                else ("POST", f"/tasks/{task}:cancel", json.dumps(params).encode())
            )
        headers = {"Accept": JSON_CT, "A2A-Version": A2A_VERSION, **(extra_headers or {})}
        if body is not None:
            headers["Content-Type"] = JSON_CT
        try:
            resp = await self.transport.request(
                verb, base + path, headers=headers, body=body, timeout_s=timeout_s
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return _Rpc(outcome=Outcome(kind=kind, error=str(exc)))
        try:
            data = jsonio.loads(resp.body) if resp.body else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if not 200 <= resp.status < 300:
            coded = rest_error_code(data)
            if coded is not None and resp.status < 500:
                raise RpcError(coded[0], coded[1])
            return _Rpc(outcome=classify_error(resp))
        if not isinstance(data, dict):
            return _Rpc(
                outcome=Outcome(kind=OutcomeKind.RETRYABLE, error="A2A agent answered non-JSON")
            )
        return _Rpc(result=data)

    async def _call(
        self,
        endpoint: str,
        method: str,
        params: dict[str, Any],
        *,
        rpc_id: str,
        timeout_s: float,
        extra_headers: dict[str, str] | None = None,
        auth_headers: Mapping[str, str] | None = None,
    ) -> _Rpc:
        body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params})
        headers = {
            "Content-Type": JSON_CT,
            "Accept": JSON_CT,
            "A2A-Version": A2A_VERSION,
            **(extra_headers or {}),
            **(auth_headers or {}),
        }
        try:
            resp = await self.transport.request(
                "POST", endpoint, headers=headers, body=body.encode(), timeout_s=timeout_s
            )
        except TransportError as exc:
            kind = OutcomeKind.RETRYABLE if exc.retryable else OutcomeKind.PERMANENT
            return _Rpc(outcome=Outcome(kind=kind, error=str(exc)))
        if resp.status != 200:
            return _Rpc(outcome=classify_error(resp))
        return self._parse(resp)

    @staticmethod
    def _parse(resp: HttpResponse) -> _Rpc:
        try:
            data = jsonio.loads(resp.body)
        except (ValueError, UnicodeDecodeError):
            return _Rpc(
                outcome=Outcome(
                    kind=OutcomeKind.RETRYABLE, error="A2A agent answered non-JSON", status=200
                )
            )
        if not isinstance(data, dict):
            return _Rpc(outcome=Outcome(kind=OutcomeKind.RETRYABLE, error="bad JSON-RPC answer"))
        err = data.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            raise RpcError(
                int(code) if isinstance(code, int) else -32603,
                str(err.get("message") or "error"),
                err.get("data"),
            )
        if "result" not in data:
            return _Rpc(outcome=Outcome(kind=OutcomeKind.RETRYABLE, error="bad JSON-RPC answer"))
        return _Rpc(result=data["result"])

    def send_message_params(self, req: DispatchRequest) -> dict[str, Any]:
        op = req.operation
        answer = latest_answer(req)
        if answer is not None and op.agent_token:  # the caller answered the agent's question
            name, value = answer
            return {
                "message": {
                    "messageId": f"{op.id}-input-{name}",
                    "taskId": op.agent_token,
                    "role": "ROLE_USER",
                    "parts": [{"data": value, "mediaType": JSON_CT}],
                    "metadata": {"skill": op.operation, "swarmgateOperationId": op.id},
                },
                "configuration": {"returnImmediately": True},
                "metadata": {"skill": op.operation, "caller": op.caller},
            }
        configuration: dict[str, Any] = {
            "returnImmediately": True,
            "acceptedOutputModes": [JSON_CT, "text/plain"],
        }
        if self.push:
            configuration["taskPushNotificationConfig"] = {
                "id": f"swarmgate-{op.id}",
                "url": push_url(_public_url(req.completion_url), op.id),
                "token": req.completion_token,
                "authentication": {"scheme": "Bearer", "credentials": req.completion_token},
            }
        return {
            "message": {
                "messageId": op.id,
                "role": "ROLE_USER",
                "parts": input_parts(op),
                "metadata": {"skill": op.operation, "swarmgateOperationId": op.id},
            },
            "configuration": configuration,
            "metadata": {"skill": op.operation, "caller": op.caller},
        }

    async def start(self, req: DispatchRequest) -> Outcome:
        op = req.operation
        headers = {
            "Idempotency-Key": op.id,
            "Swarmgate-Attempt": str(req.attempt),
            "Swarmgate-Caller": op.caller,
        }
        if op.traceparent:
            headers["traceparent"] = op.traceparent
        try:
            rpc = await self._invoke(
                req.agent.endpoint,
                "SendMessage",
                self.send_message_params(req),
                rpc_id=f"send-{op.id}",
                timeout_s=req.timeout_s,
                extra_headers={**headers, **req.auth_headers},
            )
        except RpcError as exc:
            return exc.outcome()
        if rpc.outcome is not None:
            return rpc.outcome
        return outcome_from_send_result(rpc.result)

    async def poll(self, req: DispatchRequest) -> Outcome:
        """GetTask for an accepted operation: ACCEPTED while it runs, else its final outcome."""
        op = req.operation
        if not op.agent_token:
            return Outcome(kind=OutcomeKind.PERMANENT, error="no A2A task id to poll")
        try:
            rpc = await self._invoke(
                req.agent.endpoint,
                "GetTask",
                {"id": op.agent_token},
                rpc_id=f"get-{op.id}",
                timeout_s=req.timeout_s,
                extra_headers=dict(req.auth_headers),
            )
        except RpcError as exc:
            return exc.outcome()
        if rpc.outcome is not None:
            return rpc.outcome
        if not isinstance(rpc.result, dict):
            return Outcome(kind=OutcomeKind.RETRYABLE, error="GetTask answered no task")
        return outcome_from_task(rpc.result)

    async def cancel(self, req: CancelRequest) -> Outcome:
        op = req.operation
        if not op.agent_token:
            # Never accepted by the agent: nothing runs there that could be canceled.
            return Outcome(kind=OutcomeKind.SUCCEEDED, error="no A2A task to cancel")
        try:
            rpc = await self._invoke(
                req.agent.endpoint,
                "CancelTask",
                {"id": op.agent_token},
                rpc_id=f"cancel-{op.id}",
                timeout_s=req.timeout_s,
                extra_headers={"Idempotency-Key": f"cancel-{op.id}", **req.auth_headers},
            )
        except RpcError as exc:
            if exc.code in (TASK_NOT_CANCELABLE, TASK_NOT_FOUND):
                return Outcome(kind=OutcomeKind.PERMANENT, error=str(exc))
            return exc.outcome()
        if rpc.outcome is not None:
            return rpc.outcome
        return Outcome(kind=OutcomeKind.SUCCEEDED, status=200)


# -- final outcomes (push or GetTask polling) ------------------------------------------------


@dataclass(frozen=True)
class FinalState:
    """The terminal transition a final A2A outcome asks for."""

    state: OperationState
    result: bytes | None = None
    content_type: str | None = None
    failure: dict[str, Any] | None = None


def final_state(outcome: Outcome) -> FinalState | None:
    """The terminal state a final A2A outcome reports (None while the task still runs)."""
    if outcome.kind is OutcomeKind.SUCCEEDED:
        return FinalState(
            OperationState.SUCCEEDED,
            result=outcome.result or b"null",
            content_type=outcome.content_type or JSON_CT,
        )
    if outcome.kind is OutcomeKind.OPERATION_FAILED:
        state = OperationState.CANCELED if outcome.state == "canceled" else OperationState.FAILED
        return FinalState(state, failure=outcome.failure)
    return None


__all__ = [
    "A2AAgentAdapter",
    "RpcError",
    "final_state",
    "outcome_from_send_result",
    "outcome_from_task",
    "push_url",
    "task_result",
]
