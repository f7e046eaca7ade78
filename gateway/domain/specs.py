"""Registered agents and their operations (pure data; no I/O)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SYSTEM_OWNER = "swarmgate:system"  # owns agents from SWARMGATE_AGENTS_FILE: admin replaces them
# A pull agent's operation waiting for a worker has this agent token; a leased one has
# PULL_LEASED + the worker id (worker ids are names: letters, digits, '-', '_', '.').
PULL_QUEUED = "pull-queued"
PULL_LEASED = "pull-worker:"


class AdapterKind(enum.StrEnum):
    """The protocol the gateway speaks to an agent."""

    HTTP = "http"  # Nexus-style HTTP (plain webhook agents work too: 200 = result)
    A2A = "a2a"  # A2A 1.0 JSON-RPC binding
    MCP = "mcp"  # an MCP server (Streamable HTTP); its tools are the operations
    NEXUS = "nexus"  # a Nexus HTTP handler (e.g. a Temporal Nexus endpoint), strictly per spec
    PULL = "pull"  # no inbound URL: the agent's workers long-poll the gateway for tasks


class AuthType(enum.StrEnum):
    """How the gateway authenticates to an agent."""

    BEARER = "bearer"  # Authorization: Bearer <secret from token_env>
    API_KEY = "api_key"  # <header>: <secret from value_env>
    OAUTH2_CLIENT_CREDENTIALS = "oauth2_client_credentials"  # token from token_url


@dataclass(frozen=True, kw_only=True)
class AgentAuth:
    """Credentials towards an agent, by reference: env var names, never the secrets."""

    type: AuthType
    token_env: str | None = None  # bearer
    header: str | None = None  # api_key
    value_env: str | None = None  # api_key
    token_url: str | None = None  # oauth2_client_credentials
    client_id: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None

    def secret_envs(self) -> list[str]:
        """The env var names this configuration needs set in the gateway."""
        names = (self.token_env, self.value_env, self.client_secret_env)
        return [n for n in names if n]

    def problems(self) -> list[str]:
        """What this configuration lacks for its type (empty: complete)."""
        need = {
            AuthType.BEARER: ("token_env",),
            AuthType.API_KEY: ("header", "value_env"),
            AuthType.OAUTH2_CLIENT_CREDENTIALS: ("token_url", "client_id", "client_secret_env"),
        }[self.type]
        return [
            f"auth type {self.type.value} needs {key}" for key in need if not getattr(self, key)
        ]

    def missing(self, env: Mapping[str, str]) -> list[str]:
        """The env var names this configuration refers to that are unset or empty in ``env``."""
        return [name for name in self.secret_envs() if not env.get(name)]

    def to_json(self) -> dict[str, Any]:
        """The configuration as stored and shown (references only: no secret values)."""
        data: dict[str, Any] = {"type": self.type.value}
        for key in ("token_env", "header", "value_env", "token_url", "client_id"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.client_secret_env is not None:
            data["client_secret_env"] = self.client_secret_env
        if self.scope is not None:
            data["scope"] = self.scope
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentAuth:
        """Read a configuration written by ``to_json`` (or a registration's ``auth``)."""

        def opt(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            type=AuthType(str(data["type"])),
            token_env=opt("token_env"),
            header=opt("header"),
            value_env=opt("value_env"),
            token_url=opt("token_url"),
            client_id=opt("client_id"),
            client_secret_env=opt("client_secret_env"),
            scope=opt("scope"),
        )


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
    endpoint: str  # the first of ``endpoints`` ("" for a pull agent)
    adapter: AdapterKind = AdapterKind.HTTP
    version: str = "1"
    description: str = ""
    operations: dict[str, OperationSpec] = field(default_factory=dict)
    # who registered it (the token's ``sub``; SYSTEM_OWNER for the agents file). Set by the
    # gateway, never by a registration body; only the owner or ``admin`` may replace it.
    owner: str | None = None
    # a pool: every endpoint serves the same agent (``endpoint`` is the first)
    endpoints: tuple[str, ...] = ()
    auth: AgentAuth | None = None

    def pool(self) -> tuple[str, ...]:
        """The endpoints dispatch spreads attempts over (one for a plain registration)."""
        if self.endpoints:
            return self.endpoints
        return (self.endpoint,) if self.endpoint else ()

    def to_json(self) -> dict[str, Any]:
        """The agent as the registry stores and shows it."""
        data: dict[str, Any] = {
            "name": self.name,
            **({"endpoint": self.endpoint} if self.endpoint else {}),
            "adapter": self.adapter.value,
            "version": self.version,
            "description": self.description,
            "operations": [op.to_json() for op in self.operations.values()],
        }
        if self.owner is not None:
            data["owner"] = self.owner
        if len(self.endpoints) > 1:
            data["endpoints"] = list(self.endpoints)
        if self.auth is not None:
            data["auth"] = self.auth.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentSpec:
        """Read an agent (operations as a list, or as a mapping of name to spec)."""
        ops = data.get("operations") or []
        if isinstance(ops, dict):
            ops = [{"name": k, **(v or {})} for k, v in ops.items()]
        specs = [OperationSpec.from_json(o) for o in ops]
        endpoints = tuple(str(e) for e in data.get("endpoints") or ())
        endpoint = data.get("endpoint")
        if endpoint is None:
            endpoint = endpoints[0] if endpoints else ""
        elif endpoints and str(endpoint) not in endpoints:
            endpoints = (str(endpoint), *endpoints)
        auth = data.get("auth")
        return cls(
            name=str(data["name"]),
            endpoint=str(endpoint),
            endpoints=endpoints if len(endpoints) > 1 else (),
            auth=AgentAuth.from_json(auth) if isinstance(auth, dict) else None,
            adapter=AdapterKind(str(data.get("adapter", "http"))),
            version=str(data.get("version", "1")),
            description=str(data.get("description") or ""),
            operations={s.name: s for s in specs},
            owner=str(data["owner"]) if data.get("owner") is not None else None,
        )
