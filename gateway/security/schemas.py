"""The one way swarmgate builds JSON Schema validators (agent schemas and its own contract).

Two rules for schemas that come from outside:

- **Validation never fetches.** Every validator resolves ``$ref`` against a ``referencing``
  registry whose retrieve function refuses every URI (``NoSuchResource``), so a ``$ref`` that
  does not resolve inside the schema (or the bundled contract files) is an error and never a
  network or file-system access. :func:`unresolvable_refs` walks a schema with the very same
  registry and base URIs (``$id`` of subschemas included) at registration, so what passes
  there resolves identically at validation time.
- **Validation takes time linear in its input.** ``pattern`` and ``patternProperties`` run on
  RE2 (google-re2: linear-time matching, no catastrophic backtracking; no backreferences or
  lookaround, so schemas using those are refused at registration), ``uniqueItems`` hashes a
  canonical form of each item instead of comparing all pairs, and schemas are capped in
  size and depth (:func:`schema_problems`).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "VALIDATION_TIMEOUT_S",
    "ValidationTimeout",
    "no_fetch_registry",
    "off_loop",
    "schema_problems",
    "unresolvable_refs",
    "validator_for",
]

MAX_SCHEMA_BYTES = 64 * 1024  # one input or output schema, as compact JSON
MAX_SCHEMA_DEPTH = 32  # objects and arrays inside each other within one schema
VALIDATION_TIMEOUT_S = 5.0  # a registration's checks; longer is refused (400)
VALIDATION_THREADS = 2  # at most this many run at once; more wait their turn
_POOL = ThreadPoolExecutor(max_workers=VALIDATION_THREADS, thread_name_prefix="sg-validate")
_T = TypeVar("_T")
_DATA_KEYWORDS = frozenset({"enum", "const", "examples", "default"})  # values, not schemas


def _refuse(uri: str) -> Resource[Any]:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # never fetched: not over the network, not from a file


def no_fetch_registry(resources: Iterable[tuple[str, Resource[Any]]] = ()) -> Registry[Any]:
    """A registry holding ``resources`` that refuses to retrieve anything else."""
    return Registry(retrieve=_refuse).with_resources(resources)  # type: ignore[call-arg]


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to the caller, not to stderr


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, _RE2_OPTIONS)


def _search(pattern: str, text: str) -> bool:
    return _regex(pattern).search(text) is not None


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = _search(patrn, instance)
    except re2.error:
        yield ValidationError(f"pattern {patrn[:80]!r} is not supported (RE2 syntax only)")
        return
    if not matched:
        yield ValidationError(f"{instance[:80]!r} does not match {patrn[:80]!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        try:
            _regex(patrn)
        except re2.error:
            yield ValidationError(f"pattern {patrn[:80]!r} is not supported (RE2 syntax only)")
            continue
        for key, value in instance.items():
            if _search(patrn, key):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _canonical(value: Any) -> Any:
    """A hashable form in which two JSON values are equal iff JSON Schema calls them equal
    (``1 == 1.0``, but ``true != 1``; object key order does not matter)."""
    if isinstance(value, bool) or value is None:
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", int(value) if float(value).is_integer() else value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    return ("x", repr(value))


def _unique_items(validator: Any, ui: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not ui or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"array has non-unique elements (item {index} repeats one)")
            return
        seen.add(key)


SafeValidator: type[Validator] = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "uniqueItems": _unique_items,
    },
)


def validator_for(
    schema: dict[str, Any] | bool, registry: Registry[Any] | None = None
) -> Validator:
    """A Draft 2020-12 validator for ``schema`` that never fetches and matches in linear time.
    ``registry`` (from :func:`no_fetch_registry`) adds documents its ``$ref`` may name."""
    return SafeValidator(schema, registry=registry or no_fetch_registry())


def _pointer(path: tuple[str, ...]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)


def _walk(node: Any, resolver: Any, path: tuple[str, ...], bad: list[str]) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _walk(item, resolver, (*path, str(index)), bad)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("$id"), str):
        resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
    for keyword in ("$ref", "$dynamicRef"):
        ref = node.get(keyword)
        if isinstance(ref, str):
            try:
                resolver.lookup(ref)
            except Unresolvable:
                bad.append(f"{ref!r} at {_pointer((*path, keyword))}")
    for key, value in node.items():
        if key not in _DATA_KEYWORDS:
            _walk(value, resolver, (*path, str(key)), bad)


def unresolvable_refs(schema: dict[str, Any]) -> list[str]:
    """``$ref``s of ``schema`` that do not resolve within it (``"'ref' at /json/pointer"``),
    with each subschema's ``$id`` as its base URI, exactly as :func:`validator_for` resolves."""
    resolver = no_fetch_registry().resolver_with_root(DRAFT202012.create_resource(schema))
    bad: list[str] = []
    _walk(schema, resolver, (), bad)
    return bad


def _depth(node: Any) -> int:
    deepest, stack = 0, [(node, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, level + 1) for child in children)
    return deepest


def _patterns(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            if isinstance(value.get("pattern"), str):
                yield value["pattern"]
            if isinstance(value.get("patternProperties"), dict):
                yield from (k for k in value["patternProperties"] if isinstance(k, str))
            stack.extend(v for k, v in value.items() if k not in _DATA_KEYWORDS)


def schema_problems(schema: Any) -> list[str]:
    """Why ``schema`` is refused as an agent's input or output schema (empty: accepted):
    too large, too deep, not a valid Draft 2020-12 schema, a pattern RE2 cannot run, a
    ``$ref`` cycle, or a ``$ref`` that does not resolve locally (named with its pointer).
    Answers are cached by the schema's canonical text (operations often share schemas)."""
    text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_SCHEMA_BYTES:
        return [f"is {len(text)} bytes; at most {MAX_SCHEMA_BYTES} are accepted"]
    return list(_schema_problems(text))


@functools.lru_cache(maxsize=512)
def _schema_problems(text: str) -> tuple[str, ...]:
    return tuple(_problems(json.loads(text)))


def _problems(schema: Any) -> list[str]:
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        return [f"is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted"]
    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        return [f"nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are accepted"]
    try:
        SafeValidator.check_schema(schema)
    except Exception as exc:  # SchemaError, or a RecursionError from a pathological schema
        message = getattr(exc, "message", None) or type(exc).__name__
        return [f"is not a valid JSON Schema: {message}"]
    for patrn in _patterns(schema):
        try:
            _regex(patrn)
        except re2.error:
            return [
                f"pattern {patrn[:80]!r} is not supported: patterns run on RE2 (linear time; "
                "no backreferences or lookaround)"
            ]
    try:  # a schema that refers to itself without descending recurses on any instance
        samples: tuple[Any, ...] = (None, {}, [])
        for sample in samples:
            for _ in validator_for(schema).iter_errors(sample):
                pass
    except RecursionError:
        return ["refers to itself without end (a $ref cycle that never descends)"]
    except Unresolvable:
        pass  # reported with its pointer below
    bad = unresolvable_refs(schema) if isinstance(schema, dict) else []
    if bad:
        return [
            "has $ref that do not resolve within the schema (remote and file schemas are "
            "never fetched): " + ", ".join(bad[:5])
        ]
    return []


class ValidationTimeout(Exception):
    """A validation did not finish within its time limit."""


async def off_loop(
    fn: Callable[..., _T], *args: Any, timeout_s: float = VALIDATION_TIMEOUT_S
) -> _T:
    """``fn(*args)`` on the bounded validation pool, so schema work never stalls the event
    loop. Raises :class:`ValidationTimeout` after ``timeout_s`` (the thread finishes its work
    in the background; the pool's size bounds how many such threads there are)."""
    future = asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError:
        raise ValidationTimeout(f"validation took longer than {timeout_s:g}s") from None
