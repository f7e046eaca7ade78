"""Heartbeats and the durable step journal (issue 12).

Two columns on ``sg_operations``: ``heartbeat_until`` (when the accepted attempt's next
heartbeat is due; a heartbeat moves it in place) and ``heartbeat_details`` (the agent's last
checkpoint, carried to the next attempt). A partial index covers only running operations
that heartbeat, so the sweep for missed heartbeats stays small. ``sg_steps`` holds the
journal: one row per completed step of an operation, first write wins.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)
_WHERE = "state = 'running' AND heartbeat_until IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("sg_operations") as batch:
        batch.add_column(sa.Column("heartbeat_until", Ts))
        batch.add_column(sa.Column("heartbeat_details", Json))
    op.create_index(
        "ix_sg_operations_heartbeat",
        "sg_operations",
        ["heartbeat_until"],
        postgresql_where=sa.text(_WHERE),
        sqlite_where=sa.text(_WHERE),
    )
    op.create_table(
        "sg_steps",
        sa.Column("operation_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("result", Json),
        sa.Column("at", Ts, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sg_steps")
    op.drop_index("ix_sg_operations_heartbeat", table_name="sg_operations")
    with op.batch_alter_table("sg_operations") as batch:
        batch.drop_column("heartbeat_details")
        batch.drop_column("heartbeat_until")
