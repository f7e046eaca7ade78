"""Date formats the engine writes onto the wire (callback headers).

This room owns the two timestamp spellings the Nexus callback headers use; nothing else.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from email.utils import format_datetime

from gateway.domain.timetext import rfc3339_ms


def http_date(dt: datetime) -> str:
    """IMF-fixdate (whole seconds) of an aware datetime."""
    return _http_date(int(dt.timestamp()))


@functools.lru_cache(maxsize=256)
def _http_date(seconds: int) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


__all__ = ["http_date", "rfc3339_ms"]
