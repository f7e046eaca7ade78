"""Nexus links: parsing and writing ``Nexus-Link`` header values (pure; no I/O).

A link is ``<url>; type="pkg.Type"`` with optional further parameters. The ``type``
parameter is required; several links may come in several headers or comma-separated in one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_LINKS = 64
MAX_LINK_CHARS = 8192


class LinkError(ValueError):
    """A ``Nexus-Link`` header value that does not follow the spec's rules."""


def _split_params(rest: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest[i] != ";":
            raise LinkError("parameters must follow the URL, each after a ';'")
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            raise LinkError("a link parameter needs a value (name=value)")
        name = rest[i:eq].strip().lower()
        if not _TOKEN.match(name):
            raise LinkError(f"invalid link parameter name {name!r}")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            j, value = i + 1, []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                value.append(rest[j])
                j += 1
            if j >= n:
                raise LinkError("unterminated quoted link parameter")
            params[name] = "".join(value)
            i = j + 1
        else:
            j = i
            while j < n and rest[j] not in "; \t":
                j += 1
            value_s = rest[i:j]
            if not value_s or not _TOKEN.match(value_s):
                raise LinkError(f"invalid value for link parameter {name!r}")
            params[name] = value_s
            i = j
    return params


def _split_links(value: str) -> list[str]:
    """Split one header value on the commas between links (not inside <> or quotes)."""
    parts: list[str] = []
    cur: list[str] = []
    in_url = in_quote = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif in_quote and ch == "\\":
            escaped = True
        elif ch == '"' and not in_url:
            in_quote = not in_quote
        elif ch == "<" and not in_quote:
            in_url = True
        elif ch == ">" and not in_quote:
            in_url = False
        elif ch == "," and not in_url and not in_quote:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_link(value: str) -> dict[str, str]:
    """One link as ``{"url": ..., "type": ..., <other parameters>}``; raises ``LinkError``."""
    value = value.strip()
    if not value.startswith("<"):
        raise LinkError("a link must start with its URL in angle brackets")
    end = value.find(">")
    if end < 0:
        raise LinkError("the link URL has no closing '>'")
    url = value[1:end].strip()
    parts = urlsplit(url)
    if not url or not parts.scheme or any(c in url for c in ' <>"\r\n'):
        raise LinkError("the link URL must be an absolute URL")
    params = _split_params(value[end + 1 :])
    if not params.get("type"):
        raise LinkError('a link needs a type parameter (type="pkg.Type")')
    return {"url": url, **params}


def parse_headers(values: Iterable[str]) -> list[dict[str, str]]:
    """Every link in these ``Nexus-Link`` header values, in order; raises ``LinkError``."""
    links: list[dict[str, str]] = []
    for value in values:
        if len(value) > MAX_LINK_CHARS:
            raise LinkError("Nexus-Link header too long")
        links.extend(parse_link(part) for part in _split_links(value))
        if len(links) > MAX_LINKS:
            raise LinkError(f"at most {MAX_LINKS} links")
    return links


def format_link(link: dict[str, str]) -> str:
    """The header form of a parsed link: ``<url>; type="..."`` (parameters quoted)."""
    out = [f"<{link['url']}>"]
    for name, value in link.items():
        if name == "url":
            continue
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'{name}="{escaped}"')
    return "; ".join(out)


def header_value(links: Iterable[dict[str, str]]) -> str:
    """Several links in one ``Nexus-Link`` header value (comma-separated)."""
    return ", ".join(format_link(link) for link in links)


def lenient(values: Iterable[str]) -> list[dict[str, str]]:
    """The well-formed links in values an agent sent (malformed ones are dropped)."""
    out: list[dict[str, str]] = []
    for value in values:
        for part in _split_links(value):
            try:
                out.append(parse_link(part))
            except LinkError:
                continue
    return out[:MAX_LINKS]
