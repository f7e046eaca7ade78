"""Initial schema: settings, agents, operations, events, callbacks, idempotency.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sg_settings",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "sg_agents",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("spec", Json, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_table(
        "sg_operations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("request_id", sa.String(200)),
        sa.Column("input", sa.LargeBinary, nullable=False),
        sa.Column("input_content_type", sa.String(200)),
        sa.Column("callback_url", sa.Text),
        sa.Column("callback_headers", Json, nullable=False),
        sa.Column("links", Json, nullable=False),
        sa.Column("work", sa.String(16)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Ts),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until", Ts),
        sa.Column("deadline_at", Ts),
        sa.Column("cancel_requested_at", Ts),
        sa.Column("agent_token", sa.Text),
        sa.Column("result", sa.LargeBinary),
        sa.Column("result_content_type", sa.String(200)),
        sa.Column("failure", Json),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("closed_at", Ts),
        sa.Column("last_error", sa.Text),
        sa.Column("traceparent", sa.String(100)),
    )
    op.create_index("ix_sg_operations_work", "sg_operations", ["work", "next_attempt_at"])
    op.create_index("ix_sg_operations_deadline", "sg_operations", ["state", "deadline_at"])
    op.create_index("ix_sg_operations_caller", "sg_operations", ["caller", "created_at"])
    op.create_table(
        "sg_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("at", Ts, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", Json, nullable=False),
    )
    op.create_index("ix_sg_events_operation", "sg_events", ["operation_id", "id"])
    op.create_table(
        "sg_callbacks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("caller", sa.String(200), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("headers", Json, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Ts, nullable=False),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until", Ts),
        sa.Column("expires_at", Ts, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("delivered_at", Ts),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_sg_callbacks_due", "sg_callbacks", ["state", "next_attempt_at"])
    op.create_index("ix_sg_callbacks_operation", "sg_callbacks", ["operation_id"])
    op.create_table(
        "sg_idempotency",
        sa.Column("scope", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("operation_id", sa.String(64), nullable=False),
        sa.Column("response_status", sa.Integer),
        sa.Column("response_body", sa.LargeBinary),
        sa.Column("response_headers", Json, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("expires_at", Ts, nullable=False),
    )
    op.create_index("ix_sg_idempotency_expires", "sg_idempotency", ["expires_at"])


def downgrade() -> None:
    for name in (
        "sg_idempotency",
        "sg_callbacks",
        "sg_events",
        "sg_operations",
        "sg_agents",
        "sg_settings",
    ):
        op.drop_table(name)
