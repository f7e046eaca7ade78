"""The one JSON loader for everything that crosses a boundary.

That is request bodies, agent answers, completions, registrations and files.
Plain ``json.loads`` accepts what the rest of the gateway cannot store or process: ``NaN`` and
``Infinity`` (PostgreSQL's JSON types refuse them; comparisons with them are always false),
numbers too large for a float (``1e999`` becomes ``inf``) and nesting deep enough that the
parser, the schema validator or the serializer hits the recursion limit. :func:`loads` refuses
all of those with :class:`JsonRejected` (a ``ValueError``), before parsing in the depth case.

orjson parses first (7x faster than the standard library's decoder on a small body: ~0.45
against ~3.2 us; ~1.4 us with the checks below, bench/README.md); it is strict RFC 8259 (no
``NaN``, no infinite number) but reads an integer beyond 64 bits as a float, so a document
with a run of 19 or more digits goes to the standard library's decoder instead, as does
everything orjson refuses (which then answers as before: UTF-16 and UTF-32 bodies, a byte
order mark, lone surrogates accepted; the rest refused with the standard library's error).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

import orjson

__all__ = ["MAX_JSON_DEPTH", "JsonRejected", "bounded_int", "check_storable", "loads"]

MAX_JSON_DEPTH = 64  # arrays and objects inside each other
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# 19 digits in a row: a number orjson might read into a float (beyond a 64-bit integer) or
# round differently; the standard library's decoder reads such a document (a long run inside
# a string sends it there too, which costs only time)
_SHAPE = bytes(48 if 48 <= b <= 57 else 91 if b in b"[{" else 32 for b in range(256))
_LONG_RUN = b"0" * 19  # in a text translated by _SHAPE: digits "0", openings "[", the rest
# " " (0.3 us for 130 bytes; a regular expression took 1 us)


class JsonRejected(ValueError):
    """Well-formed or not, the document is refused: too deep, or a non-finite number."""


def _refuse_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not a JSON number (non-finite numbers are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected(f"number {text[:40]} is out of range")
    return value


# one decoder (json.loads with arguments builds a new one per call: ~1% of a heartbeat's CPU)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _check_depth(text: str, max_depth: int) -> None:
    """Raise unless arrays/objects nest at most ``max_depth`` deep.

    Linear and in C: strings are cut out, everything but brackets is dropped, the running
    depth is summed up.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth:
        raise JsonRejected(f"JSON nests deeper than {max_depth} levels")


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON, refusing what the gateway cannot store or process.

    Raises ``json.JSONDecodeError`` (malformed) or :class:`JsonRejected` (deeper than
    ``max_depth``, ``NaN``/``Infinity``, numbers beyond a float or with more digits than
    Python converts). Both are ``ValueError``; so is bad UTF-8.
    """
    text: str | None = None
    raw: bytes | None = None
    if isinstance(data, str):
        text = data
        try:
            raw = data.encode()
        except UnicodeEncodeError:  # lone surrogates: the standard library's decoder reads them
            pass
    else:
        raw = bytes(data)
    if raw is not None:
        shape = raw.translate(_SHAPE)
        if _LONG_RUN not in shape:
            if shape.count(b"[") > max_depth:
                if text is None:
                    text = raw.decode(json.detect_encoding(raw), "strict")
                _check_depth(text, max_depth)
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass  # the standard library's decoder accepts it or says why not
        if text is None:
            text = raw.decode(json.detect_encoding(raw), "strict")
    assert text is not None
    _check_depth(text, max_depth)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # unreachable after the depth check; kept fail-safe
        raise JsonRejected(f"JSON nests deeper than {max_depth} levels") from None


def bounded_int(raw: str, name: str, *, low: int = 0, high: int = 2**63 - 1) -> int:
    """``raw`` as a base-10 integer in ``[low, high]``.

    Raises ValueError naming ``name`` otherwise (also for more than 20 digits, so nobody
    makes us convert a megabyte of digits).
    """
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 20:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    return value


def _flat_and_small(value: dict[Any, Any], max_bytes: int) -> bool:
    """Whether a dict of text keys to scalars is storable for sure, without serializing it.

    A closing's event data is such a dict (serializing it to check was ~1% of the gateway's
    CPU). False means: check it whole.
    """
    budget = max_bytes - 2  # in characters of the JSON text: at most 12 per code point (a
    # surrogate pair of \uXXXX escapes), plus quotes, colon and comma
    for key, item in value.items():
        if type(key) is not str or "\0" in key:
            return False
        t = type(item)
        if t is str:
            if "\0" in item:
                return False
            budget -= 12 * len(item) + 2
        elif t is int:
            if not -(2**63) <= item < 2**64:  # a longer one: its digits count, check it whole
                return False
        elif t is float:
            if not math.isfinite(item):
                return False
        elif t is not bool and item is not None:
            return False
        if t is not str:
            budget -= 26  # a number or a literal: at most 24 characters (a float's repr)
        budget -= 12 * len(key) + 4
        if budget < 0:
            return False
    return True


def check_storable(value: Any, *, max_bytes: int = 1 << 20) -> None:
    """Raise :class:`JsonRejected` unless ``value`` can be stored as a JSON column.

    That is: serializable, finite numbers only, at most ``MAX_JSON_DEPTH`` deep, no NUL
    character (PostgreSQL's ``jsonb`` refuses an escaped NUL) and at most ``max_bytes`` long.
    """
    if type(value) is dict and _flat_and_small(value, max_bytes):
        return
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JsonRejected(f"not storable as JSON: {type(exc).__name__}") from None
    if len(text) > max_bytes:
        raise JsonRejected(f"JSON of {len(text)} bytes is over {max_bytes}")
    if "\\u0000" in text:
        raise JsonRejected("JSON with a NUL character")
    _check_depth(text, MAX_JSON_DEPTH)
