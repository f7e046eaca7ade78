"""The SQLite write path run inline on the event loop's thread, its fsync on aiosqlite's.

aiosqlite runs every statement on its own thread: a put on a queue, a wake-up of that thread
and a ``call_soon_threadsafe`` back. Measured on the 2-core VM of issue 17, one such round
trip costs ~110 us of CPU, while the statement it carries (an indexed UPDATE of a WAL
database, in SQLite's page cache) costs 2-20 us run where it is: a lone heartbeat was four
trips (BEGIN, its UPDATE, COMMIT and the pool's reset rollback), ~750 us of CPU. A write round
(``sqlite_rounds``) now runs its statements inline on the same ``sqlite3`` connection, which
the round holds alone (it is the pool's only connection, checked out for the round), and only
what can wait goes to aiosqlite's thread, so the loop keeps serving while it waits:

* ``COMMIT``: the fsync of ``synchronous=FULL`` (1-2 ms) and, in any mode, the WAL
  checkpoints SQLite runs at commit;
* ``BEGIN IMMEDIATE`` when another process holds the write lock (a second gateway process,
  the CLI): tried inline with no busy wait first, then, if the database is locked, on the
  thread with the connection's busy timeout.

Inline statements and the thread's must never overlap on the connection. A round's own trips
to the thread are awaited to their end even when its caller is cancelled (``_on_thread``),
and a round that comes after another user of the connection (SQLAlchemy's reads and writes,
whose statements a cancellation may leave queued on the thread) first waits for the thread to
run out (``settle``: one trip).

The statements' errors are the ``sqlite3`` exceptions aiosqlite would have raised, so the
store's translation (``errors.translate``) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from typing import Any

from gateway.store.sql_sqlite import BUSY_TIMEOUT_MS, busy_timeout

__all__ = ["InlineConnection", "raw_connection", "read_inline"]

_LOCK_TAKEN = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # (the codes' primary part)


def raw_connection(aio: Any) -> sqlite3.Connection:
    """The ``sqlite3`` connection under an ``aiosqlite.Connection``: aiosqlite keeps it in a
    private attribute (``_conn``, checked by a test, so an aiosqlite that renames it fails
    there rather than here). It was opened with ``check_same_thread=False``."""
    raw = aio._conn
    if not isinstance(raw, sqlite3.Connection):  # pragma: no cover - an aiosqlite we don't know
        raise TypeError(f"aiosqlite connection holds {type(raw).__name__}, not sqlite3")
    return raw


class InlineConnection:
    """What a write round's bodies are given: aiosqlite's ``execute``, ``execute_fetchall``
    and ``executemany``, run inline; ``begin`` and ``commit`` as described above."""

    def __init__(self, aio: Any) -> None:
        self._aio = aio
        self._raw = raw_connection(aio)

    async def execute(self, statement: str, parameters: Sequence[Any] = ()) -> None:
        self._raw.execute(statement, parameters).close()

    async def execute_fetchall(
        self, statement: str, parameters: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        cur = self._raw.execute(statement, parameters)
        try:
            return cur.fetchall()
        finally:
            cur.close()

    async def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        self._raw.executemany(statement, rows).close()

    async def begin(self, statement: str) -> None:
        """``statement`` (``BEGIN IMMEDIATE``) inline if the write lock is free at once, else
        on aiosqlite's thread, waiting up to the busy timeout as before."""
        with _no_busy_wait(self._raw) as raw:
            try:
                raw.execute(statement).close()
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _LOCK_TAKEN:
                    raise
        await _on_thread(self._aio.execute(statement))

    async def commit(self, statement: str) -> None:
        """``statement`` (``COMMIT``) on aiosqlite's thread: the fsync does not stop the loop."""
        await _on_thread(self._aio.execute(statement))

    async def settle(self) -> None:
        """Wait until what was queued on aiosqlite's thread before now has run."""
        await _on_thread(self._aio.execute("SELECT 1"))

    @property
    def in_transaction(self) -> bool:
        return self._raw.in_transaction


def read_inline(
    raw: sqlite3.Connection, statement: str, parameters: Sequence[Any] = ()
) -> list[tuple[Any, ...]] | None:
    """A read-only statement run inline, outside any transaction (so it sees what is committed
    only), without a busy wait: None if the database was locked (the caller reads on aiosqlite's
    thread instead) or a transaction is open on the connection (never left by its users)."""
    if raw.in_transaction:
        return None
    with _no_busy_wait(raw):
        try:
            cur = raw.execute(statement, parameters)
            try:
                return cur.fetchall()
            finally:
                cur.close()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in _LOCK_TAKEN:
                raise
            return None


@contextlib.contextmanager
def _no_busy_wait(raw: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``raw`` with no busy wait (a locked database raises at once), then the connection's
    busy timeout again: for statements run in the loop's thread, which must never wait."""
    raw.execute(busy_timeout(0)).close()
    try:
        yield raw
    finally:
        raw.execute(busy_timeout(BUSY_TIMEOUT_MS)).close()


async def _on_thread(call: Awaitable[Any]) -> Any:
    """Await a call on aiosqlite's thread to its end, even if the caller is cancelled meanwhile
    (the cancellation is raised afterwards): nothing runs inline while the thread may still
    be using the connection."""
    task = asyncio.ensure_future(call)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # (or the call itself was: task.result() raises it below)
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
