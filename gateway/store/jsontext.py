"""JSON text for the stores' own parameters (batch rows, JSON columns, event data).

orjson writes it, 5-8x faster than the standard library's encoder (and datetimes without a
Python callback each): on the hot path the encoder was ~5-8% of the gateway's CPU (py-spy,
``python -m bench --profile``). What orjson refuses (integers beyond 64 bits, for one: a JSON
document may carry them, PostgreSQL's ``jsonb`` keeps them) goes through the standard library
as before, so what can be stored does not change. The text is compact, UTF-8, and parsed
back, never compared, so its spelling is free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

__all__ = ["dumps"]

_OPTIONS = orjson.OPT_NON_STR_KEYS


def _column_value(value: Any) -> str:
    """A value JSON has no type for, as the text its column's input function reads."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"no JSON form for a {type(value).__name__} value")


_FALLBACK = json.JSONEncoder(default=_column_value, separators=(",", ":"))


def dumps(value: Any, _dumps: Callable[..., bytes] = orjson.dumps) -> str:
    """``value`` as JSON text; datetimes in ISO 8601 (as ``datetime.isoformat``), bytes as
    PostgreSQL's ``bytea`` hex input (``\\x...``)."""
    try:
        return _dumps(value, default=_column_value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return _FALLBACK.encode(value)
