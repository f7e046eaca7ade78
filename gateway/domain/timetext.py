"""Timestamp text made on the hot path: the date and time to the second formatted once.

The stores and the wire write UTC instants as text many times per operation (SQLite keeps
every timestamp column as text, a step record's answer and a callback's close time carry
one). ``datetime.isoformat`` parses its arguments and formats the whole value in every call
(1.5 us with a separator and ``timespec``; ``rfc3339_ms``'s ``astimezone`` + ``replace`` +
``isoformat`` 2.4 us, on the VM of bench/README.md's row); here the text up to the second is
remembered per second (an instant of the same second reuses it) and only the fraction is
formatted: ~0.8 us either way.

Both functions take an aware datetime in UTC (``tzinfo is UTC``: the clock's values) and
fall back to the general conversion for anything else.
"""

from __future__ import annotations

from datetime import UTC, datetime

_Second = tuple[int, int, int, int, int, int]
_KEPT = 4096  # seconds remembered per spelling; then forgotten at once (a bounded dict)
_SPACE: dict[_Second, str] = {}
_T: dict[_Second, str] = {}


def sqlite_text(value: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` of a UTC instant, the text SQLAlchemy stores on SQLite.

    A naive value is taken as UTC (as ``schema.UTCDateTime`` takes it).
    """
    if value.tzinfo is not UTC and value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{_second(value, _SPACE, ' ')}.{value.microsecond:06d}"


def rfc3339_ms(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and ``Z``: ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    The milliseconds are truncated, as ``isoformat(timespec="milliseconds")`` does; a naive
    value is taken as local time, as ``astimezone`` takes it.
    """
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return f"{_second(value, _T, 'T')}.{value.microsecond // 1000:03d}Z"


def _second(value: datetime, kept: dict[_Second, str], sep: str) -> str:
    """The text of ``value`` up to the second, remembered in ``kept``."""
    key = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    head = kept.get(key)
    if head is None:
        if len(kept) >= _KEPT:
            kept.clear()
        y, mo, d, h, mi, sec = key
        head = kept[key] = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{sec:02d}"
    return head


__all__ = ["rfc3339_ms", "sqlite_text"]
