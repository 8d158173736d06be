"""The REST API's routes, one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from mailgate.api.routes import session

router = APIRouter()
for module in (session,):
    router.include_router(module.router)
