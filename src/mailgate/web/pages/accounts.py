"""Accounts (administrators and read-only auditors) and the audit log of changes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.admin.accounts import ROLES, AccountError
from mailgate.web.pages.common import Ctx, changer, done, page, render, text, viewer

router = APIRouter()
ROLE_NAMES = {"administrator": "Administrator", "auditor": "Read-only auditor"}


async def _accounts(
    ctx: Ctx,
    status: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    row_errors: dict[str, str] | None = None,
) -> Response:
    accounts = await ctx.admin._run(ctx.admin.accounts.all)
    return render(
        ctx,
        "accounts.html",
        status,
        title="Accounts",
        section="accounts",
        accounts=accounts,
        roles=ROLE_NAMES,
        errors=errors or {},
        values=values or {},
        row_errors=row_errors or {},
    )


def _error(exc: AccountError) -> dict[str, str]:
    field, sep, message = str(exc).partition(": ")
    return {field: message} if sep else {"": str(exc)}


@router.get("/accounts")
@page
async def accounts(request: Request) -> Response:
    return await _accounts(await viewer(request))


@router.post("/accounts/new")
@page
async def create(request: Request) -> Response:
    ctx = await changer(request)
    form = await request.form()
    username, password, role = text(form, "username"), text(form, "password"), text(form, "role")
    try:
        account = await ctx.admin._run(ctx.admin.accounts.create, username, password, role)
    except AccountError as exc:
        return await _accounts(ctx, 422, _error(exc), {"username": username, "role": role})
    await ctx.admin._run(
        ctx.admin.audit.record,
        ctx.account.username,
        "account.create",
        account.username,
        {"role": account.role},
    )
    return done("/accounts", "account.added")


@router.post("/accounts/change")
@page
async def change(request: Request) -> Response:
    """One account: role, disable/enable, password reset, delete (the button pressed)."""
    ctx = await changer(request)
    form = await request.form()
    username, what = text(form, "username"), text(form, "action")
    admin = ctx.admin
    detail: dict[str, object] = {}
    try:
        if what == "role" and text(form, "role") in ROLES:
            await admin._run(lambda: admin.accounts.update(username, role=text(form, "role")))
            detail = {"role": text(form, "role")}
        elif what in ("disable", "enable"):
            await admin._run(lambda: admin.accounts.update(username, disabled=what == "disable"))
        elif what == "password":
            await admin._run(admin.accounts.set_password, username, text(form, "password"))
        elif what == "delete":
            await admin._run(admin.accounts.remove, username)
        else:
            raise AccountError("action: unknown operation")
    except AccountError as exc:
        field, _, message = str(exc).partition(": ")
        return await _accounts(ctx, 422, row_errors={username: message or field})
    await admin._run(admin.audit.record, ctx.account.username, f"account.{what}", username, detail)
    return done("/accounts", "account.deleted" if what == "delete" else "account.changed")


@router.get("/audit")
@page
async def audit(request: Request) -> Response:
    ctx = await viewer(request)
    actor = request.query_params.get("actor", "").strip()[:120]
    action = request.query_params.get("action", "").strip()[:100]
    rows = await ctx.admin._run(ctx.admin.audit.search, actor or None, action or None, 500)
    for row in rows:
        changes = row["detail"].get("changes") if isinstance(row["detail"], dict) else None
        if isinstance(changes, list):
            row["changes"] = [_change(c) for c in changes if isinstance(c, dict)]
    return render(
        ctx, "audit.html", title="Audit log", section="audit", rows=rows, actor=actor, action=action
    )


SHORT = 120


def _change(change: dict[str, Any]) -> dict[str, str]:
    """One changed field, its values as JSON text (shortened ones keep the whole text too)."""
    out = {"field": str(change.get("field", ""))}
    for side in ("before", "after"):
        text = json.dumps(change.get(side), ensure_ascii=False, sort_keys=True)
        out[side] = text
        out[side + "_short"] = text if len(text) <= SHORT else text[: SHORT - 1] + "…"
    return out
