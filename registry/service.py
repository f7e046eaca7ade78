"""The agent registry: validated registration, cached lookups, schema checks on payloads."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry as RefRegistry
from referencing.exceptions import Unresolvable as ReferencingError
from referencing.jsonschema import DRAFT202012

from gateway.domain.clock import Clock
from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.ports import Store
from registry.model import AgentSpec, OperationSpec

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_name(kind: str, name: str) -> None:
    if not name or len(name) > 200 or not set(name) <= NAME_CHARS:
        raise HandlerError(
            HandlerErrorType.BAD_REQUEST,
            f"{kind} name {name!r} must be 1-200 characters of letters, digits, '-', '_' or '.'",
        )


def schema_errors(schema: dict[str, Any], instance: Any) -> list[dict[str, str]]:
    validator = Draft202012Validator(schema)
    try:
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    except ReferencingError as exc:  # registered before refs were checked: still a 400
        return [{"path": "/", "message": f"the schema cannot be applied: {exc}"}]
    return [
        {"path": "/" + "/".join(str(p) for p in err.absolute_path), "message": err.message}
        for err in errors
    ][:50]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def unresolvable_refs(schema: dict[str, Any]) -> list[str]:
    """``$ref``s that do not resolve inside the schema itself (no remote schemas are fetched)."""
    resource = DRAFT202012.create_resource(schema)
    resolver = (
        RefRegistry()
        .with_resource("urn:swarmgate:schema", resource)
        .resolver(base_uri="urn:swarmgate:schema")
    )
    bad = []
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except ReferencingError:
            bad.append(ref)
    return bad


def validate_spec(spec: AgentSpec) -> None:
    """Reject malformed registrations before anything is stored."""
    check_name("agent", spec.name)
    if not spec.endpoint.startswith(("http://", "https://")):
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "endpoint must be an http(s) URL")
    if not spec.operations:
        raise HandlerError(HandlerErrorType.BAD_REQUEST, "an agent needs at least one operation")
    for op in spec.operations.values():
        check_name("operation", op.name)
        for which, schema in (
            ("input_schema", op.input_schema),
            ("output_schema", op.output_schema),
        ):
            if schema is None:
                continue
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise HandlerError(
                    HandlerErrorType.BAD_REQUEST,
                    f"operation {op.name!r}: {which} is not a valid JSON Schema: {exc.message}",
                ) from exc
            bad_refs = unresolvable_refs(schema)
            if bad_refs:
                raise HandlerError(
                    HandlerErrorType.BAD_REQUEST,
                    f"operation {op.name!r}: {which} has $ref that do not resolve within the "
                    f"schema (remote schemas are not fetched): {', '.join(bad_refs[:5])}",
                )
        if op.timeout_s <= 0 or op.attempt_timeout_s <= 0:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, "timeouts must be positive")
        if op.concurrency is not None and op.concurrency < 1:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, "concurrency must be >= 1")


class Registry:
    """Registered agents, cached per process for ``ttl_s`` (other replicas see changes then)."""

    def __init__(self, store: Store, clock: Clock, *, ttl_s: float = 2.0) -> None:
        self.store = store
        self.clock = clock
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, AgentSpec, int]] = {}
        # One store read per name at a time: when a hot agent's entry expires, the requests
        # that arrive meanwhile share the read instead of each making one.
        self._reading: dict[str, asyncio.Task[tuple[AgentSpec, int] | None]] = {}

    async def register(self, spec: AgentSpec) -> int:
        validate_spec(spec)
        version = await self.store.upsert_agent(spec, self.clock.now())
        self._cache[spec.name] = (time.monotonic(), spec, version)
        return version

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
        instance = json.loads(body, parse_constant=_not_json) if body else None
    except (ValueError, UnicodeDecodeError) as exc:
        return [{"path": "/", "message": f"{what} is not valid JSON: {exc}"}]
    return schema_errors(schema, instance)


def _is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON value")
