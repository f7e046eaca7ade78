"""Driver errors -> ``gateway.domain.errors`` at the store boundary, in one place.

Every public store method is wrapped in :func:`translate`. Messages name the driver error and
its first line only: SQLAlchemy's own ``str()`` carries the statement and its parameters, and
PostgreSQL's DETAIL lines carry row values; either may hold a secret, so neither reaches an
exception message or a log line.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.domain.errors import (
    DataRejected,
    StoreError,
    StoreFull,
    StoreUnavailable,
    UniqueViolation,
    WriteConflict,
)

log = logging.getLogger("swarmgate.store")

P = ParamSpec("P")
R = TypeVar("R")

# SQLSTATEs meaning "the server cannot serve you right now": connection exceptions (08*),
# admin/crash shutdown and "cannot connect now" while starting or stopping (57P01-57P03),
# too many connections (53300).
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
CONFLICT_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open")
# Insufficient resources (class 53): 53100 disk_full is "full"; the rest (out of memory, too
# many connections, configuration limit exceeded) pass too, so all of them are "unavailable".
DISK_FULL_SQLSTATE = "53100"
# SQLite's SQLITE_FULL ("database or disk is full"), and what a full file system says
_SQLITE_FULL = ("database or disk is full", "no space left on device")
# Data exceptions (SQLSTATE class 22: value too long, out of range, invalid text, ...), and
# SQLite's equivalents: the value itself is refused, so a retry of the same write cannot succeed.
_SQLITE_DATA = ("string or blob too big", "datatype mismatch", "too large to convert")
FULL_HOLD_S = 5.0


class FullState:
    """Whether a store's disk was found full lately (``/readyz`` fails while it is).

    :func:`translate` notes every "disk full" error of the store's methods; the state holds
    for ``FULL_HOLD_S`` after the last one, so it clears by itself once writes succeed again.
    Entering it logs one clear line (not a traceback per request).
    """

    def __init__(self) -> None:
        self._until = 0.0

    @property
    def active(self) -> bool:
        if self._until and time.monotonic() >= self._until:
            self._until = 0.0
            log.warning("database disk full: no write failed for %gs; ready again", FULL_HOLD_S)
        return bool(self._until)

    def note(self, exc: StoreError) -> None:
        if not self.active:
            log.error(
                "database disk is full: writes answer 503 and /readyz fails until space returns"
                " (%s)",
                exc,
            )
        self._until = time.monotonic() + FULL_HOLD_S


# quoted values inside a driver message ('invalid input for query argument $2: 'whsec_..'',
# 'invalid input syntax for type uuid: "..."')
_QUOTED = re.compile(r"""'[^']*'|"[^"]*"|'.*$""")


def describe(exc: BaseException | None) -> str:
    """``Type: first line`` of a driver error, without SQL text, parameters, DETAIL or the
    quoted values some messages carry."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig
    first = str(exc).split("\n", 1)[0].split("[SQL:", 1)[0].strip()
    first = _QUOTED.sub("'…'", first)
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def pg_unavailable(exc: asyncpg.PostgresError) -> bool:
    state = str(exc.sqlstate or "")
    return state.startswith("08") or state in UNAVAILABLE_SQLSTATES


def _by_sqlstate(state: str, exc: BaseException) -> StoreError | None:
    """The store error a PostgreSQL SQLSTATE means (None: no special meaning)."""
    if state == DISK_FULL_SQLSTATE:
        return StoreFull(describe(exc))
    if state.startswith("08") or state.startswith("53") or state in UNAVAILABLE_SQLSTATES:
        return StoreUnavailable(type(exc).__name__)
    if state in CONFLICT_SQLSTATES:
        return WriteConflict(describe(exc))
    if state.startswith("22"):
        return DataRejected(describe(exc))
    return None


def _sqlite_error(exc: BaseException) -> StoreError:
    text_ = str(exc).lower()
    if any(s in text_ for s in _SQLITE_FULL):
        return StoreFull(describe(exc))
    if any(s in text_ for s in _SQLITE_DATA):
        return DataRejected(describe(exc))
    if isinstance(exc, sqlite3.OperationalError) and any(s in text_ for s in _SQLITE_UNAVAILABLE):
        return StoreUnavailable(describe(exc))
    return StoreError(describe(exc))


def is_connection_error(exc: DBAPIError) -> bool:
    sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
    if sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES:
        return True
    name = type(exc.orig).__name__.lower()
    text_ = str(exc.orig).lower()
    return any(
        s in name or s in text_
        for s in (
            "connection",
            "cannotconnectnow",
            "adminshutdown",
            "interfaceerror",
            "closed",
            "database is locked",
        )
    )


def translate_error(exc: BaseException) -> StoreError | None:
    """The store error a driver error means, or None when it is not a driver error."""
    if isinstance(exc, IntegrityError):
        return UniqueViolation(describe(exc.orig))
    if isinstance(exc, DBAPIError):
        orig: BaseException = exc.orig if exc.orig is not None else exc
        state = str(getattr(orig, "sqlstate", "") or "")
        if state and (by_state := _by_sqlstate(state, orig)) is not None:
            return by_state
        if exc.connection_invalidated or is_connection_error(exc):
            return StoreUnavailable(type(orig).__name__)
        if "sqlite" in type(orig).__module__.lower() or "sqlite" in type(exc).__module__:
            return _sqlite_error(orig)
        text_ = str(orig).lower()
        if any(s in text_ for s in _SQLITE_FULL + _SQLITE_DATA):
            return _sqlite_error(orig)
        if isinstance(exc.orig, ValueError | OverflowError):  # a parameter the driver refused
            return DataRejected(describe(orig))
        return StoreError(describe(orig))
    if isinstance(exc, asyncpg.PostgresError):  # the hot path runs on the driver directly
        state = str(exc.sqlstate or "")
        if state == "23505":
            return UniqueViolation(describe(exc))
        return _by_sqlstate(state, exc) or StoreError(describe(exc))
    if isinstance(exc, ValueError | OverflowError) and not isinstance(exc, UnicodeError):
        # asyncpg's client-side DataError (an argument it cannot encode: an int out of range,
        # a string with NUL) is an InterfaceError and a ValueError; sqlite3 raises
        # OverflowError for an int beyond 64 bits. The value is refused, not the connection.
        if isinstance(exc, asyncpg.InterfaceError) or type(exc).__module__.startswith(
            ("asyncpg", "sqlite3", "aiosqlite")
        ):
            return DataRejected(describe(exc))
        if isinstance(exc, OverflowError):
            return DataRejected(describe(exc))
        return None
    if isinstance(exc, asyncpg.InterfaceError):
        return StoreUnavailable(type(exc).__name__)
    if isinstance(exc, sqlite3.IntegrityError):  # the SQLite hot path, on aiosqlite directly
        return UniqueViolation(describe(exc))
    if isinstance(exc, sqlite3.Error):
        return _sqlite_error(exc)
    if isinstance(exc, (OSError, ConnectionError)):
        return StoreUnavailable(describe(exc))
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable("no database connection free in time")
    if isinstance(exc, SQLAlchemyError):
        return StoreError(describe(exc))
    return None


def translate(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Translate driver errors into our own exceptions at the store boundary."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except StoreError as exc:
            _note_full(args, exc)
            raise
        except Exception as exc:
            mapped = translate_error(exc)
            if mapped is None:
                raise
            _note_full(args, mapped)
            raise mapped from exc

    return wrapper


def _note_full(args: tuple[Any, ...], exc: StoreError) -> None:
    if isinstance(exc, StoreFull) and args:
        state = getattr(args[0], "full_state", None)
        if isinstance(state, FullState):
            state.note(exc)
