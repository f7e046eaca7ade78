"""A2A facade: durable push-notification configs per task (= operation).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")
Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sg_a2a_push_configs",
        sa.Column("operation_id", sa.String(64), primary_key=True),
        sa.Column("config_id", sa.String(200), primary_key=True),
        sa.Column("config", Json, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("delivery_id", sa.String(64)),
    )
    op.create_index(
        "ix_sg_a2a_push_configs_pending",
        "sg_a2a_push_configs",
        ["delivery_id", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_sg_a2a_push_configs_pending", table_name="sg_a2a_push_configs")
    op.drop_table("sg_a2a_push_configs")
