"""A2A push configs remember the last history event pushed as progress (status updates of a
running task reach push configs, not only the final task).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sg_a2a_push_configs") as batch:
        batch.add_column(
            sa.Column("pushed_event_id", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("sg_a2a_push_configs") as batch:
        batch.drop_column("pushed_event_id")
