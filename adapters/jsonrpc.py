"""The JSON-RPC error answer of an agent, shared by the adapters that speak JSON-RPC (A2A, MCP).

An error answer says by its code whether the request could ever work; ``outcome`` turns it into
what the engine does next (retry or fail for good), keeping the code and data in the failure.
"""

from __future__ import annotations

from typing import Any

from gateway.domain.dispatch import Outcome, OutcomeKind
from gateway.domain.model import failure

# JSON-RPC 2.0's own "this request will never work" codes (parse error, invalid request,
# method not found, invalid params); protocols add theirs.
JSONRPC_PERMANENT_CODES = frozenset({-32700, -32600, -32601, -32602})


class JsonRpcError(Exception):
    """A JSON-RPC error answer (``code``, ``message``, ``data``)."""

    label = "JSON-RPC"  # how the message names the protocol
    failure_type = "jsonrpc.Error"  # the failure's metadata type
    permanent_codes: frozenset[int] = JSONRPC_PERMANENT_CODES

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{self.label} error {code}: {message}")
        self.code = code
        self.rpc_message = message
        self.data = data

    def outcome(self) -> Outcome:
        permanent = self.code in self.permanent_codes
        return Outcome(
            kind=OutcomeKind.PERMANENT if permanent else OutcomeKind.RETRYABLE,
            error=str(self),
            failure=failure(
                self.rpc_message,
                type=self.failure_type,
                details={"code": self.code, "data": self.data},
            ),
        )


__all__ = ["JSONRPC_PERMANENT_CODES", "JsonRpcError"]
