"""Schema migrations: bring a store up to the newest schema with Alembic.

Run as `python -m mailgate.store.migrate URL` by `mailgate run`, so the long-running server
never has to load Alembic itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from mailgate.store.db import make_engine
from mailgate.store.schema import SCHEMA_HEAD

MIGRATIONS = Path(__file__).parent / "migrations"


def current_version(engine: Engine) -> str | None:
    if not inspect(engine).has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Run every pending migration in this process."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads")
    return heads[0]


def ensure_schema(url: str, engine: Engine) -> None:
    """Migrate the store if it is not at SCHEMA_HEAD, in a child process."""
    if current_version(engine) == SCHEMA_HEAD:
        return
    result = subprocess.run(
        [sys.executable, "-m", "mailgate.store.migrate", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"store migration failed: {result.stderr.strip()}")


def main() -> int:
    engine = make_engine(sys.argv[1])
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
