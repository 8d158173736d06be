"""The web interface's pages, one module per section of the navigation."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
