"""Delivery acks (`SWARMGATE_CALLBACK_ACK_COMMIT`, `_LINGER_S`), the write linger and the keep-alive
limit: their defaults and the values refused."""

from __future__ import annotations

import pytest

from gateway.config import AUTO_WRITE_LINGER_S, ConfigError, Settings


def test_delivery_acks_are_async_unless_set_durable() -> None:
    assert Settings.from_env({}).callback_ack_commit == "async"
    durable = {"SWARMGATE_CALLBACK_ACK_COMMIT": "DURABLE"}
    assert Settings.from_env(durable).callback_ack_commit == "durable"


def test_another_ack_commit_value_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_CALLBACK_ACK_COMMIT must be one of"):
        Settings.from_env({"SWARMGATE_CALLBACK_ACK_COMMIT": "sometimes"})


def test_delivery_acks_linger_fifty_milliseconds_unless_set() -> None:
    assert Settings.from_env({}).callback_ack_linger_s == 0.05
    none = {"SWARMGATE_CALLBACK_ACK_LINGER_S": "0"}
    assert Settings.from_env(none).callback_ack_linger_s == 0.0


@pytest.mark.parametrize("value", ["-0.1", "2", "soon"])
def test_an_ack_linger_outside_zero_to_one_second_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_CALLBACK_ACK_LINGER_S"):
        Settings.from_env({"SWARMGATE_CALLBACK_ACK_LINGER_S": value})


def test_starts_and_completions_linger_by_default_only_with_several_workers() -> None:
    assert Settings.from_env({}).write_linger_s is None
    assert Settings.from_env({}).write_linger_in_effect_s == 0.0
    several = Settings.from_env({"SWARMGATE_WORKERS": "3"})
    assert several.write_linger_in_effect_s == AUTO_WRITE_LINGER_S == 0.002
    auto = Settings.from_env({"SWARMGATE_WORKERS": "2", "SWARMGATE_WRITE_LINGER_S": "auto"})
    assert auto.write_linger_in_effect_s == 0.002


@pytest.mark.parametrize(("value", "workers"), [("0.003", "1"), ("0.003", "4"), ("0", "4")])
def test_a_write_linger_that_is_set_holds_whatever_the_workers(value: str, workers: str) -> None:
    env = {"SWARMGATE_WRITE_LINGER_S": value, "SWARMGATE_WORKERS": workers}
    assert Settings.from_env(env).write_linger_in_effect_s == float(value)


@pytest.mark.parametrize("value", ["-0.001", "0.5", "soon", "nan"])
def test_a_write_linger_outside_zero_to_a_tenth_of_a_second_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_WRITE_LINGER_S"):
        Settings.from_env({"SWARMGATE_WRITE_LINGER_S": value})


@pytest.mark.parametrize("value", ["-1", "many"])
def test_a_negative_or_unreadable_keepalive_requests_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_KEEPALIVE_REQUESTS"):
        Settings.from_env({"SWARMGATE_KEEPALIVE_REQUESTS": value})
