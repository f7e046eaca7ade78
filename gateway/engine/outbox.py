"""Callback outbox: building, claiming, signing, sending and recording completion callbacks.

This room owns the callback rows an operation's close writes (their Nexus headers and
body), the claim round of due deliveries, one delivery attempt (sign, POST, classify the
answer, reschedule with backoff or disable/expire), the group-committed acks of delivered
callbacks, the recheck after a commit whose reply was lost, and the operator's redrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from adapters.http import nexus_refusal, parse_retry_after
from gateway.domain.dispatch import TransportError
from gateway.domain.errors import StoreError
from gateway.domain.ids import message_id
from gateway.domain.model import CallbackDelivery, DeliveryState, Event, Operation, OperationState
from gateway.domain.tracing import Span
from gateway.engine import backoff
from gateway.engine.batching import GroupCommit
from gateway.engine.core import EngineCore, claim_round, spawn
from gateway.engine.wire import http_date, rfc3339_ms

log = logging.getLogger("swarmgate.engine")


def new_delivery(
    core: EngineCore,
    op: Operation,
    url: str,
    headers: dict[str, str],
    body: bytes,
    now: datetime,
    *,
    lease_s: float | None = None,
) -> CallbackDelivery:
    """A new outbox row: this message for the operation's callback ``url``, due now, kept until
    the callback TTL runs out (completions and input requests alike). With ``lease_s`` it is
    leased to this replica for its first attempt (delivered from memory right after commit)."""
    return CallbackDelivery(
        id=message_id(),  # time-ordered (gateway/domain/ids.py)
        operation_id=op.id,
        caller=op.caller,
        url=url,
        headers=headers,
        body=body,
        created_at=now,
        expires_at=now + timedelta(seconds=core.config.callback_ttl_s),
        next_attempt_at=now,
        attempts=0 if lease_s is None else 1,
        lease_owner=None if lease_s is None else core.config.owner,
        lease_until=None if lease_s is None else now + timedelta(seconds=lease_s),
    )


class Outbox:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        # Delivered callbacks are recorded in shared transactions. An ack may be late or lost
        # (a crash before it commits means the callback is sent again with the same
        # webhook-id: at least once); a failure is logged by the delivery task.
        # Nobody waits on an ack to answer a request, so its batch lingers to fill (its
        # commit does not wait for the flush, so without it the batches stay small).
        self._acks: GroupCommit[Event, None] = GroupCommit(
            self._record_delivered,
            self._record_one_delivered,
            max_batch=500,
            linger_s=core.config.callback_ack_linger_s,
        )

    def lease_s(self) -> float:
        # The work lease, extended with the work's by the lease loop while the delivery is in
        # flight: a dead replica's callbacks are taken over after lease_s, like its work (was
        # callback_timeout_s + lease_s: 20 s with the defaults, the 22 s p99 of issue 13).
        return self._core.config.lease_s

    def busy(self) -> int:
        """Places of ``max_inflight`` the deliveries take: not those only waiting for their
        ack (they keep their task and their lease)."""
        return len(self._core.cb_inflight) - self._core.cb_acking

    def has_room(self) -> bool:
        return self.busy() < self._core.config.max_inflight

    def row_for(
        self,
        op: Operation,
        state: OperationState,
        now: datetime,
        result: bytes | None,
        content_type: str | None,
        fail: dict[str, Any] | None,
        links: Sequence[str] = (),
        *,
        leased: bool = False,
    ) -> CallbackDelivery | None:
        """The callback an operation closing as ``state`` owes its caller, if it asked.

        It carries the links the agent returned (never the caller's own); a null result
        is an empty body without ``Content-Type``. ``leased``: leased to this replica for its
        first attempt, in the same transaction as the close."""
        if not op.callback_url:
            return None
        headers = op.sent_callback_headers()
        headers.update(
            {
                "Nexus-Operation-Token": op.id,
                "Nexus-Operation-Id": op.id,
                "Nexus-Operation-State": state.value,
                "Nexus-Operation-Start-Time": http_date(op.created_at),
                "Nexus-Operation-Close-Time": rfc3339_ms(now),
            }
        )
        if links:
            headers["Nexus-Link"] = ", ".join(links)
        if op.traceparent:
            headers["traceparent"] = op.traceparent
        if state is OperationState.SUCCEEDED:
            body = result or b""
            if body:
                headers["Content-Type"] = content_type or "application/json"
        else:
            body = json.dumps(fail or {}).encode()
            headers["Content-Type"] = "application/json"
        lease_s = self.lease_s() if leased else None
        return new_delivery(self._core, op, op.callback_url, headers, body, now, lease_s=lease_s)

    async def claim_and_deliver(self) -> int:
        core = self._core
        return await claim_round(
            core,
            self.busy(),
            core.wake_callbacks,
            self.lease_s(),
            core.store.claim_callbacks,
            self.start_delivery,
        )

    async def redrive(self, delivery_id: str, op_id: str, by: str) -> bool:
        core = self._core
        now = core.now()
        ok = await core.store.redrive_callback(
            delivery_id,
            now,
            now + timedelta(seconds=core.config.callback_ttl_s),
            core.event(op_id, "callback.redriven", delivery_id=delivery_id, by=by),
        )
        if ok:
            core.wake_callbacks.set()
        return ok

    def spawn_recheck(self, op_id: str) -> None:
        key = f"recheck-{op_id}"
        spawn(self._core.cb_inflight, key, self._recheck(op_id), f"cb-recheck-{op_id}")

    async def _recheck(self, op_id: str) -> None:
        """After a commit whose reply was lost: deliver callbacks it leased to us, if any."""
        core = self._core
        for _ in range(20):
            await asyncio.sleep(core.config.poll_interval_s)
            try:
                deliveries = await core.store.list_callbacks(op_id)
            except StoreError:
                continue
            for d in deliveries:
                mine = d.lease_owner == core.config.owner
                if d.state is DeliveryState.PENDING and mine and d.id not in core.cb_inflight:
                    self.start_delivery(d)
            return

    async def _record_delivered(self, events: Sequence[Event]) -> list[None]:
        await self._core.store.callbacks_delivered(self._core.config.owner, events)
        return [None] * len(events)

    async def _record_one_delivered(self, event: Event) -> None:
        await self._core.store.callbacks_delivered(self._core.config.owner, [event])

    def start_delivery(self, d: CallbackDelivery) -> None:
        spawn(self._core.cb_inflight, d.id, self._deliver(d), f"cb-{d.id}")

    async def _deliver(self, d: CallbackDelivery) -> None:
        try:
            await self._deliver_once(d)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.warning(
                "store error, lease left to expire: %s",
                exc,
                extra={"operation_id": d.operation_id, "delivery_id": d.id},
            )
        except Exception:
            log.exception(
                "unexpected error delivering a callback",
                extra={"operation_id": d.operation_id, "delivery_id": d.id},
            )

    async def _deliver_once(self, d: CallbackDelivery) -> None:
        with self._core.tracer.span(
            "callback",
            d.headers.get("traceparent"),
            operation_id=d.operation_id,
            delivery_id=d.id,
            attempt=d.attempts,
        ) as span:
            await self._deliver_traced(d, span)

    async def _deliver_traced(self, d: CallbackDelivery, span: Span) -> None:
        core = self._core
        config, metrics = core.config, core.metrics
        now = core.now()
        headers = dict(d.headers)
        if span.traceparent:  # the receiver joins the trace as a child of this delivery
            headers["traceparent"] = span.traceparent
        if core.signer is not None:
            headers.update(await core.signer.headers(d.caller, d.id, d.body, int(now.timestamp())))
        else:
            headers["webhook-id"] = d.id
            headers["webhook-timestamp"] = str(int(now.timestamp()))
        status: int | None = None
        retry_after: float | None = None
        sent_at = core.now()
        try:
            resp = await core.transport.request(
                "POST",
                d.url,
                headers=headers,
                body=d.body,
                timeout_s=config.callback_timeout_s,
            )
            status = resp.status
            error = None if 200 <= status < 300 else f"receiver answered HTTP {status}"
            if status in (429, 502, 503, 504):
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            permanent = False
            if error is not None:
                refused = nexus_refusal(resp)
                if refused is not None:  # a Nexus receiver said: do not retry
                    error, permanent = f"{error}: {refused}", True
        except TransportError as exc:
            error = str(exc)
            permanent = not exc.retryable
        now = core.now()
        span.set(outcome="delivered" if error is None else "failed", http_status=status)
        if error is not None:
            span.fail(error)
        metrics.callback_seconds.observe(max(0.0, (now - sent_at).total_seconds()))
        if error is None:
            metrics.child(metrics.callbacks, "delivered").inc()
            core.cb_acking += 1  # its place among max_inflight is free for the next delivery
            try:
                await self._acks.submit(
                    Event(
                        operation_id=d.operation_id,
                        kind="callback.delivered",
                        at=now,
                        data={"delivery_id": d.id, "attempt": d.attempts, "status": status},
                    )
                )
            finally:
                core.cb_acking -= 1
            return
        metrics.child(metrics.callbacks, "failed").inc()
        nxt = backoff.next_attempt_at(config.callback_retry, d.attempts, now, retry_after)
        if status == 410 or permanent:
            state, kind = DeliveryState.DISABLED, "callback.disabled"
            if status is not None and status != 410:
                kind = "callback.rejected"
        elif nxt >= d.expires_at:
            state, kind = DeliveryState.EXPIRED, "callback.expired"
        else:
            state, kind = DeliveryState.PENDING, "callback.failed"
        await core.store.finish_callback(
            d.id,
            config.owner,
            state=state,
            next_attempt_at=nxt,
            last_error=error,
            event=Event(
                operation_id=d.operation_id,
                kind=kind,
                at=now,
                data={
                    "delivery_id": d.id,
                    "attempt": d.attempts,
                    "status": status,
                    "error": error,
                    "next_attempt_at": nxt.isoformat() if state is DeliveryState.PENDING else None,
                },
            ),
        )
