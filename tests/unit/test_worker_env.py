"""What a worker process of ``SWARMGATE_WORKERS=N`` is handed: it sees itself as one process,
so the settings whose "auto" depends on N are resolved by the supervisor and passed on."""

from __future__ import annotations

import pytest

from gateway.app import engine_config
from gateway.config import Settings
from gateway.workers import child_env

PG = "postgresql://postgres@127.0.0.1:5432/x"


def worker_settings(env: dict[str, str]) -> Settings:
    supervisor = Settings.from_env({"SWARMGATE_DATABASE_URL": PG, **env})
    return Settings.from_env(child_env(supervisor, 0))


def test_a_worker_of_several_gets_the_several_workers_write_settings() -> None:
    worker = worker_settings({"SWARMGATE_WORKERS": "2"})
    assert worker.workers == 1
    assert worker.write_cycles_in_flight == 2
    assert worker.write_linger_in_effect_s == 0.002  # not the 0 of a lone process


@pytest.mark.parametrize(
    ("cycles", "linger", "in_flight", "linger_s"),
    [("off", "0", 0, 0.0), ("3", "0.004", 3, 0.004), ("auto", "auto", 2, 0.002)],
)
def test_write_settings_given_to_the_supervisor_reach_its_workers(
    cycles: str, linger: str, in_flight: int, linger_s: float
) -> None:
    env = {"SWARMGATE_WORKERS": "3", "SWARMGATE_WRITE_CYCLES": cycles}
    worker = worker_settings({**env, "SWARMGATE_WRITE_LINGER_S": linger})
    assert (worker.write_cycles_in_flight, worker.write_linger_in_effect_s) == (in_flight, linger_s)


def test_a_workers_engine_lingers_and_a_lone_gateways_does_not() -> None:
    assert engine_config(worker_settings({"SWARMGATE_WORKERS": "2"})).write_linger_s == 0.002
    assert engine_config(Settings.from_env({})).write_linger_s == 0.0
