"""A2A protocol rules that need no network: field names, versions, list parameters, and how
the outbound adapter chooses an interface from a card."""

from __future__ import annotations

import json

import pytest

from adapters import a2a_rpc as wire
from adapters.a2a_card import NoSupportedInterface, choose_interface
from adapters.a2a_facade import RpcFault


def test_snake_case_field_names_become_json_names_but_user_data_is_left_alone() -> None:
    params = {
        "message": {
            "message_id": "m",
            "parts": [{"data": {"keep_me": 1}}],
            "metadata": {"user_key": 2},
        },
        "configuration": {"return_immediately": True},
    }
    assert wire.camel_keys(params) == {
        "message": {
            "messageId": "m",
            "parts": [{"data": {"keep_me": 1}}],
            "metadata": {"user_key": 2},
        },
        "configuration": {"returnImmediately": True},
    }


def test_a_request_without_a2a_version_is_0_3_and_refused_naming_what_is_spoken() -> None:
    problem = wire.version_problem(None)
    assert problem is not None and "0.3" in problem and "1.0" in problem
    assert wire.version_problem("0.3") is not None
    assert wire.version_problem("1.0") is None and wire.version_problem("1") is None


@pytest.mark.parametrize("bad", [{"x": 1}, [1], True, 1.5])
def test_a_jsonrpc_id_that_is_not_a_string_integer_or_null_is_an_invalid_request(
    bad: object,
) -> None:
    raw = json.dumps({"jsonrpc": "2.0", "id": bad, "method": "GetTask"}).encode()
    with pytest.raises(RpcFault) as caught:
        wire.parse_rpc(raw, "1.0", {"GetTask"})
    assert caught.value.code == -32600 and caught.value.rpc_id is None


def test_list_parameters_are_validated_and_pages_round_trip() -> None:
    assert wire.page_size({}) == 50
    assert wire.page_size({"pageSize": "100"}) == 100
    for bad in (101, -1, "x", True, 2.5):
        with pytest.raises(RpcFault):
            wire.page_size({"pageSize": bad})
    with pytest.raises(RpcFault):
        wire.history_length({"historyLength": -1})
    with pytest.raises(RpcFault):
        wire.status_filter({"status": "DONE"})
    assert wire.status_filter({"status": "TASK_STATE_REJECTED"}) is False
    with pytest.raises(RpcFault):
        wire.timestamp_filter({"statusTimestampAfter": "yesterday"})
    with pytest.raises(RpcFault):
        wire.timestamp_filter({"statusTimestampAfter": "2026-01-01T00:00:00"})  # no zone
    assert wire.page_offset(wire.page_token(150)) == 150
    with pytest.raises(RpcFault):
        wire.page_offset("bogus")


def test_the_adapter_takes_the_first_interface_it_speaks_in_the_agents_order() -> None:
    card = {
        "supportedInterfaces": [
            {"url": "grpc://a", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            {"url": "http://a/v03", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            {"url": "http://a/rest/", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": "http://a/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
        ]
    }
    chosen = choose_interface(card)
    assert chosen is not None
    assert (chosen.binding, chosen.url) == ("HTTP+JSON", "http://a/rest")
    assert choose_interface({"name": "no interfaces"}) is None
    with pytest.raises(NoSupportedInterface, match=r"GRPC 1\.0, JSONRPC 0\.3"):
        choose_interface({"supportedInterfaces": card["supportedInterfaces"][:2]})
