"""gateway.domain.frozen.fast_init: the same dataclass, built faster (and the ids made with it)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.domain.dispatch import DispatchRequest, HttpResponse, Outcome
from gateway.domain.frozen import fast_init
from gateway.domain.ids import message_id, uuid7_text
from gateway.domain.model import (
    CallbackDelivery,
    Completion,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    RunningUpdate,
)
from gateway.engine.starts import StartRequest, StartResult

NOW = datetime(2026, 12, 3, tzinfo=UTC)
FAST = (
    Operation,
    Event,
    RunningUpdate,
    CallbackDelivery,
    IdempotencyRecord,
    Completion,
    Outcome,
    DispatchRequest,
    HttpResponse,
    StartRequest,
    StartResult,
)


def _twin() -> tuple[type[Any], type[Any]]:
    """The same class twice: with the dataclass's own __init__ and with fast_init's."""

    def make() -> type[Any]:
        @dataclass(frozen=True, kw_only=True)
        class Sample:
            name: str
            count: int = 3
            tags: list[str] = field(default_factory=list)
            meta: dict[str, int] = field(default_factory=lambda: {"a": 1})
            note: str | None = None

        return Sample

    return make(), fast_init(make())


def test_a_fast_instance_equals_the_dataclass_built_one_with_defaults_and_given_values() -> None:
    plain, fast = _twin()
    assert dataclasses.astuple(fast(name="x")) == dataclasses.astuple(plain(name="x"))
    given = {"name": "y", "count": 7, "tags": ["t"], "meta": {"b": 2}, "note": "n"}
    assert dataclasses.astuple(fast(**given)) == dataclasses.astuple(plain(**given))
    assert repr(fast(**given)) == repr(plain(**given))
    assert fast(**given) == fast(**given) and fast(**given) != fast(name="y")


def test_each_instance_gets_a_fresh_value_from_a_default_factory() -> None:
    _plain, fast = _twin()
    a, b = fast(name="a"), fast(name="b")
    a.tags.append("only a")
    assert b.tags == [] and a.meta is not b.meta


def test_a_fast_instance_is_still_frozen_and_replace_pickle_and_deepcopy_work() -> None:
    _plain, fast = _twin()
    one = fast(name="x", tags=["t"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.name = "y"
    assert dataclasses.replace(one, count=9) == fast(name="x", count=9, tags=["t"])
    assert copy.deepcopy(one) == one
    event = Event(operation_id="o", kind="k", at=NOW, data={"a": 1})
    assert pickle.loads(pickle.dumps(event)) == event


def test_the_signature_is_kept_keyword_only_required_unknown_and_positional_refused() -> None:
    _plain, fast = _twin()
    with pytest.raises(TypeError):
        fast()  # name is required
    with pytest.raises(TypeError):
        fast(name="x", colour="red")
    with pytest.raises(TypeError):
        fast("x")


def test_post_init_runs_after_the_fields_are_set() -> None:
    seen: list[str] = []

    @fast_init
    @dataclass(frozen=True, kw_only=True)
    class Checked:
        name: str

        def __post_init__(self) -> None:
            seen.append(self.name)

    Checked(name="ok")
    assert seen == ["ok"]


def test_classes_it_cannot_serve_are_refused_when_defined() -> None:
    @dataclass(kw_only=True)
    class Mutable:
        name: str

    @dataclass(frozen=True)
    class Positional:
        name: str

    @dataclass(frozen=True, kw_only=True)
    class Derived:
        name: str
        size: int = field(init=False, default=0)

    @dataclass(frozen=True, kw_only=True, slots=True)
    class Slotted:
        name: str

    for cls in (Mutable, Positional, Derived, Slotted):
        with pytest.raises(TypeError, match="fast_init"):
            fast_init(cls)


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.__name__)
def test_the_hot_records_use_it_and_keep_every_fields_default(cls: type[Any]) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    # fast_init's own __init__ (the dataclass's sets each field through object.__setattr__)
    assert "_set" in cls.__init__.__code__.co_names
    required = {
        f.name: None
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    built = cls(**required)
    for f in dataclasses.fields(cls):
        got = getattr(built, f.name)
        if f.default is not dataclasses.MISSING:
            assert got == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert got == f.default_factory(), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.__setattr__(dataclasses.fields(cls)[0].name, "changed")


def test_an_operation_built_fast_compares_and_replaces_as_before() -> None:
    op = Operation(
        id="o", service="s", operation="echo", state=OperationState.RUNNING, caller="c",
        created_at=NOW,
    )  # fmt: skip
    assert op.callback_headers == {} and op.links == [] and op.attempts == 0
    done = dataclasses.replace(op, state=OperationState.SUCCEEDED, result=b"{}")
    assert done.state is OperationState.SUCCEEDED and done.id == "o" and op.result is None


def test_an_operation_id_is_a_canonical_version_7_uuid_with_random_bits() -> None:
    seen = set()
    for _ in range(2000):
        text = uuid7_text()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 2000
    variants = {uuid7_text()[19] for _ in range(400)}
    assert variants == set("89ab")  # all four variant digits occur: the bits are random


def test_ids_lead_with_the_millisecond_they_were_made_in_so_later_ones_sort_later() -> None:
    before = time.time_ns() // 1_000_000
    first, first_msg = uuid7_text(), message_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(first).int >> 80 <= after
    assert before <= int(first_msg[4:16], 16) <= after
    assert re.fullmatch(r"msg_[0-9a-f]{32}", first_msg)
    while time.time_ns() // 1_000_000 <= after:  # the next millisecond (at most ~1 ms)
        pass
    later = [uuid7_text() for _ in range(50)]
    later_msgs = [message_id() for _ in range(50)]
    assert all(first < u for u in later) and all(first_msg < m for m in later_msgs)
    assert len(set(later_msgs)) == 50
