"""Nexus wire conformance: the caller's headers for the handler, kept with the operation.

A Nexus caller passes headers meant for the handler (Temporal's ``nexus_header``); the
gateway forwards them to the agent on every attempt, so they are stored with the operation.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sg_operations") as batch:
        batch.add_column(
            sa.Column("handler_headers", Json, nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("sg_operations") as batch:
        batch.drop_column("handler_headers")
