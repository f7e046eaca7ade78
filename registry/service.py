"""The agent registry: validated registration, cached lookups, schema checks on payloads."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from referencing.exceptions import Unresolvable as ReferencingError

from gateway.domain import jsonio
from gateway.domain.clock import Clock
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.ports import Store
from gateway.domain.specs import SYSTEM_OWNER, AdapterKind, AgentSpec, OperationSpec
from gateway.security.schemas import ValidationTimeout, off_loop, schema_problems, validator_for

MAX_OPERATIONS = 100  # per agent: a registration checks every schema of every operation
MAX_ENDPOINTS = 32  # per agent pool

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(kind: str, name: str) -> None:
    if not name or len(name) > 200 or not set(name) <= NAME_CHARS:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{kind} name {name!r} must be 1-200 characters of letters, digits, '-', '_' or '.'",
        )


def schema_errors(schema: dict[str, Any], instance: Any) -> list[dict[str, str]]:
    validator = validator_for(schema)
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    except ReferencingError as exc:  # registered before refs were checked: still a 400
        return [{"path": "/", "message": f"the schema cannot be applied: {exc}"}]
    except RecursionError:  # a schema that refers to itself without descending
        return [{"path": "/", "message": "the schema cannot be applied: it recurses too deeply"}]
    return [
        {"path": "/" + "/".join(str(p) for p in err.absolute_path), "message": err.message}
        for err in errors
    ][:50]


def validate_spec(spec: AgentSpec) -> None:
    """Reject malformed registrations before anything is stored."""
    check_name("agent", spec.name)
    if spec.adapter is AdapterKind.PULL:
        if spec.pool():
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST,
                "a pull agent has no endpoint: its workers poll the gateway for tasks",
            )
    elif not spec.pool():
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "endpoint (or endpoints) is required")
    if len(spec.pool()) > MAX_ENDPOINTS:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"an agent has at most {MAX_ENDPOINTS} endpoints"
        )
    for endpoint in spec.pool():
        if not endpoint.startswith(("http://", "https://")):
            raise HandlerError(HandlerErrorType.BAD_REQUEST, "endpoint must be an http(s) URL")
    if len(set(spec.pool())) != len(spec.pool()):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "endpoints must not repeat")
    if spec.auth is not None:
        problems = spec.auth.problems()
        if problems:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, problems[0])
        if spec.auth.token_url and not spec.auth.token_url.startswith(("http://", "https://")):
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST, "auth token_url must be an http(s) URL"
            )
    if not spec.operations:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "an agent needs at least one operation")
    if len(spec.operations) > MAX_OPERATIONS:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"an agent has at most {MAX_OPERATIONS} operations, not {len(spec.operations)}",
        )
    for op in spec.operations.values():
        check_name("operation", op.name)
        for which, schema in (
            ("input_schema", op.input_schema),
            ("output_schema", op.output_schema),
        ):
            if schema is None:
                continue
            problems = schema_problems(schema)
            if problems:
                raise HandlerError(
                    HandlerErrorType.BAD_REQUEST, f"operation {op.name!r}: {which} {problems[0]}"
                )
        if op.timeout_s <= 0 or op.attempt_timeout_s <= 0:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, "timeouts must be positive")
        _check_numbers(op)


MAX_SECONDS = 31536000.0  # one year: the registration schema's bound on every duration


def _in_range(what: str, value: float, low: float, high: float, *, open_low: bool) -> None:
    """400 unless ``value`` is a finite number in the range (NaN compares false with all)."""
    ok = math.isfinite(value) and (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{what} must be a finite number in {bracket}{low:g}, {high:g}], not {value!r}",
        )


def _check_numbers(op: OperationSpec) -> None:
    """Every number of an operation finite and bounded, whichever way it was registered (the
    HTTP body is checked against the schema too; the agents file and the Python API are not)."""
    name = f"operation {op.name!r}:"
    _in_range(f"{name} timeout_s", op.timeout_s, 0, MAX_SECONDS, open_low=True)
    _in_range(f"{name} attempt_timeout_s", op.attempt_timeout_s, 0, MAX_SECONDS, open_low=True)
    r = op.retry
    _in_range(f"{name} retry.initial_s", r.initial_s, 0, MAX_SECONDS, open_low=True)
    _in_range(f"{name} retry.max_s", r.max_s, 0, MAX_SECONDS, open_low=True)
    _in_range(f"{name} retry.multiplier", r.multiplier, 1, 100, open_low=False)
    _in_range(f"{name} retry.jitter_s", r.jitter_s, 0, MAX_SECONDS, open_low=False)
    if r.max_attempts is not None and not 1 <= r.max_attempts <= 1_000_000:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST, f"{name} retry.max_attempts must be 1 to 1000000"
        )
    if op.concurrency is not None and not 1 <= op.concurrency <= 1_000_000:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, f"{name} concurrency must be 1 to 1000000")


def _not_yours(name: str, what: str) -> HandlerError:
    return HandlerError(
        HandlerErrorType.UNAUTHORIZED,
        f"agent {name!r} belongs to another principal; only its owner or admin may {what} it",
    )


def _check_owner_sub(sub: str, admin: bool) -> None:
    if sub == SYSTEM_OWNER and not admin:  # a token must not pose as the agents file
        raise HandlerError(HandlerErrorType.UNAUTHORIZED, f"sub {SYSTEM_OWNER!r} is reserved")


class Registry:
    """Registered agents, cached per process for ``ttl_s`` (other replicas see changes then)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        ttl_s: float = 2.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        # where the secrets an agent's ``auth`` names live (the gateway's environment)
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.clock = clock
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, AgentSpec, int]] = {}
        # One store read per name at a time: when a hot agent's entry expires, the requests
        # that arrive meanwhile share the read instead of each making one.
        self._reading: dict[str, asyncio.Task[tuple[AgentSpec, int] | None]] = {}

    def _check_secrets(self, spec: AgentSpec) -> None:
        missing = spec.auth.missing(self.env) if spec.auth is not None else []
        if missing:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST,
                f"auth names env var {missing[0]!r}, which is not set in the gateway",
            )

    async def register(self, spec: AgentSpec) -> int:
        try:  # off the event loop, time-limited: schemas are checked and compiled
            await off_loop(validate_spec, spec)
        except ValidationTimeout as exc:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST, f"registration refused: {exc}"
            ) from exc
        self._check_secrets(spec)
        version = await self.store.upsert_agent(spec, self.clock.now())
        self._cache[spec.name] = (time.monotonic(), spec, version)
        return version

    async def register_as(self, spec: AgentSpec, sub: str, *, admin: bool) -> tuple[int, bool]:
        """Register ``spec`` owned by ``sub``: (version, created). Replacing an agent someone
        else owns (or the agents file's) needs ``admin`` (HandlerError UNAUTHORIZED, 403)."""
        try:
            await off_loop(validate_spec, spec)
        except ValidationTimeout as exc:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST, f"registration refused: {exc}"
            ) from exc
        self._check_secrets(spec)
        found = await self.store.get_agent(spec.name)
        # an admin replacing an agent keeps its owner; anyone else's registration is theirs
        owner = found[0].owner if admin and found is not None and found[0].owner else sub
        owned = replace(spec, owner=owner)
        _check_owner_sub(sub, admin)
        outcome, version = await self.store.write_agent_if_owner(
            spec.name, owned, self.clock.now(), owner=None if admin else sub
        )
        if outcome == "forbidden":
            raise _not_yours(spec.name, "replace")
        self._cache[spec.name] = (time.monotonic(), owned, version)
        return version, outcome == "created"

    async def deregister_as(self, name: str, sub: str, *, admin: bool) -> bool:
        """Delete agent ``name`` if ``sub`` owns it (or ``admin``); False if there is none."""
        _check_owner_sub(sub, admin)
        outcome, _ = await self.store.write_agent_if_owner(
            name, None, self.clock.now(), owner=None if admin else sub
        )
        self._cache.pop(name, None)
        if outcome == "forbidden":
            raise _not_yours(name, "delete")
        return outcome == "deleted"

    async def deregister(self, name: str) -> bool:
        self._cache.pop(name, None)
        return await self.store.delete_agent(name)

    async def get(self, name: str) -> AgentSpec | None:
        found = await self.get_versioned(name)
        return found[0] if found else None

    async def get_versioned(self, name: str) -> tuple[AgentSpec, int] | None:
        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1], hit[2]
        reading = self._reading.get(name)
        if reading is None:
            # its own task: a caller that gives up does not cancel the read the others share
            reading = asyncio.create_task(self._read(name), name=f"sg-registry-{name}")
            self._reading[name] = reading
            reading.add_done_callback(functools.partial(self._read_done, name))
        return await asyncio.shield(reading)

    def _read_done(self, name: str, task: asyncio.Task[tuple[AgentSpec, int] | None]) -> None:
        self._reading.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter gave up

    async def _read(self, name: str) -> tuple[AgentSpec, int] | None:
        found = await self.store.get_agent(name)
        if found is not None:  # misses are not cached: a new agent is visible at once
            self._cache[name] = (time.monotonic(), found[0], found[1])
        return found

    async def list(self) -> list[tuple[AgentSpec, int]]:
        return await self.store.list_agents()

    async def resolve(self, service: str, operation: str) -> tuple[AgentSpec, OperationSpec]:
        agent = await self.get(service)
        if agent is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, f"no agent named {service!r}")
        spec = agent.operations.get(operation)
        if spec is None:
            raise HandlerError(
                HandlerErrorType.NOT_FOUND, f"agent {service!r} has no operation {operation!r}"
            )
        return agent, spec


INLINE_PAYLOAD_BYTES = 4096  # validated on the event loop up to this size; larger: off it


async def check_payload_off_loop(
    schema: dict[str, Any] | None, body: bytes, content_type: str | None, what: str
) -> list[dict[str, str]]:
    """:func:`check_payload` without stalling the event loop: a small payload (at most
    ``INLINE_PAYLOAD_BYTES``; linear-time checks, so microseconds) inline, a larger one on the
    validation pool with its time limit (over it: one error, a 400 for a start)."""
    if schema is None:
        return []
    if len(body) <= INLINE_PAYLOAD_BYTES:
        return check_payload(schema, body, content_type, what)
    try:
        return await off_loop(check_payload, schema, body, content_type, what)
    except ValidationTimeout as exc:
        return [{"path": "/", "message": f"{what} could not be validated: {exc}"}]


def check_payload(
    schema: dict[str, Any] | None, body: bytes, content_type: str | None, what: str
) -> list[dict[str, str]]:
    """Schema errors of a JSON payload (empty list: valid). Non-JSON bodies fail a schema:
    a media type other than ``application/json`` / ``*/*+json``, or text that is not JSON
    (``NaN`` and ``Infinity`` included, which Python's parser would take). No body is ``null``."""
    if schema is None:
        return []
    if content_type and not _is_json_media_type(content_type):
        return [{"path": "/", "message": f"{what} must be application/json, got {content_type}"}]
    try:
        instance = jsonio.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        return [{"path": "/", "message": f"{what} is not valid JSON: {exc}"}]
    return schema_errors(schema, instance)


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")
