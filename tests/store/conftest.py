"""Store fixtures: every store test runs on SQLite (a file in tmp_path) and on PostgreSQL.

PostgreSQL tests use a database created for this test session (dropped at the end) and a
schema of their own inside it, so they never depend on what an earlier run left behind. The
server must be running (the project's test command starts it): when it is not reachable, the
tests fail, they do not skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from mailgate.store.db import make_engine
from mailgate.store.migrate import upgrade

# Override to point the tests at another server; the user needs CREATEDB.
PG_ADMIN_URL = os.environ.get(
    "MAILGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin_connect() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc)
    pytest.fail(
        f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({reason}). "
        "Start it before running the store tests (the project's test command does).",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A database of its own for this test session; yields its SQLAlchemy URL."""
    name = f"mailgate_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _pg_schema_url(database_url: str) -> str:
    """A fresh schema in the session database, made the connections' search_path."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/mailgate.db"
    return _pg_schema_url(request.getfixturevalue("pg_database"))


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = make_engine(store_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    upgrade(engine)
    return engine
