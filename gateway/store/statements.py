"""The portable statements (SQLAlchemy Core), built once and shared by both databases.

Building a Core statement per call (and its bind parameters) was a large share of the gateway's CPU
under load; these are constructed once, compiled once per dialect, and executed with plain
parameter dicts. ``FOR UPDATE`` clauses compile to nothing on SQLite, where BEGIN IMMEDIATE
already serializes writers.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from gateway.domain.dispatch import RESULT_STEP
from gateway.domain.model import DeliveryState, OperationState, Work
from gateway.store import schema as t

# parameter dicts.

_o, _e, _cb_t, _i = t.operations, t.events, t.callbacks, t.idempotency
# Queries served by a partial index (migration 0004) compare with SQL literals, not bound
# parameters: a generic prepared plan cannot prove a parameter matches the index predicate.
_RUNNING: ColumnElement[str] = literal_column(f"'{OperationState.RUNNING.value}'")
_PENDING: ColumnElement[str] = literal_column(f"'{DeliveryState.PENDING.value}'")
_TS = t.UTCDateTime()

INSERT_OPERATION = insert(_o)
INSERT_EVENTS = insert(_e)
INSERT_IDEMPOTENCY = insert(_i)
SELECT_OPERATION = select(_o).where(_o.c.id == bindparam("b_id"))
SELECT_IDEMPOTENCY = select(_i).where(
    _i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key")
)
DELETE_IDEMPOTENCY = delete(_i).where(
    _i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key")
)
SAVE_RESPONSE = (
    update(_i)
    .where(_i.c.scope == bindparam("b_scope"), _i.c.key == bindparam("b_key"))
    .values(
        response_status=bindparam("b_status"),
        response_body=bindparam("b_body"),
        response_headers=bindparam("b_headers"),
    )
)
LOCK_OPERATION = select(_o.c.id).where(_o.c.id == bindparam("b_id")).with_for_update()
LOCK_OPERATIONS = (
    select(_o.c.id)
    .where(_o.c.id.in_(bindparam("b_ids", expanding=True)))
    .order_by(_o.c.id)
    .with_for_update()
)


def _lease_due_statement(table: Table, pending: Any, **values: Any) -> Any:
    """Lease up to ``b_limit`` rows of ``table`` that are pending and due, with no live lease,
    oldest first, skipping rows another claimer holds; returns the leased rows."""
    now = bindparam("b_now", type_=_TS)
    due = (
        select(table.c.id)
        .where(
            pending,
            table.c.next_attempt_at <= now,
            or_(table.c.lease_until.is_(None), table.c.lease_until < now),
        )
        .order_by(table.c.next_attempt_at)
        .limit(bindparam("b_limit", type_=Integer()))
        .with_for_update(skip_locked=True)
    )
    return (
        update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(
            lease_owner=bindparam("b_owner"),
            lease_until=bindparam("b_until", type_=_TS),
            **values,
        )
        .returning(*table.c)
    )


_COUNTS_AS_ATTEMPT = and_(_o.c.work == Work.DISPATCH.value, _o.c.cancel_requested_at.is_(None))
CLAIM_WORK = _lease_due_statement(
    _o,
    _o.c.work.is_not(None),
    prev_lease_owner=_o.c.lease_owner,
    attempts=_o.c.attempts + case((_COUNTS_AS_ATTEMPT, 1), else_=0),
)


def _update_running_statement(fenced: bool) -> Any:
    # A cancel requested while the lease was held must not be lost: an accepted (or polled)
    # operation gets cancel work, a retry becomes due at once (the next claim cancels it).
    cancel_pending = _o.c.cancel_requested_at.is_not(None)
    conds = [_o.c.id == bindparam("b_id"), _o.c.state == OperationState.RUNNING.value]
    if fenced:
        conds.append(_o.c.lease_owner == bindparam("b_owner"))
    cancelable = bindparam("b_cancelable", type_=Boolean())
    return (
        update(_o)
        .where(*conds)
        .values(
            work=case(
                (and_(cancel_pending, cancelable), Work.CANCEL.value),
                else_=bindparam("b_work", type_=String()),
            ),
            next_attempt_at=case(
                (
                    and_(cancel_pending, bindparam("b_due_now", type_=Boolean())),
                    bindparam("b_now", type_=_TS),
                ),
                else_=bindparam("b_next", type_=_TS),
            ),
            lease_owner=None,
            lease_until=None,
            last_error=bindparam("b_error", type_=Text()),
            agent_token=func.coalesce(bindparam("b_token", type_=Text()), _o.c.agent_token),
            attempts=_o.c.attempts - bindparam("b_refund", type_=Integer()),
            heartbeat_until=bindparam("b_hb_until", type_=_TS),
            heartbeat_check_at=bindparam("b_hb_until", type_=_TS),  # migration 0009
        )
    )


UPDATE_RUNNING = {True: _update_running_statement(True), False: _update_running_statement(False)}


UPDATE_CLOSED = (
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state != OperationState.RUNNING.value,
        _o.c.lease_owner == bindparam("b_owner"),
    )
    .values(
        work=bindparam("b_work", type_=String()),
        next_attempt_at=bindparam("b_next", type_=_TS),
        lease_owner=None,
        lease_until=None,
    )
)


CLAIM_CALLBACKS = _lease_due_statement(
    _cb_t,
    _cb_t.c.state == _PENDING,  # a literal: the partial index applies
    attempts=_cb_t.c.attempts + 1,
)
FINISH_CALLBACK = (
    update(_cb_t)
    .where(
        _cb_t.c.id == bindparam("b_id"),
        _cb_t.c.lease_owner == bindparam("b_owner"),
        _cb_t.c.state == DeliveryState.PENDING.value,
    )
    .values(
        state=bindparam("b_state"),
        next_attempt_at=bindparam("b_next", type_=_TS),
        last_error=bindparam("b_error", type_=Text()),
        lease_owner=None,
        lease_until=None,
        delivered_at=func.coalesce(bindparam("b_delivered", type_=_TS), _cb_t.c.delivered_at),
    )
)


EXTEND_LEASES = (
    update(_o)
    .where(
        _o.c.id.in_(bindparam("b_ids", expanding=True)), _o.c.lease_owner == bindparam("b_owner")
    )
    .values(lease_until=bindparam("b_until", type_=_TS))
)


EXTEND_CALLBACK_LEASES = (
    update(_cb_t)
    .where(
        _cb_t.c.id.in_(bindparam("b_ids", expanding=True)),
        _cb_t.c.lease_owner == bindparam("b_owner"),
    )
    .values(lease_until=bindparam("b_until", type_=_TS))
)


RELEASE_OPERATIONS = (
    update(_o)
    .where(_o.c.lease_owner == bindparam("b_owner"), _o.c.state == OperationState.RUNNING.value)
    .values(lease_owner=None, lease_until=None)
)
RELEASE_CALLBACKS = (
    update(_cb_t)
    .where(
        _cb_t.c.lease_owner == bindparam("b_owner"),
        _cb_t.c.state == DeliveryState.PENDING.value,
    )
    .values(lease_owner=None, lease_until=None, attempts=_cb_t.c.attempts - 1)
)
REQUEST_CANCEL = (
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state == OperationState.RUNNING.value,
        _o.c.cancel_requested_at.is_(None),
    )
    .values(
        cancel_requested_at=bindparam("b_now", type_=_TS),
        work=case(
            (or_(_o.c.work.is_(None), _o.c.work == Work.POLL.value), Work.CANCEL.value),
            else_=_o.c.work,
        ),
        next_attempt_at=bindparam("b_now", type_=_TS),
    )
)
REDRIVE = (
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state.in_([OperationState.FAILED.value, OperationState.CANCELED.value]),
    )
    .values(
        state=OperationState.RUNNING.value,
        work=Work.DISPATCH.value,
        next_attempt_at=bindparam("b_now", type_=_TS),
        failure=None,
        closed_at=None,
        cancel_requested_at=None,
        agent_token=None,
        lease_owner=None,
        lease_until=None,
    )
)
DUE_TIMEOUTS = (
    select(_o)
    .where(_o.c.state == _RUNNING, _o.c.deadline_at <= bindparam("b_now", type_=_TS))
    .order_by(_o.c.deadline_at)
    .limit(bindparam("b_limit", type_=Integer()))
)
LIST_EVENTS = (
    select(_e)
    .where(_e.c.operation_id == bindparam("b_id"), _e.c.id > bindparam("b_after"))
    .order_by(_e.c.id)
    .limit(bindparam("b_limit", type_=Integer()))
)
LIST_CALLBACKS = (
    select(_cb_t).where(_cb_t.c.operation_id == bindparam("b_id")).order_by(_cb_t.c.created_at)
)
REDRIVE_CALLBACK = (
    update(_cb_t)
    .where(
        _cb_t.c.id == bindparam("b_id"),
        _cb_t.c.state.in_([DeliveryState.EXPIRED.value, DeliveryState.DISABLED.value]),
    )
    .values(
        state=DeliveryState.PENDING.value,
        next_attempt_at=bindparam("b_now", type_=_TS),
        expires_at=bindparam("b_expires", type_=_TS),
        lease_owner=None,
        lease_until=None,
    )
)
PURGE_IDEMPOTENCY = delete(_i).where(_i.c.expires_at <= bindparam("b_now", type_=_TS))

_p = t.a2a_push_configs
A2A_PUSH_CONFIGS = (
    select(_p.c.config).where(_p.c.operation_id == bindparam("b_id")).order_by(_p.c.created_at)
)
A2A_DUE_PUSHES = (
    select(_p.c.config_id, _p.c.config, _o)
    .join(_o, _o.c.id == _p.c.operation_id)
    .where(_p.c.delivery_id.is_(None), _o.c.state != OperationState.RUNNING.value)
    .order_by(_p.c.created_at)
    .limit(bindparam("b_limit", type_=Integer()))
)
# configs of running operations with history after the config's progress cursor
A2A_PROGRESS_PUSHES = (
    select(_p.c.config_id, _p.c.config, _p.c.pushed_event_id, _o)
    .join(_o, _o.c.id == _p.c.operation_id)
    .where(
        _p.c.delivery_id.is_(None),
        _o.c.state == OperationState.RUNNING.value,
        select(_e.c.id)
        .where(_e.c.operation_id == _p.c.operation_id, _e.c.id > _p.c.pushed_event_id)
        .exists(),
    )
    .order_by(_p.c.created_at)
    .limit(bindparam("b_limit", type_=Integer()))
)
A2A_ADVANCE_PROGRESS = (
    update(_p)
    .where(
        _p.c.operation_id == bindparam("b_id"),
        _p.c.config_id == bindparam("b_config"),
        _p.c.pushed_event_id == bindparam("b_after"),
        _p.c.delivery_id.is_(None),
    )
    .values(pushed_event_id=bindparam("b_upto"))
)
A2A_MARK_QUEUED = (
    update(_p)
    .where(
        _p.c.operation_id == bindparam("b_id"),
        _p.c.config_id == bindparam("b_config"),
        _p.c.delivery_id.is_(None),
    )
    .values(delivery_id=bindparam("b_delivery"))
)


# -- heartbeats and the step journal (migration 0007) -------------------------------------------
# A heartbeat is one in-place update of the deadline (and the details, when it brings some) of
# a running operation's current attempt; it moves the deadline only once an attempt has one.
_hb_live = and_(
    _o.c.id == bindparam("b_id"),
    _o.c.state == OperationState.RUNNING.value,
    or_(
        bindparam("b_any_attempt", type_=Boolean()),
        _o.c.attempts == bindparam("b_attempt", type_=Integer()),
    ),
)
# The sweep finds missed heartbeats through ``heartbeat_check_at`` (migration 0009), never
# later than ``heartbeat_until``, indexed, and left alone by a heartbeat unless a shorter
# timeout brings the deadline before it: a heartbeat changes no indexed column, so PostgreSQL
# updates the row in place (HOT). The sweep moves a passed check time up to the deadline
# (ADVANCE_HEARTBEAT_CHECKS: once per timeout per operation) and fails the attempts whose
# deadline passed (DUE_HEARTBEATS, EXPIRE_HEARTBEAT).
_hb_until = case((_o.c.heartbeat_until.is_(None), None), else_=bindparam("b_until", type_=_TS))
_hb_check = case(
    (bindparam("b_until", type_=_TS) < _o.c.heartbeat_check_at, bindparam("b_until", type_=_TS)),
    else_=_o.c.heartbeat_check_at,
)
_hb_ack = (_o.c.state, _o.c.attempts, _o.c.cancel_requested_at)
HEARTBEAT = {
    True: update(_o)
    .where(_hb_live)
    .values(
        heartbeat_until=_hb_until,
        heartbeat_check_at=_hb_check,
        heartbeat_details=bindparam("b_details", type_=t.Json),
    )
    .returning(*_hb_ack),
    False: update(_o)
    .where(_hb_live)
    .values(heartbeat_until=_hb_until, heartbeat_check_at=_hb_check)
    .returning(*_hb_ack),
}
_hb_checked = and_(
    _o.c.state == _RUNNING,
    _o.c.heartbeat_check_at.is_not(None),
    _o.c.heartbeat_check_at <= bindparam("b_now", type_=_TS),
)
ADVANCE_HEARTBEAT_CHECKS = (  # the rows a heartbeat holds are skipped: the next sweep has them
    update(_o)
    .where(
        _o.c.id.in_(
            select(_o.c.id)
            .where(_hb_checked, _o.c.heartbeat_until > bindparam("b_now", type_=_TS))
            .order_by(_o.c.id)
            .limit(bindparam("b_limit", type_=Integer()))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        ),
        _o.c.heartbeat_until > bindparam("b_now", type_=_TS),
    )
    .values(heartbeat_check_at=_o.c.heartbeat_until)
)
DUE_HEARTBEATS = (  # served by the partial index ix_sg_operations_heartbeat_check
    select(_o)
    .where(
        _hb_checked,
        _o.c.heartbeat_until <= bindparam("b_now", type_=_TS),
        _o.c.work.is_(None),  # a cancel owed first is not starved out by the limit
    )
    .order_by(_o.c.heartbeat_until)
    .limit(bindparam("b_limit", type_=Integer()))
)
EXPIRE_HEARTBEAT = (  # compare-and-set: still that attempt, still overdue, nothing else owed
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state == OperationState.RUNNING.value,
        _o.c.attempts == bindparam("b_attempt", type_=Integer()),
        _o.c.work.is_(None),
        _o.c.heartbeat_until <= bindparam("b_now", type_=_TS),
    )
    .values(
        work=Work.DISPATCH.value,
        next_attempt_at=bindparam("b_next", type_=_TS),
        heartbeat_until=None,
        heartbeat_check_at=None,
        agent_token=None,
        last_error=bindparam("b_error", type_=Text()),
        lease_owner=None,
        lease_until=None,
    )
)
_st = t.steps
OPERATION_STATE = select(_o.c.state).where(_o.c.id == bindparam("b_id"))
LOCK_OPERATION_STATE = OPERATION_STATE.with_for_update()
INSERT_STEP = insert(_st)
SELECT_STEP = select(_st).where(
    _st.c.operation_id == bindparam("b_id"), _st.c.name == bindparam("b_name")
)
DELETE_RESULT_STEP = delete(_st).where(  # a redrive runs the operation again: not its old answer
    _st.c.operation_id == bindparam("b_id"), _st.c.name == RESULT_STEP
)
LIST_STEPS = (
    select(_st).where(_st.c.operation_id == bindparam("b_id")).order_by(_st.c.at, _st.c.name)
)
# input-required (issue 15 item 4): park an attempt that asked for input, resume when answered
PARK_FOR_INPUT = (  # no heartbeat is owed while the operation waits for its caller
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state == OperationState.RUNNING.value,
        _o.c.attempts == bindparam("b_attempt", type_=Integer()),
    )
    .values(heartbeat_until=None, heartbeat_check_at=None)
)
RESUME_WITH_INPUT = (  # dispatch again, unless other work (a cancel) is owed
    update(_o)
    .where(
        _o.c.id == bindparam("b_id"),
        _o.c.state == OperationState.RUNNING.value,
        _o.c.work.is_(None),
    )
    .values(
        work=Work.DISPATCH.value,
        next_attempt_at=bindparam("b_now", type_=_TS),
        heartbeat_until=None,
        heartbeat_check_at=None,
        lease_owner=None,
        lease_until=None,
    )
)
