"""Per-caller callback signing secrets (Standard Webhooks), with rotation; lease takeovers.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sg_caller_secrets",
        sa.Column("caller", sa.String(200), primary_key=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text),
        sa.Column("previous_until", Ts),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("rotated_at", Ts),
    )

    # The owner whose expired lease the current holder took over (None: a fresh claim).
    with op.batch_alter_table("sg_operations") as batch:
        batch.add_column(sa.Column("prev_lease_owner", sa.String(100)))


def downgrade() -> None:
    with op.batch_alter_table("sg_operations") as batch:
        batch.drop_column("prev_lease_owner")
    op.drop_table("sg_caller_secrets")
