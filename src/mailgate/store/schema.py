"""Tables of the store (SQLAlchemy Core). Alembic migrations in `migrations/` create them.

`SCHEMA_HEAD` names the newest migration; the server compares it with the database's
`alembic_version` at start-up and runs the migrations only when they differ (a test keeps this
constant equal to Alembic's head).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_HEAD = "0004"

metadata = MetaData()

config_revisions = Table(
    "config_revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The revision this one was made from (0 for the first): unique, so two concurrent saves
    # made from the same revision cannot both land and one silently undo the other.
    Column("parent_id", Integer, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("author", String(200), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("document", Text, nullable=False),
)

# The recipient verification cache, shared by every node of a cluster. One row per address
# (local part as given, domain as its lowercase A-label).
verify_cache = Table(
    "verify_cache",
    metadata,
    Column("address", String(512), primary_key=True),
    Column("status", String(8), nullable=False),  # ok | bad | temp
    Column("reply", Text, nullable=False),
    Column("updated", Float, nullable=False),  # when the current status was learnt (epoch)
    Column("probed", Float, nullable=False),  # when the address was last probed (epoch)
)

# The message log (tracking): one row per received message, and one per delivery outcome.
message_log = Table(
    "message_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("qid", String(32), nullable=False),
    Column("node", String(255), nullable=False),
    Column("received", Float, nullable=False),
    Column("client_ip", String(64), nullable=False),
    Column("real_client_ip", String(64), nullable=False),
    Column("real_client_source", String(16), nullable=False),
    Column("helo", String(255), nullable=False),
    Column("sender", String(512), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("rules", Text, nullable=False),  # JSON list of rule names
    Column("verdicts", Text, nullable=False),  # JSON: module -> "verdict (detail)"
    Column("action", String(32), nullable=False),
    Column("reply", Text, nullable=False),
    Index("ix_message_log_qid", "qid"),
    Index("ix_message_log_received", "received"),
    Index("ix_message_log_sender", "sender"),
)

message_deliveries = Table(
    "message_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("qid", String(32), nullable=False),
    Column("time", Float, nullable=False),
    Column("recipient", String(512), nullable=False),
    Column(
        "status", String(16), nullable=False
    ),  # sent | deferred | bounced | deleted | quarantined
    Column("dsn", String(16), nullable=False),
    Column("relay", String(255), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_message_deliveries_qid", "qid"),
    Index("ix_message_deliveries_recipient", "recipient"),
)

# The quarantine index; the messages themselves are files on the node that kept them.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("qid", String(32), nullable=False),
    Column("node", String(255), nullable=False),
    Column("created", Float, nullable=False),
    Column("sender", String(512), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON list
    Column("subject", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("rule", String(100), nullable=False),
    Column("verdicts", Text, nullable=False),  # JSON
    Column("reason", Text, nullable=False),
    Column("path", Text, nullable=False),
    Index("ix_quarantine_created", "created"),
)

# Administration: accounts (argon2 password hashes), API tokens and login sessions (stored as
# SHA-256 of the secret, never the secret), and the audit log of changes.
accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(100), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(20), nullable=False),  # administrator | auditor
    Column("created", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created", Float, nullable=False),
    Column("last_used", Float, nullable=True),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("action", String(100), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    Index("ix_audit_log_time", "time"),
)
