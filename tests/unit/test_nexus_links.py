"""Nexus-Link parsing: the spec's rules (URL in <>, type required, several per header)."""

from __future__ import annotations

import pytest

from gateway.domain import links


def test_several_links_in_one_header_and_in_several_headers_are_all_read() -> None:
    parsed = links.parse_headers(
        [
            '<https://a.example/1>; type="a.v1.A", <https://b.example/2?x=1,2>; type=b.B',
            '<temporal:///namespaces/ns/workflows/wf>; type="temporal.Link"; extra="q\\"uote"',
        ]
    )
    assert parsed == [
        {"url": "https://a.example/1", "type": "a.v1.A"},
        {"url": "https://b.example/2?x=1,2", "type": "b.B"},
        {
            "url": "temporal:///namespaces/ns/workflows/wf",
            "type": "temporal.Link",
            "extra": 'q"uote',
        },
    ]


@pytest.mark.parametrize(
    "value",
    [
        'https://a.example/1; type="t"',
        "<https://a.example/1>",
        '<https://a.example/1>; rel="next"',
        '<https://a.example/1>; type=""',
        '<relative/path>; type="t"',
        '<https://a.example/1; type="t"',
        '<https://a.example/1>; type="t',
        '<https://a.example/1> type="t"',
    ],
)
def test_a_malformed_link_is_refused(value: str) -> None:
    with pytest.raises(links.LinkError):
        links.parse_headers([value])


def test_a_parsed_link_is_written_back_in_the_header_form_and_reads_the_same() -> None:
    link = {"url": "https://a.example/1", "type": "a.v1.A", "note": 'say "hi"'}
    text = links.format_link(link)
    assert text == '<https://a.example/1>; type="a.v1.A"; note="say \\"hi\\""'
    assert links.parse_headers([links.header_value([link, link])]) == [link, link]


def test_the_lenient_reader_keeps_the_good_links_of_an_agents_answer() -> None:
    got = links.lenient(['<https://a.example/1>; type="t", <bad>, <https://b.example/>'])
    assert got == [{"url": "https://a.example/1", "type": "t"}]
