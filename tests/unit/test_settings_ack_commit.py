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
