"""The hot routes: method and path pattern of an app route, matched without aiohttp."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.domain.errors import ConfigError

Handler = Callable[[Any], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HotRoute:
    """One route the hot path serves: ``method`` and a path of literal segments and
    parameters (``None`` in ``parts``, named by ``names`` in order)."""

    method: str
    parts: tuple[str | None, ...]
    names: tuple[str, ...]
    handler: Handler

    @classmethod
    def of(cls, method: str, pattern: str, handler: Handler) -> HotRoute:
        """A route from an aiohttp pattern such as ``/nexus/{service}/{operation}``."""
        parts: list[str | None] = []
        names: list[str] = []
        for seg in pattern.split("/")[1:]:
            if seg.startswith("{") and seg.endswith("}") and ":" not in seg:
                parts.append(None)
                names.append(seg[1:-1])
            elif "{" in seg or "}" in seg:
                raise ConfigError(f"hot path: {pattern!r}: only whole-segment parameters")
            else:
                parts.append(seg)
        return cls(method, tuple(parts), tuple(names), handler)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.parts):
            return None
        for i, literal in self._literals:
            if segments[i] != literal:
                return None
        return {name: segments[i] for name, i in self._params}

    @functools.cached_property
    def _literals(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, p) for i, p in enumerate(self.parts) if p is not None)

    @functools.cached_property
    def _params(self) -> tuple[tuple[str, int], ...]:
        where = [i for i, p in enumerate(self.parts) if p is None]
        return tuple(zip(self.names, where, strict=True))


def hot_routes(app: web.Application, handlers: Iterable[Handler]) -> tuple[HotRoute, ...]:
    """The hot routes of ``app``: its routes whose handler is one of ``handlers``, with the
    very method and pattern they were added with (ConfigError for a handler it has not)."""
    wanted = list(handlers)
    out: list[HotRoute] = []
    for handler in wanted:
        found = [r for r in app.router.routes() if r.handler is handler]
        if not found:
            raise ConfigError(f"hot path: no route of the app has handler {handler!r}")
        for route in found:
            if route.resource is None:
                raise ConfigError(f"hot path: a route of {handler!r} has no resource")
            out.append(HotRoute.of(route.method, route.resource.canonical, handler))
    return tuple(out)
