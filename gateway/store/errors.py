"""Driver errors -> ``gateway.domain.errors`` at the store boundary, in one place.

Every public store method is wrapped in :func:`translate`. Messages name the driver error and
its first line only: SQLAlchemy's own ``str()`` carries the statement and its parameters, and
PostgreSQL's DETAIL lines carry row values; either may hold a secret, so neither reaches an
exception message or a log line.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.domain.errors import StoreError, StoreUnavailable, UniqueViolation, WriteConflict

P = ParamSpec("P")
R = TypeVar("R")

# SQLSTATEs meaning "the server cannot serve you right now": connection exceptions (08*),
# admin/crash shutdown and "cannot connect now" while starting or stopping (57P01-57P03),
# too many connections (53300).
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
CONFLICT_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o", "unable to open")


def describe(exc: BaseException | None) -> str:
    """``Type: first line`` of a driver error, without SQL text, parameters or DETAIL."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        exc = exc.orig
    first = str(exc).split("\n", 1)[0].split("[SQL:", 1)[0].strip()
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def pg_unavailable(exc: asyncpg.PostgresError) -> bool:
    state = str(exc.sqlstate or "")
    return state.startswith("08") or state in UNAVAILABLE_SQLSTATES


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
        if exc.connection_invalidated or is_connection_error(exc):
            return StoreUnavailable(type(exc.orig).__name__)
        if str(getattr(exc.orig, "sqlstate", "") or "") in CONFLICT_SQLSTATES:
            return WriteConflict(describe(exc.orig))
        return StoreError(describe(exc.orig))
    if isinstance(exc, asyncpg.PostgresError):  # the hot path runs on the driver directly
        state = str(exc.sqlstate or "")
        if state == "23505":
            return UniqueViolation(describe(exc))
        if pg_unavailable(exc):
            return StoreUnavailable(type(exc).__name__)
        if state in CONFLICT_SQLSTATES:
            return WriteConflict(describe(exc))
        return StoreError(describe(exc))
    if isinstance(exc, asyncpg.InterfaceError):
        return StoreUnavailable(type(exc).__name__)
    if isinstance(exc, sqlite3.IntegrityError):  # the SQLite hot path, on aiosqlite directly
        return UniqueViolation(describe(exc))
    if isinstance(exc, sqlite3.OperationalError):
        if any(s in str(exc).lower() for s in _SQLITE_UNAVAILABLE):
            return StoreUnavailable(describe(exc))
        return StoreError(describe(exc))
    if isinstance(exc, sqlite3.Error):
        return StoreError(describe(exc))
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
        except StoreError:
            raise
        except Exception as exc:
            mapped = translate_error(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper
