"""Tables of the store (SQLAlchemy Core). Alembic migrations in `migrations/` create them.

`SCHEMA_HEAD` names the newest migration; the server compares it with the database's
`alembic_version` at start-up and runs the migrations only when they differ (a test keeps this
constant equal to Alembic's head).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text

SCHEMA_HEAD = "0002"

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
