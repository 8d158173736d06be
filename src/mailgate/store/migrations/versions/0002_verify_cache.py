"""Recipient verification cache."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verify_cache",
        sa.Column("address", sa.String(512), primary_key=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("probed", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("verify_cache")
