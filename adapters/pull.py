"""The adapter of pull agents (``"adapter": "pull"``): agents the gateway never calls.

Their workers lease tasks from the gateway (``POST /api/agents/{name}/tasks:poll``), so a
dispatch never reaches this adapter (the engine parks the attempt in the agent's queue), and
a cancel cannot be sent: the worker learns of it from its next heartbeat's answer
(``cancelRequested``, or 409 once the operation closed).
"""

from __future__ import annotations

from gateway.domain.dispatch import CancelRequest, DispatchRequest, Outcome, OutcomeKind

NOT_CALLED = "a pull agent is not called: its workers lease tasks from the gateway"
CANCEL_BY_HEARTBEAT = "a pull worker learns of the cancel from its heartbeat's answer"


class PullAgentAdapter:
    async def start(self, req: DispatchRequest) -> Outcome:
        return Outcome(kind=OutcomeKind.PERMANENT, error=NOT_CALLED)

    async def cancel(self, req: CancelRequest) -> Outcome:
        return Outcome(kind=OutcomeKind.PERMANENT, error=CANCEL_BY_HEARTBEAT)
