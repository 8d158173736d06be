"""The audit log: who changed what, when (configuration changes with every field's old and
new value), newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from mailgate.api.auth import Reader
from mailgate.api.routes.common import ERRORS, AdminOf, api_route

router = APIRouter(prefix="/audit", tags=["audit log"], route_class=api_route(), responses=ERRORS)


class AuditEntry(BaseModel):
    id: int
    time: float = Field(description="Unix time.")
    actor: str = Field(description="The account (or cli:user) that made the change.")
    action: str = Field(description="e.g. config.change, queue.hold, account.create.")
    target: str = Field(description="What was changed, in words.")
    detail: dict[str, Any] = Field(
        description='For configuration changes: {"revision", "changes": [{"field", "before", '
        '"after"}]}.'
    )


@router.get("", summary="Search the audit log, newest first")
async def search(
    admin: AdminOf,
    _: Reader,
    actor: str | None = Query(None, max_length=120, description="Exactly this actor."),
    action: str | None = Query(None, max_length=100, description="Exactly this action."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[AuditEntry]:
    rows = await admin._run(admin.audit.search, actor, action, limit)
    return [AuditEntry.model_validate(row) for row in rows]
