"""Outbound URL screening (SSRF): the address rules, checked on literals only (nothing is
resolved or contacted)."""

from __future__ import annotations

import pickle

import pytest

from gateway.security.netguard import (
    BlockedDestination,
    OutboundPolicy,
    check_url,
    is_address_allowed,
)
from tests.addresses import DEFAULT, LOOPBACK, PUBLIC, REFUSED, literal_url

# -- address rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("ip", REFUSED)
def test_non_global_addresses_are_refused_by_default(ip: str) -> None:
    assert not is_address_allowed(ip, DEFAULT)
    with pytest.raises(BlockedDestination):
        check_url(literal_url(ip), DEFAULT)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_are_allowed(ip: str) -> None:
    assert is_address_allowed(ip, DEFAULT)
    check_url(literal_url(ip), DEFAULT)


def test_loopback_is_allowed_only_when_allow_listed_including_its_ipv4_mapped_form() -> None:
    for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert not is_address_allowed(ip, DEFAULT)
        assert is_address_allowed(ip, LOOPBACK)
    assert not is_address_allowed("169.254.169.254", LOOPBACK)
    assert not is_address_allowed("10.0.0.1", LOOPBACK)


def test_an_allow_listed_private_range_is_reachable_and_its_neighbours_are_not() -> None:
    policy = OutboundPolicy.from_strings(["10.1.0.0/16", " ", "fd00::/8"])
    assert len(policy.allow_cidrs) == 2
    assert is_address_allowed("10.1.2.3", policy)
    assert is_address_allowed("fd00::5", policy)
    assert not is_address_allowed("10.2.0.1", policy)
    with pytest.raises(ValueError, match="not-a-cidr"):
        OutboundPolicy.from_strings(["not-a-cidr"])


def test_anything_that_is_not_an_address_is_refused() -> None:
    assert not is_address_allowed("example.com", LOOPBACK)
    assert not is_address_allowed("", LOOPBACK)


@pytest.mark.parametrize(
    "url", ["http://2130706433/", "http://127.1/", "http://0x7f000001/", "http://0177.0.0.1/"]
)
def test_legacy_numeric_ipv4_spellings_are_refused_even_when_loopback_is_allowed(url: str) -> None:
    with pytest.raises(BlockedDestination, match="dotted quad"):
        check_url(url, LOOPBACK)


@pytest.mark.parametrize(
    "url", ["ftp://8.8.8.8/", "file:///etc/passwd", "gopher://8.8.8.8/", "http:///path", "/rel"]
)
def test_urls_that_are_not_http_with_a_host_are_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url, LOOPBACK)


def test_a_refusal_names_host_and_address_but_never_credentials_or_query() -> None:
    url = "http://admin:hunter2@169.254.169.254:80/latest/meta-data?token=s3cr3t"
    with pytest.raises(BlockedDestination) as info:
        check_url(url, DEFAULT)
    message = str(info.value)
    assert "169.254.169.254" in message
    for leaked in ("hunter2", "admin", "s3cr3t", "token", "meta-data"):
        assert leaked not in message
    assert isinstance(info.value, OSError)
    assert str(pickle.loads(pickle.dumps(info.value))) == message


TRICKY_URLS = [
    "http://127.0.0.1:9/cb/1",
    "http://127.0.0.1:9/cb/2?x=1#f",
    "http://127.0.0.1:80@10.0.0.1/cb",  # userinfo, not a port: the host is 10.0.0.1
    "http://user:pw@[::1]:8080/cb",
    "https://Example.COM/cb",
    "http://example.com?q=http://10.0.0.1/",
    "http://example.com#http://10.0.0.1/",
    "http://2130706433/cb",
    "http://h\u00e9llo.example/cb",  # not ASCII: parsed whole
    "http://example.com/p\u00e4th",
    "http://[::ffff:127.0.0.1]/cb",
]


@pytest.mark.parametrize("url", TRICKY_URLS)
def test_screening_by_the_remembered_origin_finds_the_host_a_whole_parse_finds(url: str) -> None:
    from gateway.security.netguard import _split_url, _url_host

    assert _url_host(url) == _split_url(url)


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http:///nohost", "http://127.0.0.1:99999/x", "http://[::1/x"]
)
def test_a_malformed_origin_is_refused_every_time_not_remembered(url: str) -> None:
    from gateway.security.netguard import _url_host

    for _ in range(2):
        with pytest.raises(ValueError):
            _url_host(url)
