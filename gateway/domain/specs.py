"""Registered agents and their operations (pure data; no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

SYSTEM_OWNER = "swarmgate:system"  # owns agents from SWARMGATE_AGENTS_FILE: admin replaces them


class AdapterKind(enum.StrEnum):
    """The protocol the gateway speaks to an agent."""

    HTTP = "http"  # Nexus-style HTTP (plain webhook agents work too: 200 = result)
    A2A = "a2a"  # A2A 1.0 JSON-RPC binding


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter; computed with tenacity's wait strategies."""

    initial_s: float = 1.0
    max_s: float = 3600.0
    multiplier: float = 2.0
    jitter_s: float = 1.0
    max_attempts: int | None = None  # None: retry until the schedule-to-close timeout

    def to_json(self) -> dict[str, Any]:
        """The policy as the registry stores and shows it."""
        return {
            "initial_s": self.initial_s,
            "max_s": self.max_s,
            "multiplier": self.multiplier,
            "jitter_s": self.jitter_s,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RetryPolicy:
        """Read a policy written by ``to_json`` (missing fields take their defaults)."""
        data = data or {}
        return cls(
            initial_s=float(data.get("initial_s", 1.0)),
            max_s=float(data.get("max_s", 3600.0)),
            multiplier=float(data.get("multiplier", 2.0)),
            jitter_s=float(data.get("jitter_s", 1.0)),
            max_attempts=(
                int(data["max_attempts"]) if data.get("max_attempts") is not None else None
            ),
        )


@dataclass(frozen=True, kw_only=True)
class OperationSpec:
    """One operation an agent offers: its schemas, timeouts, retries and concurrency cap."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    timeout_s: float = 24 * 3600.0  # schedule-to-close default
    attempt_timeout_s: float = 10.0  # per-request timeout towards the agent (Temporal: 10 s)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int | None = None
    # an accepted attempt that sends no heartbeat for this long fails retryably (None: off)
    heartbeat_timeout_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The operation as the registry stores and shows it."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "timeout_s": self.timeout_s,
            "attempt_timeout_s": self.attempt_timeout_s,
            "retry": self.retry.to_json(),
            "concurrency": self.concurrency,
        }
        if self.heartbeat_timeout_s is not None:
            data["heartbeat_timeout_s"] = self.heartbeat_timeout_s
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperationSpec:
        """Read an operation written by ``to_json`` (``name`` is required)."""
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            input_schema=data.get("input_schema"),
            output_schema=data.get("output_schema"),
            timeout_s=float(data.get("timeout_s", 24 * 3600.0)),
            attempt_timeout_s=float(data.get("attempt_timeout_s", 10.0)),
            retry=RetryPolicy.from_json(data.get("retry")),
            concurrency=int(data["concurrency"]) if data.get("concurrency") else None,
            heartbeat_timeout_s=(
                float(data["heartbeat_timeout_s"])
                if data.get("heartbeat_timeout_s") is not None
                else None
            ),
        )


@dataclass(frozen=True, kw_only=True)
class AgentSpec:
    """A registered agent: where it listens, which adapter reaches it, what it offers."""

    name: str
    endpoint: str
    adapter: AdapterKind = AdapterKind.HTTP
    version: str = "1"
    description: str = ""
    operations: dict[str, OperationSpec] = field(default_factory=dict)
    # who registered it (the token's ``sub``; SYSTEM_OWNER for the agents file). Set by the
    # gateway, never by a registration body; only the owner or ``admin`` may replace it.
    owner: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The agent as the registry stores and shows it."""
        data: dict[str, Any] = {
            "name": self.name,
            "endpoint": self.endpoint,
            "adapter": self.adapter.value,
            "version": self.version,
            "description": self.description,
            "operations": [op.to_json() for op in self.operations.values()],
        }
        if self.owner is not None:
            data["owner"] = self.owner
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentSpec:
        """Read an agent (operations as a list, or as a mapping of name to spec)."""
        ops = data.get("operations") or []
        if isinstance(ops, dict):
            ops = [{"name": k, **(v or {})} for k, v in ops.items()]
        specs = [OperationSpec.from_json(o) for o in ops]
        return cls(
            name=str(data["name"]),
            endpoint=str(data["endpoint"]),
            adapter=AdapterKind(str(data.get("adapter", "http"))),
            version=str(data.get("version", "1")),
            description=str(data.get("description") or ""),
            operations={s.name: s for s in specs},
            owner=str(data["owner"]) if data.get("owner") is not None else None,
        )
