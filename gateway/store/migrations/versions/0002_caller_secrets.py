"""Per-caller callback signing secrets (Standard Webhooks), with rotation.

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


def downgrade() -> None:
    op.drop_table("sg_caller_secrets")
