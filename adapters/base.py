"""The one interface every outbound agent adapter implements (no I/O library imports here)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.domain.model import Operation
from registry.model import AgentSpec, OperationSpec


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"  # the agent answered with the result
    ACCEPTED = "accepted"  # the agent runs it asynchronously and completes later
    OPERATION_FAILED = "operation_failed"  # the agent reports the operation failed/canceled
    RETRYABLE = "retryable"  # the request failed; try again later
    PERMANENT = "permanent"  # the request failed for good


@dataclass(frozen=True, kw_only=True)
class Outcome:
    kind: OutcomeKind
    result: bytes | None = None
    content_type: str | None = None
    agent_token: str | None = None
    state: str | None = None  # for OPERATION_FAILED: "failed" | "canceled"
    failure: dict[str, Any] | None = None
    error: str | None = None
    status: int | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class DispatchRequest:
    operation: Operation
    agent: AgentSpec
    spec: OperationSpec
    attempt: int
    completion_url: str
    completion_token: str
    timeout_s: float
    deadline: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class CancelRequest:
    operation: Operation
    agent: AgentSpec
    timeout_s: float
    extra: dict[str, str] = field(default_factory=dict)


class AgentAdapter(Protocol):
    async def start(self, req: DispatchRequest) -> Outcome: ...
    async def cancel(self, req: CancelRequest) -> Outcome: ...


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive, as HTTP header names are
    body: bytes


class Transport(Protocol):
    """Outbound HTTP as the engine sees it (screened, no redirects, bounded time)."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
    ) -> HttpResponse: ...


class TransportError(Exception):
    """The request did not get a response (connection refused, timeout, blocked address)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
