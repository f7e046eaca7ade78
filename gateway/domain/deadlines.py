"""Coarse deadlines for the hot path: ``asyncio.timeout``'s contract at a fraction of its cost.

``asyncio.timeout`` arms one event-loop timer per block and cancels it on the way out: on
uvloop ~6.6 us per block in a tight loop, and py-spy put its three blocks per operation (the
attempt, the dispatch request, the callback request) at ~5% of the gateway's CPU under load.
The timeouts those blocks enforce are seconds long and need no millisecond precision, so
:func:`deadline` files each block in a bucket of ``TICK_S`` and one timer per loop serves all
of them: entering is a set insert, leaving a set removal (figures: bench/README.md).

Semantics are those of ``asyncio.timeout`` (Python 3.11): when the time is up, the current
task is cancelled and the block raises :class:`TimeoutError` (chained from the
``CancelledError``), unless the task was also cancelled from outside, which then wins. The
difference: a deadline fires between its time and ``TICK_S`` later, never earlier. It is a
plain ``with`` block (nothing in it is awaited), used inside a task only.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from types import TracebackType

__all__ = ["TICK_S", "deadline"]

TICK_S = 0.025
"""A deadline fires within this many seconds after its time."""

# a timer may run this much before its time (the loop's clock resolution, 1 ms on epoll)
_EARLY_S = 0.002


class _Wheel:
    """The deadlines of one event loop, filed by tick; one timer for the earliest tick."""

    __slots__ = ("__weakref__", "_buckets", "_due", "_timer", "_timer_tick", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buckets: dict[int, set[Deadline]] = {}
        self._due: list[int] = []  # a heap of the ticks in _buckets
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick = 0

    def add(self, d: Deadline) -> set[Deadline]:
        tick = math.ceil(d.when / TICK_S)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._due, tick)
            if self._timer is None or tick < self._timer_tick:
                self._arm(tick)
        bucket.add(d)
        return bucket

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self.loop.call_at(tick * TICK_S, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time() + _EARLY_S
        due, buckets = self._due, self._buckets
        while due and due[0] * TICK_S <= now:
            for d in buckets.pop(heapq.heappop(due)):
                d.expire()
        if due:
            self._arm(due[0])


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()
_last: _Wheel | None = None  # the wheel of the loop used last (a process runs one loop)


class Deadline:
    """One ``with deadline(seconds):`` block of one task."""

    __slots__ = ("_bucket", "_cancelling", "_expired", "_task", "when")

    def __init__(self, seconds: float) -> None:
        self.when = seconds  # made absolute on entry
        self._expired = False
        self._bucket: set[Deadline] | None = None

    def __enter__(self) -> Deadline:
        global _last
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        task = None if loop is None else asyncio.current_task(loop)
        if loop is None or task is None:
            raise RuntimeError("deadline() is used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.when += loop.time()
        wheel = _last
        if wheel is None or wheel.loop is not loop:
            wheel = _wheels.get(loop)
            if wheel is None:
                wheel = _wheels[loop] = _Wheel(loop)
            _last = wheel
        self._bucket = wheel.add(self)
        return self

    def expire(self) -> None:
        self._bucket = None
        self._expired = True
        self._task.cancel()

    @property
    def expired(self) -> bool:
        """Whether the time ran out (the block was or is being cancelled for it)."""
        return self._expired

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bucket = self._bucket
        if bucket is not None:
            bucket.discard(self)
            self._bucket = None
        if self._expired:
            # as asyncio.timeout: the cancel this deadline made is taken back; if none came
            # from elsewhere meanwhile, the block's CancelledError becomes a TimeoutError
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def deadline(seconds: float) -> Deadline:
    """A deadline ``seconds`` from now for the ``with`` block it opens.

    When it is up (at most ``TICK_S`` later) the block is cancelled and raises
    :class:`TimeoutError`, as ``asyncio.timeout`` does.
    """
    return Deadline(seconds)
