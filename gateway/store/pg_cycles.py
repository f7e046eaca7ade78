"""PostgreSQL's group-committed writes, merged across kinds into one statement ("write cycles").

The engine batches starts, completions and delivery acks each on its own (``GroupCommit``),
so under load three batch statements were in flight at once, each its own transaction and
commit. A cycle is ONE statement (``sql_postgres.compose``: each kind's data-modifying CTEs
side by side) that carries the batch of every kind waiting while the cycle before it ran:
one round trip, one commit, one flush. ``python -m bench.statements`` prices the difference
(bench/README.md, "write cycles").

A write that finds no cycle running runs alone, in its caller's task, on its kind's own
statement (a lone writer pays nothing for cycles; a lone ack keeps its unflushed commit). A
write arriving while a statement is in flight waits for the next cycle; each caller gets its
own kind's answer only after that cycle committed (or its error). Per cycle at most one write
of each kind, and none that touches an operation another write of the cycle touches (one
statement sees one snapshot: a row another CTE of it updated cannot be locked again); those
wait for the next cycle. If the merged statement fails on a constraint, a conflict or a value,
each write runs alone on its own statement, so that one kind's bad write fails only its own
callers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.store import sql_postgres as sql
from gateway.store.errors import pg_unavailable

__all__ = ["ACK", "COMPLETE", "START", "CycleWrite", "WriteCycles"]

START, COMPLETE, ACK = 0, 1, 2  # the order of the parts in a composed statement

Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(eq=False, slots=True)
class CycleWrite:
    """One kind's write: ``alone`` runs its own statement on a connection; ``args`` gives its
    part's parameters in a composed statement; ``ids`` the operations it touches (both only
    called when the write shares a cycle). Answers: starts and completions the set of
    operation ids inserted / closed, acks the number marked."""

    kind: int
    alone: Callable[[asyncpg.Connection], Awaitable[Any]]
    args: Callable[[], list[Any]]
    ids: Callable[[], set[str]]
    fut: asyncio.Future[Any] | None = field(default=None)


def _value(kind: int, row: asyncpg.Record, col: int) -> tuple[Any, int]:
    """A kind's answer from a composed statement's row at column ``col``, and the next column."""
    if kind == ACK:
        return int(row[col]), col + 1
    found = set(row[col] or ())
    return found, col + (2 if kind == COMPLETE else 1)  # a completion's NOTIFY column after


def _retry_alone(exc: BaseException) -> bool:
    """A failure of the merged statement that one of its parts may have caused alone: a
    constraint, a deadlock or serialization failure, a value refused by the server or by the
    driver. (A lost connection or an unavailable server fails every write of the cycle.)"""
    if isinstance(exc, asyncpg.PostgresError):
        return not pg_unavailable(exc)
    return isinstance(exc, ValueError | OverflowError) and not isinstance(exc, UnicodeError)


class WriteCycles:
    """Merge concurrent writes of different kinds into one statement per cycle, with at most
    ``in_flight`` statements running at once."""

    def __init__(self, connect: Connect, *, enabled: bool = True, in_flight: int = 1) -> None:
        self._connect = connect
        self.enabled = enabled
        self._limit = max(1, in_flight)
        self._running = 0  # statements in flight, and the cycle being composed
        self._composing = False  # a cycle task takes the queued writes at its next turn
        self._pending: list[CycleWrite] = []
        self._tasks: set[asyncio.Task[None]] = set()  # running; also keeps them referenced
        self.cycles = 0  # statements run by cycles of two or more writes (tests, metrics)
        self.merged = 0  # writes those carried
        self.alone = 0  # writes run on their own kind's statement (cycles on)

    async def write(self, w: CycleWrite) -> Any:
        if not self.enabled:
            async with self._connect() as conn:
                return await w.alone(conn)
        if self._running < self._limit and not self._pending:
            self._running += 1
            self.alone += 1
            try:
                async with self._connect() as conn:
                    return await w.alone(conn)
            finally:
                self._running -= 1
                self._kick()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        w.fut = fut
        self._pending.append(w)
        self._kick()
        # A caller that gives up waiting cancels only its own future: the cycle is run by a
        # task of its own, which nobody's cancellation reaches.
        return await fut

    def _kick(self) -> None:
        """Writes wait and a statement may start: a cycle task composes them at its turn."""
        if self._pending and not self._composing and self._running < self._limit:
            self._running += 1
            self._composing = True
            task = asyncio.create_task(self._next_cycle(), name="sg-write-cycle")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _next_cycle(self) -> None:
        try:
            # One loop turn first: the flushers whose writes the last statement committed queue
            # their next batch now, and join this cycle instead of the one after it.
            try:
                await asyncio.sleep(0)
            except BaseException as exc:  # cancelled (loop shutdown): nobody is left waiting
                for w in self._pending:
                    _fail(w, exc)
                self._pending.clear()
                raise
            finally:
                self._composing = False
            writes = self._take()
            self._kick()  # writes left behind (a kind's second, a conflict) and a slot free
            await self._cycle(writes)
        finally:
            self._running -= 1
            self._kick()

    def _take(self) -> list[CycleWrite]:
        """The next cycle's writes: the first waiting of each kind, without two that touch one
        operation (the later kind waits); the others stay queued in order."""
        chosen: list[CycleWrite] = []
        kinds: set[int] = set()
        touched: set[str] = set()
        rest: list[CycleWrite] = []
        for w in self._pending:
            if w.fut is not None and w.fut.done():  # its caller gave up before it ran
                continue
            if w.kind in kinds:
                rest.append(w)
                continue
            if chosen:
                ids = w.ids()
                if not touched.isdisjoint(ids):
                    rest.append(w)
                    kinds.add(w.kind)  # and its kind's later writes stay behind it
                    continue
                touched |= ids
            elif len(self._pending) > 1:
                touched = set(w.ids())
            chosen.append(w)
            kinds.add(w.kind)
        self._pending = rest
        chosen.sort(key=lambda w: w.kind)
        return chosen

    async def _cycle(self, writes: Sequence[CycleWrite]) -> None:
        if len(writes) == 1:
            await self._alone(writes[0])
            return
        if not writes:
            return
        kinds = tuple(any(w.kind == k for w in writes) for k in (START, COMPLETE, ACK))
        statement = sql.PG_CYCLES[(kinds[0], kinds[1], kinds[2])]
        try:
            args: list[Any] = []
            for w in writes:
                args.extend(w.args())
            async with self._connect() as conn:
                row = await conn.fetchrow(statement, *args)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) or not _retry_alone(exc):
                for w in writes:
                    _fail(w, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for w in writes:  # rolled back as a whole: each kind on its own statement
                await self._alone(w)
            return
        self.cycles += 1
        self.merged += len(writes)
        col = 0
        for w in writes:
            value, col = _value(w.kind, row, col)
            if w.fut is not None and not w.fut.done():
                w.fut.set_result(value)

    async def _alone(self, w: CycleWrite) -> None:
        try:
            async with self._connect() as conn:
                self.alone += 1
                value = await w.alone(conn)
        except asyncio.CancelledError as exc:
            _fail(w, exc)
            raise
        except BaseException as exc:
            _fail(w, exc)
            return
        if w.fut is not None and not w.fut.done():
            w.fut.set_result(value)

    async def close(self) -> None:
        """Let the cycles in progress and those queued commit (a closing store)."""
        while self._tasks:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self._tasks)


def _fail(w: CycleWrite, exc: BaseException) -> None:
    fut = w.fut
    if fut is None or fut.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        fut.cancel()
    else:
        fut.set_exception(exc)
        fut.exception()  # marked retrieved: the submitter re-raises it
