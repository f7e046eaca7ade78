"""MCP progress notifications made from an operation's heartbeats (pure, no I/O).

A client asks for progress with ``params._meta.progressToken`` on ``tools/call`` (or, for a
task-augmented call, on ``tasks/result``). While the gateway waits for the operation, each
read of it goes through :class:`ProgressTracker`, which says when to send a
``notifications/progress`` and with what:

- The agent reports progress in its heartbeat details (the checkpoint), by convention
  ``{"progress": <number>, "total": <number>, "message": <string>}`` (``total`` and
  ``message`` optional; other keys are the agent's own). In the SDK:
  ``ctx.heartbeat({"progress": 3, "total": 10, "message": "page 3 of 10"})``. A notification
  is sent when the reported ``progress`` is above the last one sent (MCP: progress increases
  with every notification).
- An agent whose details carry no numeric ``progress`` still shows that it is alive: each new
  heartbeat seen (its deadline moved, or its details changed) sends progress one above the
  last, with the details' ``message`` if it has one. Once an agent has reported a number,
  only its numbers count.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from gateway.domain.model import Operation

ProgressToken = str | int
MESSAGE_MAX = 1000
_UNSEEN: Any = object()


def progress_token(params: dict[str, Any]) -> ProgressToken | None:
    """``params._meta.progressToken`` when it is a string or an integer, else None."""
    meta = params.get("_meta")
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if isinstance(token, bool) or not isinstance(token, str | int):
        return None
    return token


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _message(details: Any) -> str | None:
    message = details.get("message") if isinstance(details, dict) else None
    return message[:MESSAGE_MAX] if isinstance(message, str) and message else None


def notification(
    token: ProgressToken, progress: float, total: float | None, message: str | None
) -> dict[str, Any]:
    """The ``notifications/progress`` JSON-RPC notification."""
    params: dict[str, Any] = {"progressToken": token, "progress": progress}
    if total is not None:
        params["total"] = total
    if message is not None:
        params["message"] = message
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


class ProgressTracker:
    """What one waiting request has told its client so far; :meth:`update` per read."""

    def __init__(self, token: ProgressToken) -> None:
        self.token = token
        self._details: Any = _UNSEEN
        self._beat: datetime | None = None
        self._last: float = 0
        self._reports_numbers = False

    def update(self, op: Operation) -> dict[str, Any] | None:
        """The notification this read of ``op`` calls for, or None."""
        details, beat = op.heartbeat_details, op.heartbeat_until
        new_details = details != self._details and (
            details is not None or self._details is not _UNSEEN
        )
        # the first deadline (the accept) is not a heartbeat; every later move is one
        new_beat = self._beat is not None and beat is not None and beat != self._beat
        self._details, self._beat = details, beat
        reported = _number(details.get("progress")) if isinstance(details, dict) else None
        if reported is not None:
            self._reports_numbers = True
            if not new_details or reported <= self._last:
                return None
            total = _number(details.get("total"))
            return self._send(reported, total, _message(details))
        if self._reports_numbers or not (new_details or new_beat):
            return None
        return self._send(self._last + 1, None, _message(details))

    def _send(self, progress: float, total: float | None, message: str | None) -> dict[str, Any]:
        self._last = progress
        return notification(self.token, progress, total, message)


__all__ = ["ProgressToken", "ProgressTracker", "notification", "progress_token"]
