"""Log in and out (the session cookie), and who the caller is."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field

from mailgate.api.auth import COOKIE, Reader
from mailgate.api.routes.common import ERRORS, api_route

router = APIRouter(tags=["session"], route_class=api_route(), responses=ERRORS)


class Login(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class Me(BaseModel):
    username: str
    role: str
    csrf: str = Field(description="Send as X-CSRF-Token with every change made with the cookie.")


def set_session_cookie(request: Request, response: Response, secret: str, hours: float) -> None:
    response.set_cookie(
        COOKIE, secret, max_age=int(hours * 3600), httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip


@router.post("/session", response_model=Me, summary="Log in (sets the session cookie)")
async def login(body: Login, request: Request, response: Response) -> Me:
    admin = request.app.state.admin
    account = await admin._run(admin.accounts.authenticate, body.username, body.password)
    if account is None:
        raise HTTPException(401, "wrong user name or password")
    hours = admin.config.advanced.web.session_hours
    secret, session = await admin._run(admin.accounts.open_session, account, hours * 3600)
    set_session_cookie(request, response, secret, hours)
    await admin._run(admin.audit.record, account.username, "session.login", account.username, {})
    return Me(username=account.username, role=account.role, csrf=session.csrf)


@router.get("/session", response_model=Me, summary="Who is logged in")
async def me(identity: Reader) -> Me:
    return Me(username=identity.account.username, role=identity.account.role, csrf=identity.csrf)


@router.delete("/session", status_code=204, summary="Log out")
async def logout(request: Request, response: Response, identity: Reader) -> None:
    admin = request.app.state.admin
    secret = request.cookies.get(COOKIE)
    if secret:
        await admin._run(admin.accounts.close_session, secret)
    response.delete_cookie(COOKIE, path="/")
