"""The audit log of changes: who did what, to what, when, with the change itself (for the
configuration, the revision and what changed)."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, select

from mailgate.store.schema import audit_log


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(audit_log.insert().values(
                time=time.time(), actor=actor[:120], action=action[:100], target=target[:2000],
                detail=json.dumps(detail or {}, default=str),
            ))  # fmt: skip

    def search(self, actor: str | None = None, action: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
        query = select(audit_log).order_by(audit_log.c.time.desc(), audit_log.c.id.desc())
        if actor:
            query = query.where(audit_log.c.actor == actor)
        if action:
            query = query.where(audit_log.c.action == action)
        with self.engine.connect() as conn:
            rows = [
                dict(r) for r in conn.execute(query.limit(max(1, min(limit, 10_000)))).mappings()
            ]
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """What changed between two configuration documents: [{"field", "before", "after"}]."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else str(key)
            changes += diff(before.get(key), after.get(key), sub)
        return changes
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        # Same length: element by element, so one changed rule field shows as that field.
        out: list[dict[str, Any]] = []
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            out += diff(old, new, f"{path}[{index}]")
        return out
    if before != after:
        return [{"field": path or "config", "before": before, "after": after}]
    return []
