"""SQLite's group-committed writes, merged across kinds into one commit ("rounds").

SQLite has one writer and the store one connection: the starts, completions, heartbeats, step
records and delivery acks that the engine batches (each kind on its own) used to queue for that
connection one transaction after another, each paying its own flush (``synchronous=FULL``: an
fsync, ~1-2 ms here). A round is one transaction that every write arriving while it is open
joins: the bodies run one after the other on the connection, each inside a SAVEPOINT (a body
that fails is rolled back alone and raises to its own caller), and one COMMIT ends them all.
Each caller returns only after that commit (or gets its error), so nobody is answered before
their write is on disk.

A write that finds nothing else writing runs alone, in its caller's task, as before (a lone
writer pays nothing for rounds). A round that only holds writes needing no flush (delivery acks, see
``Settings.callback_ack_commit``) commits with ``synchronous=NORMAL``; a write that needs the
flush never joins such a round, it opens the next one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Rounds"]

_SAVEPOINT = "SAVEPOINT sg_write"
_RELEASE = "RELEASE sg_write"
_ROLLBACK_TO = "ROLLBACK TO sg_write"


@dataclass(eq=False)
class _Round:
    flushed: bool
    turns: deque[asyncio.Future[None]] = field(default_factory=deque)
    db: Any = None
    finished: asyncio.Future[bool] | None = None  # the running body's end (True: restart)
    bare: bool = True  # the next body is its transaction's first (it takes no savepoint)
    closing: bool = False  # committing: joins go to the next round
    joined: int = 0
    committed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Rounds:
    """Write transactions of concurrent callers merged into one commit per round.

    ``transaction(flushed=...)`` is the only entry; ``opener(flushed)`` gives the round's
    transaction (the connection, BEGIN .. COMMIT or ROLLBACK, the synchronous level), as the
    store's plain transaction did for one caller.
    """

    def __init__(
        self,
        opener: Callable[[bool], AbstractAsyncContextManager[Any]],
        *,
        max_writes: int = 32,
    ) -> None:
        self._opener = opener
        # a round takes at most this many writes: under a steady stream of writes it still
        # commits, and the connection goes back to the pool's other users between rounds
        self._max = max(1, max_writes)
        self._open: _Round | None = None
        # one round at a time (SQLite has one writer): the next one fills while this commits
        self._turnstile = asyncio.Lock()
        self._running: set[asyncio.Task[None]] = set()
        self.rounds = 0  # committed or failed, for tests and metrics
        self.bodies = 0

    def _join(self, flushed: bool) -> _Round:
        rnd = self._open
        if rnd is None or rnd.closing or rnd.joined >= self._max or (flushed and not rnd.flushed):
            rnd = self._open = _Round(flushed=flushed)
            task = asyncio.create_task(self._run(rnd), name="sg-sqlite-round")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        rnd.joined += 1
        return rnd

    async def _run(self, rnd: _Round) -> None:
        try:
            async with self._turnstile:
                while not await self._transaction(rnd):
                    pass  # its first write failed alone: the others go on in a fresh one
        except BaseException as exc:
            self._close(rnd)
            for turn in rnd.turns:  # never run: their callers get the round's error
                if not turn.done():
                    turn.set_exception(exc)
            if not rnd.committed.done():
                rnd.committed.set_exception(exc)
                rnd.committed.exception()  # retrieved here; each caller re-raises it
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self.rounds += 1
        rnd.committed.set_result(None)

    async def _transaction(self, rnd: _Round) -> bool:
        """Run the round's writes in one transaction; False if it was rolled back because its
        first write failed (a first write takes no savepoint: nothing else is in it yet) and
        other writes wait to run."""
        loop = asyncio.get_running_loop()
        try:
            async with self._opener(rnd.flushed) as db:
                rnd.db, rnd.bare = db, True
                while rnd.turns:
                    turn = rnd.turns.popleft()
                    if turn.done():  # its caller gave up waiting
                        continue
                    rnd.finished = loop.create_future()
                    turn.set_result(None)
                    restart = await rnd.finished
                    self.bodies += 1
                    if restart:
                        raise _Restart
                    rnd.bare = False
                self._close(rnd)  # no await since the last check: nobody joined in between
        except _Restart:
            if rnd.turns:
                return False
            self._close(rnd)
        return True

    def _close(self, rnd: _Round) -> None:
        """No more writes join ``rnd``; the next one opens a new round."""
        rnd.closing = True
        if self._open is rnd:
            self._open = None

    @asynccontextmanager
    async def transaction(self, *, flushed: bool = True) -> AsyncIterator[Any]:
        """The aiosqlite connection inside a transaction that commits (with the others of its
        round) after the block has ended; the block's own writes are undone if it raises.

        With nothing else writing, the block runs in its own transaction, in the caller's task
        (as without rounds: a lone writer pays nothing for them); writes that arrive while it
        runs form the next round."""
        if self._open is None and not self._turnstile.locked():
            async with self._turnstile, self._opener(flushed) as db:
                yield db
            self.rounds += 1
            self.bodies += 1
            return
        rnd = self._join(flushed)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rnd.turns.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                _end(rnd)  # our turn came as we were cancelled: let the round go on
            raise
        db, bare = rnd.db, rnd.bare
        if not bare:
            await _savepoint(rnd, _SAVEPOINT)
        try:
            yield db
        except BaseException:
            if bare:  # the transaction holds this block's writes alone: the round rolls it back
                _end(rnd, restart=True)
                raise
            await _savepoint(rnd, _ROLLBACK_TO, _RELEASE)  # undo this block's writes alone
            _end(rnd)
            raise
        if not bare:
            await _savepoint(rnd, _RELEASE)
        _end(rnd)
        # shielded: a caller cancelled now does not stop the commit the others wait for
        await asyncio.shield(rnd.committed)

    async def close(self) -> None:
        """Wait for the rounds in progress (a closing store lets its last writes commit)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def _savepoint(rnd: _Round, *statements: str) -> None:
    """Set, release or roll back to the block's savepoint; if that fails the transaction's
    state is unknown, and the round fails for every write in it (raised on here too)."""
    try:
        for statement in statements:
            await rnd.db.execute(statement)
    except BaseException as broken:
        _end(rnd, broken)
        raise


class _Restart(Exception):
    """The round's first write failed: roll its transaction back, go on in a new one."""


def _end(rnd: _Round, broken: BaseException | None = None, *, restart: bool = False) -> None:
    """The running block is over; ``broken``: the round cannot commit (a savepoint could not be
    set, released or rolled back), so it fails for every member; ``restart``: the block was
    its transaction's first and failed, so that transaction is rolled back and the round goes
    on in a new one."""
    fut = rnd.finished
    if fut is None or fut.done():
        return
    if broken is None:
        fut.set_result(restart)
    else:
        fut.set_exception(broken)
