"""Heartbeats that update in place (issue 17 item 4).

The missed-heartbeat sweep read ``ix_sg_operations_heartbeat`` on ``heartbeat_until``, which
every heartbeat moves: on PostgreSQL no heartbeat could be a HOT update (an indexed column
changed), so each one wrote a new index entry in every index of ``sg_operations``. Now the
sweep reads ``heartbeat_check_at``: never later than ``heartbeat_until``, set with it when an
attempt is accepted, moved up to it by the sweep once it has passed (about once per heartbeat
timeout per operation) and by a heartbeat only when a shorter timeout brings the deadline
before it. A heartbeat changes no indexed column.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
_OLD = "state = 'running' AND heartbeat_until IS NOT NULL"
_NEW = "state = 'running' AND heartbeat_check_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("sg_operations") as batch:
        batch.add_column(sa.Column("heartbeat_check_at", Ts))
    op.execute(
        "UPDATE sg_operations SET heartbeat_check_at = heartbeat_until"
        " WHERE heartbeat_until IS NOT NULL"
    )
    op.drop_index("ix_sg_operations_heartbeat", table_name="sg_operations")
    op.create_index(
        "ix_sg_operations_heartbeat_check",
        "sg_operations",
        ["heartbeat_check_at"],
        postgresql_where=sa.text(_NEW),
        sqlite_where=sa.text(_NEW),
    )


def downgrade() -> None:
    op.drop_index("ix_sg_operations_heartbeat_check", table_name="sg_operations")
    op.create_index(
        "ix_sg_operations_heartbeat",
        "sg_operations",
        ["heartbeat_until"],
        postgresql_where=sa.text(_OLD),
        sqlite_where=sa.text(_OLD),
    )
    with op.batch_alter_table("sg_operations") as batch:
        batch.drop_column("heartbeat_check_at")
