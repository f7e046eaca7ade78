"""Input-required: an agent asks its caller mid-operation and waits, durably (issue 15 item 4).

All state is in the store, in the step journal of the operation:

- the agent asks (``ask``, with the operation's completion token): the question is recorded as
  step ``$ask:<name>`` (``{"prompt", "schema", "askedAt", "attempt"}``, first write wins) with
  the event ``input.requested``, and the attempt is parked: its heartbeat deadline is cleared,
  no work is owed, so nothing times it out or dispatches it again but its schedule-to-close
  deadline (and a cancel). The agent ends its attempt without an answer and holds nothing.
- the operation is *waiting for input* while an ``$ask:<name>`` has no ``$input:<name>``;
- the caller answers (``answer``, its own operations unless admin): the value is checked
  against the asked schema, recorded as step ``$input:<name>`` (``{"value", "by", "at"}``,
  first answer wins) with the event ``input.provided``, and the operation is dispatched again.
  The next attempt carries the journal, so the agent's ``ask`` finds the answer there (and
  its earlier ``step``s are not run again).

An A2A agent that answers ``TASK_STATE_INPUT_REQUIRED`` is parked the same way by the
dispatcher (``park_outbound``); its answer goes back as a follow-up message on the same task.

A caller that started with a callback URL and ``Swarmgate-Callback-Events: input.requested``
is told of each question by a callback (``input_callback``): an outbox row written in the
same transaction as the question, delivered like completion callbacks (signed, screened,
retried until accepted or expired), once per question. It carries no ``Nexus-Operation-*``
header, so no Nexus receiver can take it for a completion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.domain.errors import HandlerError, HandlerErrorType
from gateway.domain.model import INPUT_REQUESTED, CallbackDelivery, Event, Operation, StepRecord
from gateway.engine.core import EngineCore
from gateway.engine.outbox import new_delivery
from gateway.engine.wire import rfc3339_ms
from gateway.security.schemas import schema_problems
from registry.service import schema_errors

ASK_PREFIX = "$ask:"
ANSWER_PREFIX = "$input:"
PROMPT_MAX = 16 * 1024  # characters of a prompt


@dataclass(frozen=True, kw_only=True)
class WaitingForInput:
    """The open question of an operation waiting for its caller."""

    name: str
    prompt: str
    schema: dict[str, Any] | None
    asked_at: str
    attempt: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "schema": self.schema,
            "askedAt": self.asked_at,
            "attempt": self.attempt,
        }


def input_callback(
    core: EngineCore, op: Operation, question: WaitingForInput, now: datetime
) -> CallbackDelivery | None:
    """The ``input.requested`` callback ``op``'s caller asked for, if it did (else None).

    A Standard Webhooks message (``{"type", "timestamp", "data"}``, signed when it is sent)
    with ``Swarmgate-Event: input.requested``, the caller's ``Nexus-Callback-*`` headers, and
    no ``Nexus-Operation-*`` header: it is not a completion. ``data`` names the operation, the
    question and where to answer it."""
    if INPUT_REQUESTED not in op.callback_events or not op.callback_url:
        return None
    answer_url = f"{core.config.public_url.rstrip('/')}/api/operations/{op.id}/input"
    body = {
        "type": INPUT_REQUESTED,
        "timestamp": rfc3339_ms(now),
        "data": {
            "operationId": op.id,
            "operationToken": op.token,
            "service": op.service,
            "operation": op.operation,
            "question": question.to_json(),
            "answer": {"method": "POST", "url": answer_url, "contentType": "application/json"},
        },
    }
    headers = op.sent_callback_headers()
    headers.update(
        {
            "Content-Type": "application/json",
            "Swarmgate-Event": INPUT_REQUESTED,
            "Swarmgate-Operation-Id": op.id,
        }
    )
    if op.traceparent:
        headers["traceparent"] = op.traceparent
    return new_delivery(core, op, op.callback_url, headers, json.dumps(body).encode(), now)


async def record_question(
    core: EngineCore, op: Operation, step: StepRecord, event: Event
) -> tuple[StepRecord, bool] | None:
    """Record the question ``step`` with its event and, if the caller asked for it, its
    ``input.requested`` callback, in one transaction (see ``Store.record_question``)."""
    question = open_question([step])
    delivery = None if question is None else input_callback(core, op, question, step.at)
    recorded = await core.store.record_question(step, event, delivery)
    if delivery is not None and recorded is not None and recorded[1]:
        core.wake_callbacks.set()
    return recorded


async def retry_attempts(core: EngineCore, op: Operation) -> int:
    """The attempts of ``op`` that count against its retry policy's ``max_attempts``.

    The dispatch after each answer is a new attempt but not a retry (an answer is no
    failure), so the answers in the journal are not counted. One journal read: callers ask
    only once ``op.attempts`` reaches the budget.
    """
    answers = sum(1 for s in await core.store.list_steps(op.id) if s.name.startswith(ANSWER_PREFIX))
    return max(1, op.attempts - answers)


def open_question(steps: list[StepRecord]) -> WaitingForInput | None:
    """The first question in the journal that has no answer yet (None: not waiting)."""
    names = {s.name for s in steps}
    for s in steps:
        if not s.name.startswith(ASK_PREFIX):
            continue
        name = s.name[len(ASK_PREFIX) :]
        if ANSWER_PREFIX + name in names or not isinstance(s.result, dict):
            continue
        schema = s.result.get("schema")
        return WaitingForInput(
            name=name,
            prompt=str(s.result.get("prompt") or ""),
            schema=schema if isinstance(schema, dict) else None,
            asked_at=str(s.result.get("askedAt") or rfc3339_ms(s.at)),
            attempt=int(s.result.get("attempt") or s.attempt),
        )
    return None


async def park_outbound(
    core: EngineCore,
    op: Operation,
    prompt: str,
    *,
    owner: str | None,
    agent_token: str | None,
    event: Event | None = None,
) -> None:
    """An agent (A2A ``TASK_STATE_INPUT_REQUIRED``) asks: record the question, stop polling."""
    steps = await core.store.list_steps(op.id)
    if open_question(steps) is None:
        name = str(1 + sum(1 for s in steps if s.name.startswith(ASK_PREFIX)))
        now = core.now()
        question: dict[str, Any] = {
            "prompt": prompt,
            "schema": None,
            "askedAt": rfc3339_ms(now),
            "attempt": op.attempts,
        }
        step = StepRecord(
            operation_id=op.id, name=ASK_PREFIX + name, result=question, at=now, attempt=op.attempts
        )
        asked = core.event(
            op.id, "input.requested", name=name, prompt=prompt, schema=None, attempt=op.attempts
        )
        await record_question(core, op, step, asked)
    await core.store.update_running(
        op.id,
        owner,
        work=None,
        next_attempt_at=None,
        agent_token=agent_token,
        event=event,
        now=core.now(),
    )


class Inputs:
    def __init__(self, core: EngineCore, check_token: Any) -> None:
        self._core = core
        self._check_token = check_token  # (op_id, token) -> bool: the completion token

    async def waiting(self, op: Operation) -> WaitingForInput | None:
        """The operation's open question, if it waits for input (one journal read)."""
        if op.state.terminal or op.work is not None:
            return None
        return open_question(await self._core.store.list_steps(op.id))

    async def question(self, op_id: str) -> WaitingForInput | None:
        op = await self._core.store.get_operation(op_id)
        return None if op is None else await self.waiting(op)

    # -- the agent asks -------------------------------------------------------------------------

    async def ask(
        self,
        op_id: str,
        token: str,
        *,
        name: str,
        prompt: str,
        schema: dict[str, Any] | None,
        attempt: int | None,
    ) -> tuple[WaitingForInput | None, Any]:
        """Record the question and park the attempt. Returns (the open question, None), or
        (None, the answer) when this question was answered already (a re-run asking again)."""
        if not token or not self._check_token(op_id, token):
            raise HandlerError(HandlerErrorType.UNAUTHENTICATED, "invalid operation token")
        if not name or len(name) > 100:
            raise HandlerError(HandlerErrorType.BAD_REQUEST, "a question name has 1 to 100 chars")
        if len(prompt) > PROMPT_MAX:
            raise HandlerError(
                HandlerErrorType.BAD_REQUEST, f"a prompt has at most {PROMPT_MAX} characters"
            )
        if schema is not None:
            problems = schema_problems(schema)
            if problems:
                raise HandlerError(
                    HandlerErrorType.BAD_REQUEST, f"the schema is invalid: {problems[0]}"
                )
        core = self._core
        op = await core.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state.terminal:
            raise HandlerError(HandlerErrorType.CONFLICT, f"operation is closed ({op.state.value})")
        attempt = op.attempts if attempt is None else attempt
        if attempt != op.attempts:
            raise HandlerError(
                HandlerErrorType.CONFLICT,
                f"attempt {attempt} is stale (the operation is on attempt {op.attempts}): stop",
            )
        steps = {s.name: s for s in await core.store.list_steps(op_id)}
        answered = steps.get(ANSWER_PREFIX + name)
        if answered is not None:
            value = answered.result.get("value") if isinstance(answered.result, dict) else None
            return None, value
        now = core.now()
        question = {
            "prompt": prompt,
            "schema": schema,
            "askedAt": rfc3339_ms(now),
            "attempt": attempt,
        }
        event = core.event(
            op_id, "input.requested", name=name, prompt=prompt, schema=schema, attempt=attempt
        )
        step = StepRecord(
            operation_id=op_id, name=ASK_PREFIX + name, result=question, at=now, attempt=attempt
        )
        recorded = await record_question(core, op, step, event)
        if recorded is None:
            raise HandlerError(HandlerErrorType.CONFLICT, "operation changed: stop")
        await core.store.park_for_input(op_id, attempt)
        return open_question([recorded[0]]), None

    # -- the caller answers ---------------------------------------------------------------------

    async def answer(self, op: Operation, value: Any, *, by: str, via: str = "api") -> StepRecord:
        """Record the caller's answer to the open question and dispatch the operation again.

        409 when the operation is not waiting for input; 400 when the value does not match the
        asked schema.
        """
        core = self._core
        question = await self.waiting(op)
        if question is None:
            raise HandlerError(HandlerErrorType.CONFLICT, "the operation is not waiting for input")
        if question.schema is not None:
            errors = schema_errors(question.schema, value)
            if errors:
                first = errors[0]
                raise HandlerError(
                    HandlerErrorType.BAD_REQUEST,
                    f"the answer does not match the asked schema at {first['path']}: "
                    f"{first['message']}",
                )
        now = core.now()
        step = StepRecord(
            operation_id=op.id,
            name=ANSWER_PREFIX + question.name,
            result={"value": value, "by": by, "at": rfc3339_ms(now)},
            at=now,
            attempt=op.attempts,
        )
        event = core.event(
            op.id, "input.provided", name=question.name, by=by, via=via, attempt=op.attempts
        )
        recorded = await core.store.record_step(step, event)
        if recorded is None or not recorded[1]:
            raise HandlerError(HandlerErrorType.CONFLICT, "the operation is not waiting for input")
        resumed: Event = core.event(op.id, "operation.resumed", reason="input provided")
        if await core.store.resume_with_input(op.id, now, resumed):
            core.wake_work.set()
        return recorded[0]
