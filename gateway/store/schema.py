"""Table definitions used by the queries (the migrations own the DDL history)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


Json = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

settings = Table(
    "sg_settings",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

agents = Table(
    "sg_agents",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("spec", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

operations = Table(
    "sg_operations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("service", String(200), nullable=False),
    Column("operation", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("caller", String(200), nullable=False),
    Column("request_id", String(200)),
    Column("input", LargeBinary, nullable=False),
    Column("input_content_type", String(200)),
    Column("callback_url", Text),
    Column("callback_headers", Json, nullable=False),
    Column("links", Json, nullable=False),
    Column("work", String(16)),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime),
    Column("lease_owner", String(100)),
    Column("lease_until", UTCDateTime),
    Column("deadline_at", UTCDateTime),
    Column("cancel_requested_at", UTCDateTime),
    Column("agent_token", Text),
    Column("result", LargeBinary),
    Column("result_content_type", String(200)),
    Column("failure", Json),
    Column("created_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),
    Column("last_error", Text),
    Column("traceparent", String(100)),
    Column("prev_lease_owner", String(100)),
    Column("handler_headers", Json, nullable=False, server_default=text("'{}'")),
    Column("heartbeat_until", UTCDateTime),  # migration 0007 (heartbeats)
    Column("heartbeat_details", Json),
    # migration 0009: where the missed-heartbeat sweep looks (never after heartbeat_until)
    Column("heartbeat_check_at", UTCDateTime),
)
# written by the statements that need them, not by a start (not fields of Operation)
OPERATION_NOT_AT_START = ("prev_lease_owner", "heartbeat_check_at")

events = Table(
    "sg_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("operation_id", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", Json, nullable=False),
)

callbacks = Table(
    "sg_callbacks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("operation_id", String(64), nullable=False),
    Column("caller", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("headers", Json, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(100)),
    Column("lease_until", UTCDateTime),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    Column("last_error", Text),
)

idempotency = Table(
    "sg_idempotency",
    metadata,
    Column("scope", String(200), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("fingerprint", String(128), nullable=False),
    Column("operation_id", String(64), nullable=False),
    Column("response_status", Integer),
    Column("response_body", LargeBinary),
    Column("response_headers", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

caller_secrets = Table(
    "sg_caller_secrets",
    metadata,
    Column("caller", String(200), primary_key=True),
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text),
    Column("previous_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("rotated_at", UTCDateTime),
)

# A2A facade: durable push-notification configs (delivery reuses the callback outbox).
a2a_push_configs = Table(
    "sg_a2a_push_configs",
    metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("config_id", String(200), primary_key=True),
    Column("config", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivery_id", String(64)),
    # the last history event whose progress (a status update) was queued for this config
    Column("pushed_event_id", BigInteger, nullable=False, server_default="0"),
)

# The durable step journal (migration 0007): one row per completed step, first write wins.
steps = Table(
    "sg_steps",
    metadata,
    Column("operation_id", String(64), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("result", Json),
    Column("at", UTCDateTime, nullable=False),
    Column("attempt", Integer, nullable=False),
)

# Pull workers (migration 0008): the last poll of each worker of a pull agent.
pull_workers = Table(
    "sg_pull_workers",
    metadata,
    Column("agent", String(200), primary_key=True),
    Column("worker_id", String(200), primary_key=True),
    Column("last_poll_at", UTCDateTime, nullable=False),
)

__all__ = [
    "a2a_push_configs",
    "agents",
    "callbacks",
    "caller_secrets",
    "events",
    "idempotency",
    "metadata",
    "operations",
    "pull_workers",
    "settings",
    "steps",
]
