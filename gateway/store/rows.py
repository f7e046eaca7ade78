"""Row <-> dataclass mapping, generated once from the dataclasses in ``gateway.domain.model``.

A column carries the field of the same name. Writing, enums become their value; reading, each
field is decoded by its annotated type through :data:`CODECS` (``X | None`` keeps ``None``).
Writing skips fields the table has no column for.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import JSON, Table
from sqlalchemy.engine import Dialect

from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    StepRecord,
    Work,
)
from gateway.store import schema as t

T = TypeVar("T")
Decode = Callable[[Any], Any]

# Per-type read codec (None: the driver's value is used as is).
CODECS: dict[Any, Decode | None] = {
    str: None,
    datetime: None,
    int: int,
    bytes: bytes,
    dict[str, str]: lambda v: dict(v or {}),
    dict[str, Any]: None,
    Any: None,  # any JSON value (heartbeat details, step results)
    list[str]: lambda v: list(v or []),
    OperationState: OperationState,
    Work: Work,
    DeliveryState: DeliveryState,
}


def _optional(decode: Decode) -> Decode:
    return lambda v: None if v is None else decode(v)


def _decoder(annotation: Any) -> Decode | None:
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        decode = CODECS[inner]
        if inner is Work:  # an empty work column means none, as the schema has always had it
            return lambda v: Work(v) if v else None
        return None if decode is None else _optional(decode)
    return CODECS[annotation]


class RowMap(Generic[T]):
    """How one dataclass is written to and read from its table.

    ``values`` and ``load`` are generated (as ``dataclasses`` generates ``__init__``): one
    straight-line function per dataclass, so mapping a row costs what a hand-written mapper
    did on the hot path.
    """

    def __init__(self, cls: type[T], table: Table, *, write_exclude: tuple[str, ...] = ()) -> None:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        self.cls = cls
        self.write = tuple(n for n in names if n in table.c and n not in write_exclude)
        env: dict[str, Any] = {"cls": cls}
        out = []
        for n in self.write:
            enum_type = _enum_of(hints[n])
            if enum_type is None:
                out.append(f"{n!r}: obj.{n}")
            elif enum_type[1]:
                out.append(f"{n!r}: None if obj.{n} is None else obj.{n}.value")
            else:
                out.append(f"{n!r}: obj.{n}.value")
        read = []
        for n in names:
            decode = _decoder(hints[n])
            if decode is None:
                read.append(f"{n}=m[{n!r}]")
            else:
                env[f"_d_{n}"] = decode
                read.append(f"{n}=_d_{n}(m[{n!r}])")
        body = (
            "def values(obj):\n    return {" + ", ".join(out) + "}\n"
            "def load(m):\n    return cls(" + ", ".join(read) + ")\n"
        )
        exec(compile(body, f"<rows {cls.__name__}>", "exec"), env)
        self._values: Callable[[T], dict[str, Any]] = env["values"]
        self._load: Callable[[Mapping[str, Any]], T] = env["load"]

    def values(self, obj: T) -> dict[str, Any]:
        """Column values for an insert."""
        return self._values(obj)

    def load(self, row: Any) -> T:
        """The dataclass from a result row (a SQLAlchemy ``Row`` or a mapping holding a
        column for every field)."""
        return self._load(row if isinstance(row, Mapping) else row._mapping)


def _enum_of(annotation: Any) -> tuple[type[enum.Enum], bool] | None:
    """(the enum type, whether None is allowed) when a field holds an enum."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        inner = args[0]
        return (inner, True) if isinstance(inner, type) and issubclass(inner, enum.Enum) else None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation, False
    return None


def driver_decoder(table: Table, dialect: Dialect) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A row as the driver gives it (an asyncpg ``Record``, a ``sqlite3`` row by name) turned
    into the values SQLAlchemy's result processing gives for ``table`` on ``dialect``: JSON
    columns parsed as its default deserializer parses them (``json.loads``), timestamps through
    :class:`schema.UTCDateTime` (aware UTC), the rest as they are. For reads that skip
    SQLAlchemy's connection and result machinery; a test compares both."""
    env: dict[str, Any] = {"loads": json.loads, "dialect": dialect}
    parts = []
    for col in table.c:
        n = col.name
        if isinstance(col.type, t.UTCDateTime):
            env[f"_t_{n}"] = col.type.process_result_value
            parts.append(f"{n!r}: None if (v := m[{n!r}]) is None else _t_{n}(v, dialect)")
        elif isinstance(col.type, JSON):
            parts.append(f"{n!r}: None if (v := m[{n!r}]) is None else loads(v)")
        else:
            parts.append(f"{n!r}: m[{n!r}]")
    body = "def decode(m):\n    return {" + ", ".join(parts) + "}\n"
    exec(compile(body, f"<driver row {table.name}>", "exec"), env)
    decode: Callable[[Mapping[str, Any]], dict[str, Any]] = env["decode"]
    return decode


# prev_lease_owner is written by the claim only; an event's id by the database.
OPERATION = RowMap(Operation, t.operations, write_exclude=("prev_lease_owner",))
EVENT = RowMap(Event, t.events, write_exclude=("id",))
CALLBACK = RowMap(CallbackDelivery, t.callbacks)
IDEMPOTENCY = RowMap(IdempotencyRecord, t.idempotency)
CALLER_SECRETS = RowMap(CallerSecrets, t.caller_secrets)
STEP = RowMap(StepRecord, t.steps)


def completion_params(c: Completion) -> dict[str, Any]:
    """The values a terminal transition writes (shared by every dialect's statement)."""
    return {
        "b_id": c.operation_id,
        "b_owner": c.only_if_owner,
        "b_state": c.state.value,
        "b_result": c.result,
        "b_ctype": c.result_content_type,
        "b_failure": c.failure,
        "b_at": c.at,
        "b_work": Work.CANCEL.value if c.then_cancel_agent else None,
        "b_next": c.at if c.then_cancel_agent else None,
    }


def attempt_data(op: Operation, owner: str) -> dict[str, Any]:
    """The ``attempt.started`` event's data for a claimed dispatch."""
    data: dict[str, Any] = {"attempt": op.attempts, "owner": owner}
    if op.prev_lease_owner and op.prev_lease_owner != owner:
        data["taken_over_from"] = op.prev_lease_owner
    return data
