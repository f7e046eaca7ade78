"""The SQLite batches' own timestamp conversion writes exactly what SQLAlchemy writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from gateway.store import schema
from gateway.store.sql_sqlite import SQ_OP, SQLITE_DIALECT, sqlite_timestamp

_SQLALCHEMY = schema.UTCDateTime().dialect_impl(SQLITE_DIALECT).bind_processor(SQLITE_DIALECT)


def test_the_fast_timestamp_text_is_sqlalchemys_for_aware_naive_and_other_zones() -> None:
    rng = random.Random(17)
    zones = [
        UTC,
        timezone(timedelta(0)),  # UTC, but not the UTC object
        timezone(timedelta(hours=5, minutes=30)),
        timezone(-timedelta(hours=8)),
    ]
    values: list[datetime | None] = [
        None,
        datetime(1, 1, 2),
        datetime(9999, 12, 30, 23, 59, 59, 999999),
    ]
    for _ in range(500):
        naive = datetime(2000, 1, 1) + timedelta(microseconds=rng.randrange(10**16))
        values.append(naive)
        values.append(naive.replace(tzinfo=rng.choice(zones)))
        values.append(naive.replace(microsecond=0, tzinfo=UTC))  # no fraction: still six digits
    assert _SQLALCHEMY is not None
    for _ in range(2):  # the second time from what the conversion remembered
        for value in values:
            assert sqlite_timestamp(value) == _SQLALCHEMY(value), value


def test_the_batch_rows_take_the_fast_conversion_for_every_timestamp_column() -> None:
    timestamp_columns = [
        i
        for i, n in enumerate(SQ_OP.names)
        if isinstance(SQ_OP.table.c[n].type, schema.UTCDateTime)
    ]
    assert timestamp_columns  # created_at, updated_at, ...
    assert all(SQ_OP.procs[i] is sqlite_timestamp for i in timestamp_columns)
