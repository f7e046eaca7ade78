"""What the CLI prints (tables, times, event lines, problems), its errors, constants and exits."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn, TextIO

from gateway.sdk.client import GatewayError

DEFAULT_URL = "http://127.0.0.1:8080"
OPERATION_STATES = ("running", "succeeded", "failed", "canceled")
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
CLIENT_RETRY_S = 2.0  # transient failures (connection refused, 503) are retried this long
DATA_WIDTH = 100  # history: compact event data is cut to this many characters


class UsageError(Exception):
    """Bad input from the user (exit code 2)."""


class CommandError(Exception):
    """The command could not be carried out (exit code 1)."""


# -- formatting ---------------------------------------------------------------------------------


def _when(value: Any, *, millis: bool = False) -> str:
    """``2024-05-01T12:00:03.123456Z`` -> ``2024-05-01 12:00:03`` (UTC); ``-`` for None."""
    if not value:
        return "-"
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{dt.microsecond // 1000:03d}" if millis else text


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO) -> None:
    """A plain aligned text table (the last column is not padded)."""
    body = [[c.replace("\n", " ") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(headers), file=out)
    for row in body:
        print(line(row), file=out)


def key_values(pairs: Sequence[tuple[str, str]], out: TextIO) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{(key + ':').ljust(width + 1)}  {value}", file=out)


def compact_data(data: Any) -> str:
    """Event data as ``key=value ...`` on one line (JSON for non-string values)."""
    if isinstance(data, dict):
        text = " ".join(f"{k}={_text(v)}" for k, v in data.items())
    else:
        text = _text(data) if data is not None else ""
    return _cut(text.replace("\n", " "), DATA_WIDTH)


def print_json(value: Any, out: TextIO) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=out)


HISTORY_HEADER = f"{'ID':>6}  {'TIME (UTC)':<23}  {'KIND':<22}  DATA"


def event_line(e: dict[str, Any]) -> str:
    """One timeline row: event id, time, kind, compact data."""
    at = _when(e.get("at"), millis=True)
    line = f"{e.get('id', '')!s:>6}  {at:<23}  {e.get('kind', '')!s:<22}  "
    return (line + compact_data(e.get("data"))).rstrip()


def describe_problem(err: GatewayError) -> str:
    """One readable line from a problem+json (or Nexus Failure) body."""
    body = err.body
    if isinstance(body, dict):
        title = body.get("title")
        detail = body.get("detail") or body.get("message")
        text = f"HTTP {err.status}"
        if title:
            text += f" {title}"
        if detail:
            text += f": {detail}"
        errors = body.get("errors")
        for item in errors if isinstance(errors, list) else []:
            text += f"\n  - {_text(item)}"
        return text
    return f"HTTP {err.status}: {_text(body)}" if body else f"HTTP {err.status}"


def fail(message: str, code: int) -> NoReturn:
    print(f"swarmgate: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_event_loop(coro: Coroutine[Any, Any, None], loop: str) -> None:
    """Run the gateway on uvloop (the default: it measurably speeds up aiohttp) or asyncio."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
            asyncio.run(coro)
            return
        uvloop.run(coro)
    else:
        asyncio.run(coro)
