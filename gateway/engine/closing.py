"""Terminal transitions: the one path by which an operation closes.

This room owns ``finish`` (one group-committed transaction with the state, the result or
failure, the closing event and the callback outbox row; then metrics, waking long-polls and
starting the callback), the failure shorthands, and completions reported by an agent
(``complete_from_agent``, checked against the output schema).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from gateway.domain import jsonio
from gateway.domain.errors import DataRejected, HandlerError, HandlerErrorType, StoreError
from gateway.domain.model import (
    Completion,
    Event,
    Operation,
    OperationState,
    failure,
    operation_error,
)
from gateway.engine.batching import LINGER_FROM, GroupCommit
from gateway.engine.core import EngineCore
from gateway.engine.outbox import Outbox
from gateway.engine.waiters import Waiters
from registry.service import check_payload_off_loop

log = logging.getLogger("swarmgate.engine")

MAX_CONTENT_TYPE = 200  # the columns' width (result_content_type, input_content_type)
_CONTROL = dict.fromkeys(range(32)) | {127: None}


def bound_content_type(value: str | None) -> str | None:
    """A content type as stored: control characters dropped, at most MAX_CONTENT_TYPE long."""
    if value is None:
        return None
    return value.translate(_CONTROL).strip()[:MAX_CONTENT_TYPE] or None


def storable(value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """``value`` if it can be stored as JSON, else a small stand-in saying why not."""
    if value is None:
        return None
    try:
        jsonio.check_storable(value)
    except jsonio.JsonRejected as exc:
        return {"message": f"the {what} could not be stored: {exc}"}
    return value


UNSTORABLE = "the operation's outcome could not be stored"


class Closer:
    def __init__(self, core: EngineCore, outbox: Outbox, waiters: Waiters) -> None:
        self._core = core
        self._outbox = outbox
        self._waiters = waiters
        # Through core.store at call time, so a wrapped store (fault injection) sees the calls.
        self._completions: GroupCommit[Completion, bool] = GroupCommit(
            lambda batch: core.store.complete_many(batch),
            lambda one: core.store.complete(one),
            linger_s=core.config.write_linger_s,
            linger_from=LINGER_FROM,
        )

    async def finish(
        self,
        op: Operation,
        state: OperationState,
        *,
        kind: str,
        result: bytes | None = None,
        content_type: str | None = None,
        failure: dict[str, Any] | None = None,
        owner: str | None = None,
        then_cancel_agent: bool = False,
        links: Sequence[str] = (),
        last_resort: bool = False,
        **data: Any,
    ) -> bool:
        """Close ``op`` in ``state`` (compare-and-set: False if something else closed it).

        Values are bounded before they are written (content type cut to the column, a failure
        or event data that is not storable JSON replaced by a note); if the database still
        refuses a value (a data error), the operation is closed as failed with a clear error
        instead: a refused write would be refused at every retry.
        """
        core, outbox = self._core, self._outbox
        now = core.now()
        content_type = bound_content_type(content_type)
        failure = storable(failure, "failure")
        sync = op.id in core.sync_waiting and asyncio.current_task() is core.inflight.get(op.id)
        if sync:  # the start still waiting inline answers with this outcome: no callback
            core.sync_claimed[op.id] = list(links)
            callback = None
            data["answered"] = "sync"  # why this close wrote no callback
        else:
            room = outbox.has_room()  # then it is leased to us in the same transaction
            callback = outbox.row_for(
                op, state, now, result, content_type, failure, links, leased=room
            )
        direct = callback is not None and callback.lease_owner is not None
        data = {k: v for k, v in data.items() if v is not None}
        if failure is not None:
            data.setdefault("message", failure.get("message"))
        data = storable(data, "event data") or {}
        completion = Completion(
            operation_id=op.id,
            state=state,
            at=now,
            result=result,
            result_content_type=content_type,
            failure=failure,
            event=Event(operation_id=op.id, kind=kind, at=now, data=data),
            callback=callback,
            only_if_owner=owner,
            then_cancel_agent=then_cancel_agent,
        )
        try:
            if core.config.group_commit:
                applied = await self._completions.submit(completion)
            else:
                applied = await core.store.complete(completion)
        except DataRejected as exc:
            if last_resort:
                raise
            log.error(
                "operation outcome refused by the database (%s); closing it as failed",
                exc,
                extra={"operation_id": op.id},
            )
            return await self.finish(
                op,
                OperationState.FAILED,
                failure=operation_error(
                    OperationState.FAILED,
                    f"{UNSTORABLE} ({state.value}: the database refused a value)",
                ),
                kind="operation.failed",
                owner=owner,
                then_cancel_agent=then_cancel_agent,
                last_resort=True,
                unstorable=True,
            )
        except StoreError:
            if callback is not None and direct:
                # The commit may have happened with the callback leased to us: look again
                # soon rather than leave it until that lease runs out.
                outbox.spawn_recheck(op.id)
            raise
        if applied:
            log.debug(
                "operation closed",
                extra={"operation_id": op.id, "state": state.value, "event": kind},
            )
            metrics = core.metrics
            metrics.child(metrics.closed, op.service, state.value).inc()
            metrics.child(metrics.operation_seconds, op.service, state.value).observe(
                max(0.0, (now - op.created_at).total_seconds())
            )
            self._waiters.notify(op.id)
            for forget in core.on_closed:  # per-operation state of this replica ends here
                forget(op.id)
            if callback is not None and direct:
                outbox.start_delivery(callback)  # no claim round trip
            elif callback is not None:
                core.wake_callbacks.set()
        return applied

    async def fail(
        self,
        op: Operation,
        message: str,
        *,
        cause: dict[str, Any] | None = None,
        kind: str = "operation.failed",
        **data: Any,
    ) -> bool:
        """Close the operation as failed, with an OperationError Failure."""
        return await self.finish(
            op,
            OperationState.FAILED,
            failure=operation_error(OperationState.FAILED, message, cause=cause),
            kind=kind,
            **data,
        )

    async def fail_output_schema(
        self, op: Operation, errors: list[dict[str, str]], **data: Any
    ) -> bool:
        return await self.fail(
            op,
            "agent result does not match the output schema",
            cause=failure("output schema violation", details={"errors": errors}),
            **data,
        )

    async def complete_from_agent(
        self,
        op_id: str,
        state: OperationState,
        *,
        result: bytes | None = None,
        content_type: str | None = None,
        fail: dict[str, Any] | None = None,
        links: Sequence[str] = (),
    ) -> tuple[Operation, bool]:
        core = self._core
        op = await core.store.get_operation(op_id)
        if op is None:
            raise HandlerError(HandlerErrorType.NOT_FOUND, "no such operation")
        if op.state.terminal:
            return op, False
        if state is OperationState.SUCCEEDED:
            found = await core.registry.get(op.service)
            spec = found.operations.get(op.operation) if found else None
            errors = await check_payload_off_loop(
                spec.output_schema if spec else None, result or b"", content_type, "result"
            )
            if errors:
                applied = await self.fail_output_schema(op, errors, via="completion")
                return op, applied
            applied = await self.finish(
                op,
                state,
                result=result or b"",
                content_type=content_type,
                kind="operation.succeeded",
                via="completion",
                links=links,
            )
        else:
            body = fail or {"message": f"operation {state.value}"}
            if (body.get("metadata") or {}).get("type") != "nexus.OperationError":
                body = operation_error(state, str(body.get("message") or state.value), cause=body)
            applied = await self.finish(
                op,
                state,
                failure=body,
                kind=f"operation.{state.value}",
                via="completion",
                links=links,
            )
        return op, applied
