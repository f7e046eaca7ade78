"""`SWARMGATE_WRITE_CYCLES`: auto by default (2 cycle statements in flight in each process), off,
or a number; other values refused naming the setting."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings


def test_write_cycles_are_auto_two_in_flight_whatever_the_workers() -> None:
    assert Settings.from_env({}).write_cycles is None
    assert Settings.from_env({}).write_cycles_in_flight == 2
    several = Settings.from_env({"SWARMGATE_WORKERS": "2"})
    assert several.write_cycles_in_flight == 2


@pytest.mark.parametrize(("value", "in_flight"), [("off", 0), ("0", 0), ("3", 3), ("AUTO", 2)])
def test_write_cycles_can_be_switched_off_or_given_a_number(value: str, in_flight: int) -> None:
    settings = Settings.from_env({"SWARMGATE_WRITE_CYCLES": value, "SWARMGATE_WORKERS": "2"})
    assert settings.write_cycles_in_flight == in_flight


@pytest.mark.parametrize("value", ["-1", "65", "often", "1.5"])
def test_another_write_cycles_value_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="SWARMGATE_WRITE_CYCLES must be auto, off"):
        Settings.from_env({"SWARMGATE_WRITE_CYCLES": value})
