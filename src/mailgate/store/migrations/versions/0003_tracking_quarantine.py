"""Message log (tracking), delivery outcomes, quarantine index."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("qid", sa.String(32), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("received", sa.Float, nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("real_client_ip", sa.String(64), nullable=False),
        sa.Column("real_client_source", sa.String(16), nullable=False),
        sa.Column("helo", sa.String(255), nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("verdicts", sa.Text, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reply", sa.Text, nullable=False),
    )
    op.create_index("ix_message_log_qid", "message_log", ["qid"])
    op.create_index("ix_message_log_received", "message_log", ["received"])
    op.create_index("ix_message_log_sender", "message_log", ["sender"])
    op.create_table(
        "message_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("qid", sa.String(32), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dsn", sa.String(16), nullable=False),
        sa.Column("relay", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_message_deliveries_qid", "message_deliveries", ["qid"])
    op.create_index("ix_message_deliveries_recipient", "message_deliveries", ["recipient"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("qid", sa.String(32), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("verdicts", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
    )
    op.create_index("ix_quarantine_created", "quarantine", ["created"])


def downgrade() -> None:
    op.drop_table("quarantine")
    op.drop_table("message_deliveries")
    op.drop_table("message_log")
