"""The stores' JSON text: orjson's speed, the standard library's reach."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from gateway.store.jsontext import dumps


def test_what_orjson_refuses_is_written_by_the_standard_library_and_reads_back_equal() -> None:
    beyond_64_bits = {"n": 2**70, "neg": -(2**65), "nested": [{"k": 10**30}]}
    assert json.loads(dumps(beyond_64_bits)) == beyond_64_bits


def test_datetimes_are_iso_8601_as_isoformat_writes_them_and_bytes_are_bytea_hex() -> None:
    at = datetime(2026, 12, 2, 21, 0, 0, 123, tzinfo=UTC)
    east = datetime(2026, 12, 2, 21, 0, tzinfo=timezone(timedelta(hours=2)))
    row = {"at": at, "east": east, "naive": at.replace(tzinfo=None), "raw": b"\x00\xff"}
    assert json.loads(dumps([row])) == [
        {
            "at": at.isoformat(),
            "east": east.isoformat(),
            "naive": at.replace(tzinfo=None).isoformat(),
            "raw": "\\x00ff",
        }
    ]
    # the same with a value that sends the whole document to the fallback encoder
    assert json.loads(dumps({"at": at, "raw": b"\x01", "n": 2**64}))["at"] == at.isoformat()


def test_non_string_keys_and_unicode_round_trip() -> None:
    value = {1: "é", "nul": "a\u0000b", "emoji": "\U0001f600"}
    assert json.loads(dumps(value)) == {"1": "é", "nul": "a\u0000b", "emoji": "\U0001f600"}
