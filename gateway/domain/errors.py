"""One exception root for swarmgate; each class docstring is its default message.

Two families are kept apart, as in the Nexus SDK:
- ``HandlerError``: the *request* failed (bad input, auth, unavailable...). Mapped to an HTTP
  status in exactly one place (``HandlerErrorType.status``).
- ``OperationError``: the *operation* failed or was canceled (HTTP 424 with a Failure body).
"""

from __future__ import annotations

import enum
from typing import Any


class SwarmgateError(Exception):
    """Something went wrong in swarmgate."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip().splitlines()[0]
        super().__init__(self.message)


class HandlerErrorType(enum.Enum):
    """Nexus handler error types, with HTTP status and default retryability."""

    BAD_REQUEST = (400, False)
    UNAUTHENTICATED = (401, False)
    UNAUTHORIZED = (403, False)
    NOT_FOUND = (404, False)
    REQUEST_TIMEOUT = (408, True)
    CONFLICT = (409, False)
    UNPROCESSABLE = (422, False)
    RESOURCE_EXHAUSTED = (429, True)
    INTERNAL = (500, True)
    NOT_IMPLEMENTED = (501, False)
    UNAVAILABLE = (503, True)
    UPSTREAM_TIMEOUT = (520, True)

    @property
    def status(self) -> int:
        """The HTTP status this type answers with."""
        return self.value[0]

    @property
    def default_retryable(self) -> bool:
        """Whether a caller may retry the request when the handler does not say."""
        return self.value[1]

    @classmethod
    def from_status(cls, status: int) -> HandlerErrorType:
        """The type of an HTTP status (other 4xx: BAD_REQUEST; anything else: INTERNAL)."""
        for t in cls:
            if t.status == status:
                return t
        if 400 <= status < 500:
            return cls.BAD_REQUEST
        return cls.INTERNAL

    @classmethod
    def from_name(cls, name: str) -> HandlerErrorType | None:
        """The type named ``name`` (as in a Nexus Failure), or None."""
        return cls.__members__.get(name)


class HandlerError(SwarmgateError):
    """The request could not be handled."""

    def __init__(
        self,
        type: HandlerErrorType,
        message: str | None = None,
        *,
        retryable_override: bool | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or type.name.replace("_", " ").lower())
        self.type = type
        self.retryable_override = retryable_override
        self.details = details
        self.headers = headers or {}

    @property
    def retryable(self) -> bool:
        """Whether the caller may retry: the override if given, else the type's default."""
        if self.retryable_override is not None:
            return self.retryable_override
        return self.type.default_retryable

    @property
    def status(self) -> int:
        """The HTTP status of this error's type."""
        return self.type.status

    def to_failure(self) -> dict[str, Any]:
        """The Nexus Failure body of this error (the ``/nexus`` error shape)."""
        # 422 is not a Nexus handler error type: its body says BAD_REQUEST (body wins).
        name = "BAD_REQUEST" if self.type is HandlerErrorType.UNPROCESSABLE else self.type.name
        details: dict[str, Any] = {"type": name}
        if self.retryable_override is not None:
            details["retryableOverride"] = self.retryable_override
        body: dict[str, Any] = {
            "message": self.message,
            "metadata": {"type": "nexus.HandlerError"},
            "details": details,
        }
        if self.details is not None:
            body["details"]["errors"] = self.details
        return body


class OperationError(SwarmgateError):
    """The operation failed."""

    def __init__(self, state: str, failure: dict[str, Any]) -> None:
        super().__init__(str(failure.get("message") or self.__doc__))
        self.state = state
        self.failure = failure


# --- store boundary ------------------------------------------------------------------------------


class StoreError(SwarmgateError):
    """The store failed."""


class StoreUnavailable(StoreError):
    """The database is unreachable; try again later."""


class StoreFull(StoreUnavailable):
    """The database's disk is full; writes fail until space returns."""


class DataRejected(StoreError):
    """The database refused a value; writing it again cannot succeed."""


class UniqueViolation(StoreError):
    """A row with this key already exists."""


class WriteConflict(StoreError):
    """The transaction lost a deadlock or serialization conflict and was rolled back; retry."""


class NotFound(SwarmgateError):
    """No such object."""


class ConfigError(SwarmgateError):
    """The configuration is invalid."""
