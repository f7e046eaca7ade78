"""Row <-> dataclass mapping, generated once from the dataclasses in ``gateway.domain.model``.

A column carries the field of the same name. Writing, enums become their value; reading, each
field is decoded by its annotated type through :data:`CODECS` (``X | None`` keeps ``None``).
A field with no column in a row keeps its dataclass default.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Table

from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
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
    """How one dataclass is written to and read from its table."""

    def __init__(self, cls: type[T], table: Table, *, write_exclude: tuple[str, ...] = ()) -> None:
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        self.cls = cls
        self.read: list[tuple[str, Decode | None]] = [(n, _decoder(hints[n])) for n in names]
        self.write = tuple(n for n in names if n in table.c and n not in write_exclude)

    def values(self, obj: T) -> dict[str, Any]:
        """Column values for an insert."""
        out: dict[str, Any] = {}
        for name in self.write:
            v = getattr(obj, name)
            out[name] = v.value if isinstance(v, enum.Enum) else v
        return out

    def load(self, row: Any) -> T:
        """The dataclass from a result row (a SQLAlchemy ``Row`` or a mapping)."""
        m: Mapping[str, Any] = row if isinstance(row, Mapping) else row._mapping
        kwargs: dict[str, Any] = {}
        for name, decode in self.read:
            if name in m:
                v = m[name]
                kwargs[name] = v if decode is None else decode(v)
        return self.cls(**kwargs)


# prev_lease_owner is written by the claim only; an event's id by the database.
OPERATION = RowMap(Operation, t.operations, write_exclude=("prev_lease_owner",))
EVENT = RowMap(Event, t.events, write_exclude=("id",))
CALLBACK = RowMap(CallbackDelivery, t.callbacks)
IDEMPOTENCY = RowMap(IdempotencyRecord, t.idempotency)
CALLER_SECRETS = RowMap(CallerSecrets, t.caller_secrets)


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
