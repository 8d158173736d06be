"""Recipient verification's cache of probe results: list (by status, by text), show one
address, probe one now, and flush entries by address, by status or all of them."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from mailgate.api.auth import Administrator, Reader
from mailgate.api.routes.common import ERRORS, NOT_FOUND, AdminOf, Invalid, api_route
from mailgate.verify.service import parse_address

router = APIRouter(
    prefix="/verify", tags=["verification"], route_class=api_route(), responses=ERRORS
)

Status = Literal["ok", "bad", "temp"]


class Entry(BaseModel):
    address: str = Field(description="Local part as given, domain canonical.")
    status: Status = Field(description="ok: accepted; bad: refused; temp: temporary failure.")
    reply: str = Field(description="The next hop's reply.")
    updated: float = Field(description="When the status was learnt (Unix time).")
    probed: float = Field(description="When the address was last probed (Unix time).")


class Flush(BaseModel):
    address: str | None = Field(None, max_length=512, description="Forget this address only.")
    status: Status | None = Field(None, description="Forget entries with this status only.")
    all: bool = Field(False, description="Forget every entry (when neither is given).")


class Flushed(BaseModel):
    removed: int = Field(description="Entries removed from the shared store.")


def _checked(address: str) -> str:
    try:
        parse_address(address)
    except ValueError as exc:
        raise Invalid("address", str(exc)) from None
    return address


@router.get("", summary="Cached verification results, newest first")
async def list_entries(
    admin: AdminOf,
    _: Reader,
    status: Status | None = None,
    contains: str | None = Query(None, max_length=512, description="Text in the address."),
    limit: int = Query(100, ge=1, le=10_000),
) -> list[Entry]:
    return [Entry.model_validate(e) for e in await admin.verify_list(status, contains, limit)]


@router.get("/{address}", summary="What the cache knows about an address", responses=NOT_FOUND)
async def show(address: str, admin: AdminOf, _: Reader) -> Entry:
    entry = await admin.verify_show(_checked(address))
    if entry is None:
        raise HTTPException(404, f"{address}: not in the cache")
    return Entry.model_validate(entry)


@router.post(
    "/{address}/test", summary="Probe an address now, whatever the cache says", responses=NOT_FOUND
)
async def test(address: str, admin: AdminOf, identity: Administrator) -> Entry:
    entry = await admin.verify_test(_checked(address), identity.account)
    return Entry.model_validate(entry)


@router.post("/flush", summary="Forget cached results: by address, by status, or all")
async def flush(body: Flush, admin: AdminOf, identity: Administrator) -> Flushed:
    if body.address is None and body.status is None and not body.all:
        raise Invalid("all", "give address, status, or all: true to forget every entry")
    address = _checked(body.address) if body.address is not None else None
    return Flushed(removed=await admin.verify_flush(address, body.status, identity.account))
