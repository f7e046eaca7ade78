"""The remembered-second timestamp text is what ``datetime.isoformat`` writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from gateway.domain import timetext
from gateway.domain.timetext import rfc3339_ms, sqlite_text


def _values(seed: int) -> list[datetime]:
    rng = random.Random(seed)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    out = [
        datetime(1, 1, 2, tzinfo=UTC),
        datetime(999, 3, 4, 5, 6, 7, 999, tzinfo=UTC),  # a year of three digits: padded
        datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 12, 7, 16, 0, 0, 999, tzinfo=UTC),  # under a millisecond: .000
    ]
    base = datetime(2000, 1, 1, tzinfo=UTC)
    for _ in range(2000):
        value = base + timedelta(microseconds=rng.randrange(10**16))
        out.append(value)
        out.append(value.replace(microsecond=rng.randrange(1000)))  # same second, other fraction
        out.append(value.astimezone(rng.choice(zones)))
    # the same second and fraction in other months and years: the remembered second is keyed
    # by the whole date, not the time of day alone
    out += [datetime(y, m, 7, 16, 30, 5, 123456, tzinfo=UTC) for y in (2025, 2026) for m in (1, 2)]
    return out


def test_rfc3339_ms_is_isoformat_in_utc_with_milliseconds_and_z() -> None:
    for _ in range(2):  # the second time from the remembered seconds
        for value in _values(1):
            expected = (
                value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
            )
            assert rfc3339_ms(value) == expected, value


def test_sqlite_text_is_isoformat_with_a_space_and_six_digits_in_utc() -> None:
    for _ in range(2):
        for value in _values(2):
            expected = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
            assert sqlite_text(value) == expected, value
            naive = value.replace(tzinfo=None)  # a naive value is taken as UTC
            assert sqlite_text(naive) == naive.isoformat(" ", "microseconds"), naive


def test_the_remembered_seconds_stay_bounded() -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i in range(timetext._KEPT * 2 + 10):
        value = base + timedelta(seconds=i, microseconds=i)
        assert sqlite_text(value) == value.replace(tzinfo=None).isoformat(" ", "microseconds")
        rfc3339_ms(value)
    assert len(timetext._SPACE) <= timetext._KEPT
    assert len(timetext._T) <= timetext._KEPT
