"""Driver errors that mean "disk full" or "this value is refused" get their own store errors
(issue 13, items 2 and 11): a full disk is a 503 that clears by itself, a refused value is a
permanent failure of that write (never a retry loop), and neither is mistaken for the other."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from gateway.domain.errors import DataRejected, StoreFull, StoreUnavailable
from gateway.store.errors import FullState, translate, translate_error


class _PgError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_postgres_disk_full_is_store_full_and_still_unavailable() -> None:
    err = translate_error(DBAPIError("INSERT", None, _PgError("53100", "could not extend file")))
    assert isinstance(err, StoreFull) and isinstance(err, StoreUnavailable)
    direct = asyncpg.exceptions.DiskFullError("could not extend file")
    assert isinstance(translate_error(direct), StoreFull)


@pytest.mark.parametrize("sqlstate", ["53200", "53400"])
def test_other_insufficient_resources_sqlstates_are_unavailable(sqlstate: str) -> None:
    err = translate_error(DBAPIError("INSERT", None, _PgError(sqlstate, "out of memory")))
    assert type(err) is StoreUnavailable


@pytest.mark.parametrize("sqlstate", ["22001", "22003", "22P02", "22021"])
def test_postgres_data_exceptions_are_data_rejected(sqlstate: str) -> None:
    err = translate_error(DBAPIError("INSERT", None, _PgError(sqlstate, "value too long")))
    assert isinstance(err, DataRejected)
    direct = asyncpg.exceptions.StringDataRightTruncationError("value too long")
    assert isinstance(translate_error(direct), DataRejected)


def test_an_argument_asyncpg_cannot_encode_is_data_rejected_not_unavailable() -> None:
    exc = asyncpg.exceptions._base.DataError("invalid input for query argument $1")
    assert isinstance(translate_error(exc), DataRejected)


def test_sqlite_full_and_data_errors_are_told_apart() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert isinstance(translate_error(full), StoreFull)
    wrapped = OperationalError("INSERT", None, sqlite3.OperationalError("database or disk is full"))
    assert isinstance(translate_error(wrapped), StoreFull)
    assert isinstance(translate_error(sqlite3.DataError("string or blob too big")), DataRejected)
    assert isinstance(
        translate_error(OverflowError("Python int too large to convert to SQLite INTEGER")),
        DataRejected,
    )
    assert type(translate_error(sqlite3.OperationalError("database is locked"))) is (
        StoreUnavailable
    )


class _Store:
    def __init__(self) -> None:
        self.full_state = FullState()

    @translate
    async def write(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    @translate
    async def lock(self) -> None:
        raise sqlite3.OperationalError("database is locked")


async def test_a_full_disk_marks_the_store_full_and_other_errors_do_not() -> None:
    store = _Store()
    with pytest.raises(StoreUnavailable):
        await store.lock()
    assert not store.full_state.active
    with pytest.raises(StoreFull):
        await store.write()
    assert store.full_state.active
