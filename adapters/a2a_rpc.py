"""Inbound A2A 1.0 facade, protocol half (continued): reading requests.

The JSON-RPC envelope (ids, versions, methods), ProtoJSON field names (``task_id`` as well as
``taskId``), the ``A2A-Version`` rule (a request without it is A2A 0.3, per the spec; this
server speaks 1.0 and says so) and the ListTasks parameters (pages, filters, history length).
No web framework and no engine here.
"""

from __future__ import annotations

import base64
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapters.a2a import A2A_VERSION
from adapters.a2a_facade import (
    OP_STATE_OF,
    TASK_STATES,
    UNSUPPORTED,
    RpcFault,
    invalid_params,
)
from gateway.domain import jsonio
from gateway.domain.errors import HandlerErrorType
from gateway.domain.model import OperationState

# -- ListTasks parameters -----------------------------------------------------------------------

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def _int_param(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise invalid_params(f"{name} must be an integer")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise invalid_params(f"{name} must be an integer")
    return number


def page_size(params: dict[str, Any]) -> int:
    size = _int_param(params, "pageSize")
    if size is None or size == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise invalid_params(f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    return size


def history_length(params: dict[str, Any]) -> int | None:
    """``historyLength``: None (unset) means the whole history; negative is refused."""
    n = _int_param(params, "historyLength")
    if n is not None and n < 0:
        raise invalid_params("historyLength must not be negative")
    return n


def status_filter(params: dict[str, Any]) -> OperationState | bool | None:
    """The state a ListTasks asks for (None: any; False: a valid state no operation has)."""
    value = params.get("status")
    if value in (None, "", "TASK_STATE_UNSPECIFIED"):
        return None
    if value not in TASK_STATES:
        raise invalid_params(f"status must be one of {', '.join(sorted(TASK_STATES))}")
    return OP_STATE_OF.get(str(value), False)


def timestamp_filter(params: dict[str, Any]) -> datetime | None:
    value = params.get("statusTimestampAfter")
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise invalid_params("statusTimestampAfter must be an RFC 3339 timestamp")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid_params("statusTimestampAfter must be an RFC 3339 timestamp") from exc
    if stamp.tzinfo is None:
        raise invalid_params("statusTimestampAfter needs a time zone (e.g. Z)")
    return stamp


def page_offset(token: Any) -> int:
    """The offset an opaque ``pageToken`` stands for (0 for none)."""
    if token in (None, ""):
        return 0
    try:
        raw = base64.urlsafe_b64decode(str(token).encode() + b"==").decode()
        kind, _, number = raw.partition(":")
        if kind == "o" and number.isdigit() and len(number) <= 12:
            return int(number)
    except (ValueError, UnicodeDecodeError):
        pass
    raise invalid_params("pageToken is not one this server issued")


def page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


# -- JSON-RPC envelope ------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcRequest:
    rpc_id: Any
    method: str
    params: dict[str, Any]


LEGACY_VERSION = "0.3"  # what a request without A2A-Version speaks, per the spec


def version_problem(value: str | None) -> str | None:
    """Why the request's ``A2A-Version`` cannot be served (None: it can)."""
    version = (value or "").strip() or LEGACY_VERSION
    if version.split(".")[0] == "1":
        return None
    said = f"A2A-Version {version}" if value and value.strip() else "no A2A-Version header"
    meaning = " (treated as 0.3, per the A2A specification)" if said.startswith("no") else ""
    return f"{said}{meaning} is not supported; this server speaks A2A {A2A_VERSION}"


def version_fault(value: str | None, rpc_id: Any = None) -> RpcFault | None:
    problem = version_problem(value)
    if problem is None:
        return None
    return RpcFault(-32009, problem, {"supportedVersions": [A2A_VERSION]}, rpc_id=rpc_id)


def _valid_id(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and not isinstance(value, bool)


# ProtoJSON allows the proto field names (snake_case) as well as the JSON names; user data
# (data parts, metadata) is left as it was sent.
OPAQUE_KEYS = frozenset({"data", "metadata", "struct", "structValue", "struct_value"})


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest) if rest else key


def camel_keys(value: Any) -> Any:
    """``value`` with every snake_case field name as its JSON (lowerCamel) name."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _camel(key) if isinstance(key, str) and "_" in key else key
            out[name] = item if name in OPAQUE_KEYS else camel_keys(item)
        return out
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


def parse_rpc(raw: bytes, a2a_version: str | None, methods: Collection[str]) -> RpcRequest:
    """Read a JSON-RPC 2.0 request for one of ``methods`` (RpcFault with its id if not)."""
    try:
        body = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcFault(-32700, f"parse error: {exc}") from exc
    if not isinstance(body, dict):
        raise RpcFault(-32600, "batch requests are not supported")
    rpc_id = body.get("id")
    if "id" not in body or not _valid_id(rpc_id):
        raise RpcFault(-32600, "invalid JSON-RPC 2.0 request: id must be a string or integer")
    if body.get("jsonrpc") != "2.0" or not isinstance(body.get("method"), str):
        raise RpcFault(-32600, "invalid JSON-RPC 2.0 request", rpc_id=rpc_id)
    fault = version_fault(a2a_version, rpc_id)
    if fault is not None:
        raise fault
    method = str(body["method"])
    if method not in methods:
        if method in UNSUPPORTED:
            raise RpcFault(-32004, f"{method} is not supported by swarmgate", rpc_id=rpc_id)
        raise RpcFault(-32601, "Method not found", rpc_id=rpc_id)
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise RpcFault(-32602, "params must be an object", rpc_id=rpc_id)
    return RpcRequest(rpc_id=rpc_id, method=method, params=camel_keys(params))


def rpc_error(rpc_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": error}


def rpc_result(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def rpc_code(error_type: HandlerErrorType) -> int:
    """The JSON-RPC error code of a request error the gateway raised."""
    if error_type is HandlerErrorType.NOT_FOUND:
        return -32001
    return -32602 if error_type is HandlerErrorType.BAD_REQUEST else -32603
