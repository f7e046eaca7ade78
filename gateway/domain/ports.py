"""The storage port: what the engine needs from a database, nothing more.

Every method is one transaction. Implementations translate driver errors into
``gateway.domain.errors.StoreError`` subclasses at this boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    Heartbeat,
    HeartbeatAck,
    IdempotencyRecord,
    Operation,
    OperationState,
    RunningUpdate,
    StepRecord,
    Work,
)
from gateway.domain.specs import AgentSpec

# A start to persist (operation, its first events, its idempotency records), and what
# persisting it gave: the operation, or the existing one and its record when a key was taken.
NewOperation = tuple[Operation, Sequence[Event], Sequence[IdempotencyRecord]]
Created = tuple[Operation, IdempotencyRecord | None]


class Store(Protocol):
    """The storage port (``gateway/store`` implements it for PostgreSQL and SQLite)."""

    # lifecycle ---------------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Bring the schema up to the newest migration."""
        ...

    async def migrations_current(self) -> bool:
        """Whether the schema is at the newest migration."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` if the database does not answer."""
        ...

    async def maintenance_warnings(self) -> list[str]:
        """Things an operator should fix (shown by the readiness check)."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...

    async def get_or_create_setting(self, name: str, value: str) -> str:
        """The stored value of setting ``name``, stored as ``value`` if unset."""
        ...

    # registry ----------------------------------------------------------------------------------
    async def upsert_agent(self, agent: AgentSpec, at: datetime) -> int:
        """Store the agent (insert or replace); returns its new version."""
        ...

    async def get_agent(self, name: str) -> tuple[AgentSpec, int] | None:
        """The agent named ``name`` and its version, or None."""
        ...

    async def list_agents(self) -> list[tuple[AgentSpec, int]]:
        """Every registered agent with its version."""
        ...

    async def delete_agent(self, name: str) -> bool:
        """Remove the agent; False if there was none."""
        ...

    async def write_agent_if_owner(
        self, name: str, agent: AgentSpec | None, at: datetime, *, owner: str | None
    ) -> tuple[str, int]:
        """Replace or delete agent ``name`` only if it is new or owned by ``owner``.

        One transaction: replace (``agent``) or delete (``None``) it if it is new or its
        stored owner is ``owner`` (``None``: any owner, for ``admin``). Returns
        ``(outcome, version)``, outcome one of ``created``, ``updated``, ``unchanged``,
        ``deleted``, ``absent`` (nothing to delete) and ``forbidden`` (someone else's agent,
        or one without an owner; nothing was written).
        """
        ...

    # operations --------------------------------------------------------------------------------
    async def create_operation(
        self, op: Operation, events: Sequence[Event], idempotency: Sequence[IdempotencyRecord]
    ) -> tuple[Operation, IdempotencyRecord | None]:
        """Insert op + events + idempotency records in one transaction.

        When one of the idempotency keys is already taken, nothing is written and the existing
        operation (and its record) comes back instead.
        """
        ...

    async def create_operations(self, items: Sequence[NewOperation]) -> list[Created]:
        """``create_operation`` for several starts, committed together (group commit).

        One result each, in order.
        """
        ...

    async def get_operation(self, op_id: str) -> Operation | None:
        """The operation with this id, or None."""
        ...

    async def list_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        limit: int = 100,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> list[Operation]:
        """Operations matching the filters, newest first.

        ``created_after`` is inclusive, ``created_before`` exclusive; ``request_id_contains``
        matches part of the request id, ignoring case.
        """
        ...

    async def count_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        request_id_contains: str | None = None,
    ) -> dict[str, int]:
        """The number of operations in each state (with the filters of ``list_operations``)."""
        ...

    async def page_operations(
        self,
        *,
        caller: str | None = None,
        service: str | None = None,
        state: OperationState | None = None,
        with_link: str | None = None,
        or_id: str | None = None,
        changed_after: datetime | None = None,
        waiting: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Operation], int]:
        """One page of the matching operations (newest first) and how many match in all.

        ``with_link``: operations whose links include this exact link, or (``or_id``) the
        operation of that id; ``changed_after``: closed, or else created, after that time;
        ``waiting``: only (True) or no (False) operations waiting for input (running, owing no
        work, with a ``$ask:<name>`` step that has no ``$input:<name>``). The count is exact
        (one count query; no scan bound).
        """
        ...

    async def claim_work(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Operation]:
        """Lease due operations (work set, next_attempt_at <= now, lease free or expired).

        Dispatch claims count an attempt and write an ``attempt.started`` event.
        """
        ...

    async def extend_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        """Push the leases ``owner`` holds on ``ids`` out to ``until``."""
        ...

    async def extend_callback_leases(self, owner: str, ids: Sequence[str], until: datetime) -> None:
        """Push the leases ``owner`` holds on the callback deliveries ``ids`` out to ``until``.

        Deliveries in flight are leased for the work lease, not the request timeout, so a dead
        replica's are taken over as soon as its work.
        """
        ...

    async def update_running(
        self,
        op_id: str,
        owner: str | None,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event | None,
        agent_token: str | None = None,
        last_error: str | None = None,
        refund_attempt: bool = False,
        now: datetime | None = None,
        heartbeat_until: datetime | None = None,
    ) -> bool:
        """Non-terminal change of a running operation; releases the lease.

        Fenced by the lease owner (if given). ``heartbeat_until`` is the accepted attempt's
        first heartbeat deadline (None: no heartbeat owed; clears an earlier one).
        """
        ...

    async def update_running_many(self, updates: Sequence[RunningUpdate]) -> list[bool]:
        """Several :meth:`update_running` in one transaction (one commit).

        Each one's result, in order. If the transaction fails, none is applied.
        """
        ...

    async def release_leases(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (shutdown); returns how many."""
        ...

    async def update_closed(
        self,
        op_id: str,
        owner: str,
        *,
        work: Work | None,
        next_attempt_at: datetime | None,
        event: Event,
    ) -> bool:
        """Work left on a closed operation (telling the agent to stop), fenced by the lease."""
        ...

    async def request_cancel(self, op_id: str, now: datetime, event: Event) -> bool:
        """Record a cancel request on a running operation and schedule it."""
        ...

    async def complete(self, completion: Completion) -> bool:
        """Apply a terminal transition iff the operation is still running (compare-and-set)."""
        ...

    async def complete_many(self, completions: Sequence[Completion]) -> list[bool]:
        """Several terminal transitions in one transaction (group commit); one result each."""
        ...

    async def listen_closed(self, on_closed: Callable[[list[str]], None]) -> None:
        """Call ``on_closed`` with the ids of operations any replica closes, as they commit.

        Runs until the subscription drops (returns) or the caller is cancelled. A hint: a
        notification may be lost, so waiters also re-read the store now and then.
        """
        ...

    async def redrive(self, op_id: str, now: datetime, event: Event) -> bool:
        """Run a failed or canceled operation again (admin)."""
        ...

    async def due_timeouts(self, now: datetime, limit: int) -> list[Operation]:
        """Running operations whose schedule-to-close deadline has passed."""
        ...

    # heartbeats and the step journal -----------------------------------------------------------
    async def heartbeat(
        self,
        op_id: str,
        attempt: int | None,
        until: datetime,
        *,
        details: Any = None,
        has_details: bool,
    ) -> HeartbeatAck | None:
        """One heartbeat of attempt ``attempt`` (None: the current one) of a running operation.

        An in-place update: moves ``heartbeat_until`` to ``until`` if the attempt has a
        heartbeat deadline, and stores ``details`` as the checkpoint if ``has_details``; no
        event. None (nothing written) when the operation is unknown, closed, or on another
        attempt.
        """
        ...

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[HeartbeatAck | None]:
        """``heartbeat`` for several, committed together (group commit); one result each."""
        ...

    async def due_heartbeats(self, now: datetime, limit: int) -> list[Operation]:
        """Running operations owing nothing but their agent's heartbeat, past it, oldest first."""
        ...

    async def expire_heartbeat(
        self,
        op_id: str,
        attempt: int,
        now: datetime,
        *,
        next_attempt_at: datetime,
        last_error: str,
        event: Event,
    ) -> bool:
        """Fail a missed-heartbeat attempt retryably: dispatch again at ``next_attempt_at``.

        Compare-and-set: applies only while the operation runs attempt ``attempt``, waits for
        the agent (no work owed) and its heartbeat deadline is at or before ``now``. Clears
        the deadline and the agent's token, keeps the checkpoint; writes ``event``.
        """
        ...

    async def record_step(self, step: StepRecord, event: Event) -> tuple[StepRecord, bool] | None:
        """Record a completed step of a running operation; the first write of a name wins.

        Returns the recorded step and whether this call recorded it (then ``event`` is
        written in the same transaction), or None (nothing written) when the operation is
        unknown or closed.
        """
        ...

    async def record_steps(
        self, items: Sequence[tuple[StepRecord, Event]]
    ) -> list[tuple[StepRecord, bool] | None]:
        """``record_step`` for several, committed together (group commit); one result each."""
        ...

    async def list_steps(self, op_id: str) -> list[StepRecord]:
        """The operation's recorded steps, oldest first."""
        ...

    # input-required (issue 15 item 4) ---------------------------------------------------------
    async def record_question(
        self, step: StepRecord, event: Event, delivery: CallbackDelivery | None
    ) -> tuple[StepRecord, bool] | None:
        """``record_step`` for an agent's question, with its callback.

        ``delivery`` (the caller's ``input.requested`` callback, if it asked for one) is
        queued in the callback outbox in the same transaction as the step and its event;
        nothing is queued when the step existed.
        """
        ...

    async def park_for_input(self, op_id: str, attempt: int) -> bool:
        """Attempt ``attempt`` asked its caller for input: no heartbeat is owed while it waits.

        Clears ``heartbeat_until`` of the running operation if it is still on that attempt.
        """
        ...

    async def resume_with_input(self, op_id: str, now: datetime, event: Event) -> bool:
        """The caller answered: dispatch the operation again at ``now``, with ``event``.

        Applies only to a running operation owing no other work (a cancel owed wins).
        """
        ...

    # pull workers' task queues (issue 12 item 4) -------------------------------------------------
    async def claim_tasks(
        self,
        service: str,
        worker_id: str,
        now: datetime,
        leases: Mapping[str, datetime],
        default_until: datetime,
        limit: int,
    ) -> list[Operation]:
        """Lease up to ``limit`` queued tasks of pull agent ``service`` to ``worker_id``.

        Oldest first, skipping rows another poll holds (``SKIP LOCKED``). A leased task's
        agent token becomes ``PULL_LEASED + worker_id`` and its heartbeat deadline
        ``leases[operation name]`` (``default_until`` for others); each gets an
        ``attempt.leased`` event in the same transaction.
        """
        ...

    async def touch_worker(self, agent: str, worker_id: str, at: datetime) -> None:
        """Record a worker's poll of ``agent``'s queue at ``at``."""
        ...

    async def list_workers(self, agent: str, since: datetime) -> list[tuple[str, datetime]]:
        """The workers of ``agent`` that polled at or after ``since``, with their last poll."""
        ...

    async def forget_workers(self, before: datetime) -> int:
        """Delete the workers whose last poll is older than ``before``; how many."""
        ...

    async def pull_counts(self, service: str) -> dict[str, int]:
        """Running tasks of pull agent ``service`` by agent token (queued, per worker)."""
        ...

    # events ------------------------------------------------------------------------------------
    async def list_events(self, op_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """The operation's events with an id above ``after``, in commit order."""
        ...

    # callbacks ---------------------------------------------------------------------------------
    async def claim_callbacks(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[CallbackDelivery]:
        """Lease due callback deliveries for ``owner``."""
        ...

    async def finish_callback(
        self,
        delivery_id: str,
        owner: str,
        *,
        state: DeliveryState,
        next_attempt_at: datetime,
        last_error: str | None,
        event: Event,
    ) -> bool:
        """Record the end of one delivery attempt, fenced by the lease."""
        ...

    async def callbacks_delivered(self, owner: str, events: Sequence[Event]) -> int:
        """Mark many leased deliveries delivered in one transaction; returns how many applied.

        Each comes with its ``callback.delivered`` event (``data["delivery_id"]``).
        """
        ...

    async def list_callbacks(self, op_id: str) -> list[CallbackDelivery]:
        """The operation's callback deliveries."""
        ...

    async def redrive_callback(
        self, delivery_id: str, now: datetime, expires_at: datetime, event: Event
    ) -> bool:
        """Send an expired or disabled delivery again (admin)."""
        ...

    # caller secrets ----------------------------------------------------------------------------
    async def caller_secrets(self, caller: str, now: datetime, new_secret: str) -> CallerSecrets:
        """The caller's secrets, created with ``new_secret`` if the caller has none yet."""
        ...

    async def rotate_caller_secret(
        self, caller: str, new_secret: str, now: datetime, previous_until: datetime
    ) -> CallerSecrets:
        """Make ``new_secret`` current; the old one verifies until ``previous_until``."""
        ...

    # idempotency -------------------------------------------------------------------------------
    async def save_response(
        self, scope: str, key: str, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        """Keep the response of an idempotent request for replay."""
        ...

    async def purge_idempotency(self, now: datetime) -> int:
        """Delete expired idempotency records; returns how many."""
        ...

    # -- a2a (A2A facade: push-notification configs; delivery reuses the callback outbox) -----
    async def a2a_save_push_config(
        self, op_id: str, config_id: str, config: dict[str, Any], at: datetime
    ) -> None:
        """Store an A2A push-notification config of the operation."""
        ...

    async def a2a_push_configs(self, op_id: str) -> list[dict[str, Any]]:
        """The operation's A2A push-notification configs."""
        ...

    async def a2a_delete_push_config(self, op_id: str, config_id: str) -> bool:
        """Delete one push-notification config; False if there was none."""
        ...

    async def a2a_due_pushes(self, limit: int) -> list[tuple[str, dict[str, Any], Operation]]:
        """Push configs of closed operations whose push is not queued yet."""
        ...

    async def a2a_enqueue_push(
        self, op_id: str, config_id: str, delivery: CallbackDelivery, event: Event
    ) -> bool:
        """Queue the push of one config in the callback outbox (once per config)."""
        ...

    async def a2a_progress_pushes(
        self, limit: int
    ) -> list[tuple[str, dict[str, Any], Operation, int]]:
        """Push configs of running operations with history after their progress cursor.

        Rows are (config id, config, operation, cursor).
        """
        ...

    async def a2a_enqueue_progress(
        self,
        op_id: str,
        config_id: str,
        after: int,
        upto: int,
        deliveries: Sequence[CallbackDelivery],
    ) -> bool:
        """Move the config's progress cursor from ``after`` to ``upto`` and queue deliveries.

        A compare-and-set (False if another replica moved it), in one transaction.
        """
        ...
