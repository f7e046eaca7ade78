"""The dispatch URL's ``callback=`` value is encoded exactly as ``urlencode`` encodes it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode

import pytest

from adapters.http import query_value

URLS = [
    "http://gw.example:8080/api/completions/3f2c9a70-0000-4000-8000-000000000001",
    "https://gw.example/base path/api/completions/op id with spaces",
    "http://gw.example/api/completions/a&b=c?d#e+f%20g",
    "http://gw.example/ünïcode/api/completions/名前",
    "no-slash-at-all",
    "trailing/",
    "/",
    "",
]


@pytest.mark.parametrize("url", URLS)
def test_a_callback_url_is_encoded_as_urlencode_would_encode_it(url: str) -> None:
    assert query_value(url) == urlencode({"callback": url})[len("callback=") :]


@pytest.mark.parametrize("url", [u for u in URLS if u])
def test_the_encoded_value_decodes_back_to_the_same_url(url: str) -> None:
    assert parse_qs("callback=" + query_value(url))["callback"] == [url]


def test_two_urls_that_share_a_prefix_each_keep_their_own_tail() -> None:
    first = query_value("http://gw/api/completions/one")
    second = query_value("http://gw/api/completions/two")
    assert first.endswith("one") and second.endswith("two") and first[:-3] == second[:-3]
