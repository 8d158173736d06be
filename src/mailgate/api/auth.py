"""Who is asking, and may they: session cookies (the web interface) and API tokens (scripts);
CSRF protection for every change made with a cookie; roles (an auditor changes nothing).

- API token: `Authorization: Bearer mgt_...`. No cookie is involved, so no CSRF check.
- Session cookie `mailgate_session` (HttpOnly, SameSite=Strict, Secure over HTTPS): every
  request that changes something must carry the session's CSRF token, in the
  `X-CSRF-Token` header (API) or the `csrf_token` form field (web forms).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from mailgate.admin.accounts import Account, Session

COOKIE = "mailgate_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Identity:
    account: Account
    session: Session | None  # None for API tokens

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session else ""


class LoginRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(401, "authentication required",
                         headers={"WWW-Authenticate": 'Bearer realm="mailgate"'})  # fmt: skip


async def identify(request: Request) -> Identity | None:
    """The caller's identity from a bearer token or the session cookie, or None."""
    admin = request.app.state.admin
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
        account = await admin._run(admin.accounts.by_token, token)
        return Identity(account, None) if account else None
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    lifetime = admin.config.advanced.web.session_hours * 3600
    session = await admin._run(admin.accounts.session, secret, lifetime)
    return Identity(session.account, session) if session else None


async def check_csrf(request: Request, identity: Identity) -> None:
    """Refuse a change made with a cookie unless it carries the session's CSRF token."""
    if request.method in SAFE_METHODS or identity.session is None:
        return
    sent = request.headers.get("x-csrf-token", "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent, identity.session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token")


async def reader(request: Request) -> Identity:
    """Any logged-in account (administrator or auditor)."""
    identity = await identify(request)
    if identity is None:
        raise LoginRequired()
    request.state.identity = identity
    await check_csrf(request, identity)
    return identity


async def administrator(request: Request) -> Identity:
    """An administrator: everything that changes something needs this."""
    identity = await reader(request)
    if not identity.account.is_admin:
        raise HTTPException(403, "this account is read-only (auditor)")
    return identity


Reader = Annotated[Identity, Depends(reader)]
Administrator = Annotated[Identity, Depends(administrator)]
