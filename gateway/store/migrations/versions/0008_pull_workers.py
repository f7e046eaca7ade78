"""Pull workers (issue 12 item 4).

``sg_pull_workers`` records each worker's last poll of a pull agent's queue (live workers in
``GET /api/agents/{name}``, on every replica). A partial index covers the queue itself: the
running operations of pull agents that wait for a worker (``agent_token = 'pull-queued'``),
so a poll's claim and the queue depth read only them.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
_QUEUED = "state = 'running' AND work IS NULL AND agent_token = 'pull-queued'"


def upgrade() -> None:
    op.create_table(
        "sg_pull_workers",
        sa.Column("agent", sa.String(200), primary_key=True),
        sa.Column("worker_id", sa.String(200), primary_key=True),
        sa.Column("last_poll_at", Ts, nullable=False),
    )
    op.create_index(
        "ix_sg_operations_pull_queue",
        "sg_operations",
        ["service", "created_at"],
        postgresql_where=sa.text(_QUEUED),
        sqlite_where=sa.text(_QUEUED),
    )


def downgrade() -> None:
    op.drop_index("ix_sg_operations_pull_queue", table_name="sg_operations")
    op.drop_table("sg_pull_workers")
