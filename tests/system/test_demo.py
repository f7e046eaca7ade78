"""The runnable swarm demo: a gateway crash in the middle of a fan-out loses nothing, and an
agent instance killed mid-step resumes on another instance without re-running finished steps."""

from __future__ import annotations

from pathlib import Path

from examples.swarm.__main__ import TRIPS, run_demo


async def test_the_demo_swarm_survives_a_gateway_kill_and_an_agent_kill_running_every_effect_once(
    tmp_path: Path,
) -> None:
    outcome = await run_demo(tmp_path / "demo", kill_after_s=0.8)
    assert sorted(outcome["results"]) == sorted(city for city, _ in TRIPS)
    for city, result in outcome["results"].items():
        assert result["summary"].startswith(f"{city}: fly SG")
        assert result["total_eur"] > 0
    assert outcome["ran_twice"] == {}
    # act two: an agent instance SIGKILLed mid-step; its task resumed on a fresh instance
    killed = outcome["agent_kill"]
    assert killed["resumed"] and killed["ran_twice"] == {}
    assert killed["completed"] == {"sights": 1, "days": 1, "polish": 1}
    assert killed["result"]["steps_by"] == {
        "sights": "itinerary-1",  # completed before the kill: not run again
        "days": "itinerary-2",  # cut off by the kill: run again on the fresh instance
        "polish": "itinerary-2",
    }
    kinds = killed["kinds"]
    assert kinds.index("attempt.heartbeat_timeout") < kinds.index("operation.succeeded")
    assert kinds.count("step.completed") == 4  # sights, days, polish, and the answer ($result)
