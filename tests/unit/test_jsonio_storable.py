"""``check_storable``: the quick check of flat event data says what the whole check says."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.domain import jsonio

STORABLE_OR_NOT = [
    {"attempt": 1, "owner": "gw-1", "answered": "sync", "ok": True, "none": None, "f": 1.5},
    {"message": "x" * 100_000},
    {"message": "\U0001f600" * 87_500},  # 12 characters each in JSON: over a megabyte
    {"message": "é" * 170_000},  # 6 each: just under
    {"message": "nul \0 inside"},
    {"nul \0 key": 1},
    {"big": 10**30},
    {"huge": 10**5000},
    {"nan": float("nan")},
    {"inf": float("-inf")},
    {1: "an int key"},
    {"nested": {"a": [1, 2]}},
    {"set": {1, 2}},
    {},
]


def whole_check(value: Any) -> bool:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return len(text) <= 1 << 20 and "\\u0000" not in text


@pytest.mark.parametrize(
    "value", STORABLE_OR_NOT, ids=[str(i) for i in range(len(STORABLE_OR_NOT))]
)
def test_the_quick_check_of_flat_data_agrees_with_the_whole_check(value: dict[Any, Any]) -> None:
    try:
        jsonio.check_storable(value)
        verdict = True
    except jsonio.JsonRejected:
        verdict = False
    assert verdict == whole_check(value)


def test_flat_data_that_is_storable_for_sure_is_not_serialized_to_check_it() -> None:
    flat = {"attempt": 1, "owner": "gw-1", "answered": "sync", "ok": True, "f": 1.5}
    assert jsonio._flat_and_small(flat, 1 << 20)
    assert not jsonio._flat_and_small({"nested": {}}, 1 << 20)
