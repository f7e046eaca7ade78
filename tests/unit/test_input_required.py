"""Input-required's pure parts: which question is open, and how a waiting task is shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from adapters.a2a import outcome_from_task
from adapters.a2a_facade import answer_value, task_json
from adapters.mcp_facade import task_json as mcp_task_json
from gateway.domain.dispatch import OutcomeKind
from gateway.domain.model import Operation, OperationState, StepRecord
from gateway.engine.inputs import open_question

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def step(name: str, result: Any) -> StepRecord:
    return StepRecord(operation_id="op", name=name, result=result, at=T0, attempt=1)


def running() -> Operation:
    return Operation(
        id="op", service="a", operation="b", state=OperationState.RUNNING, caller="c", created_at=T0
    )


def test_the_open_question_is_the_first_ask_without_an_answer() -> None:
    ask1 = step("$ask:1", {"prompt": "one?", "schema": None, "askedAt": "t1", "attempt": 1})
    ask2 = step("$ask:2", {"prompt": "two?", "schema": {"type": "string"}, "askedAt": "t2"})
    assert open_question([step("plan", 1)]) is None
    first = open_question([step("plan", 1), ask1])
    assert first is not None and (first.name, first.prompt) == ("1", "one?")
    answered = [ask1, step("$input:1", {"value": True, "by": "x"}), ask2]
    second = open_question(answered)
    assert second is not None and (second.name, second.schema) == ("2", {"type": "string"})
    assert open_question([*answered, step("$input:2", {"value": "y"})]) is None


def test_a_waiting_task_is_input_required_with_the_prompt_in_a2a_and_mcp() -> None:
    waiting = {"name": "1", "prompt": "deploy?", "schema": {"type": "boolean"}}
    task = task_json(running(), waiting=waiting)
    assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    assert task["status"]["message"]["parts"][0] == {"text": "deploy?"}
    assert task_json(running())["status"]["state"] == "TASK_STATE_WORKING"
    mcp = mcp_task_json(running(), 500, waiting)
    assert (mcp["status"], mcp["statusMessage"]) == ("input_required", "deploy?")


def test_an_a2a_agents_input_required_is_accepted_with_its_prompt_and_answers_parse() -> None:
    task = {
        "id": "t1",
        "status": {"state": "TASK_STATE_INPUT_REQUIRED", "message": {"parts": [{"text": "ok?"}]}},
    }
    outcome = outcome_from_task(task)
    assert (outcome.kind, outcome.agent_token, outcome.input_prompt) == (
        OutcomeKind.ACCEPTED,
        "t1",
        "ok?",
    )
    working = outcome_from_task({"id": "t1", "status": {"state": "TASK_STATE_WORKING"}})
    assert working.input_prompt is None
    assert answer_value({"parts": [{"data": {"a": 1}}]}) == {"a": 1}
    assert answer_value({"parts": [{"text": "yes"}]}) == "yes"
    assert answer_value({"parts": [{"text": "true"}]}) is True
