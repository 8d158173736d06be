"""Log in and out, and change one's own password (administrators and auditors alike).

The login form is protected against login CSRF with a double-submit token: a random value in
a SameSite=Strict cookie that the form must repeat. A failed login says only that the name or
the password is wrong.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.admin.accounts import AccountError
from mailgate.api.auth import COOKIE, identify
from mailgate.api.routes.session import set_session_cookie
from mailgate.web.pages.common import (
    changer,
    done,
    page,
    redirect,
    render,
    safe_next,
    text,
    viewer,
)

router = APIRouter()
LOGIN_COOKIE = "mailgate_login"


def _login_form(
    request: Request, error: str = "", username: str = "", status: int = 200
) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        None,
        "login.html",
        status,
        title="Log in",
        error=error,
        username=username,
        login_token=token,
        next=safe_next(request.query_params.get("next", "")),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/login",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/")
async def home() -> Response:
    return redirect("/dashboard")


@router.get("/login")
async def login_page(request: Request) -> Response:
    if await identify(request) is not None:
        return redirect("/dashboard")
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    admin = request.app.state.admin
    form = await request.form()
    username = text(form, "username").strip()[:100]
    password = text(form, "password")[:1000]
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    sent = text(form, "login_token")
    if not cookie or not hmac.compare_digest(cookie, sent):
        return _login_form(request, "The login form expired. Please try again.", username, 403)
    account = None
    if username and password:
        account = await admin._run(admin.accounts.authenticate, username, password)
    if account is None:
        return _login_form(request, "Wrong user name or password.", username, 401)
    hours = admin.config.advanced.web.session_hours
    secret, _ = await admin._run(admin.accounts.open_session, account, hours * 3600)
    await admin._run(admin.audit.record, account.username, "session.login", account.username, {})
    response = redirect(safe_next(text(form, "next")))
    set_session_cookie(request, response, secret, hours)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
@page
async def logout(request: Request) -> Response:
    ctx = await changer(request, own_account=True)
    secret = request.cookies.get(COOKIE)
    if secret:
        await ctx.admin._run(ctx.admin.accounts.close_session, secret)
    response = redirect("/login")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/account")
@page
async def my_account(request: Request) -> Response:
    ctx = await viewer(request)
    return render(ctx, "account.html", title="My account", section="account", errors={})


@router.post("/account")
@page
async def change_own_password(request: Request) -> Response:
    ctx = await changer(request, own_account=True)
    admin = ctx.admin
    form = await request.form()
    current, new, again = (text(form, n) for n in ("current", "password", "again"))
    errors: dict[str, str] = {}
    if await admin._run(admin.accounts.authenticate, ctx.account.username, current) is None:
        errors["current"] = "This is not your current password."
    elif new != again:
        errors["again"] = "The two new passwords differ."
    else:
        try:
            await admin._run(admin.accounts.set_password, ctx.account.username, new)
        except AccountError as exc:
            errors["password"] = str(exc).partition(": ")[2] or str(exc)
    if errors:
        return render(
            ctx, "account.html", 422, title="My account", section="account", errors=errors
        )
    await admin._run(
        admin.audit.record, ctx.account.username, "account.password", ctx.account.username, {}
    )
    # A new password ends every session of the account, this one too: open a fresh one.
    hours = admin.config.advanced.web.session_hours
    secret, _ = await admin._run(admin.accounts.open_session, ctx.account, hours * 3600)
    response = done("/account", "password")
    set_session_cookie(request, response, secret, hours)
    return response
