"""Operations, states, events and callback deliveries (pure data; no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.domain.frozen import fast_init

# The events a caller may ask to be called back for besides the completion (issue 15 item 4),
# with ``Swarmgate-Callback-Events`` on the start. Kept in ``Operation.callback_headers`` under
# a key no HTTP header can have (``@`` is not a token character), so it is never sent.
INPUT_REQUESTED = "input.requested"
CALLBACK_EVENTS = frozenset({INPUT_REQUESTED})
CALLBACK_EVENTS_KEY = "@events"


class OperationState(enum.StrEnum):
    """Where an operation stands: running, or closed in exactly one terminal state."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True once the operation is closed (succeeded, failed or canceled)."""
        return self is not OperationState.RUNNING


class Work(enum.StrEnum):
    """What the gateway still owes a running operation (None: waiting for the agent)."""

    DISPATCH = "dispatch"
    CANCEL = "cancel"
    POLL = "poll"  # ask the agent for the state of an accepted task (e.g. A2A GetTask)
    CANCEL_WAIT = "cancel_wait"  # the agent took the cancel (202): close it at grace end


class DeliveryState(enum.StrEnum):
    """Where a callback delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    DISABLED = "disabled"


@fast_init
@dataclass(frozen=True, kw_only=True)
class Operation:
    """One durable operation: its request, where it is in its life, and its outcome."""

    id: str
    service: str
    operation: str
    state: OperationState
    caller: str
    created_at: datetime
    input: bytes = b""
    input_content_type: str | None = None
    request_id: str | None = None
    callback_url: str | None = None
    callback_headers: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    work: Work | None = Work.DISPATCH
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    deadline_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    agent_token: str | None = None
    result: bytes | None = None
    result_content_type: str | None = None
    failure: dict[str, Any] | None = None
    closed_at: datetime | None = None
    last_error: str | None = None
    traceparent: str | None = None
    prev_lease_owner: str | None = None  # set when this lease took over an expired one
    handler_headers: dict[str, str] = field(default_factory=dict)  # caller's, for the agent
    # Heartbeats (issue 12): the deadline of the accepted attempt's next heartbeat (None: the
    # operation does not heartbeat, or no attempt is accepted), and the agent's last checkpoint.
    heartbeat_until: datetime | None = None
    heartbeat_details: Any = None

    @property
    def token(self) -> str:
        """The Nexus operation token (the operation id)."""
        return self.id

    @property
    def callback_events(self) -> frozenset[str]:
        """The events besides the completion the caller asked to be called back for."""
        if not self.callback_url:
            return frozenset()
        raw = self.callback_headers.get(CALLBACK_EVENTS_KEY) or ""
        return frozenset(e for e in raw.split(",") if e)

    def sent_callback_headers(self) -> dict[str, str]:
        """The caller's ``Nexus-Callback-*`` headers every callback carries (a copy)."""
        return {k: v for k, v in self.callback_headers.items() if k != CALLBACK_EVENTS_KEY}


@fast_init
@dataclass(frozen=True, kw_only=True)
class Event:
    """One entry of an operation's history, written with the change it records."""

    operation_id: str
    kind: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@fast_init
@dataclass(frozen=True, kw_only=True)
class RunningUpdate:
    """One non-terminal change of a running operation, as ``Store.update_running`` takes it.

    For ``Store.update_running_many``.
    """

    op_id: str
    owner: str | None
    work: Work | None
    next_attempt_at: datetime | None
    event: Event | None
    agent_token: str | None = None
    last_error: str | None = None
    refund_attempt: bool = False
    now: datetime | None = None
    heartbeat_until: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """One heartbeat of an accepted attempt: the next deadline, and a checkpoint if given."""

    operation_id: str
    attempt: int | None  # None: whatever attempt the operation is on
    until: datetime
    details: Any = None
    has_details: bool = False


@dataclass(frozen=True, kw_only=True)
class HeartbeatAck:
    """What a recorded heartbeat found: state, attempt, and whether a cancel was asked."""

    state: OperationState
    attempt: int
    cancel_requested: bool


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One completed step of an operation's journal (first write wins)."""

    operation_id: str
    name: str
    result: Any
    at: datetime
    attempt: int = 0


@fast_init
@dataclass(frozen=True, kw_only=True)
class CallbackDelivery:
    """One signed callback to deliver at least once (an outbox row)."""

    id: str  # the stable delivery id (webhook-id)
    operation_id: str
    url: str
    headers: dict[str, str]
    body: bytes
    created_at: datetime
    expires_at: datetime
    next_attempt_at: datetime
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None
    caller: str = ""
    lease_owner: str | None = None
    lease_until: datetime | None = None


@fast_init
@dataclass(frozen=True, kw_only=True)
class IdempotencyRecord:
    """A caller's request id or idempotency key, bound to the operation it started."""

    scope: str  # the caller (JWT sub) the key belongs to
    key: str  # "rid:<Nexus-Request-Id>" or "key:<Idempotency-Key>"
    fingerprint: str
    operation_id: str
    created_at: datetime
    expires_at: datetime
    response_status: int | None = None
    response_body: bytes | None = None
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CallerSecrets:
    """A caller's callback signing secrets; the previous one stays valid during rotation."""

    caller: str
    secret: str
    created_at: datetime
    previous_secret: str | None = None
    previous_until: datetime | None = None
    rotated_at: datetime | None = None

    def active(self, now: datetime) -> list[str]:
        """The secrets a signature may use at ``now`` (newest first)."""
        keys = [self.secret]
        if self.previous_secret and self.previous_until and self.previous_until > now:
            keys.append(self.previous_secret)
        return keys


@fast_init
@dataclass(frozen=True, kw_only=True)
class Completion:
    """A terminal transition, applied in one transaction with its event and callback."""

    operation_id: str
    state: OperationState
    at: datetime
    result: bytes | None = None
    result_content_type: str | None = None
    failure: dict[str, Any] | None = None
    event: Event
    callback: CallbackDelivery | None = None
    only_if_owner: str | None = None  # fence: apply only while this lease owner holds it
    then_cancel_agent: bool = False  # closed under the agent (timeout): tell it to stop


def failure(
    message: str,
    *,
    type: str | None = None,
    details: Any = None,
    cause: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a Nexus Failure JSON object."""
    body: dict[str, Any] = {"message": message, "metadata": {}}
    if type:
        body["metadata"]["type"] = type
    if details is not None:
        body["details"] = details
    if cause is not None:
        body["cause"] = cause
    return body


def operation_error(
    state: OperationState, message: str, cause: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the Nexus Failure of an operation that ended in ``state``."""
    return failure(
        message, type="nexus.OperationError", details={"state": state.value}, cause=cause
    )
