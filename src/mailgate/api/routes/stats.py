"""This node's counters (since start) and the dashboard's series (messages received and
delivered over time, actions, verdicts, queue size, verification)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from mailgate.api.auth import Reader
from mailgate.api.routes.common import ERRORS, AdminOf, Invalid, api_route

router = APIRouter(tags=["statistics"], route_class=api_route(), responses=ERRORS)

MAX_BUCKETS = 2000  # bounds the work and the reply of one dashboard request


class Counters(BaseModel):
    counters: dict[str, int] = Field(description="Counter name -> value since this node started.")


class Dashboard(BaseModel):
    bucket_minutes: int
    times: list[int] = Field(description="Start of each bucket (Unix time).")
    received: list[int] = Field(description="Messages received per bucket.")
    delivered: list[int] = Field(description="Recipients delivered per bucket.")
    actions: dict[str, int] = Field(description="Messages per action in the period.")
    verdicts: dict[str, int] = Field(description='Messages per "module: verdict".')
    queue_size: int = Field(description="Messages in this node's queue now.")
    verification: dict[str, int] = Field(description="Verification counters of this node.")


@router.get("/stats", summary="This node's counters")
async def stats(admin: AdminOf, _: Reader) -> Counters:
    return Counters(counters=admin.stats())


@router.get("/dashboard", summary="The dashboard's figures")
async def dashboard(
    admin: AdminOf,
    _: Reader,
    hours: int = Query(24, ge=1, le=24 * 366, description="Period, ending now."),
    bucket_minutes: int = Query(60, ge=1, le=24 * 60, description="Width of a bucket."),
) -> Dashboard:
    if hours * 60 // bucket_minutes > MAX_BUCKETS:
        raise Invalid("bucket_minutes", f"at most {MAX_BUCKETS} buckets: widen them")
    return Dashboard.model_validate(await admin.dashboard(hours, bucket_minutes))
