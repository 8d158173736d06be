"""Configuration revisions in the store: every save is a new revision; the newest is current.

Keeping revisions (rather than updating rows in place) gives the audit trail, a cheap "has it
changed?" poll for every node (`current_id`), and rollback by re-saving an old revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from mailgate.config.model import Config
from mailgate.store.schema import config_revisions


class ConflictError(RuntimeError):
    """The configuration changed since it was read; the save was not applied."""


@dataclass(frozen=True, slots=True)
class Revision:
    id: int
    created_at: datetime
    author: str
    comment: str
    config: Config


class ConfigRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def current_id(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(config_revisions.c.id))).scalar()

    def current(self) -> Revision | None:
        query = select(config_revisions).order_by(config_revisions.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _revision(row) if row else None

    def get(self, revision_id: int) -> Revision | None:
        query = select(config_revisions).where(config_revisions.c.id == revision_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _revision(row) if row else None

    def history(self, limit: int = 50) -> list[Revision]:
        query = select(config_revisions).order_by(config_revisions.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [_revision(row) for row in conn.execute(query).mappings()]

    def save(self, config: Config, *, parent: int | None, author: str, comment: str) -> Revision:
        """Store `config` as the revision following `parent` (None: the first revision)."""
        document = json.dumps(config.model_dump(mode="json"), sort_keys=True)
        created = datetime.now(UTC)
        try:
            with self.engine.begin() as conn:
                latest = conn.execute(select(func.max(config_revisions.c.id))).scalar()
                if latest != parent:
                    raise ConflictError(f"configuration changed (now revision {latest})")
                result = conn.execute(
                    config_revisions.insert().values(
                        parent_id=parent or 0,
                        created_at=created,
                        author=author,
                        comment=comment,
                        document=document,
                    )
                )
                new_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        except IntegrityError as exc:
            raise ConflictError("configuration changed concurrently") from exc
        if new_id is None:
            raise RuntimeError("store returned no revision id")
        return Revision(int(new_id), created, author, comment, config)


def _revision(row: object) -> Revision:
    data = dict(row)  # type: ignore[call-overload]
    created = data["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return Revision(
        id=int(data["id"]),
        created_at=created,
        author=str(data["author"]),
        comment=str(data["comment"]),
        config=Config.model_validate(json.loads(data["document"])),
    )
