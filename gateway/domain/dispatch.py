"""What the engine asks of an agent adapter and what the adapter answers (no I/O imports).

Every outbound adapter (``adapters/http.py``, ``adapters/a2a.py``) implements ``AgentAdapter``;
outbound HTTP goes through a ``Transport`` (``adapters/transport.py``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.domain.frozen import fast_init
from gateway.domain.model import Operation, StepRecord
from gateway.domain.specs import AgentSpec, OperationSpec

# -- what a dispatch tells the agent about heartbeats and its journal (issue 12) --------------
# One place for the header names, shared by the HTTP adapter and any other way work reaches an
# agent (pull workers), and read by the SDK's AgentApp.
HEADER_ATTEMPT = "Swarmgate-Attempt"  # the attempt number (heartbeats name it)
HEADER_HEARTBEAT_URL = "Swarmgate-Heartbeat-Url"  # POST here with the completion token
HEADER_HEARTBEAT_TIMEOUT = "Swarmgate-Heartbeat-Timeout"  # seconds; only when declared
HEADER_STEPS_URL = "Swarmgate-Steps-Url"  # GET the journal, PUT {url}/{name} a step
# The journal and the last checkpoint as compact JSON ({"steps": [...], "details": ...}),
# when it fits in JOURNAL_HEADER_MAX bytes; otherwise HEADER_JOURNAL_OMITTED is "1" and the
# agent GETs the steps URL. Absent on a first attempt (its journal is empty).
HEADER_JOURNAL = "Swarmgate-Journal"
HEADER_JOURNAL_OMITTED = "Swarmgate-Journal-Omitted"
JOURNAL_HEADER_MAX = 4096
STEP_NAME_MAX = 200  # characters of a step name
STEP_RESULT_MAX = 256 * 1024  # bytes of a step result's JSON
HEARTBEAT_BODY_MAX = 64 * 1024  # bytes of a heartbeat body (its details)
RESULT_STEP = "$result"  # the journal entry the SDK records an operation's final answer in


@dataclass(frozen=True, kw_only=True)
class Journal:
    """What earlier attempts of an operation left: completed steps and the last checkpoint."""

    steps: list[StepRecord] = field(default_factory=list)
    details: Any = None

    def to_json(self) -> dict[str, Any]:
        """The journal as the steps endpoint and the journal header show it."""
        return {
            "steps": [
                {"name": s.name, "result": s.result, "at": _iso(s.at), "attempt": s.attempt}
                for s in self.steps
            ],
            "details": self.details,
        }


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class OutcomeKind(enum.StrEnum):
    """How one request to an agent ended."""

    SUCCEEDED = "succeeded"  # the agent answered with the result
    ACCEPTED = "accepted"  # the agent runs it asynchronously and completes later
    OPERATION_FAILED = "operation_failed"  # the agent reports the operation failed/canceled
    RETRYABLE = "retryable"  # the request failed; try again later
    PERMANENT = "permanent"  # the request failed for good


@fast_init
@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The adapter's answer: its kind and what came with it (result, token, failure...)."""

    kind: OutcomeKind
    result: bytes | None = None
    content_type: str | None = None
    agent_token: str | None = None
    state: str | None = None  # for OPERATION_FAILED: "failed" | "canceled"
    failure: dict[str, Any] | None = None
    error: str | None = None
    status: int | None = None
    retry_after_s: float | None = None
    links: tuple[str, ...] = ()  # Nexus links the agent returned (header form)
    # ACCEPTED and waiting for the caller's input (an A2A TASK_STATE_INPUT_REQUIRED): the prompt
    input_prompt: str | None = None


@fast_init
@dataclass(frozen=True, kw_only=True)
class DispatchRequest:
    """One attempt to start (or poll) an operation at its agent."""

    operation: Operation
    agent: AgentSpec
    spec: OperationSpec
    attempt: int
    completion_url: str
    completion_token: str
    timeout_s: float
    deadline: datetime | None = None
    # Extra request headers for the agent (e.g. its credentials), applied last by adapters.
    headers: Mapping[str, str] = field(default_factory=dict)
    # credentials towards the agent (resolved by the engine for every call; adapters add these
    # headers to each request they send to the agent and never log them)
    auth_headers: Mapping[str, str] = field(default_factory=dict)
    heartbeat_url: str | None = None
    steps_url: str | None = None
    journal: Journal | None = None  # None on a first attempt (nothing recorded yet)

    def journal_headers(self) -> dict[str, str]:
        """The heartbeat and journal headers of this dispatch (see the ``HEADER_*`` names)."""
        headers = {HEADER_ATTEMPT: str(self.attempt)}
        if self.heartbeat_url:
            headers[HEADER_HEARTBEAT_URL] = self.heartbeat_url
        if self.steps_url:
            headers[HEADER_STEPS_URL] = self.steps_url
        if self.spec.heartbeat_timeout_s:
            headers[HEADER_HEARTBEAT_TIMEOUT] = f"{self.spec.heartbeat_timeout_s:g}"
        if self.journal is not None and (self.journal.steps or self.journal.details is not None):
            text = json.dumps(self.journal.to_json(), separators=(",", ":"), ensure_ascii=True)
            if len(text) <= JOURNAL_HEADER_MAX:
                headers[HEADER_JOURNAL] = text
            else:
                headers[HEADER_JOURNAL_OMITTED] = "1"
        return headers


@dataclass(frozen=True, kw_only=True)
class CancelRequest:
    """Tell an agent to stop an operation it accepted."""

    operation: Operation
    agent: AgentSpec
    timeout_s: float
    extra: dict[str, str] = field(default_factory=dict)  # extra request headers, applied last
    auth_headers: Mapping[str, str] = field(default_factory=dict)  # as in DispatchRequest


class CredentialSource(Protocol):
    """Resolves an agent's ``auth`` (secrets by reference) into request headers."""

    async def headers(self, agent: AgentSpec, *, refresh: bool = False) -> dict[str, str]:
        """The headers that authenticate the gateway to ``agent`` (empty without ``auth``).

        ``refresh`` drops a cached token first (the agent answered 401). Raises
        ``CredentialError`` when they cannot be had.
        """
        ...


class CredentialError(Exception):
    """Credentials could not be resolved (env var gone, token endpoint failed).

    The message names references (env var names, URLs) only, never a secret.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class AgentAdapter(Protocol):
    """The one interface every outbound agent adapter implements."""

    async def start(self, req: DispatchRequest) -> Outcome:
        """Send the operation to the agent (idempotent: the operation id is the key)."""
        ...

    async def cancel(self, req: CancelRequest) -> Outcome:
        """Ask the agent to cancel the operation."""
        ...


@fast_init
@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    """A response as the transport read it."""

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
    ) -> HttpResponse:
        """Send one request and read the whole response, or raise ``TransportError``."""
        ...


class TransportError(Exception):
    """The request did not get a response (connection refused, timeout, blocked address)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
