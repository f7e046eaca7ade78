"""Outbound URL screening against SSRF (the smokescreen rules).

Every request swarmgate makes to a URL someone else chose (agent endpoints, callback URLs) must
land on a public address unless an operator allow-listed the range:

- A destination address is allowed iff it is in ``OutboundPolicy.allow_cidrs`` or it is global
  (``ip.is_global``) after unwrapping IPv4 embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``,
  NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo). So loopback, RFC 1918, link-local (cloud
  metadata at 169.254.169.254), CGNAT 100.64.0.0/10, ULA fc00::/7, ``0.0.0.0`` and multicast
  are refused by default. Tests and the demo allow loopback explicitly
  (:meth:`OutboundPolicy.loopback_allowed`).
- Names are resolved once per new connection by :class:`ScreeningResolver`. If any resolved
  address is refused the whole name is refused (fail closed), and a DNS failure is an error too.
  The transport (:mod:`adapters.transport`) connects to exactly the addresses the resolver
  returned, so the address that was checked is the address that is connected to (no
  DNS-rebinding window).
- :func:`check_url` screens IP-literal hosts without DNS (and refuses non-http(s) URLs and
  legacy numeric IPv4 spellings such as ``2130706433``).
- Redirects are never followed: a redirect would be a new request to a URL nobody screened.

:func:`screen_url` does the literal check plus a resolution for names; use it to reject a bad
URL early (at registration, or when an operation is started with a callback URL). It does not
replace the connector-time check, which is the one that binds the address.

Errors name the host, never the rest of the URL (no credentials, paths or query strings in
messages or logs). A refused IP literal is named; the address a *name* resolved to is not (it
would make the gateway an oracle for internal DNS): the message says "resolves to a non-public
address", the address is logged and kept on :attr:`BlockedDestination.address`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

__all__ = [
    "BlockedDestination",
    "OutboundPolicy",
    "ScreeningResolver",
    "UnresolvableDestination",
    "check_url",
    "is_address_allowed",
    "redact_userinfo",
    "screen_url",
]

log = logging.getLogger("swarmgate.netguard")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOWED_SCHEMES = frozenset({"http", "https"})
_AUTHORITY_END = re.compile(r"[/?#]")  # as the outbound transport splits off a URL's origin
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d form


@dataclass(frozen=True)
class OutboundPolicy:
    """Which non-global address ranges outbound requests may reach anyway."""

    allow_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> OutboundPolicy:
        """Build from CIDR strings (``"127.0.0.0/8"``, ``"::1/128"``, a bare address = /32, /128).

        Raises ValueError naming the first entry that is not a network.
        """
        nets: list[IPNetwork] = []
        for raw in cidrs:
            text = raw.strip()
            if not text:
                continue
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"not a CIDR network: {text!r}") from None
        return cls(allow_cidrs=tuple(nets))

    @classmethod
    def loopback_allowed(cls) -> OutboundPolicy:
        """Public addresses plus loopback (127.0.0.0/8 and ::1/128): for tests and the demo."""
        return cls.from_strings(["127.0.0.0/8", "::1/128"])

    def allows(self, ip: str | IPAddress) -> bool:
        return is_address_allowed(ip, self)


class BlockedDestination(OSError):
    """An outbound request was refused: its destination is not an allowed address."""

    def __init__(self, host: str, address: str | None = None, reason: str | None = None) -> None:
        self.host = host
        self.address = address
        resolved = address is not None and _parse_ip(host) is None
        self.reason = reason or (
            "resolves to a non-public address" if resolved else "not an allowed destination"
        )
        super().__init__(f"{host}: {self.reason}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.host, self.address, self.reason))


class UnresolvableDestination(OSError):
    """An outbound request was refused because its host name did not resolve (fail closed).

    Deliberately not a BlockedDestination: a DNS failure may be transient, so callers can retry.
    """

    def __init__(self, host: str, reason: str | None = None) -> None:
        self.host = host
        self.reason = reason or "name did not resolve"
        super().__init__(f"{host}: {self.reason}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.host, self.reason))


def _parse_ip(ip: str | IPAddress) -> IPAddress | None:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr: IPAddress = ip
    else:
        try:
            addr = ipaddress.ip_address(ip.strip().strip("[]"))
        except ValueError:
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    return addr


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a packet to ``addr`` may really be aimed at."""
    out: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        out.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        out.append(addr.sixtofour)
    if addr.teredo is not None:
        out.extend(addr.teredo)
    if addr in _NAT64 or addr in _IPV4_COMPATIBLE:
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def _in(addr: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in nets)


def _single_allowed(addr: IPAddress, policy: OutboundPolicy) -> bool:
    if _in(addr, policy.allow_cidrs):
        return True
    return addr.is_global and not addr.is_multicast


def is_address_allowed(ip: str | IPAddress, policy: OutboundPolicy) -> bool:
    """True iff ``ip`` may be connected to under ``policy``.

    Allowed iff the address is in ``policy.allow_cidrs`` or is global. IPv4 carried inside IPv6
    (mapped, NAT64, 6to4, Teredo, IPv4-compatible) must pass too. Anything that does not parse
    as an address is refused.
    """
    addr = _parse_ip(ip)
    if addr is None:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if addr.ipv4_mapped is not None:
            # ::ffff:a.b.c.d *is* a.b.c.d on a dual-stack socket
            return _single_allowed(addr.ipv4_mapped, policy) or _in(addr, policy.allow_cidrs)
        if inner:
            if _in(addr, policy.allow_cidrs):
                return True
            return _single_allowed(addr, policy) and all(
                _single_allowed(v4, policy) for v4 in inner
            )
    return _single_allowed(addr, policy)


def _legacy_ipv4(host: str) -> bool:
    """True for numeric IPv4 spellings that are not dotted quads (``127.1``, ``0x7f000001``)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _split_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; ValueError otherwise. Messages never quote the URL."""
    try:
        u = yarl.URL(url)
    except (ValueError, TypeError):
        raise ValueError("malformed URL") from None
    scheme = (u.scheme or "").lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise ValueError(f"URL scheme must be http or https, not {scheme or 'empty'!r}")
    host = u.host
    if not host:
        raise ValueError("URL has no host")
    try:
        port = u.port
    except ValueError:
        raise ValueError("URL has an invalid port") from None
    if port is None:
        port = 443 if scheme == "https" else 80
    return host, port


def _url_host(url: str) -> tuple[str, int]:
    """:func:`_split_url` of an ASCII URL's origin (``scheme://authority``), remembered: the
    host and port are all in it, and every start with a callback screens a URL that differs
    from the last one only in its path (parsing it whole was ~2% of the gateway's CPU)."""
    start = url.find("://")
    if start < 0 or not url.isascii():
        return _split_url(url)
    end = _AUTHORITY_END.search(url, start + 3)
    return _split_origin(url if end is None else url[: end.start()])


@functools.lru_cache(maxsize=4096)
def _split_origin(origin: str) -> tuple[str, int]:
    return _split_url(origin)


def check_url(url: str, policy: OutboundPolicy) -> None:
    """Screen what can be screened without DNS.

    Raises ValueError for a URL that is not http(s) or has no host, and BlockedDestination for
    an IP-literal host that ``policy`` refuses (or a legacy numeric IPv4 spelling). Host names
    pass here; the :class:`ScreeningResolver` in the connector screens them when connecting.
    """
    host, _port = _split_url(url)
    _check_host(host, policy)


def _check_host(host: str, policy: OutboundPolicy) -> bool:
    """Raise for a refused IP literal or legacy numeric spelling; True iff ``host`` is an IP
    literal (then nothing is left to resolve)."""
    verdict = _literal_verdict(host, policy)
    if verdict is not None:
        if not verdict:
            raise BlockedDestination(host, str(_parse_ip(host)))
        return True
    if _legacy_ipv4(host):
        raise BlockedDestination(host, None, "numeric IPv4 host must be a dotted quad")
    return False


@functools.lru_cache(maxsize=4096)
def _literal_verdict(host: str, policy: OutboundPolicy) -> bool | None:
    """Whether ``policy`` allows an IP-literal host; None for a host name. Cached: every start
    with a callback checks its URL, and parsing the address was a visible share of the CPU."""
    addr = _parse_ip(host)
    return None if addr is None else is_address_allowed(addr, policy)


def _screen_results(host: str, results: Sequence[ResolveResult], policy: OutboundPolicy) -> None:
    if not results:
        raise UnresolvableDestination(host, "name resolved to no addresses")
    for res in results:
        if not is_address_allowed(res["host"], policy):
            log.warning("outbound refused: %s resolves to %s", host, res["host"])
            raise BlockedDestination(host, res["host"])


async def _resolve(
    resolver: AbstractResolver, host: str, port: int, family: socket.AddressFamily
) -> list[ResolveResult]:
    try:
        return await resolver.resolve(host, port, family=family)
    except (BlockedDestination, UnresolvableDestination):
        raise
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UnresolvableDestination(host, f"name did not resolve ({reason})") from None


class ScreeningResolver(AbstractResolver):
    """An aiohttp resolver that only returns allowed addresses.

    Resolves once with ``inner`` (aiohttp's ThreadedResolver by default, i.e. getaddrinfo) and
    raises BlockedDestination if any address is refused, UnresolvableDestination (an OSError) if
    resolution fails or returns nothing. aiohttp wraps both in ``ClientConnectorDNSError`` whose
    ``os_error`` is the original exception.
    """

    def __init__(self, policy: OutboundPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    def _get_inner(self) -> AbstractResolver:
        if self._inner is None:
            self._inner = ThreadedResolver(asyncio.get_running_loop())
        return self._inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addr = _parse_ip(host)
        if addr is not None:  # aiohttp never does this; be correct anyway
            if not is_address_allowed(addr, self.policy):
                raise BlockedDestination(host, str(addr))
            fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            return [
                ResolveResult(
                    hostname=host,
                    host=str(addr),
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            ]
        if _legacy_ipv4(host):
            raise BlockedDestination(host, None, "numeric IPv4 host must be a dotted quad")
        results = await _resolve(self._get_inner(), host, port, family)
        _screen_results(host, results, self.policy)
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


async def screen_url(
    url: str, policy: OutboundPolicy, resolver: AbstractResolver | None = None
) -> None:
    """Reject a URL early: :func:`check_url`, then resolve a host name and screen every address.

    ``resolver`` is the underlying resolver to use (default: getaddrinfo in a thread); its
    results are screened here. Raises ValueError, BlockedDestination or UnresolvableDestination.
    """
    host, port = _url_host(url)
    if _check_host(host, policy):
        return
    screening = ScreeningResolver(policy, resolver)
    try:
        await screening.resolve(host, port, family=socket.AF_UNSPEC)
    finally:
        if resolver is None:
            await screening.close()


def redact_userinfo(url: str) -> str:
    """``url`` with any user name and password replaced by ``***`` (for reads and logs: an
    endpoint's credentials are for the gateway's requests, never for whoever reads it)."""
    try:
        u = yarl.URL(url)
    except (ValueError, TypeError):
        return "<malformed URL>"
    if u.raw_user is None and u.raw_password is None:
        return url
    return str(u.with_user(None).with_password(None)).replace("://", "://***@", 1)
