"""Group commit: concurrent writers share one transaction (natural batching).

While one batch commits, the next one fills; nobody waits for a timer (unless ``linger_s``
says so, and with ``linger_from`` only when that many writes wait), so a lone writer pays
nothing and a busy gateway pays one BEGIN/COMMIT per batch instead of per write. A caller's
future resolves only after its batch committed (or failed), so acknowledging before commit is
impossible. If a batch fails on a constraint or loses a deadlock, its items are retried one by
one, so one bad item cannot fail the others; a lone item that loses a deadlock is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gateway.domain.errors import DataRejected, UniqueViolation, WriteConflict

# Starts and completions linger (EngineConfig.write_linger_s, off by default) only when this
# many writes wait, or the batch before held this many: under load, never for a lone write.
LINGER_FROM = 2

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Awaitable[list[R]]],
        run_one: Callable[[T], Awaitable[R]],
        *,
        max_batch: int = 128,
        concurrency: int = 1,
        linger_s: float = 0.0,
        linger_from: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self._run_one = run_one
        self._max = max_batch
        self._concurrency = max(1, concurrency)  # batches committing at once
        # How long a flusher lets a batch that is not full fill before it commits it: for
        # writes nobody waits on to answer a request, where a bigger batch saves more than
        # the wait costs (0: commit at once).
        self._linger = linger_s
        # ... and only under load: when at least this many writes wait, or the batch before
        # held that many. With 2, a lone writer (a lightly loaded gateway) commits at once.
        self._linger_from = max(1, linger_from)
        self._last_batch = 0
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # running; also keeps them referenced

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if len(self._flushers) < self._concurrency:
            self._flushers.add(asyncio.create_task(self._flush(), name="sg-group-commit"))
        # A caller that gives up waiting cancels only its own future: the batch is committed by
        # the flusher task, which nobody's cancellation reaches.
        return await fut

    async def _flush(self) -> None:
        try:
            await self._drain()
        finally:
            # The flusher takes itself off the set, with no await after its empty-queue check:
            # a done-callback would run a loop iteration later, and a write queued in between
            # would see a finished flusher still counted and wait for the next writer.
            task = asyncio.current_task()
            if task is not None:
                self._flushers.discard(task)

    async def _drain(self) -> None:
        while self._queue:
            waiting = len(self._queue)
            if (
                self._linger
                and waiting < self._max
                and max(waiting, self._last_batch) >= self._linger_from
            ):
                await asyncio.sleep(self._linger)
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            self._last_batch = len(batch)
            if len(batch) == 1:
                await self._one(*batch[0])
                continue
            try:
                results = await self._run_batch([item for item, _ in batch])
            except (UniqueViolation, WriteConflict, DataRejected):
                # Rolled back as a whole: each item on its own cannot be held up by the others.
                for item, fut in batch:
                    await self._one(item, fut)
                continue
            except BaseException as exc:
                for _, fut in batch:
                    _fail(fut, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            if len(results) != len(batch):  # a broken batch function must not strand writers
                broken = RuntimeError(f"batch of {len(batch)} answered {len(results)} results")
                for _, fut in batch:
                    _fail(fut, broken)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def _one(self, item: T, fut: asyncio.Future[R]) -> None:
        for tries_left in range(2, -1, -1):
            try:
                result = await self._run_one(item)
            except WriteConflict as exc:
                if tries_left:  # rolled back by the database: the same write may go again
                    continue
                _fail(fut, exc)
                return
            except BaseException as exc:
                _fail(fut, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            if not fut.done():
                fut.set_result(result)
            return


def _fail(fut: asyncio.Future[R], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # marked retrieved: the submitter re-raises it
