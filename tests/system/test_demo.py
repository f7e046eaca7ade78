"""The runnable swarm demo: a gateway crash in the middle of a fan-out loses nothing."""

from __future__ import annotations

from pathlib import Path

from examples.swarm.__main__ import TRIPS, run_demo


async def test_the_demo_swarm_survives_a_gateway_kill_and_runs_every_effect_once(
    tmp_path: Path,
) -> None:
    outcome = await run_demo(tmp_path / "demo", kill_after_s=0.8)
    assert sorted(outcome["results"]) == sorted(city for city, _ in TRIPS)
    for city, result in outcome["results"].items():
        assert result["summary"].startswith(f"{city}: fly SG")
        assert result["total_eur"] > 0
    assert outcome["ran_twice"] == {}
