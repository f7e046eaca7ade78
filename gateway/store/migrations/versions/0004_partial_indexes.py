"""Work-queue indexes cover only the rows still waiting.

Finished operations and delivered callbacks are the vast majority of rows and are never looked
up through these indexes: indexing only pending work keeps them small however long the history
grows, and closing an operation (or delivering a callback) no longer adds an index entry.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name, table, columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where)
    )


def upgrade() -> None:
    op.drop_index("ix_sg_operations_work", table_name="sg_operations")
    op.drop_index("ix_sg_operations_deadline", table_name="sg_operations")
    op.drop_index("ix_sg_callbacks_due", table_name="sg_callbacks")
    _partial("ix_sg_operations_due", "sg_operations", ["next_attempt_at"], "work IS NOT NULL")
    _partial(
        "ix_sg_operations_running_deadline",
        "sg_operations",
        ["deadline_at"],
        "state = 'running'",
    )
    _partial("ix_sg_callbacks_pending", "sg_callbacks", ["next_attempt_at"], "state = 'pending'")


def downgrade() -> None:
    op.drop_index("ix_sg_callbacks_pending", table_name="sg_callbacks")
    op.drop_index("ix_sg_operations_running_deadline", table_name="sg_operations")
    op.drop_index("ix_sg_operations_due", table_name="sg_operations")
    op.create_index("ix_sg_callbacks_due", "sg_callbacks", ["state", "next_attempt_at"])
    op.create_index("ix_sg_operations_deadline", "sg_operations", ["state", "deadline_at"])
    op.create_index("ix_sg_operations_work", "sg_operations", ["work", "next_attempt_at"])
