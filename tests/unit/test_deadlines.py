"""``deadline()``: asyncio.timeout's contract, filed in coarse ticks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.domain import deadlines
from gateway.domain.deadlines import TICK_S, deadline


async def test_a_block_that_overruns_its_deadline_raises_timeout_error_soon_after() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        with deadline(0.05):
            await asyncio.sleep(5)
    took = loop.time() - began
    assert 0.05 - 0.003 <= took < 0.05 + TICK_S + 0.5  # never early; late by a tick at most


async def test_the_timeout_error_is_chained_from_the_cancellation() -> None:
    with pytest.raises(TimeoutError) as caught:
        with deadline(0.01):
            await asyncio.sleep(5)
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)


async def test_a_block_that_ends_in_time_is_never_cancelled_later() -> None:
    with deadline(0.02) as d:
        await asyncio.sleep(0)
    assert not d.expired
    await asyncio.sleep(0.02 + 2 * TICK_S)  # past its time: nothing may cancel this task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_cancel_from_outside_wins_over_an_expired_deadline() -> None:
    entered = asyncio.Event()

    async def body() -> None:
        with deadline(0.01):
            entered.set()
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.01 + 2 * TICK_S)  # the deadline expires meanwhile

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_an_inner_deadline_that_expires_leaves_the_outer_one_running() -> None:
    with deadline(5) as outer:
        with pytest.raises(TimeoutError):
            with deadline(0.01):
                await asyncio.sleep(5)
        await asyncio.sleep(0)  # the task goes on: it was not left cancelled
    assert not outer.expired


async def test_an_outer_deadline_that_expires_inside_an_inner_one_is_raised_by_the_outer() -> None:
    with pytest.raises(TimeoutError):
        with deadline(0.01) as outer:
            with deadline(5) as inner:
                await asyncio.sleep(5)
    assert outer.expired and not inner.expired


async def test_blocks_that_ended_leave_nothing_behind_in_the_wheel() -> None:
    for i in range(5000):
        with deadline(30 + i % 7):
            pass
    wheel = deadlines._wheels[asyncio.get_running_loop()]
    assert sum(len(b) for b in wheel._buckets.values()) == 0


async def test_many_deadlines_of_different_lengths_each_fire_in_their_order() -> None:
    fired: list[float] = []

    async def overrun(seconds: float) -> None:
        try:
            with deadline(seconds):
                await asyncio.sleep(5)
        except TimeoutError:
            fired.append(seconds)

    lengths = [0.12, 0.01, 0.06, 0.2]
    await asyncio.gather(*(overrun(s) for s in lengths))
    assert fired == sorted(lengths)


def test_a_deadline_outside_a_task_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside a task"):
        with deadline(1):
            pass


def test_each_event_loop_has_its_own_deadlines() -> None:
    async def overrun() -> bool:
        try:
            with deadline(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return True
        return False

    assert asyncio.run(overrun()) and asyncio.run(overrun())
