"""A request the hot path serves, whole (head and body) before its handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import yarl
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy, MultiMapping

_EMPTY_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class _Body:
    """A hot request's body, which has arrived whole (``web.Request.content``'s part used)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def is_eof(self) -> bool:
        return True

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        for i in range(0, len(self._data), n):
            yield self._data[i : i + n]


class HotRequest:
    """A request the hot path serves: what :class:`~gateway.http.context.InboundRequest`
    asks for, with the body already read."""

    __slots__ = (
        "_body",
        "_query",
        "_query_string",
        "app",
        "headers",
        "match_info",
        "method",
        "path",
        "raw_line",
    )

    def __init__(
        self,
        *,
        app: web.Application,
        method: str,
        path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        match_info: Mapping[str, str],
        body: bytes,
        raw_line: str,
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.headers = headers
        self.match_info = match_info
        self.raw_line = raw_line
        self._query_string = query_string
        self._query: MultiMapping[str] | None = None
        self._body = body

    @property
    def query(self) -> MultiMapping[str]:
        """Parsed as aiohttp parses it (yarl)."""
        if self._query is None:
            if not self._query_string:
                self._query = _EMPTY_QUERY
            else:
                url = yarl.URL.build(path="/", query_string=self._query_string, encoded=True)
                self._query = url.query
        return self._query

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    @property
    def content(self) -> _Body:
        return _Body(self._body)

    async def read(self) -> bytes:
        return self._body


def headers_of(raw: list[tuple[bytes, bytes]]) -> CIMultiDictProxy[str]:
    # decoded as aiohttp's C parser decodes them
    return CIMultiDictProxy(
        CIMultiDict(
            [
                (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for n, v in raw
            ]
        )
    )
