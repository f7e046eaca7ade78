"""The helpers tests and users share (gateway.testing): eventually() and the manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.testing import (
    EventuallyTimeout,
    ManualClock,
    eventually,
    eventually_sync,
    pg_database_url,
)


async def test_eventually_returns_the_first_value_that_passes() -> None:
    seen: list[int] = []

    def count() -> int:
        seen.append(len(seen) + 1)
        return seen[-1]

    assert await eventually(count, until=lambda n: n >= 3, interval=0.001) == 3
    assert seen == [1, 2, 3]


async def test_eventually_awaits_a_check_that_is_a_coroutine_function() -> None:
    calls = 0

    async def ready() -> str:
        nonlocal calls
        calls += 1
        return "ready" if calls == 2 else ""

    assert await eventually(ready, interval=0.001) == "ready"


async def test_eventually_treats_an_exception_as_not_yet_and_reports_the_last_one() -> None:
    def failing() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(EventuallyTimeout, match="nobody listens") as info:
        await eventually(failing, timeout=0.05, interval=0.01, what="the server")
    assert "the server not reached within 0.05s" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_eventually_gives_up_with_the_last_value_seen() -> None:
    with pytest.raises(EventuallyTimeout, match=r"last value: \['running'\]") as info:
        await eventually(lambda: ["running"], until=lambda s: s == [], timeout=0.03)
    assert info.value.last == ["running"]


async def test_an_exception_outside_retry_on_propagates_at_once() -> None:
    calls = 0

    def exited() -> bool:
        nonlocal calls
        calls += 1
        raise RuntimeError("the child process exited")

    with pytest.raises(RuntimeError, match="exited"):
        await eventually(exited, timeout=5, retry_on=(ConnectionError,))
    assert calls == 1


def test_eventually_sync_polls_without_an_event_loop() -> None:
    values = iter([0, 0, 7])
    assert eventually_sync(lambda: next(values), interval=0.001) == 7
    with pytest.raises(EventuallyTimeout):
        eventually_sync(lambda: False, timeout=0.02, interval=0.005)


def test_the_manual_clock_moves_only_when_advanced() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock.now() == clock.now() == start
    clock.advance(1.5)
    assert clock.now() == start + timedelta(seconds=1.5)


def test_a_throw_away_database_url_keeps_the_admin_urls_server_and_query() -> None:
    assert pg_database_url("postgresql://postgres@127.0.0.1:5432/postgres", "b1") == (
        "postgresql://postgres@127.0.0.1:5432/b1"
    )
    assert pg_database_url("postgresql://postgres@/postgres?host=/var/run/postgresql", "b1") == (
        "postgresql://postgres@/b1?host=/var/run/postgresql"
    )
