"""The HTTP contract in ``spec/``: the OpenAPI document and the JSON Schemas handlers validate with.

The schema files are the single source of truth: ``spec/openapi.yaml`` references them, the
tests validate real responses against them, and handlers (e.g. ``POST /api/agents``) validate
request bodies with the functions here before acting on them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.security.schemas import SafeValidator, no_fetch_registry, validator_for


def _spec_dir() -> Path:
    """Where the spec files are: package data of ``gateway._spec`` (links to ``spec/`` in a
    checkout, copies in a wheel). They are read as files: relative ``$ref`` resolve on disk."""
    root = resources.files("gateway._spec")
    if not isinstance(root, Path):  # pragma: no cover - only for a zipped install
        raise RuntimeError("swarmgate must be installed as files, not zipped (spec/ is read)")
    return root


SPEC_DIR = _spec_dir()
SCHEMAS_DIR = SPEC_DIR / "schemas"
OPENAPI_PATH = SPEC_DIR / "openapi.yaml"

FAILURE = "failure.json"
OPERATION_INFO = "operation-info.json"
AGENT_REGISTRATION = "agent-registration.json"
PROBLEM = "problem.json"

MAX_ERRORS = 50
MAX_MESSAGE_CHARS = 300


def schema_names() -> list[str]:
    """The file names of every JSON Schema in ``spec/schemas``."""
    return sorted(p.name for p in SCHEMAS_DIR.glob("*.json"))


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema file ``spec/schemas/<name>``."""
    data = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a JSON object")
    return data


@functools.cache
def load_openapi() -> dict[str, Any]:
    """The parsed ``spec/openapi.yaml``."""
    data = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("openapi.yaml is not a mapping")
    return data


@functools.cache
def _registry() -> Registry[Any]:
    """Every schema file, addressable by its ``$id`` and by its file name (relative refs)."""
    pairs: list[tuple[str, Resource[Any]]] = []
    for name in schema_names():
        schema = load_schema(name)
        resource = DRAFT202012.create_resource(schema)
        pairs.append((name, resource))
        if isinstance(schema.get("$id"), str):
            pairs.append((schema["$id"], resource))
    return no_fetch_registry(pairs)


@functools.cache
def validator(name: str) -> Validator:
    """A Draft 2020-12 validator for ``spec/schemas/<name>`` (schema checked once)."""
    schema = load_schema(name)
    SafeValidator.check_schema(schema)
    return validator_for(schema, _registry())


def _pointer(err: ValidationError) -> str:
    parts = (str(p).replace("~", "~0").replace("/", "~1") for p in err.absolute_path)
    return "/" + "/".join(parts) if err.absolute_path else ""


def _message(err: ValidationError) -> str:
    text = str(err.message)
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _type_mismatch(err: ValidationError) -> bool:
    return err.validator == "type" and not err.relative_path


def _specific(err: ValidationError) -> list[ValidationError]:
    """The errors worth reporting for ``err``: for a failed ``oneOf`` / ``anyOf``, the errors of
    the branch whose type fits the instance (when exactly one does), else ``err`` itself."""
    if not err.context or err.validator not in ("oneOf", "anyOf"):
        return [err]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(sub.schema_path[0] if sub.schema_path else None, []).append(sub)
    fitting = [errs for errs in branches.values() if not any(_type_mismatch(e) for e in errs)]
    if len(fitting) != 1:
        return [err]
    return [leaf for sub in fitting[0] for leaf in _specific(sub)]


def schema_errors(name: str, data: Any) -> list[dict[str, str]]:
    """Violations of ``data`` against ``spec/schemas/<name>``: ``[{"path", "message"}]``.

    ``path`` is a JSON Pointer into ``data`` ("" for the document itself). For ``oneOf`` /
    ``anyOf`` failures the errors of the branch matching the instance's type are reported
    instead of the summary. Empty when ``data`` is valid; at most :data:`MAX_ERRORS` entries.
    """
    leaves = [leaf for err in validator(name).iter_errors(data) for leaf in _specific(err)]
    leaves.sort(key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    return [{"path": _pointer(e), "message": _message(e)} for e in leaves[:MAX_ERRORS]]


def registration_errors(data: Any) -> list[dict[str, str]]:
    """Violations of an agent registration (``POST /api/agents`` body); empty when valid."""
    return schema_errors(AGENT_REGISTRATION, data)


@functools.cache
def _openapi_registry() -> Registry[Any]:
    """The OpenAPI document and the schema files, under the URIs its relative refs resolve to."""
    pairs: list[tuple[str, Resource[Any]]] = [
        (OPENAPI_PATH.as_uri(), DRAFT202012.create_resource(load_openapi()))
    ]
    for name in schema_names():
        resource = DRAFT202012.create_resource(load_schema(name))
        pairs.append(((SCHEMAS_DIR / name).as_uri(), resource))
    return _registry().with_resources(pairs)


@functools.cache
def openapi_validator(pointer: str) -> Validator:
    """A validator for the schema at JSON Pointer ``pointer`` inside ``spec/openapi.yaml``
    (e.g. ``/components/schemas/Operation``), with every ``$ref`` resolved."""
    ref = {"$ref": OPENAPI_PATH.as_uri() + "#" + pointer}
    return validator_for(ref, _openapi_registry())


def component_errors(component: str, data: Any) -> list[dict[str, str]]:
    """Violations of ``data`` against ``#/components/schemas/<component>`` of the OpenAPI doc."""
    errors = openapi_validator("/components/schemas/" + component).iter_errors(data)
    leaves = [leaf for err in errors for leaf in _specific(err)]
    leaves.sort(key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    return [{"path": _pointer(e), "message": _message(e)} for e in leaves[:MAX_ERRORS]]
