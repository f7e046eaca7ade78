"""``SWARMGATE_CALLBACK_ACK_COMMIT``: async by default, durable on request, nothing else."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings


def test_delivery_acks_are_async_unless_set_durable() -> None:
    assert Settings.from_env({}).callback_ack_commit == "async"
    durable = {"SWARMGATE_CALLBACK_ACK_COMMIT": "DURABLE"}
    assert Settings.from_env(durable).callback_ack_commit == "durable"


def test_another_ack_commit_value_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_CALLBACK_ACK_COMMIT must be one of"):
        Settings.from_env({"SWARMGATE_CALLBACK_ACK_COMMIT": "sometimes"})


def test_delivery_acks_linger_five_milliseconds_unless_set() -> None:
    assert Settings.from_env({}).callback_ack_linger_s == 0.005
    none = {"SWARMGATE_CALLBACK_ACK_LINGER_S": "0"}
    assert Settings.from_env(none).callback_ack_linger_s == 0.0


@pytest.mark.parametrize("value", ["-0.1", "2", "soon"])
def test_an_ack_linger_outside_zero_to_one_second_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_CALLBACK_ACK_LINGER_S"):
        Settings.from_env({"SWARMGATE_CALLBACK_ACK_LINGER_S": value})
