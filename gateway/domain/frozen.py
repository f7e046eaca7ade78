"""A faster ``__init__`` for the frozen, keyword-only dataclasses built once or more per operation.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``, one
call per field: an ``Operation`` (30 fields) took ~7.6 us to build on the development VM, and
the gateway builds ~14 such records per operation (its operation, four events, the start
request and result, the dispatch request and outcome, two HTTP responses, the completion, the
callback delivery, the idempotency record): ~5% of its CPU in the profile. :func:`fast_init`
replaces that ``__init__`` with one that fills the instance's ``__dict__`` in one step
(~3.6 us for an ``Operation``; figures in bench/README.md). Everything else stays the
dataclass's own: the class is still frozen (assignment raises ``FrozenInstanceError``), and
``__eq__``, ``__hash__``, ``__repr__``, ``dataclasses.replace`` and ``fields`` are unchanged.
Defaults and default factories behave as the dataclass's (a fresh value per instance), and
``__post_init__`` runs if the class has one.

Only for ``@dataclass(frozen=True, kw_only=True)`` classes without ``__slots__`` and without
``init=False`` fields; anything else is refused when the class is defined.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


class _Factory:
    """The default of a parameter whose field has a default factory (shown as ``<factory>``)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def fast_init(cls: type[T]) -> type[T]:
    """Give a frozen, keyword-only dataclass an ``__init__`` that sets its fields at once."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"fast_init: {cls.__name__} is not a frozen dataclass")
    if "__slots__" in cls.__dict__:
        raise TypeError(f"fast_init: {cls.__name__} has __slots__ (it needs a __dict__)")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names: dict[str, Any] = {"_set": object.__setattr__, "_FACTORY": _FACTORY}
    args: list[str] = []
    factories: list[str] = []
    for i, f in enumerate(fields):
        if not f.init or not f.kw_only:
            raise TypeError(
                f"fast_init: {cls.__name__}.{f.name} must be an init=True, keyword-only field"
            )
        if f.default is not dataclasses.MISSING:
            names[f"_d{i}"] = f.default
            args.append(f"{f.name}=_d{i}")
        elif f.default_factory is not dataclasses.MISSING:
            names[f"_f{i}"] = f.default_factory
            args.append(f"{f.name}=_FACTORY")
            factories.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _f{i}()")
        else:
            args.append(f.name)
    state = ", ".join(f"{f.name!r}: {f.name}" for f in fields)
    body = [*factories, f"    _set(self, '__dict__', {{{state}}})"]
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    star = "*, " if args else ""
    source = f"def __init__(self, {star}{', '.join(args)}) -> None:\n" + "\n".join(body) + "\n"
    scope: dict[str, Any] = {}
    exec(source, names, scope)  # the way dataclasses builds its own __init__
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
