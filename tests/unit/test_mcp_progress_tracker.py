"""The rules that turn an operation's heartbeats into MCP progress notifications."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.mcp_progress import ProgressTracker, progress_token
from gateway.domain.model import Operation, OperationState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OP = Operation(
    id="op", service="a", operation="b", state=OperationState.RUNNING, caller="c", created_at=T0
)


def sent(note: dict[str, Any] | None) -> Any:
    return (
        None if note is None else {k: v for k, v in note["params"].items() if k != "progressToken"}
    )


def test_only_a_string_or_integer_progress_token_asks_for_progress() -> None:
    assert progress_token({"_meta": {"progressToken": "t"}}) == "t"
    assert progress_token({"_meta": {"progressToken": 7}}) == 7
    assert progress_token({"_meta": {"progressToken": True}}) is None
    assert progress_token({"_meta": {"progressToken": 1.5}}) is None
    assert progress_token({"_meta": "x"}) is None
    assert progress_token({}) is None


def test_reported_numbers_are_sent_only_when_they_increase() -> None:
    tracker = ProgressTracker("t")
    assert tracker.update(OP) is None
    one = replace(OP, heartbeat_details={"progress": 1, "total": 4, "message": "m"})
    note = tracker.update(one)
    assert note is not None and note["method"] == "notifications/progress"
    assert note["params"]["progressToken"] == "t"
    assert sent(note) == {"progress": 1, "total": 4, "message": "m"}
    assert tracker.update(one) is None  # nothing new
    assert tracker.update(replace(OP, heartbeat_details={"progress": 1, "x": 2})) is None
    assert tracker.update(replace(OP, heartbeat_details={"progress": 0.5})) is None
    assert sent(tracker.update(replace(OP, heartbeat_details={"progress": 2.5}))) == {
        "progress": 2.5
    }
    # once the agent reports numbers, a plain heartbeat (the deadline moved) sends nothing
    beat = replace(OP, heartbeat_details={"progress": 2.5}, heartbeat_until=T0)
    assert tracker.update(beat) is None
    assert tracker.update(replace(beat, heartbeat_until=T0 + timedelta(seconds=1))) is None


def test_heartbeats_without_numbers_count_up_from_the_first_one_after_the_accept() -> None:
    tracker = ProgressTracker(1)
    accepted = replace(OP, heartbeat_until=T0)
    assert tracker.update(accepted) is None  # the first deadline is the accept, not a beat
    later = replace(accepted, heartbeat_until=T0 + timedelta(seconds=5))
    assert sent(tracker.update(later)) == {"progress": 1}
    assert tracker.update(later) is None
    checkpoint = replace(later, heartbeat_details={"fetched": 3, "message": "page 3"})
    assert sent(tracker.update(checkpoint)) == {"progress": 2, "message": "page 3"}
    bad = replace(checkpoint, heartbeat_details={"progress": True, "total": float("nan")})
    assert sent(tracker.update(bad)) == {"progress": 3}  # not numbers: counted as a beat
